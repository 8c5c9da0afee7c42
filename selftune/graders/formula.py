"""``multi`` graders' ``calculate_output``: arithmetic over the sub-graders' scores, parsed safely.

The formula is parsed with Python's own parser (``ast``, expression mode) and then evaluated by
walking the tree, allowing only numbers, the sub-graders' names, ``+ - * / ^`` (``^`` is a power,
as in OpenAI's formulas, binding tighter than ``*``), parentheses and the functions ``min max abs
floor ceil exp sqrt log``. Nothing is ``eval``-ed, and any other syntax (attributes, calls of
anything else, subscripts, comparisons) is a ``FormulaError`` at validation. Numbers are floats
throughout, so a huge power overflows at once instead of building an enormous integer.
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min,
    "max": max,
    "abs": abs,
    "floor": lambda x: float(math.floor(x)),
    "ceil": lambda x: float(math.ceil(x)),
    "exp": math.exp,
    "sqrt": math.sqrt,
    "log": math.log,
}
_BINARY: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type[ast.unaryop], Callable[[float], float]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}
MAX_LENGTH = 10_000


class FormulaError(ValueError):
    """The formula cannot be parsed, or uses what is not allowed: ``str(e)`` says what."""


class VariableError(FormulaError):
    """The formula names a grader that ``multi`` does not have."""


def parse(formula: str, names: set[str]) -> ast.Expression:
    """The checked tree of ``formula``, whose variables must be among ``names``."""
    if len(formula) > MAX_LENGTH:
        raise FormulaError(f"the formula is {len(formula):,} characters long; at most {MAX_LENGTH:,}")
    try:
        # ``^`` is a power, binding tighter than * and / (Python's ^ is XOR, below +): written as **.
        tree = ast.parse(formula.strip().replace("^", "**"), mode="eval")
    except SyntaxError as e:
        raise FormulaError(f"cannot parse {formula!r}: {e.msg} at character {e.offset}") from None
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            if node.id not in names and node.id not in FUNCTIONS:
                raise VariableError(f"{node.id!r} is not one of the graders ({', '.join(sorted(names))})")
        elif isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
                raise FormulaError(f"only {', '.join(FUNCTIONS)} may be called in a formula")
        elif isinstance(node, ast.BinOp) and type(node.op) not in _BINARY:
            raise FormulaError(f"{type(node.op).__name__} is not allowed: use + - * / ^")
        elif isinstance(node, ast.UnaryOp) and type(node.op) not in _UNARY:
            raise FormulaError(f"{type(node.op).__name__} is not allowed in a formula")
        elif isinstance(node, ast.Constant) and (type(node.value) not in (int, float)):
            raise FormulaError(f"{node.value!r} is not a number")
        elif not isinstance(
            node, ast.Expression | ast.Name | ast.Call | ast.BinOp | ast.UnaryOp | ast.Constant | ast.Load
        ) and not isinstance(node, ast.operator | ast.unaryop):
            raise FormulaError(f"{type(node).__name__} is not allowed in a formula")
    return tree


def evaluate(tree: ast.Expression, values: Mapping[str, float]) -> float:
    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)  # type: ignore[arg-type]  # parse() let only int and float through
        if isinstance(node, ast.Name):
            return float(values[node.id])
        if isinstance(node, ast.BinOp):
            return _BINARY[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](walk(node.operand))
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
        return FUNCTIONS[node.func.id](*(walk(a) for a in node.args))

    result = walk(tree)
    if isinstance(result, complex) or not isinstance(result, int | float) or math.isnan(result):
        raise ArithmeticError(f"the formula gave {result!r}, not a number")
    return float(result)

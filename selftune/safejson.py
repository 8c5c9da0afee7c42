"""JSON from clients, read within bounds: request bodies, batch lines, training-file lines.

Python's own ``json.loads`` reads anything, which a hostile client can use: an integer of 5,000
digits is a ``ValueError`` (and 4,000 digits cost quadratic time to convert), JSON nested 20,000
deep a ``RecursionError``. Neither is a ``JSONDecodeError``, so code that catches only that lets
them escape. ``loads`` turns every one of them into ``InvalidJSON`` (a 400 that says what is wrong
and where), and refuses numbers longer than ``MAX_NUMBER_CHARS`` and nesting deeper than
``MAX_DEPTH`` before any caller sees the value. Every parse of client JSON goes through here.
"""

from __future__ import annotations

import json
from typing import Any

from selftune.errors import InvalidJSON

MAX_DEPTH = 64
"""Objects and arrays inside each other: OpenAI's own bodies (tools with JSON-schema parameters)
need a dozen levels; 64 leaves room and stops parser bombs."""

MAX_NUMBER_CHARS = 64
"""Characters in one number: enough for any float or 64-bit integer, a bound on conversion time."""


class _TooLong(ValueError):
    pass


def _number(kind: type[Any]) -> Any:
    def parse(text: str) -> Any:
        if len(text) > MAX_NUMBER_CHARS:
            raise _TooLong(f"a number of {len(text)} characters (numbers may have at most {MAX_NUMBER_CHARS})")
        return kind(text)

    return parse


_INT, _FLOAT = _number(int), _number(float)


def loads(data: str | bytes, where: str = "the body") -> Any:
    """Parse ``data`` as JSON within the bounds, or raise ``InvalidJSON`` naming ``where`` and the
    problem (its ``reason`` is the problem alone, for messages that name the place their own way)."""
    try:
        value = json.loads(data, parse_int=_INT, parse_float=_FLOAT)
    except _TooLong as e:
        reason = f"refused for {e}"
    except json.JSONDecodeError as e:
        at = f"line {e.lineno} column {e.colno}" if e.lineno > 1 else f"column {e.colno}"
        reason = f"not valid JSON: {e.msg} at {at}"
    except UnicodeDecodeError as e:
        reason = f"not UTF-8 text: {e.reason} at byte {e.start}"
    except RecursionError:
        reason = f"nested more than {MAX_DEPTH} levels deep"
    except ValueError as e:  # what json itself raises beyond JSONDecodeError
        reason = f"not readable as JSON: {e}"
    else:
        if depth(value) <= MAX_DEPTH:
            return value
        reason = f"nested more than {MAX_DEPTH} levels deep"
    raise InvalidJSON(f"{where} is {reason}", reason=reason)


def depth(value: Any) -> int:
    """How deeply objects and arrays nest in ``value`` (0 for a scalar), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, level)
        if level <= MAX_DEPTH:  # past the bound the answer is known: no need to walk further down
            stack.extend((child, level + 1) for child in children)
    return deepest

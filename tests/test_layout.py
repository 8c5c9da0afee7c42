"""The tree as the docs describe it: every module on the layout page (and every module the page names
in the tree), no import loops (not even inside functions), the layers in their order, modules small
enough to read in one sitting, and every setting on the configuration page."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from selftune.config import Settings
from tests.conftest import REPO

PACKAGE = REPO / "selftune"
LAYOUT = (REPO / "docs" / "development.md").read_text()
MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "migrations/versions" not in str(p))


def dotted(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


NAMES = {dotted(p): p for p in MODULES}


def imports(path: Path) -> set[str]:
    """The selftune modules ``path`` imports, at the top or inside a function; not those imported
    for type checking only."""
    tree = ast.parse(path.read_text())
    typing_only = {
        id(n)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for stmt in node.body
        for n in ast.walk(stmt)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selftune"):
            for alias in node.names:
                full = f"{node.module}.{alias.name}"
                found.add(full if full in NAMES else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("selftune")}
    return {m for m in found if m in NAMES} - {dotted(path)}


GRAPH = {name: imports(path) for name, path in NAMES.items()}


def test_the_layout_page_lists_every_module_and_only_real_ones() -> None:
    missing = []
    for path in MODULES:
        rel = path.relative_to(REPO)
        short = str(rel.relative_to("selftune"))
        named = f"`{rel}`" in LAYOUT or (len(rel.parts) > 2 and f"`{short}`" in LAYOUT)
        if not named:
            missing.append(str(rel))
    assert not missing, f"docs/development.md does not list: {', '.join(missing)}"
    packages = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    named = re.findall(r"`((?:selftune/)?[\w/]+\.py)`", LAYOUT)
    ghosts = [n for n in named if (n.startswith("selftune/") or n.split("/")[0] in packages) and not _exists(n)]
    assert not ghosts, f"docs/development.md names modules that do not exist: {', '.join(ghosts)}"
    for bench in sorted((REPO / "bench").glob("*.py")):
        assert bench.stem == "__init__" or f"`{bench.stem}`" in LAYOUT, f"bench/{bench.name} is not on the layout page"


def _exists(name: str) -> bool:
    return (REPO / name).is_file() or (PACKAGE / name).is_file()


def test_no_module_imports_one_that_imports_it_back() -> None:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert not loops, f"import loops: {loops}"


LIGHT = {
    # module prefix: what it may import from selftune (its own package always)
    "selftune.data": ("selftune.data", "selftune.errors", "selftune.atomic", "selftune.safejson"),
    "selftune.schemas": ("selftune.schemas", "selftune.statuses", "selftune.methods", "selftune.errors"),
    "selftune.methods": (),
    "selftune.errors": ("selftune.ids",),
    "selftune.ids": (),
    "selftune.atomic": (),
    "selftune.safejson": ("selftune.errors",),
}


@pytest.mark.parametrize("prefix", sorted(LIGHT))
def test_the_lower_layers_import_nothing_above_them(prefix: str) -> None:
    allowed = (prefix, *LIGHT[prefix])
    wrong = {
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        if name == prefix or name.startswith(prefix + ".")
        for target in targets
        if not any(target == a or target.startswith(a + ".") for a in allowed)
    }
    assert not wrong, sorted(wrong)


def test_http_stays_in_the_server() -> None:
    """Routes are the only HTTP layer: nothing but ``selftune.server`` imports FastAPI or Starlette,
    and nothing below it (or beside it, like the serving layer and the runners) imports it."""
    for path in MODULES:
        name = dotted(path)
        if name.startswith("selftune.server"):
            continue
        text = path.read_text()
        assert not re.search(r"^\s*(from|import) (fastapi|starlette)", text, re.M), f"{name} imports HTTP types"
        users = {t for t in GRAPH[name] if t.startswith("selftune.server")}
        if not name.startswith("selftune.cli"):  # `selftune serve` starts the app
            assert not users, f"{name} imports {users}"


def test_modules_stay_small_enough_to_read_in_one_sitting() -> None:
    """About 400 lines at most; the training recipe alone reads top to bottom at its own length."""
    long = [
        f"{p.relative_to(REPO)} ({n})"
        for p in MODULES
        if (n := len(p.read_text().splitlines())) > 420 and p.name != "lora.py"
    ]
    assert not long, long


def test_every_setting_is_on_the_configuration_page() -> None:
    page = (REPO / "docs" / "configuration.md").read_text()
    documented = set(re.findall(r"`(SELFTUNE_[A-Z_]+)`", page))
    settings = {f"SELFTUNE_{name.upper()}" for name in Settings.model_fields}
    read_elsewhere = {"SELFTUNE_TRAIN_MEMORY", "SELFTUNE_TRAIN_STRATEGY", "SELFTUNE_BASE_URL", "SELFTUNE_API_KEY"}
    assert settings - documented == set(), "settings missing from docs/configuration.md"
    assert documented - settings - read_elsewhere == set(), "docs/configuration.md names settings that do not exist"

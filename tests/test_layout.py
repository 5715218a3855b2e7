"""The package's shape: imports point one way, at the top of each file; rooms stay small.

Read from the source with ``ast`` (nothing is imported), so a new import circle, an import hidden
in a function to dodge one, or a file or function grown too large fails here, with its name.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lictutor"
FILES = sorted(PACKAGE.rglob("*.py"))
MAX_FILE_LINES, MAX_FUNCTION_LINES = 500, 80


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module(p): p for p in FILES}


def _targets(node: ast.AST, module: str) -> set:
    """The lictutor modules an import statement in ``module`` loads (a package's
    ``__init__`` for ``from package import name`` unless ``name`` is a module of it)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in MODULES}
    if not isinstance(node, ast.ImportFrom) or node.level or not (node.module or "").startswith("lictutor"):
        return set()
    found = set()
    for alias in node.names:
        sub = f"{node.module}.{alias.name}"
        found.add(sub if sub in MODULES else node.module)
    return {m for m in found if m in MODULES and m != module}


def _graph() -> dict:
    """Every import, those inside functions included: a circle closed by a deferred import is
    still a circle."""
    return {m: set().union(*[_targets(n, m) for n in ast.walk(ast.parse(p.read_text()))], set())
            for m, p in MODULES.items()}


def test_the_package_has_no_import_circle():
    graph, state, circles = _graph(), {}, []

    def visit(m, path):
        state[m] = "open"
        for t in sorted(graph[m]):
            if state.get(t) == "open":
                circles.append(" -> ".join(path[path.index(t):] + [t]))
            elif t not in state:
                visit(t, path + [t])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not circles, "import circles: " + "; ".join(circles)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_of_lictutor_sit_at_the_top_of_the_file(path):
    """...unless a comment on the import says why (the command line defers its heavy imports)."""
    source = path.read_text()
    lines = source.splitlines()
    hidden = [node.lineno for fn in ast.walk(ast.parse(source)) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
              for node in ast.walk(fn) if _targets(node, _module(path)) and "#" not in lines[node.lineno - 1]]
    assert not hidden, f"imports of lictutor inside functions, without a comment saying why, at lines {hidden}"


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_files_and_functions_stay_small(path):
    source = path.read_text()
    assert source.count("\n") <= MAX_FILE_LINES
    long = [f"{fn.name} ({fn.end_lineno - fn.lineno + 1} lines)" for fn in ast.walk(ast.parse(source))
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
            and fn.end_lineno - fn.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"


def test_the_readme_lists_every_module_below_what_it_imports():
    table = [line.split("`")[1] for line in (PACKAGE.parent / "README.md").read_text().splitlines()
             if line.startswith("| `lictutor.")]
    top = {m: m.split(".")[1] if m.count(".") else m for m in MODULES}  # a package's modules: its row
    assert sorted(table) == sorted({f"lictutor.{t}" for m, t in top.items() if m != "lictutor"} - {"lictutor.__main__"})
    rank = {name.split(".")[1]: i for i, name in enumerate(table)}
    late = [f"{m} imports {t}" for m, targets in _graph().items() for t in targets
            if m != "lictutor" and t != "lictutor" and top[m] in rank and top[t] != top[m]
            and rank[top[t]] > rank[top[m]]]
    assert not late, "; ".join(late)
    api = (PACKAGE.parent / "book" / "api.md").read_text()
    listed = api[api.index(":nosignatures:"):].split("```")[0].split()[1:]
    assert [f"lictutor.{m}" for m in listed] == table  # the API page's table, in the same order

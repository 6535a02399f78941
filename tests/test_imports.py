"""No import cycles in fastalex, the library never imports the training application, and every
module imports in a fresh interpreter.

The graph is read from the source with ``ast``: every ``import`` statement counts, at module
level or inside a function (a cycle closed by a deferred import still ties the two modules
together), except those under ``if TYPE_CHECKING:``, which never run.
"""

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Package name -> its source directory (kernels/ ships as fastalex.kernels).
PACKAGES = {"fastalex": ROOT / "fastalex", "fastalex.kernels": ROOT / "kernels"}


def modules(packages: dict[str, Path]) -> dict[str, Path]:
    """Module name -> file, for every .py file under the packages' directories."""
    found = {}
    for package, directory in packages.items():
        for path in sorted(directory.rglob("*.py")):
            parts = list(path.relative_to(directory).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([package, *parts])] = path
    return found


def _runtime_imports(node: ast.AST):
    """The Import/ImportFrom nodes under ``node``, except those under ``if TYPE_CHECKING:``."""
    if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
        children = node.orelse
    else:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        children = ast.iter_child_nodes(node)
    for child in children:
        yield from _runtime_imports(child)


def import_graph(packages: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ``packages`` it imports (a package's ``__init__`` is the
    package's name; importing a submodule is not counted as importing its parents)."""
    files = modules(packages)
    graph = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        edges = set()
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1 more
                    anchor = name.split(".")
                    anchor = anchor[:len(anchor) - node.level + (1 if is_package else 0)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base
                           for alias in node.names]
            for target in targets:
                while target and target not in files:  # `import a.b.c` of a non-module tail
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def test_no_import_cycles():
    graph = import_graph(PACKAGES)
    assert "fastalex.training.train" in graph and "fastalex.kernels.conv" in graph
    assert "fastalex.training.builders" in graph["fastalex.training.train"]
    assert cycles(graph) == []


# The training application and the entry modules of its commands; the rest is the library.
APPLICATION = ("fastalex.training", "fastalex.train", "fastalex.evaluate", "fastalex.prepare",
               "fastalex.reproduce")


def _in_application(name: str) -> bool:
    return any(name == a or name.startswith(a + ".") for a in APPLICATION)


def test_the_library_never_imports_the_training_application():
    graph = import_graph(PACKAGES)
    library = {name: edges for name, edges in graph.items() if not _in_application(name)}
    assert "fastalex.layers" in library and "fastalex.models.alexnet" in library
    assert "fastalex.kernels.conv" in library
    offending = {name: sorted(e for e in edges if _in_application(e))
                 for name, edges in library.items()}
    assert {name: e for name, e in offending.items() if e} == {}


def test_the_cycle_check_finds_cycles(tmp_path):
    """Deferred, relative and TYPE_CHECKING imports, on a package made for it."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    sources = {
        "__init__.py": "",
        "a.py": "def f():\n    from pkg.sub import b\n",  # deferred: still an edge
        "sub/__init__.py": "from . import c\n",
        "sub/b.py": "import pkg.sub.c\n",
        "sub/c.py": "from ..a import f\n",  # relative, two levels: closes a -> b -> c -> a
        "d.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n",
        "e.py": "import pkg.d\n",  # d -> e only for type checkers: no cycle
    }
    for rel, text in sources.items():
        (pkg / rel).write_text(text)
    graph = import_graph({"pkg": pkg})
    assert graph["pkg.sub.c"] == {"pkg.a"} and graph["pkg.sub"] == {"pkg.sub.c"}
    assert graph["pkg.d"] == set() and graph["pkg.e"] == {"pkg.d"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b", "pkg.sub.c"]]


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(modules(PACKAGES))
    script = textwrap.dedent("""
        import importlib, sys
        for name in sys.argv[1:]:
            importlib.import_module(name)
        print(len(sys.argv) - 1)
    """)
    proc = subprocess.run([sys.executable, "-c", script, *names], capture_output=True,
                          text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(len(names))]

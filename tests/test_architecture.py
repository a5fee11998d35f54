"""The layers of camcli (docs/architecture.md), enforced on the source.

Every import of every module is read from its syntax tree, at module level and inside functions
alike, and checked against the order

    errors, console, atomic, sysinfo -> cam -> data | models -> evaluate -> runs
        -> api | train -> cli

An import may point down or stay in its own package; ``data``/``models`` and ``api``/``train``
are siblings that do not import each other; no module imports ``cli`` but ``cli`` (and
``__main__``). The import graph between modules has no cycle.
"""

from __future__ import annotations

import ast
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: package (first name under camcli) -> layer; siblings share a layer and may not import each
#: other. Base modules (torch-free) are layer 0 and may import one another.
LAYERS: dict[str, int] = {
    "__init__": 0,
    "errors": 0,
    "console": 0,
    "atomic": 0,
    "sysinfo": 0,
    "cam": 1,
    "data": 2,
    "models": 2,
    "evaluate": 3,
    "runs": 4,
    "api": 5,
    "train": 5,
    "cli": 6,
    "__main__": 7,
}


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under ``root/camcli``."""
    out = {}
    for f in sorted((root / "camcli").rglob("*.py")):
        parts = list(f.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, imported camcli module) for every import in the file, wherever it sits."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name == "camcli" or a.name.startswith("camcli."):
                    found.append((node.lineno, a.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if not (mod == "camcli" or mod.startswith("camcli.")):
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in modules]
            if subs:
                found.extend((node.lineno, s) for s in subs)
            if len(subs) < len(node.names) or not subs:
                found.append((node.lineno, mod))
    return found


def layer_of(module: str) -> tuple[str, int]:
    parts = module.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    if key not in LAYERS:
        raise AssertionError(f"{module}: not in any layer; add its package to LAYERS and the docs")
    return key, LAYERS[key]


def check(root: Path) -> list[str]:
    """Every violation of the layer order and every import cycle, one line each."""
    modules = module_names(root)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    problems = []
    for name, path in modules.items():
        src_pkg, src_layer = layer_of(name)
        for line, target in imports_of(name, path, modules):
            if target not in modules:
                problems.append(
                    f"{path.name}:{line}: {name} imports {target}, which does not exist"
                )
                continue
            if target == name:
                continue
            graph[name].add(target)
            dst_pkg, dst_layer = layer_of(target)
            if dst_pkg == src_pkg or (src_layer == 0 and dst_layer == 0):
                continue
            if dst_layer > src_layer:
                problems.append(f"{name}:{line} imports {target}: an upward import")
            elif dst_layer == src_layer:
                problems.append(
                    f"{name}:{line} imports {target}: siblings do not import each other"
                )
    # cycles (Tarjan's strongly connected components)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                problems.append("import cycle: " + " -> ".join(sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return problems


def test_camcli_imports_follow_the_layers_without_cycles():
    problems = check(SRC)
    assert not problems, "\n".join(problems)


def test_every_package_has_a_layer():
    for name in module_names(SRC):
        layer_of(name)


def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        f = tmp_path / "camcli" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return tmp_path


@pytest.mark.parametrize(
    "files, expected",
    [
        # an upward import hidden inside a function (the metrics -> cli.eval_cmd case)
        (
            {
                "evaluate/metrics.py": "def f():\n    from camcli.cli.eval_cmd import g\n",
                "cli/eval_cmd.py": "def g(): pass\n",
            },
            "camcli.evaluate.metrics:2 imports camcli.cli.eval_cmd: an upward import",
        ),
        # siblings: api and train
        (
            {"train/loop.py": "from camcli.api import session\n", "api/session.py": ""},
            "camcli.train.loop:1 imports camcli.api.session: siblings do not import each other",
        ),
        # a cycle inside one package (models.load <-> models.small)
        (
            {
                "models/load.py": "def f():\n    from camcli.models.small import x\n",
                "models/small.py": "from camcli.models.load import y\n",
            },
            "import cycle: camcli.models.load -> camcli.models.small",
        ),
        # a relative import is resolved too
        (
            {"cam/boxes.py": "from ..runs import outdir\n", "runs/outdir.py": ""},
            "camcli.cam.boxes:1 imports camcli.runs.outdir: an upward import",
        ),
    ],
)
def test_the_checker_catches_upward_imports_siblings_and_cycles(tmp_path, files, expected):
    root = _tree(tmp_path, {"__init__.py": "", **files})
    assert expected in check(root)


def test_the_checker_accepts_downward_imports(tmp_path):
    root = _tree(
        tmp_path,
        {
            "__init__.py": "",
            "errors.py": "",
            "cli/x.py": "from camcli.api import y\nimport camcli.errors\n",
            "api/y.py": "from camcli.cam import z\nfrom . import w\n",
            "api/w.py": "",
            "cam/z.py": "from camcli.errors import E\n",
        },
    )
    assert check(root) == []

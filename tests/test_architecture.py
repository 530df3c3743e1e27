"""The package's own import graph: no cycles, and no stage importing from a stage above it.

The graph is read from the source with ``ast`` (every ``import``, at module level or inside a function), so
it is the real graph whatever is imported lazily. The public facade ``ctxray/__init__.py`` (``ctxray.load``,
``__version__``) is left out: every module may read the version, and the facade may reach anything.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import ctxray

# Floors, lowest first: a module may import from its own floor and the floors below, never from above.
FLOORS: list[tuple[str, ...]] = [
    ("utils", "labels", "config"),      # shared machinery, the label set
    ("metrics", "optim"),               # AUROC, thresholds, recall@k; parameter groups, LR factor: shared
    ("synth",),                         # the synthetic world (writes inputs; reads nothing of ours)
    ("data",),                          # readers, preprocessing spec, cache writer and reader, datasets
    ("models", "losses", "labeler"),    # encoders, dual encoder, zero-shot scoring, losses, report labeler
    ("teacher",),                       # the X-ray expert
    ("retrieval",),                     # CT report -> X-ray pairs and teacher targets
    ("train",),                         # the CT model's training
    ("evaluate", "generate"),           # metrics of a trained model; report generation
    ("inference",),                     # the model folder, the Python API, predict
    ("demo", "commands", "cli"),        # entry points
]

ROOT = Path(ctxray.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The module that ``name`` (a module, or a name inside one) comes from."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (the facade ``ctxray`` excluded on both ends)."""
    modules = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        if name == "ctxray":
            continue
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] != "ctxray":
                    continue
                found = _resolve(target, modules)
                if found and found not in ("ctxray", name):
                    graph[name].add(found)
    return graph


def floor_of(module: str) -> int:
    top = module.split(".")[1]
    for i, names in enumerate(FLOORS):
        if top in names:
            return i
    raise AssertionError(f"{module}: its package {top!r} is on no floor of FLOORS; add it")


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(set(graph) | {w for ws in graph.values() for w in ws}):
        if v not in index:
            visit(v)
    return out


def test_every_package_is_on_a_floor() -> None:
    for module in _modules():
        if module != "ctxray":
            floor_of(module)


def test_no_import_cycles() -> None:
    assert cycles(import_graph()) == []


def test_no_stage_imports_from_a_stage_above_it() -> None:
    upward = sorted(f"{a} -> {b}" for a, bs in import_graph().items() for b in bs if floor_of(b) > floor_of(a))
    assert upward == []


def test_the_checks_can_fail() -> None:
    """The checks see a cycle and an upward import when there is one (so the tests above can fail)."""
    graph = {"ctxray.data.a": {"ctxray.data.b"}, "ctxray.data.b": {"ctxray.data.a", "ctxray.train.loop"}}
    assert cycles(graph) == [["ctxray.data.a", "ctxray.data.b"]]
    assert floor_of("ctxray.train.loop") > floor_of("ctxray.data.b")
    real = import_graph()
    assert "ctxray.data.volume" in real["ctxray.data.readers"]  # a module-level import
    assert "ctxray.retrieval" in real["ctxray.commands.retrieve"]  # one inside a function (light CLI start-up)


TESTS = Path(__file__).resolve().parent


def _imported_modules(path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules a test file imports (``from ctxray.a import b`` counts ``ctxray.a.b`` when it is one)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return {m for m in out if m in modules}


def untested_modules() -> list[str]:
    """Modules of src/ that no test of their mirrored folder imports.

    ``ctxray.x`` (a top-level module) is mirrored by the files of ``tests/``, ``ctxray.pkg.x`` by those under
    ``tests/pkg/``; a package counts as imported when any of its modules is. Command modules are imported by
    name from ``ctxray.cli.COMMANDS`` in ``tests/commands/test_commands.py``.
    """
    from ctxray.cli import COMMANDS

    modules = _modules()
    seen: dict[Path, set[str]] = {}
    for path in TESTS.rglob("*.py"):
        seen.setdefault(path.parent, set()).update(_imported_modules(path, modules))
    if "COMMANDS" in (TESTS / "commands" / "test_commands.py").read_text():
        seen[TESTS / "commands"] |= {module for module, _ in COMMANDS.values()}
    missing = []
    for name, path in sorted(modules.items()):
        parts = name.split(".")
        if name == "ctxray":
            continue
        if path.name == "__init__.py" or len(parts) > 2:
            folder = TESTS / parts[1]
            imported = set().union(*(v for k, v in seen.items() if k == folder or folder in k.parents))
        else:
            imported = seen.get(TESTS, set())
        covered = name in imported or (path.name == "__init__.py" and any(m.startswith(name + ".") for m in imported))
        if not covered:
            missing.append(name)
    return missing


def test_every_module_is_imported_by_a_test_of_its_own_folder() -> None:
    assert untested_modules() == []


def test_the_mirror_check_can_fail(tmp_path, monkeypatch) -> None:
    """A module that only a test of another folder imports is reported."""
    modules = _modules()
    assert _imported_modules(TESTS / "synth" / "test_synth_writers.py", modules) >= {"ctxray.synth.writers"}
    assert "ctxray.synth.writers" not in _imported_modules(TESTS / "data" / "test_data_world.py", modules)
    monkeypatch.setattr(f"{__name__}.TESTS", tmp_path)
    (tmp_path / "commands").mkdir()
    (tmp_path / "commands" / "test_commands.py").write_text("")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "test_x.py").write_text("from ctxray.synth.writers import write_csv\n")
    (tmp_path / "synth").mkdir()
    (tmp_path / "synth" / "test_y.py").write_text("from ctxray.synth import lesions\n")
    missing = untested_modules()
    assert {"ctxray.synth.writers", "ctxray.losses", "ctxray.data"} <= set(missing)
    assert "ctxray.synth.lesions" not in missing and "ctxray.synth" not in missing

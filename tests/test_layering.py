"""The package's layers (issue 23), read from the source: every import counts (module level,
inside functions, under ``TYPE_CHECKING``), so a cycle or an upward import cannot hide in a
function. No import cycles; the song's pure code imports nothing above it; the GPU and weights
modules never import the run; engines never import the run or the store; planning never
imports a backend; only the edges (CLI, server, their views) import the edges, and only they
and the use cases import the use cases."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "ultrasinger_gpu_cli"

#: The wings (the package's folders, one per stretch of the song's way) and the few modules at the top.
SONG = {"song"}
GPU = {"gpu"}
WEIGHTS = {"weights"}
RUN = {"run"}
PLAN = {"plan"}
STORE = {"store"}
EDGES = {"cli", "server", "__main__"}
LEAVES = {"errors", "failures", "crashlog", "files"}  # anyone may import these
WINGS = SONG | GPU | WEIGHTS | RUN | PLAN | STORE | EDGES | LEAVES | {"components", "engines", "usecases", "__init__"}


def modules(root: Path = ROOT / PACKAGE) -> dict[str, Path]:
    out = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def imports(found: dict[str, Path]) -> dict[str, set[tuple[str, int]]]:
    """module -> {(imported package module, line)}, every import statement anywhere in the file."""
    graph: dict[str, set[tuple[str, int]]] = {m: set() for m in found}
    for name, path in found.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(parts + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in found:
                    target = target.rpartition(".")[0]
                if target and target not in (name, PACKAGE):
                    graph[name].add((target, node.lineno))
    return graph


def cycles(graph: dict[str, set[tuple[str, int]]]) -> list[list[str]]:
    """The import cycles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _ in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def room(module: str) -> str:
    """The wing of a package module: ``ultrasinger_gpu_cli.song.notes`` -> ``song``."""
    return module.split(".")[1] if module.count(".") else module


def broken(graph: dict[str, set[tuple[str, int]]]) -> list[str]:
    """Every import that runs against the layers, as ``module:line -> target (rule)``."""
    rules = [
        ("the song's pure code imports only itself", lambda m: room(m) in SONG,
         lambda t: room(t) in SONG | LEAVES),
        ("GPU and weights modules import only each other", lambda m: room(m) in GPU | WEIGHTS,
         lambda t: room(t) in GPU | WEIGHTS | LEAVES),
        ("the store never imports the run, the engines or the edges", lambda m: room(m) in STORE,
         lambda t: room(t) not in RUN | {"engines", "usecases"}),
        ("engines never import the run, the store or planning", lambda m: room(m) == "engines",
         lambda t: room(t) not in RUN | PLAN | STORE | {"usecases"}),
        ("planning never imports a backend or the run", lambda m: room(m) in PLAN,
         lambda t: not (room(t) == "engines" or room(t) in RUN)),
        ("components never import a backend", lambda m: room(m) == "components",
         lambda t: room(t) != "engines" or t == f"{PACKAGE}.engines.base"),
        ("the run never imports the use cases", lambda m: room(m) in RUN, lambda t: room(t) != "usecases"),
        ("only the edges import the edges", lambda m: room(m) not in EDGES, lambda t: room(t) not in EDGES),
        ("only the edges and the use cases import the use cases", lambda m: room(m) not in EDGES | {"usecases"},
         lambda t: room(t) != "usecases"),
    ]  # fmt: skip
    out = []
    for module, targets in sorted(graph.items()):
        for why, applies, allowed in rules:
            if applies(module):
                out += [f"{module}:{line} -> {target} ({why})" for target, line in sorted(targets)
                        if target.startswith(PACKAGE + ".") and not allowed(target)]  # fmt: skip
    return out


@pytest.fixture(scope="module")
def graph():
    return imports(modules())


def test_no_import_cycles(graph):
    assert cycles(graph) == []


def test_every_import_runs_down_the_layers(graph):
    assert broken(graph) == []


def test_every_module_is_in_a_wing():
    assert sorted({room(m) for m in modules() if m != PACKAGE} - WINGS) == []


def test_every_wing_says_what_lives_there():
    for path in (ROOT / PACKAGE).iterdir():
        if path.is_dir() and (path / "__init__.py").is_file():
            assert ast.get_docstring(ast.parse((path / "__init__.py").read_text(encoding="utf-8"))), path


def test_the_walker_sees_cycles_and_upward_imports_wherever_they_hide(tmp_path):
    """The checks can fail: an upward import inside a function, and one under TYPE_CHECKING that
    closes a cycle, are both found in a copy of the package."""
    copy = tmp_path / PACKAGE
    found = modules()
    for name, path in found.items():
        target = copy / path.relative_to(ROOT / PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    tempo = copy / "song" / "tempo.py"
    tempo.write_text(tempo.read_text(encoding="utf-8") + "\n\ndef _late():\n    from ultrasinger_gpu_cli.run import pipeline\n")
    words = copy / "song" / "words.py"
    words.write_text(words.read_text(encoding="utf-8")
                     + "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ultrasinger_gpu_cli.song.notes import build_song\n")  # fmt: skip
    graph = imports(modules(copy))
    assert any(m.startswith(f"{PACKAGE}.song.tempo:") and "pipeline" in m for m in broken(graph))
    assert any(f"{PACKAGE}.song.words" in group and f"{PACKAGE}.song.notes" in group for group in cycles(graph))


#: The store's writers of what runs leave: only the recorder calls them from the run.
RUN_WRITERS = {"start_run", "update_run", "finish_run", "reap_dead_runs", "log_performance", "record_fallback"}


def writes_of_runs(root: Path) -> list[str]:
    """Calls of the run rows' writers in the run and in the use cases that drive runs (the
    monitor's own samples are not a run's), other than the recorder's, as ``path:line``."""
    found = []
    for path in sorted([*(root / "run").rglob("*.py"), *(root / "usecases").rglob("*.py")]):
        if path.relative_to(root).as_posix() == "run/recorder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in RUN_WRITERS:
                found.append(f"{path.relative_to(root).as_posix()}:{node.lineno} {node.func.attr}")
    return found


def test_only_the_recorder_writes_what_runs_leave(tmp_path):
    assert writes_of_runs(ROOT / PACKAGE) == []
    copy = tmp_path / PACKAGE  # the check can fail: a runner that logs a stage itself is found
    for path in [*(ROOT / PACKAGE / "run").rglob("*.py"), *(ROOT / PACKAGE / "usecases").rglob("*.py")]:
        target = copy / path.relative_to(ROOT / PACKAGE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    runner = copy / "run" / "runner.py"
    runner.write_text(runner.read_text(encoding="utf-8") + "\n\ndef _log(store):\n    store.log_performance(component='x')\n")
    assert [w for w in writes_of_runs(copy) if w.startswith("run/runner.py")] != []


def test_workers_and_actors_never_open_the_database():
    """A ``--gpus`` worker process and a Ray actor send their events home; neither opens a store."""
    for relative, names in (("usecases/scale.py", {"_worker"}), ("usecases/cluster.py", {"SongActor"})):
        tree = ast.parse((ROOT / PACKAGE / relative).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
                opens = [n.lineno for n in ast.walk(node) if isinstance(n, ast.Attribute) and n.attr == "open"
                         and isinstance(n.value, ast.Name) and n.value.id == "Store"]  # fmt: skip
                assert opens == [], f"{relative}: {node.name} opens the database at lines {opens}"


def test_pipelines_are_built_in_one_place_and_ray_is_joined_in_one():
    """One fleet: every way of converting songs gets its pipelines from ``fleet.pipeline_for``;
    ``ray.init`` is called by ``cluster.join_ray`` alone."""
    built, joined = set(), set()
    for path in (ROOT / PACKAGE).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Pipeline":
                built.add(path.relative_to(ROOT / PACKAGE).as_posix())
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "init"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id == "ray"):  # fmt: skip
                joined.add(path.relative_to(ROOT / PACKAGE).as_posix())
    assert built == {"usecases/fleet.py"}
    assert joined == {"usecases/cluster.py"}


def test_planning_imports_no_backend_module():
    """The resolver asks the registration lines whether a backend is installed (its modules are
    looked up, not imported): planning every tier and mode, a backend given by a flag included,
    loads no engine module."""
    import subprocess
    import sys

    code = ("import sys; from ultrasinger_gpu_cli.plan.resolver import CPU_TARGET, resolve; "
            "from ultrasinger_gpu_cli.plan.detection import hypothetical_target; "
            "[resolve(t, m) for t in (CPU_TARGET, *(hypothetical_target(g) for g in (4, 6, 8, 12, 16, 24, 48, 80))) "
            "for m in ('conservative', 'balanced', 'aggressive')]; "
            "resolve(CPU_TARGET, flags={'whisper': {'backend': 'openai-whisper'}, 'crepe': {'backend': 'torchcrepe'}}); "
            "print(sorted(m for m in sys.modules if m.startswith('ultrasinger_gpu_cli.engines.')))")  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() in ("[]", "['ultrasinger_gpu_cli.engines.base']"), done.stdout

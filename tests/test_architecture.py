"""The architecture, checked from the source: no import circle anywhere in the package, the layers
import only downwards (core <- domains <- api <- cli), nothing registers by being imported, no
source file holds several jobs' worth of lines, and the registries the CLI offers are the ones the
core builds."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import diffuse

ROOT = Path(diffuse.__file__).resolve().parent
SKIP = {"tests", "benchmarks", "examples", "build", "docs", "recipes"}
#: the most lines a source file outside tests and benchmarks may hold
MAX_LINES = 500


def _modules() -> dict[str, Path]:
    """``{dotted name (without the leading 'diffuse'): path}`` of every module of the package."""
    out = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in SKIP or any(p.startswith(".") for p in rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules ``name`` imports, from every import statement anywhere in it (also inside
    functions and ``if TYPE_CHECKING``), counting a package's ``__init__`` as a module of its own."""
    tree = ast.parse(path.read_text())
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if name else []
    base = here if is_pkg else here[:-1]
    found: set[str] = set()

    def add(dotted: str) -> None:
        """An edge to the module itself (a package's ``__init__`` only when it is what is imported:
        Python runs the packages above a module first, but a package's own import of its
        submodules is not a circle through them)."""
        if dotted in modules and dotted != name:
            found.add(dotted)

    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "diffuse" or alias.name.startswith("diffuse."):
                    add(alias.name[len("diffuse."):] if alias.name != "diffuse" else "")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                mod = ".".join(parent + ([node.module] if node.module else []))
            elif node.module and (node.module == "diffuse" or node.module.startswith("diffuse.")):
                mod = node.module[len("diffuse."):] if node.module != "diffuse" else ""
            else:
                continue
            for alias in node.names:             # `from pkg import submodule` or `from module import name`
                sub = f"{mod}.{alias.name}" if mod else alias.name
                add(sub if sub in modules else mod)
    found.discard(name)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_the_import_graph_has_no_circle(graph):
    """Tarjan's strongly connected components of the module graph: every one a single module."""
    index, low, stack, on, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
                circles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


@pytest.mark.parametrize("layer, forbidden", [
    ("core", ("domains", "api", "cli", "pretrained")),
    ("domains", ("api", "cli")),
    ("api", ("cli",)),
    ("pretrained", ("cli",)),
])
def test_layers_import_only_downwards(graph, layer, forbidden):
    bad = sorted(f"{m} -> {t}" for m, targets in graph.items() if m == layer or m.startswith(layer + ".")
                 for t in targets if t.split(".")[0] in forbidden)
    assert not bad, bad


def test_subpackage_inits_import_nothing(graph):
    """A subpackage's ``__init__`` imports nothing (``core`` loads its public names lazily): importing
    one module of a stage never runs the others, and no registry fills as a side effect."""
    inits = [m for m, p in _modules().items() if p.name == "__init__.py" and m.count(".") >= 1
             and m.startswith("core")]
    assert inits
    assert not {m: graph[m] for m in inits if graph[m]}
    assert not graph["core"]


def test_no_source_file_holds_several_jobs():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"source files over {MAX_LINES} lines: {long}"


def test_the_cli_offers_what_the_registries_hold():
    """The CLI's choices come from the registries (never a hand-written copy that can drift)."""
    from diffuse.cli.main import main
    from diffuse.core.process.parameterization import PARAMETERIZATIONS
    from diffuse.core.process.presets import PRESETS
    from diffuse.core.sampling.grids import SPACINGS

    params = {p.name: p for p in main.commands["train"].params}
    assert set(params["training"].type.choices) == set(PRESETS)
    assert set(params["parameterization"].type.choices) == set(PARAMETERIZATIONS)
    sample = {p.name: p for p in main.commands["sample"].params}
    assert tuple(sample["spacing"].type.choices) == tuple(SPACINGS)


def test_every_sampler_record_states_its_facts():
    """One record per sampler: the function, its paper, determinism, evaluations per step, default
    grid; and the record is what the registry returns."""
    from diffuse.core.sampling.grids import SPACINGS
    from diffuse.core.sampling.registry import RECORDS, SAMPLERS, get_sampler, sampler_record

    assert len({r.name for r in RECORDS}) == len(RECORDS) == len(SAMPLERS)
    for r in RECORDS:
        assert callable(r.fn) and r.paper and isinstance(r.deterministic, bool)
        assert r.evals_per_step is None or r.evals_per_step >= 1
        assert r.vp_grid in (*SPACINGS, "few_step_auto")
        assert sampler_record(r.name) is r and get_sampler(r.name) is r.fn
    assert SAMPLERS["ddim"].deterministic and not SAMPLERS["ddpm"].deterministic
    assert SAMPLERS["rk45"].reports_stats and SAMPLERS["rk45"].evals_per_step is None

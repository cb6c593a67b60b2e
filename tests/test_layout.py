"""The house rules of the code base, checked on the source: no import cycle between project modules (imports
inside functions included), the library never imports the UI, and the studio keeps its page text to itself."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("pruner", "studio", "visualizations")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for p in sorted((ROOT / pkg).rglob("*.py")):
            out[module_name(p)] = p
    return out


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that ``name`` imports anywhere in its body (``from x import y`` counts y when y is a
    module of x). Implicit imports of parent packages are not edges (every submodule would otherwise form a
    cycle with its package's ``__init__``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    base = name.split(".") if is_pkg else name.split(".")[:-1]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                mod = ".".join(anchor + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def import_graph() -> dict[str, set[str]]:
    mods = project_modules()
    known = set(mods)
    return {m: imports_of(m, p, known) for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
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
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_checker_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_between_project_modules():
    found = cycles(import_graph())
    assert found == [], "import cycles: " + "; ".join(" ↔ ".join(c) for c in found)


def test_the_library_never_imports_the_ui():
    graph = import_graph()
    bad = {m: sorted(t for t in ts if t.split(".")[0] in ("studio",)) for m, ts in graph.items() if m.startswith("pruner")}
    assert not {m: t for m, t in bad.items() if t}
    for name, path in project_modules().items():
        if name.startswith("pruner"):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
            names |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
            assert not names & {"gradio", "studio", "spaces", "visualizations"}, name


#: The layers of the code base, lowest first (docs/architecture in the README): a module may import from its own
#: layer and the ones below, never from a higher one. ``pruner`` itself (the public API), the CLI and the test
#: helpers sit on top of the library; the visualisations and the studio above it.
LAYERS: list[tuple[str, ...]] = [
    ("pruner.errors", "pruner.data", "pruner.runtime"),
    ("pruner.model",),
    ("pruner.importance",),
    ("pruner.methods",),
    ("pruner.config",),
    ("pruner.pruning",),
    ("pruner.io", "pruner.evaluation"),
    ("pruner.export", "pruner.explore"),
    ("pruner.training",),
    ("pruner.cli", "pruner.testing", "pruner.__main__", "pruner"),
    ("visualizations",),
    ("studio",),
]


def layer_of(module: str) -> int:
    """The layer of a module: the longest prefix listed in :data:`LAYERS` decides."""
    best, rank = -1, None
    for r, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), r
    if rank is None:
        raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")
    return rank


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    return sorted(f"{m} (layer {layer_of(m)}) imports {t} (layer {layer_of(t)})"
                  for m, ts in graph.items() for t in ts if layer_of(t) > layer_of(m))


def test_the_layer_checker_finds_an_upward_import():
    assert upward_imports({"pruner.model.structure": {"pruner.export.hf"}}) == [
        "pruner.model.structure (layer 1) imports pruner.export.hf (layer 7)"]
    assert upward_imports({"pruner.export.hf": {"pruner.model.structure"}}) == []


def test_no_module_imports_from_a_higher_layer():
    found = upward_imports(import_graph())
    assert found == [], "imports that run upward:\n" + "\n".join(found)


def test_the_library_is_in_sub_packages():
    """Only the base modules, the public API and the test helpers sit at the top of ``pruner/``."""
    flat = sorted(p.name for p in (ROOT / "pruner").glob("*.py"))
    assert flat == ["__init__.py", "__main__.py", "config.py", "data.py", "errors.py", "testing.py"]


def name_comparisons(tree: ast.AST, names: set[str]) -> list[int]:
    """Lines that compare with a method's name: ``x == "flap"``, ``x != "custom"``, ``x in ("uniform", ...)``."""
    def is_name(node) -> bool:
        if isinstance(node, ast.Constant) and node.value in names:
            return True
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_name(e) for e in node.elts)

    return sorted(n.lineno for n in ast.walk(tree)
                  if isinstance(n, ast.Compare) and any(map(is_name, [n.left, *n.comparators])))


def test_the_name_checker_finds_a_comparison():
    tree = ast.parse('if cfg.method == "flap" or m in ("uniform", "x"):\n    pass\nif "custom" != y:\n    pass\n')
    assert name_comparisons(tree, {"flap", "uniform", "custom"}) == [1, 1, 3]
    assert name_comparisons(ast.parse('method = "flap"\nd = {"flap": 1}\n'), {"flap"}) == []


def test_no_code_outside_the_methods_switches_on_a_method_name():
    """A method is a class (pruner/methods/): everything else asks it, never compares its name."""
    from pruner.methods import REGISTRY

    found = []
    for name, path in project_modules().items():
        if name.startswith("pruner.methods"):
            continue
        for line in name_comparisons(ast.parse(path.read_text(encoding="utf-8")), set(REGISTRY)):
            found.append(f"{path.relative_to(ROOT)}:{line}")
    assert found == [], "method names compared outside pruner/methods/: " + ", ".join(found)

"""The package's layers point one way (docs/architecture.md): a module may import its own layer or lower.

Every ``import`` of the package is checked, including those inside functions (lazy imports still
make a cycle). Ranks: kernel < io, ops, sim < models < core < cli, plugin. Between layers no cycle
is possible then; inside a layer, modules that import each other are listed (KNOWN_MODULE_CYCLES)
and any new such cycle fails.
"""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import napari_segtool

PACKAGE = Path(napari_segtool.__file__).parent
RANK = {"kernel": 0, "io": 1, "ops": 1, "sim": 1, "models": 2, "core": 3, "cli": 4, "plugin": 4}
#: Layers of equal rank that must not import each other either (siblings stay independent).
SIBLINGS_INDEPENDENT = {"io", "ops", "sim"}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _imports(path: Path) -> list[tuple[int, str]]:
    module = "napari_segtool." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
    package = module.rsplit(".", 1)[0] if path.name != "__init__.py" else module.removesuffix(".__init__")
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("napari_segtool.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("napari_segtool."):
                found.append((node.lineno, target))
    return found


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer("napari_segtool." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own not in RANK:
            continue
        for line, target in _imports(path):
            other = _layer(target)
            if other not in RANK or other == own:
                continue
            if RANK[other] > RANK[own] or (RANK[other] == RANK[own] and own in SIBLINGS_INDEPENDENT):
                bad.append(f"{path.relative_to(PACKAGE)}:{line} ({own}) imports {target} ({other})")
    return bad


def test_every_layer_covers_a_package_folder():
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert folders - {"zoo"} <= set(RANK), f"unranked layers: {folders - set(RANK)}"


def test_imports_point_down_only():
    assert violations() == []


def test_checker_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "napari_segtool"
    (fake / "kernel").mkdir(parents=True)
    (fake / "kernel" / "bad.py").write_text("def f():\n    from napari_segtool.core.predict import predict\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert len(violations()) == 1


#: Cycles between modules of one layer (through imports inside functions): none is allowed.
KNOWN_MODULE_CYCLES: set[frozenset[str]] = set()


def module_cycles() -> set[frozenset[str]]:
    """Strongly connected groups of package modules (``layer.module``) that import each other."""
    paths = {".".join(p.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__"): p
             for p in sorted(PACKAGE.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        targets = set()
        for _, target in _imports(path):
            target = target.removeprefix("napari_segtool.")
            while target and target not in paths:  # ``from a.b import name``: the module a.b
                target = target.rpartition(".")[0]
            targets.add(target)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):  # ``from package import module``
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("napari_segtool"):
                package = node.module.removeprefix("napari_segtool").lstrip(".")
                targets |= {f"{package}.{a.name}".lstrip(".") for a in node.names} & set(paths)
        graph[name] = targets - {name, ""}
    order: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        order[v] = low[v] = len(order)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in order:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], order[w])
        if low[v] == order[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.add(frozenset(group))

    for v in graph:
        if v not in order:
            visit(v)
    return found


def test_no_new_module_import_cycles():
    assert module_cycles() == KNOWN_MODULE_CYCLES


def test_cycle_finder_sees_a_lazy_cycle(tmp_path, monkeypatch):
    fake = tmp_path / "napari_segtool"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "a.py").write_text("from napari_segtool.core import b\n")
    (fake / "core" / "b.py").write_text("def f():\n    from napari_segtool.core.a import x\n")
    (fake / "core" / "c.py").write_text("from napari_segtool.core.a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", fake)
    assert module_cycles() == {frozenset({"core.a", "core.b"})}

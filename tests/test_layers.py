"""The package's layers point one way (docs/architecture.md): a module may import its own layer or lower.

Every ``import`` of the package is checked, including those inside functions (lazy imports still
make a cycle). Ranks: kernel < io, ops, sim < models < core < cli, plugin.
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

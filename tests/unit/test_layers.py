"""The packages stand on each other in one order, and no module imports one above its own.

From the ground up: ``segmentation`` (the pure policy model); ``plugin.errors``,
``plugin.envvars`` and ``plugin.kernel`` (kernel I/O that is not policy); ``plugin.enforce``
(the backend seam, the reconciler, the datapaths, secnet's rules in the host's firewall);
``plugin.dns`` (DNS-name rules at run time); ``plugin.config``; ``plugin.driver``,
``plugin.observe`` and ``plugin.cli``; ``plugin.daemon``. Packages of one floor may use each
other. Every import counts, a function's own (deferred) ones too, read with ``ast``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FLOORS = (
    ("segmentation",),
    ("plugin.errors", "plugin.envvars", "plugin.kernel"),
    ("plugin.enforce",),
    ("plugin.dns",),
    ("plugin.config",),
    ("plugin.driver", "plugin.observe", "plugin.cli"),
    ("plugin.daemon",),
)


def floor_of(module: str):
    """The floor (index) of a dotted module name; None outside the layered packages."""
    for i, packages in enumerate(FLOORS):
        if any(module == p or module.startswith(p + ".") for p in packages):
            return i
    return None


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path) -> set:
    """Dotted names of the modules that ``path`` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[:len(base) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def upward(path: Path) -> list:
    """The imports of ``path`` that reach a floor above its own."""
    own = floor_of(module_name(path))
    return sorted(m for m in imported(path) if (f := floor_of(m)) is not None and f > own)


def modules():
    """Every module of the two packages but ``plugin/__init__.py`` (a package's face, no imports)."""
    return sorted(p for top in ("segmentation", "plugin") for p in (ROOT / top).rglob("*.py")
                  if p != ROOT / "plugin" / "__init__.py")


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_module_imports_a_floor_above_its_own(path):
    assert floor_of(module_name(path)) is not None, f"{path}: on no floor (add its package to FLOORS)"
    assert upward(path) == [], f"{path.relative_to(ROOT)} imports from above its floor"


def test_the_check_sees_an_import_from_above(tmp_path, monkeypatch):
    kernel = tmp_path / "plugin" / "kernel"
    kernel.mkdir(parents=True)
    (kernel / "x.py").write_text("from ..enforce.backend import Port\n"
                                 "def f():\n    from plugin.daemon import wiring\n"
                                 "from . import links\nimport segmentation.rules\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert upward(kernel / "x.py") == ["plugin.daemon", "plugin.daemon.wiring",
                                       "plugin.enforce.backend", "plugin.enforce.backend.Port"]

"""The policy model stays pure: no Flask, pyroute2, docker, sockets or nft.

Walks every module of ``segmentation/`` except ``segmentation/backends/``
with ``ast`` and fails on an import of a forbidden module, on a dynamic
import of one (``importlib.import_module("socket")``, ``__import__``), and on
an import of the backends from the pure side.
"""

import ast
from pathlib import Path

import pytest

FORBIDDEN = {"flask", "pyroute2", "docker", "subprocess", "socket", "nftables"}
PACKAGE = Path(__file__).resolve().parents[2] / "segmentation"


def impure_imports(source: str) -> list[str]:
    """The forbidden modules that ``source`` imports."""
    found = []
    for node in ast.walk(ast.parse(source)):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            names = [module] if node.level == 0 else []
            if "backends" in module.split(".") or (
                    node.level and any(a.name == "backends" for a in node.names)):
                found.append("segmentation.backends")
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func):
            names = [a.value for a in node.args[:1]
                     if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        found += [n for n in names if n.split(".")[0] in FORBIDDEN]
    return found


def _is_dynamic_import(func) -> bool:
    return (isinstance(func, ast.Name) and func.id == "__import__") or (
        isinstance(func, ast.Attribute) and func.attr == "import_module")


def pure_modules():
    return sorted(p for p in PACKAGE.rglob("*.py") if "backends" not in p.relative_to(PACKAGE).parts)


def test_the_package_has_modules():
    names = {p.name for p in pure_modules()}
    assert {"rules.py", "options.py", "compiler.py", "model.py", "names.py"} <= names


@pytest.mark.parametrize("path", pure_modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_is_pure(path):
    assert impure_imports(path.read_text()) == [], f"{path} imports impure code"


@pytest.mark.parametrize("source", [
    "import socket", "import flask.json", "from pyroute2 import IPRoute", "import docker as d",
    "import os, subprocess", "from nftables import Nftables", "def f():\n    import socket",
    "import importlib\nimportlib.import_module('subprocess')", "__import__('socket')",
    "from .backends import nftables", "from .backends.nftables import apply",
    "from segmentation.backends import x",
])
def test_checker_catches_impure_code(source):
    assert impure_imports(source)


@pytest.mark.parametrize("source", ["import ipaddress", "from dataclasses import dataclass",
                                    "from .rules import Rule", "import socketserver_like_name"])
def test_checker_allows_pure_code(source):
    assert impure_imports(source) == []

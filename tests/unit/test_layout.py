"""The package's layers, as the README's layout describes them: nothing imports upward.

The foundation (settings, .env, errors, paths, console, files, Redis client, TLS, backends)
imports only itself; `stack` and `models` import the foundation and never each other; `backup`
and `cluster` build on `stack`; `demo` and tasks.py sit on top. Read from the source with `ast`,
so a violation fails here rather than as an import cycle at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from kcdev.paths import ROOT

PACKAGE = ROOT / "kcdev"
# Which layers each layer may import, besides itself.
ALLOWED = {
    "foundation": set(),
    "stack": {"foundation"},
    "models": {"foundation"},
    "backup": {"foundation", "stack"},
    "cluster": {"foundation", "stack"},
    "demo": {"foundation", "stack", "models", "backup", "cluster"},
}


def layer(module: str) -> str:
    """`kcdev.stack.images` -> stack; `kcdev.settings` -> foundation."""
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in ("stack", "models", "backup", "cluster", "demo"):
        return parts[1]
    return "foundation"


def module_name(path: Path) -> str:
    relative = path.relative_to(ROOT).with_suffix("")
    return ".".join(relative.parts).removesuffix(".__init__")


def kcdev_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kcdev"):
            if node.module == "kcdev":
                found |= {f"kcdev.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("kcdev")}
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_no_module_imports_a_layer_above_or_beside_its_own(path: Path) -> None:
    own = layer(module_name(path))
    wrong = {
        imported
        for imported in kcdev_imports(path)
        if layer(imported) != own and layer(imported) not in ALLOWED[own]
    }
    assert not wrong, f"{module_name(path)} ({own}) imports {sorted(wrong)}"


def test_every_module_is_in_a_known_layer() -> None:
    assert SOURCES
    assert {layer(module_name(p)) for p in SOURCES} == set(ALLOWED)

"""constraints.txt, the lock: every requirement of pyproject.toml pinned to a version it allows,
as plain pins that install anywhere (no path or index of the machine that made it)."""

from __future__ import annotations

import re
import tomllib

import pytest
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

from kcdev.paths import ROOT

LOCK = ROOT / "constraints.txt"
PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[A-Za-z0-9.+!_-]+)")


def pins() -> dict[NormalizedName, str]:
    found: dict[NormalizedName, str] = {}
    for line in LOCK.read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.fullmatch(line.strip())
        assert match, f"constraints.txt: not a plain pin: {line!r}"
        found[canonicalize_name(match["name"])] = match["version"]
    return found


def requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        declared += extra
    return [r for r in map(Requirement, declared) if canonicalize_name(r.name) != "kc-devenv"]


def test_the_lock_holds_plain_pins_only() -> None:
    """Every line a pin or a comment, and no path of the machine that made it, even in comments
    (pip's own configuration there names local mirrors and a machine-wide constraints file)."""
    assert pins()  # every other line is checked to be a plain pin
    text = LOCK.read_text()
    assert "file://" not in text
    assert not re.search(r"(?m)(^|\s)(/|~/|\w:\\)\S", text), "an absolute path: `nox -s lock`"


@pytest.mark.parametrize("requirement", requirements(), ids=str)
def test_every_requirement_is_pinned_to_a_version_it_allows(requirement: Requirement) -> None:
    locked = pins().get(canonicalize_name(requirement.name))
    assert locked is not None, f"{requirement.name} is not in constraints.txt: `nox -s lock`"
    assert requirement.specifier.contains(locked, prereleases=True), (
        f"constraints.txt pins {requirement.name}=={locked}, outside {requirement}: `nox -s lock`"
    )


def test_setup_and_every_nox_session_install_with_the_lock() -> None:
    setup = (ROOT / "scripts" / "setup.sh").read_text().replace("\\\n", " ")
    assert re.search(r"pip install .*--constraint constraints\.txt", setup)
    noxfile = (ROOT / "noxfile.py").read_text()
    assert 'LOCK = "constraints.txt"' in noxfile
    # One helper installs with the lock; only the lock session itself installs without it.
    calls = re.findall(r"session\.install\(([^)]*)\)", noxfile)
    assert calls == ['"--constraint", LOCK, *args', '*EXTRAS["lock"]']

"""requirements-dev.txt decides what this repository develops and tests with.

`pyproject.toml` keeps ranges for the runtime's users; the lock pins one version of every
package, with hashes. These tests fail when the two disagree (a dependency added to one and not
the other, or a pin outside its range) and when the virtualenv running them holds anything but
what the lock says (`make venv` installs from it)."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements-dev.txt"
PIN = re.compile(
    r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[^\s;\\]+)(?: ; (?P<marker>.+?))? \\$"
)
# Installed by venv itself, or the project under test; not resolved by the lock.
NOT_LOCKED = {"pip", "setuptools", "wheel", "choreo", "choreo-shop-contracts", "choreo-shop"}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    direct: bool  # uv wrote "via choreo (pyproject.toml)": pyproject asks for it by name

    def applies(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(text: str) -> list[Pin]:
    pins: list[Pin] = []
    current: dict[str, object] | None = None
    for line in text.splitlines():
        match = PIN.match(line)
        if match:
            if current is not None:
                pins.append(Pin(**current))  # type: ignore[arg-type]
            marker = match["marker"]
            current = {
                "name": canonicalize_name(match["name"]),
                "version": match["version"],
                "marker": Marker(marker) if marker else None,
                "direct": False,
            }
        elif current is not None and "choreo (pyproject.toml)" in line:
            current["direct"] = True
    if current is not None:
        pins.append(Pin(**current))  # type: ignore[arg-type]
    return pins


def project_requirements() -> list[Requirement]:
    """The runtime's dependencies and the dev extra's, with the extras that dev takes of the
    project itself (``choreo[bench]``) expanded."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras: dict[str, list[str]] = project["optional-dependencies"]
    wanted, requirements = ["dev"], [Requirement(text) for text in project["dependencies"]]
    while wanted:
        for text in extras[wanted.pop()]:
            requirement = Requirement(text)
            if canonicalize_name(requirement.name) == project["name"]:
                wanted.extend(requirement.extras)
            else:
                requirements.append(requirement)
    return requirements


def applicable_pins() -> dict[str, Pin]:
    return {pin.name: pin for pin in read_lock(LOCK.read_text()) if pin.applies()}


def test_the_lock_reader_reads_markers_and_direct_requirements() -> None:
    text = (
        "uvloop==0.23.0 ; sys_platform == 'nonesuch' \\\n"
        "    --hash=sha256:00\n"
        "    # via choreo (pyproject.toml)\n"
        "Yarl==1.2 \\\n"
        "    --hash=sha256:01\n"
        "    # via\n"
        "    #   aiohttp\n"
        "    #   choreo (pyproject.toml)\n"
        "frozenlist==1.0 \\\n"
        "    # via aiohttp\n"
    )
    pins = read_lock(text)
    assert [(p.name, p.version, p.direct, p.applies()) for p in pins] == [
        ("uvloop", "0.23.0", True, False),
        ("yarl", "1.2", True, True),
        ("frozenlist", "1.0", False, True),
    ]


def test_every_requirement_of_pyproject_is_pinned_within_its_range() -> None:
    pins = applicable_pins()
    wrong: list[str] = []
    for requirement in project_requirements():
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            wrong.append(f"{requirement} is not in the lock")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            wrong.append(f"{requirement} but the lock pins {pin.version}")
    assert not wrong, "run `make lock`: " + "; ".join(wrong)


def test_every_direct_pin_of_the_lock_is_asked_for_by_pyproject() -> None:
    asked = {canonicalize_name(r.name) for r in project_requirements()}
    stale = [
        pin.name for pin in read_lock(LOCK.read_text()) if pin.direct and pin.name not in asked
    ]
    assert not stale, f"the lock pins {stale} for pyproject.toml, which no longer asks: `make lock`"


def test_the_installed_packages_are_the_locked_versions() -> None:
    pins = applicable_pins()
    installed: dict[str, str] = {
        canonicalize_name(dist.metadata["Name"]): dist.version for dist in metadata.distributions()
    }
    differing = [
        f"{name} {installed.get(name, 'missing')} (lock: {pin.version})"
        for name, pin in sorted(pins.items())
        if installed.get(name) != pin.version
    ]
    unlocked = sorted(set(installed) - set(pins) - NOT_LOCKED)
    assert not differing, f"installed versions differ from {LOCK.name}: {differing}"
    assert not unlocked, f"installed but not in {LOCK.name}: {unlocked}"

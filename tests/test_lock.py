"""The lock (constraints.txt) and pyproject.toml agree, and this environment was installed from it.

An unbounded requirement let a fresh clone resolve a newer transformers one day and fail the suite with
no change in the repository: every direct requirement is bounded above, and the lock pins each within
its bounds.
"""
from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
# GPU hosts only, never installed beside the CPU torch (see pyproject): not part of the lock
UNLOCKED_EXTRAS = {"lmdeploy"}


def lock() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not name==version"
        assert canonicalize_name(name) not in pins, f"constraints.txt pins {name} twice"
        pins[canonicalize_name(name)] = Version(version)
    return pins


def direct_requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    found = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra, reqs in project["optional-dependencies"].items():
        if extra in UNLOCKED_EXTRAS:
            continue
        found += [(f"[{extra}]", Requirement(r)) for r in reqs if not r.startswith(project["name"])]
    return found


@pytest.mark.parametrize(("where", "req"), direct_requirements(), ids=lambda v: str(v))
def test_each_direct_requirement_is_bounded_and_locked_within_its_bounds(where: str, req: Requirement) -> None:
    uppers = [s for s in req.specifier if s.operator in ("<", "<=", "==", "~=", "===")]
    assert uppers, f"pyproject {where}: {req} has no upper bound (bound it below its next major)"
    pins = lock()
    name = canonicalize_name(req.name)
    assert name in pins, f"{req.name} is not in constraints.txt: run `bash .ci/lock`"
    assert req.specifier.contains(pins[name], prereleases=True), (
        f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}: run `bash .ci/lock`")


def test_torch_is_the_exact_cpu_pin_and_torchvision_is_absent() -> None:
    pins = lock()
    assert pins["torch"] == Version("2.13.0")
    assert "torchvision" not in pins


def test_this_environment_was_installed_from_the_lock() -> None:
    """What the README commands install is what the lock says (a stale venv or a bypassed lock fails here)."""
    wrong = {}
    for name, pinned in lock().items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue  # the lock covers '.[test]'; an environment may hold less, never other versions
        if Version(installed.public) != pinned:
            wrong[name] = f"{installed} installed, {pinned} locked"
    assert not wrong, wrong

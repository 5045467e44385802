"""Packaging promises (issue 13): pyproject asks for a torch range so an existing (CUDA) torch is kept, while
the README's quick start, scripts/test.sh and so CI install through constraints.txt, which pins the exact
CPU build our machines carry."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import torch

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _requirement(names: list[str], name: str) -> str:
    """The one requirement string in ``names`` for distribution ``name``."""
    found = [r for r in names if re.match(rf"{name}\s*([<>=!~;\[]|$)", r)]
    assert len(found) == 1, f"{name}: {found}"
    return found[0]


def _version(spec: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", spec)[:2])


def test_torch_is_a_range_with_no_upper_bound() -> None:
    # An == pin or an upper bound would make pip replace a user's own newer (CUDA) torch.
    spec = _requirement(PYPROJECT["project"]["dependencies"], "torch")
    assert re.fullmatch(r"torch>=\d+\.\d+(\.\d+)?", spec), spec


def test_constraints_pin_a_torch_inside_the_range() -> None:
    lines = [ln.strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = [ln for ln in lines if ln and not ln.startswith("#")]
    assert pins == ["torch==2.13.0"]
    floor = _version(_requirement(PYPROJECT["project"]["dependencies"], "torch"))
    assert _version(pins[0]) >= floor


def test_installed_torch_is_inside_the_range() -> None:
    # The suite runs on whatever torch was installed; one below the floor means the floor is not enforced.
    floor = _version(_requirement(PYPROJECT["project"]["dependencies"], "torch"))
    assert _version(torch.__version__) >= floor


def test_quick_start_and_test_script_install_with_the_constraints() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    installs = [ln for ln in quick.splitlines() if "pip install" in ln]
    assert installs and all("-c constraints.txt" in ln for ln in installs), installs
    script = (ROOT / "scripts" / "test.sh").read_text()
    installs = [ln for ln in script.splitlines() if "pip install" in ln and not ln.lstrip().startswith("#")]
    assert installs == [".venv/bin/pip install -q -c constraints.txt -e '.[test]'"]


def test_ci_runs_exactly_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    assert "\nbash scripts/test.sh\n" in quick
    ci = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    assert ci[-1] == "bash scripts/test.sh"


def test_ray_is_in_the_test_extra() -> None:
    # The executor tests (tests/test_executor_ray.py) belong to the default run, not to a skip.
    _requirement(PYPROJECT["project"]["optional-dependencies"]["test"], "ray")

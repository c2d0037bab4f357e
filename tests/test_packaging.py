""".ci/floors.py: the constraints file of CI's floor run is pyproject.toml's floors.

CI runs the suite a second time with every direct dependency pinned at the
floor of its declared range (`pip install -c <floors.py output> -e '.[test]'`).
These tests run the real script on the real pyproject.toml, and on edited
copies of it, so a floor changed in one place and not the other, a dependency
left out of the constraints, or a range without a floor fails here.
"""
import os
import subprocess
import sys

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYPROJECT = os.path.join(REPO, "pyproject.toml")
FLOORS = os.path.join(REPO, ".ci", "floors.py")


def run_floors(pyproject=PYPROJECT):
    return subprocess.run([sys.executable, FLOORS, str(pyproject)], capture_output=True,
                          text=True, timeout=60)


def parse_constraints(text):
    """``{name: version}`` of a constraints file; every line must be ``name==version``."""
    pins = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, sep, version = line.partition("==")
        assert sep and name and version and " " not in line, f"not a pin: {line!r}"
        assert canonicalize_name(name) not in pins, f"pinned twice: {name}"
        pins[canonicalize_name(name)] = version
    return pins


def declared(pyproject_path=PYPROJECT):
    """Every requirement of the pyproject: dependencies and all extras."""
    with open(pyproject_path, "rb") as f:
        project = tomllib.load(f)["project"]
    texts = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        texts += extra
    return [Requirement(t) for t in texts]


def edited_pyproject(tmp_path, old, new):
    with open(PYPROJECT, encoding="utf-8") as f:
        text = f.read()
    assert old in text, f"{old!r} is not in pyproject.toml any more: update this test"
    path = tmp_path / "pyproject.toml"
    path.write_text(text.replace(old, new), encoding="utf-8")
    return path


def test_constraints_pin_every_declared_dependency_at_its_floor():
    result = run_floors()
    assert result.returncode == 0, result.stderr
    pins = parse_constraints(result.stdout)
    requirements = declared()
    assert set(pins) == {canonicalize_name(r.name) for r in requirements}
    for requirement in requirements:
        pin = pins[canonicalize_name(requirement.name)]
        # the pin is inside the declared range, and is its lowest bound
        assert requirement.specifier.contains(pin, prereleases=True), (requirement, pin)
        floors = [s.version for s in requirement.specifier if s.operator in (">=", "~=", "==")]
        assert floors == [pin], (requirement, pin)


def test_runtime_dependencies_and_extras_are_all_constrained():
    # the floor run installs '.[test]': what sbio itself requires and the
    # extras a user installs must be pinned too, not only the test tools
    pins = parse_constraints(run_floors().stdout)
    for name in ("python-socketio", "python-engineio", "gevent", "gevent-websocket", "flask",
                 "configobj", "sqlalchemy", "redis", "psycopg"):
        assert name in pins, name


def test_a_changed_floor_changes_the_constraints(tmp_path):
    floor = parse_constraints(run_floors().stdout)["configobj"]
    path = edited_pyproject(tmp_path, f'"configobj>={floor}', '"configobj>=99.1')
    result = run_floors(path)
    assert result.returncode == 0, result.stderr
    assert parse_constraints(result.stdout)["configobj"] == "99.1"


def test_a_dependency_without_a_floor_is_refused(tmp_path):
    floor = parse_constraints(run_floors().stdout)["configobj"]
    path = edited_pyproject(tmp_path, f'"configobj>={floor}', '"configobj!=5.0.7')
    result = run_floors(path)
    assert result.returncode == 2
    assert "configobj" in result.stderr and "floor" in result.stderr
    assert result.stdout == ""


def test_one_package_with_two_floors_is_refused(tmp_path):
    # redis is declared by the `redis` extra and again by `test`: they must agree
    floor = parse_constraints(run_floors().stdout)["redis"]
    path = edited_pyproject(tmp_path, f'redis = ["redis>={floor}', 'redis = ["redis>=1.0')
    result = run_floors(path)
    assert result.returncode == 2
    assert "redis has two floors" in result.stderr
    # and one requirement with two lower bounds is ambiguous
    path = edited_pyproject(tmp_path, f'redis = ["redis>={floor}',
                            f'redis = ["redis>=1.0,>={floor}')
    assert run_floors(path).returncode == 2

"""The package layout: the top-level folders install as ``gistgym.*`` without symlinks, editable or as a wheel."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import gistgym

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]


def test_every_file_has_one_path() -> None:
    assert not [p for p in (ROOT / "gistgym").rglob("*") if p.is_symlink()]
    for package, folder in PACKAGE_DIR.items():
        assert (ROOT / folder / "__init__.py").is_file(), package
    # the editable install maps the folders: gistgym.agents is agents/
    import gistgym.agents
    import gistgym.envs

    assert Path(gistgym.agents.__file__).resolve() == ROOT / "agents" / "__init__.py"
    assert Path(gistgym.envs.__file__).resolve() == ROOT / "envs" / "__init__.py"
    assert Path(gistgym.__file__).resolve() == ROOT / "gistgym" / "__init__.py"


def test_the_wheel_holds_gistgym_only_and_imports_from_another_folder(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", str(ROOT), "-w", str(wheels)],
        check=True, cwd=tmp_path, capture_output=True, timeout=600,
    )  # fmt: skip
    (wheel,) = wheels.glob("gistgym-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        z.extractall(tmp_path / "site")
    assert {n.split("/")[0] for n in names} == {"gistgym", f"gistgym-{gistgym.__version__}.dist-info"}
    for package, folder in PACKAGE_DIR.items():
        expected = {f"{package.replace('.', '/')}/{p.name}" for p in (ROOT / folder).glob("*.py")}
        assert expected <= set(names), package
    assert "gistgym/weights/interleaved_detector.pt" in names and "gistgym/py.typed" in names
    # the unpacked wheel first on the path, from another folder: it, not the checkout, is imported
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import gistgym.envs, gistgym.agents, gistgym.scripts.cli; "
        "import gymnasium as gym; assert 'gistgym/Keyframe-v0' in gym.registry; "
        "print(gistgym.agents.__file__)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "site")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300, check=True)  # fmt: skip
    assert Path(out.stdout.strip()).resolve() == (tmp_path / "site" / "gistgym" / "agents" / "__init__.py").resolve()

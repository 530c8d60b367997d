"""Packaging: the single version, py.typed, the import-time check that slsam._C
was built against the running torch, and (in a git checkout) the sdist's files.

The import checks run in subprocesses: ``import slsam`` happens once per process.
They import the same slsam as this process (its parent folder first on the path),
so they test an installed package as well as a checkout."""

from __future__ import annotations

import importlib.metadata
import importlib.resources
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

import slsam
from slsam import _torch_check, _version

ROOT = Path(__file__).resolve().parents[1]


def run_import(tmp_path: Path, prelude: str) -> subprocess.CompletedProcess[str]:
    """``prelude`` then ``import slsam`` in a fresh interpreter, away from any source tree."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(slsam.__file__).resolve().parents[1]), env.get("PYTHONPATH", "")])
    code = prelude + "\nimport slsam\nprint('imported', slsam.__version__)\n"
    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_version_single_source():
    assert slsam.__version__ == _version.__version__
    assert importlib.metadata.version("slsam") == slsam.__version__


def test_py_typed_shipped():
    assert (importlib.resources.files("slsam") / "py.typed").is_file()


def test_build_info_is_the_running_torch():
    from slsam import _build_info

    assert _build_info.TORCH_VERSION == torch.__version__


def test_mismatch_message():
    assert _torch_check.mismatch_message("2.13.0+cpu", "2.13.0+cpu") is None
    msg = _torch_check.mismatch_message("2.13.0+cpu", "2.14.1+cu128")
    assert msg is not None
    assert "built against torch 2.13.0+cpu" in msg and "torch 2.14.1+cu128 is installed" in msg
    for flag in ("--no-build-isolation", "--force-reinstall", "--no-deps", "--no-cache-dir"):
        assert flag in msg


def test_import_ok_in_subprocess(tmp_path):
    out = run_import(tmp_path, "")
    assert out.returncode == 0, out.stderr
    assert f"imported {slsam.__version__}" in out.stdout


def test_import_refuses_other_running_torch(tmp_path):
    out = run_import(tmp_path, "import torch\ntorch.__version__ = '9.9.9+other'")
    assert out.returncode != 0
    assert "ImportError" in out.stderr
    assert f"built against torch {torch.__version__}" in out.stderr
    assert "torch 9.9.9+other is installed" in out.stderr
    assert "--force-reinstall" in out.stderr


def test_import_refuses_other_recorded_torch(tmp_path):
    prelude = ("import sys, types\n"
               "m = types.ModuleType('slsam._build_info')\n"
               "m.TORCH_VERSION = '2.0.0+old'\n"
               "sys.modules['slsam._build_info'] = m")
    out = run_import(tmp_path, prelude)
    assert out.returncode != 0
    assert "built against torch 2.0.0+old" in out.stderr
    assert f"torch {torch.__version__} is installed" in out.stderr


def test_import_without_build_info(tmp_path):
    out = run_import(tmp_path, "import sys\nsys.modules['slsam._build_info'] = None")
    assert out.returncode != 0
    assert "ImportError: slsam's C++ extension is not built" in out.stderr
    assert "--no-build-isolation" in out.stderr


def _git_files() -> list[str] | None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, text=True)
    return [f for f in out.stdout.split("\0") if f and (ROOT / f).is_file()] if out.returncode == 0 else None


def test_sdist_files(tmp_path):
    """The sdist holds exactly what a build needs, even when built from a
    checkout full of build outputs (.venv, build/, slsam/_C*.so, _build_info.py)."""
    files = _git_files()
    if files is None:
        pytest.skip("needs a git checkout")
    top = {"README.md", "LICENSE", "CITATION.cff", "CMakeLists.txt", "MANIFEST.in",
           "pyproject.toml", "setup.py"}
    want = {f for f in files
            if f in top or f.startswith(("csrc/", "tests/cpp/"))
            or (f.startswith("slsam/") and (f.endswith(".py") or f == "slsam/py.typed"))}
    out = subprocess.run(
        [sys.executable, "-c",
         "import sys; from setuptools import build_meta; print(build_meta.build_sdist(sys.argv[1]))",
         str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-4000:]
    name = out.stdout.strip().splitlines()[-1]
    assert name == f"slsam-{slsam.__version__}.tar.gz"
    with tarfile.open(tmp_path / name) as tar:
        members = [m.name.split("/", 1)[1] for m in tar.getmembers() if m.isfile()]
    generated = {"PKG-INFO", "setup.cfg"}
    got = {m for m in members if m not in generated and not m.startswith("slsam.egg-info/")}
    assert got == want, (f"missing: {sorted(want - got)}; unexpected: {sorted(got - want)}")
    assert {"csrc/checks.h", "csrc/cpu/span_loops.inc", "csrc/cuda/launch.cuh",
            "csrc/include/slsam/bandit.h"} <= got


def test_setup_without_torch_says_what_to_do():
    if not (ROOT / "setup.py").is_file():
        pytest.skip("needs a checkout")
    code = ("import sys\nsys.modules['torch'] = None\nsys.argv = ['setup.py', '--name']\n"
            "exec(compile(open('setup.py').read(), 'setup.py', 'exec'))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode != 0
    assert "install torch first" in out.stderr and "--no-build-isolation" in out.stderr

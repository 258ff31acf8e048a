"""A pip user's first commands, from the built wheel in a fresh virtual environment, in a
directory outside the repository: --version, the built-in configs, and a short training run.

The wheel is built without build isolation (hatchling from the `dev` extra: no network) and
installed with --no-deps into a venv that sees this environment's packages (torch, numpy, ...)
through a .pth file, so nothing large is reinstalled; that .pth adds the site-packages folders
as plain paths, so the editable checkout's own .pth is not read and `import extmem` can only
find the wheel's copy."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

import extmem
from extmem.builtin_configs import builtin_configs

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, the package tomllib was taken from
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: int = 120) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin folder, the built wheel)."""
    pytest.importorskip("hatchling", reason="the dev extra installs hatchling to build the wheel")
    tmp = tmp_path_factory.mktemp("wheel")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-q", "-w", str(tmp / "dist"), str(ROOT)], tmp, env)
    (wheel,) = (tmp / "dist").glob("extmem-*.whl")
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp, env)
    bin_dir = venv / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / ("python.exe" if os.name == "nt" else "python")
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp, env).strip())
    # this environment's package folders (user and Debian dist-packages ones too), not the
    # folders its .pth files add (the editable checkout's src/)
    parent = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                            *(p for p in sys.path if p.endswith(("site-packages", "dist-packages"))
                              and Path(p).is_dir())])
    (site / "_parent_environment.pth").write_text("\n".join(parent) + "\n")
    # this environment's pip, run by the venv's python: installs into the venv (and its
    # console script runs the venv's python); --ignore-installed: never touch the editable one
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
          "--disable-pip-version-check", "-q", str(wheel)], tmp, env)
    return bin_dir, wheel


def test_wheel_ships_the_configs(wheel_env):
    _, wheel = wheel_env
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = {f"extmem/configs/{name}.toml" for name in builtin_configs()}
    assert shipped and shipped <= names
    assert "extmem/configs/pkm/README.md" in names
    assert f"-{extmem.__version__}-" in wheel.name


def test_a_wheel_built_from_the_sdist_ships_the_configs(wheel_env, tmp_path):
    """pip builds from the sdist where no wheel fits: configs/ (a link in the repository)
    must not take the package's copy out of it (pyproject's sdist settings)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    _run([sys.executable, "-m", "hatchling", "build", "-t", "sdist", "-d", str(tmp_path)],
         ROOT, env)
    (sdist,) = tmp_path.glob("extmem-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = set(archive.getnames())
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # 3.10.12+, 3.11.4+
        archive.extractall(tmp_path / "src", **safe)
    top = sdist.name.removesuffix(".tar.gz")
    for name in builtin_configs():
        assert f"{top}/src/extmem/configs/{name}.toml" in names, name
        assert f"{top}/configs/{name}.toml" in names, name  # the sdist's tests read these
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-q", "-w", str(tmp_path / "dist"),
          str(tmp_path / "src" / top)], tmp_path, env)
    (wheel,) = (tmp_path / "dist").glob("extmem-*.whl")
    assert set(zipfile.ZipFile(wheel).namelist()) == set(zipfile.ZipFile(wheel_env[1]).namelist())


def test_first_commands_from_the_wheel(wheel_env, tmp_path):
    bin_dir, _ = wheel_env
    exe = str(bin_dir / "extmem")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    env["OMP_NUM_THREADS"] = "1"
    work = tmp_path / "elsewhere"  # not the repository: no configs/ here
    work.mkdir()

    # the wheel's extmem, not src/; the quickstart sweep (bases by name) resolves from it
    imported = _run([str(bin_dir / "python"), "-c", "import extmem; print(extmem.__file__); "
                     "from extmem.experiments import load_sweep; "
                     "assert len(load_sweep('quickstart').runs) == 4"], work, env).strip()
    assert Path(imported).is_relative_to(bin_dir.parent), imported
    assert _run([exe, "--version"], work, env).strip() == f"extmem {extmem.__version__}"

    listing = _run([exe, "configs"], work, env)
    assert "quickstart" in listing and "sweeps/quickstart" in listing
    shown = _run([exe, "configs", "show", "quickstart"], work, env)
    assert shown == (ROOT / "src" / "extmem" / "configs" / "quickstart.toml").read_text()
    assert tomllib.loads(shown)["model"]

    _run([exe, "train", "quickstart", "--set", "train.steps=2", "--set", "train.eval_every=0",
          "--quiet"], work, env, timeout=300)
    assert (work / "runs" / "quickstart" / "config.toml").is_file()

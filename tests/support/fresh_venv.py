"""A virtualenv with only this package (built as a wheel) and its dependencies, as a new user has.

Built once per set of dependencies under ``.test-cache/`` (git-ignored): the venv is keyed by a
hash of ``pyproject.toml`` and the Python version, and the project's wheel is rebuilt and
reinstalled into it once per test run (once for all pytest-xdist workers: they take a lock and
the first records the run's id), so it always runs the code under test. Dependencies
come from the package registry through pip (its cache keeps this fast); nothing is taken from the
development venv. Also: third-party files fetched at test time (sdists), cached beside it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.support import ROOT
from tests.support.filelock import locked

CACHE = ROOT / ".test-cache"
PIP_TIMEOUT_S = 900


@dataclass(frozen=True)
class FreshVenv:
    path: Path

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    def version_of(self, distribution: str) -> str:
        out = self.run_python(f"import importlib.metadata as m; print(m.version({distribution!r}))")
        return out.strip()

    def installed(self) -> set[str]:
        out = self.run_python(
            "import importlib.metadata as m; print('\\n'.join(d.metadata['Name'] for d in m.distributions()))"
        )
        return {re.sub(r"[-_.]+", "-", name).lower() for name in out.split()}

    def run_python(self, code: str) -> str:
        done = subprocess.run(
            [str(self.python), "-c", code], capture_output=True, text=True, check=True, env=clean_env(self)
        )
        return done.stdout

    def pip(self, *args: str) -> None:
        done = subprocess.run(
            [str(self.python), "-m", "pip", "--disable-pip-version-check", *args],
            capture_output=True,
            text=True,
            timeout=PIP_TIMEOUT_S,
            env=clean_env(self),
            check=False,
        )
        assert done.returncode == 0, (
            f"pip {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def clean_env(venv: FreshVenv | None = None, **extra: str) -> dict[str, str]:
    """An environment with no trace of the development venv, no ``OTEL_*`` and no analytics settings."""
    keep = ("HOME", "LANG", "LC_ALL", "TMPDIR", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
    env = {
        name: value
        for name, value in os.environ.items()
        if name in keep
        or name.startswith("PIP_")
        or name.lower() in ("http_proxy", "https_proxy", "no_proxy")
    }
    path = "/usr/local/bin:/usr/bin:/bin"
    env["PATH"] = f"{venv.bin}:{path}" if venv is not None else path
    env.update(extra)
    return env


def _venv_key() -> str:
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()[:12]


def build_wheel(out: Path) -> Path:
    """The project's wheel, built from the work tree (setuptools of the running interpreter)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=PIP_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, f"building the wheel failed:\n{done.stderr[-3000:]}"
    (wheel,) = out.glob("studyin_analytics-*.whl")
    return wheel


def _run_id() -> str:
    """The id of this test run, the same in every pytest-xdist worker; the process id without xdist."""
    return os.environ.get("PYTEST_XDIST_TESTRUNUID") or f"pid-{os.getpid()}"


def fresh_venv() -> FreshVenv:
    """The cached fresh venv, with the current work tree's wheel installed (once per test run)."""
    venv = FreshVenv(CACHE / f"venv-{_venv_key()}")
    with locked(CACHE / "fresh-venv.lock"):
        installed_by = venv.path / ".studyin-run"
        if installed_by.exists() and installed_by.read_text() == _run_id():
            return venv
        _install_work_tree(venv)
        installed_by.write_text(_run_id())
    return venv


def _install_work_tree(venv: FreshVenv) -> None:
    wheel = build_wheel(CACHE / "wheel")
    ready = venv.path / ".studyin-ready"
    if not ready.exists():
        shutil.rmtree(venv.path, ignore_errors=True)
        base = getattr(sys, "_base_executable", sys.executable)
        subprocess.run([base, "-m", "venv", str(venv.path)], check=True, env=clean_env())
        venv.pip("install", "-q", str(wheel))
        ready.touch()
    else:
        venv.pip("install", "-q", "--no-deps", "--force-reinstall", str(wheel))


def fetch_sdist(venv: FreshVenv, distribution: str, version: str) -> Path:
    """The source distribution of ``distribution==version`` from the package registry (cached)."""
    folder = CACHE / "sdists"
    with locked(CACHE / "sdists.lock"):
        return _fetch_sdist(venv, folder, distribution, version)


def _fetch_sdist(venv: FreshVenv, folder: Path, distribution: str, version: str) -> Path:
    found = sorted(folder.glob(f"{distribution}-{version}.tar.gz"))
    if found:
        return found[0]
    venv.pip(
        "download", "-q", "--no-binary", ":all:", "--no-deps", f"{distribution}=={version}", "-d", str(folder)
    )
    (sdist,) = folder.glob(f"{distribution}-{version}.tar.gz")
    return sdist


def extract(sdist: Path, member_prefix: str, into: Path) -> Path:
    """Extract the files under ``member_prefix`` (a folder of the sdist) as they are; return that folder."""
    with tarfile.open(sdist) as archive:
        members = [m for m in archive.getmembers() if m.name.startswith(member_prefix) and m.isfile()]
        assert members, f"{member_prefix} not in {sdist.name}"
        archive.extractall(into, members=members, filter="data")
    return into / member_prefix


def stop(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> tuple[str, str]:
    """SIGTERM to the process group of a shell command started with ``start_new_session=True``
    (uvicorn shuts down gracefully and the spans are flushed), then its output."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        out, err = process.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
    return out.decode(errors="replace"), err.decode(errors="replace")

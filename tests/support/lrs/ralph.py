"""A real Learning Record Store for the tests: Ralph (PyPI ``ralph-malph[lrs]``), run from a virtualenv of
its own and started as a subprocess.

Ralph pins FastAPI 0.114 (the project needs a newer one), so it cannot live in the project's venv. The
venv is created once and cached outside the repository: ``$STUDYIN_TEST_RALPH_VENV`` or
``$XDG_CACHE_HOME/studyin-analytics/ralph-<version>-py<X.Y>`` (default ``~/.cache``). A lock file
serialises concurrent test runs; a stamp written last marks a complete venv, so an interrupted build is
rebuilt. Measured here: cold ~90 s (pip resolving and installing ~60 packages), cached ~0 s.

:class:`RalphServer` runs Ralph's FastAPI app with the file-system backend on a port of its own with
basic auth (``ralph_launcher.py``: it also sets the backend's write mode to append, without which every
POST after the first answers 500 in 5.1.0). :func:`validate_statements` runs Ralph's own xAPI models over
statements (``ralph_validate.py``). Anything that cannot be set up raises :class:`RalphUnavailable` with
the reason; the fixtures turn it into a test failure, never a skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

RALPH_VERSION = "5.1.0"
REQUIREMENTS = (
    f"ralph-malph[lrs]=={RALPH_VERSION}",
    # Ralph 5.1.0's API imports requests (its OIDC module) but its [lrs] extra does not list it.
    "requests>=2.31,<3",
)
Validator = Callable[[Sequence[dict[str, Any]]], list[dict[str, Any]]]
"""Ralph's models as a function: a verdict per statement (the ``ralph_validate`` fixture)."""
HERE = Path(__file__).resolve().parent
LAUNCHER = HERE / "ralph_launcher.py"
VALIDATOR = HERE / "ralph_validate.py"
# Both scripts run isolated (-I): their directory, which holds this module named ralph.py, must not shadow
# the ralph package on sys.path.
XAPI_VERSION_HEADER = {"X-Experience-API-Version": "1.0.3"}
PIP_TIMEOUT_S = 1200


class RalphUnavailable(RuntimeError):
    """Ralph's venv or server could not be set up (the message says what and why)."""


def venv_dir() -> Path:
    configured = os.environ.get("STUDYIN_TEST_RALPH_VENV")
    if configured:
        return Path(configured)
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    python = f"py{sys.version_info.major}.{sys.version_info.minor}"
    return cache / "studyin-analytics" / f"ralph-{RALPH_VERSION}-{python}"


def _stamp_text() -> str:
    return json.dumps({"requirements": REQUIREMENTS, "python": sys.version}, sort_keys=True)


# The bench loads this file by path (benchmarks/lrs.py), outside the tests package: it keeps this copy of
# tests/support/filelock.py's lock rather than import it.
@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run(command: Sequence[str], what: str, timeout: float) -> None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RalphUnavailable(f"{what} failed: {type(exc).__name__}: {exc}") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout)[-2000:]
        raise RalphUnavailable(f"{what} failed (exit {done.returncode}):\n{tail}")


def ensure_venv() -> Path:
    """The python of Ralph's venv, created first if missing or incomplete (seconds it took are printed)."""
    target = venv_dir()
    python = target / "bin" / "python"
    stamp = target / ".studyin-ready"
    with _locked(target.with_name(target.name + ".lock")):
        if stamp.is_file() and stamp.read_text() == _stamp_text() and python.exists():
            return python
        started = time.perf_counter()
        if target.exists():
            subprocess.run(["rm", "-rf", str(target)], check=True)
        _run([sys.executable, "-m", "venv", str(target)], f"creating the Ralph venv at {target}", 120)
        pip = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        _run([*pip, *REQUIREMENTS], f"installing {' '.join(REQUIREMENTS)} into {target}", PIP_TIMEOUT_S)
        stamp.write_text(_stamp_text())
        print(f"created the Ralph venv {target} in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    return python


def validate_statements(python: Path, statements: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Ralph's models' verdict on each statement (see ``ralph_validate.py`` for the report's fields)."""
    text = "".join(json.dumps(s) + "\n" for s in statements)
    done = subprocess.run(
        [str(python), "-I", str(VALIDATOR)],
        input=text,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if done.returncode != 0:
        raise RalphUnavailable(f"Ralph's validator failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    reports = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    if len(reports) != len(statements):
        raise RalphUnavailable(f"Ralph's validator answered {len(reports)} reports for {len(statements)}")
    return reports


@dataclass
class RalphServer:
    """Ralph's LRS on 127.0.0.1 with the file-system backend under ``workdir``, basic auth."""

    python: Path
    workdir: Path
    username: str = "studyin-forwarder"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    port: int = 0
    process: subprocess.Popen[str] | None = None
    startup_s: float = 0.0
    extra_env: dict[str, str] = field(default_factory=dict)
    _client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def statements_url(self) -> str:
        return f"{self.url}/xAPI/statements"

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)

    @property
    def data_file(self) -> Path:
        return self.workdir / "data" / "fs_lrs.jsonl"

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RALPH_")}
        env.update(
            RALPH_RUNSERVER_BACKEND="fs",
            RALPH_BACKENDS__LRS__FS__DEFAULT_DIRECTORY_PATH=str(self.workdir / "data"),
            RALPH_AUTH_FILE=str(self.workdir / "auth.json"),
            RALPH_HISTORY_FILE=str(self.workdir / "history.json"),
            RALPH_TEST_USERNAME=self.username,
            RALPH_TEST_PASSWORD=self.password,
        )
        return env

    def start(self, timeout_s: float = 60.0) -> None:
        started = time.perf_counter()
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        log = (self.workdir / "server.log").open("w")
        try:
            self.process = subprocess.Popen(
                [str(self.python), "-I", str(LAUNCHER)],
                cwd=self.workdir,
                env={**self.environment(), **self.extra_env},
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
        except OSError as exc:
            raise RalphUnavailable(f"cannot run {self.python}: {type(exc).__name__}: {exc}") from exc
        assert self.process.stdout is not None
        self.port = self._read_port(self.process.stdout, timeout_s)
        self._wait_until_answering(started + timeout_s)
        self.startup_s = time.perf_counter() - started

    def _read_port(self, stdout: IO[str], timeout_s: float) -> int:
        line = stdout.readline()  # the launcher prints it as soon as the socket is bound (or exits)
        if not line.startswith("PORT "):
            self.stop()
            raise RalphUnavailable(f"Ralph did not start (no port announced):\n{self.log_tail()}")
        return int(line.split()[1])

    def _wait_until_answering(self, deadline: float) -> None:
        last = "no answer"
        while time.perf_counter() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RalphUnavailable(f"Ralph exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                answer = httpx.get(f"{self.url}/__heartbeat__", timeout=2)
                if answer.status_code == 200:
                    return
                last = f"HTTP {answer.status_code}"
            except httpx.HTTPError as exc:
                last = f"{type(exc).__name__}: {exc}"
            time.sleep(0.1)
        self.stop()
        raise RalphUnavailable(f"Ralph did not answer on {self.url} in time ({last}):\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        path = self.workdir / "server.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)

    def __enter__(self) -> RalphServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the statements resource, as a test reads and writes it ---

    @property
    def client(self) -> httpx.Client:
        """One client for the server's life (creating an httpx client costs ~100 ms: its SSL context)."""
        if self._client is None:
            self._client = httpx.Client(auth=self.auth, headers=XAPI_VERSION_HEADER, timeout=60)
        return self._client

    def post(self, statements: Sequence[dict[str, Any]]) -> httpx.Response:
        return self.client.post(self.statements_url, json=list(statements))

    def get(self, statement_id: str) -> dict[str, Any] | None:
        """The stored statement with this id, as the LRS returns it (``None``: not stored).

        Ralph answers ``?statementId=`` with ``{"statements": [...]}`` (xAPI says: the statement itself,
        or 404), so both forms are read."""
        answer = self._read(self.statements_url, {"statementId": statement_id})
        if answer.status_code == 404:
            return None
        answer.raise_for_status()
        body: dict[str, Any] = answer.json()
        if "statements" not in body:
            return body
        found: list[dict[str, Any]] = body["statements"]
        assert len(found) <= 1, f"{len(found)} statements answered for one id"
        return found[0] if found else None

    def _read(self, url: str, params: dict[str, Any] | None = None) -> httpx.Response:
        """A GET, tried twice: after a 500 Ralph drops the kept-alive connection the pool may still hold."""
        try:
            return self.client.get(url, params=params)
        except httpx.TransportError:
            return self.client.get(url, params=params)

    def statements_of(self, agent: dict[str, Any]) -> list[dict[str, Any]]:
        """Every stored statement whose actor is ``agent`` (``GET ?agent=``, following ``more`` links)."""
        out: list[dict[str, Any]] = []
        answer = self._read(self.statements_url, {"agent": json.dumps(agent), "limit": 500})
        while True:
            answer.raise_for_status()
            body = answer.json()
            out += body["statements"]
            more = body.get("more")
            if not more:
                return out
            answer = self._read(self.url + more)

    def stored_ids(self) -> Counter[str]:
        """How many records of each id the LRS's file holds (what a GET cannot show: duplicates)."""
        if not self.data_file.exists():
            return Counter()
        with self.data_file.open() as handle:
            return Counter(json.loads(line)["id"] for line in handle if line.strip())


LRS_ADDED_FIELDS = ("stored", "authority")
"""What an LRS adds to a statement it stores (xAPI 1.0.3: stored, authority; version if absent)."""


def as_sent(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored statement without the fields the LRS adds, to compare with what was sent."""
    return {k: v for k, v in stored.items() if k not in LRS_ADDED_FIELDS}

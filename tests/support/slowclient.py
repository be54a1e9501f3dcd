"""A slow client on a raw socket, and what a server with read deadlines must do with it."""

from __future__ import annotations

import socket
import time


def _closed_within(sock: socket.socket, seconds: float, trickle: bytes = b"", every_s: float = 0.3) -> float:
    """Seconds until the server closed ``sock`` (sending ``trickle`` a byte at a time meanwhile);
    fails if it is still open after ``seconds``."""
    started = time.monotonic()
    sock.settimeout(every_s)
    for position in range(10_000):
        if position < len(trickle):
            try:
                sock.sendall(trickle[position : position + 1])
            except OSError:
                return time.monotonic() - started
        try:
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            pass
        except OSError:  # reset: closed too
            return time.monotonic() - started
        if time.monotonic() - started > seconds:
            break
    raise AssertionError(f"the server kept a slow client's connection open for over {seconds:g} s")


def check_read_deadlines(
    host: str,
    port: int,
    *,
    header_timeout_s: float,
    body_timeout_s: float,
    post: str,
    content_type: str = "application/json",
) -> None:
    """An idle connection, headers a byte at a time, a body that stops: each is cut off at its
    deadline (the slow body with a 408); a prompt request is answered meanwhile."""
    slack = 2.5  # scheduling on a loaded 2-core machine
    with socket.create_connection((host, port)) as idle:
        assert _closed_within(idle, header_timeout_s + slack) >= header_timeout_s * 0.8
    with socket.create_connection((host, port)) as dribble:
        dribble.sendall(b"GET /healthz HTTP/1.1\r\n")
        elapsed = _closed_within(
            dribble, header_timeout_s + slack, trickle=b"Host: x\r\nX-Slow: " + b"a" * 200
        )
        assert elapsed >= header_timeout_s * 0.8
    with socket.create_connection((host, port)) as slow_body:
        slow_body.sendall(
            f"POST {post} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 1000\r\n\r\n".encode()
            + b'{"events": ['
        )
        slow_body.settimeout(body_timeout_s + slack)
        started = time.monotonic()
        answer = slow_body.recv(4096)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"body_timeout" in answer or _rest(slow_body).find(b"body_timeout") >= 0
        assert time.monotonic() - started >= body_timeout_s * 0.8
        assert _closed_within(slow_body, 2.0) >= 0
    with socket.create_connection((host, port)) as prompt:  # the server still answers at once
        prompt.settimeout(5)
        prompt.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert prompt.recv(4096).startswith(b"HTTP/1.1 ")


def _rest(sock: socket.socket) -> bytes:
    try:
        return sock.recv(4096)
    except OSError:
        return b""

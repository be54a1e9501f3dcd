"""Runs Ralph's LRS for the tests. Executed by the python of Ralph's own virtualenv
(tests/support/lrs/ralph.py), never imported by the project: Ralph pins an older FastAPI than the project's.

Usage: ``python ralph_launcher.py`` with RALPH_* settings in the environment (the harness sets
RALPH_RUNSERVER_BACKEND=fs, the data directory, RALPH_AUTH_FILE, RALPH_HISTORY_FILE) plus
RALPH_TEST_USERNAME / RALPH_TEST_PASSWORD. Prints ``PORT <n>`` once the socket is bound.

Two things differ from ``ralph runserver``:

* The file-system backend's writes APPEND. In ralph-malph 5.1.0 ``FSLRSBackend`` inherits the default
  write mode CREATE, so every POST after the first answers 500 ("fs_lrs.jsonl already exists and overwrite
  is not allowed"). Setting ``default_operation_type`` on the class before the app is imported is the
  whole fix; nothing else of Ralph is changed.
* The socket is bound here on port 0 and handed to uvicorn (no free-port race, no reloader).
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import bcrypt


def write_auth_file() -> None:
    """One basic-auth user whose authority agent is an account (no e-mail anywhere in the records)."""
    password = os.environ["RALPH_TEST_PASSWORD"].encode()
    user = {
        "username": os.environ["RALPH_TEST_USERNAME"],
        "hash": bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode(),
        "scopes": ["statements/write", "statements/read"],
        "agent": {"account": {"homePage": "https://lrs.test.invalid", "name": "studyin-forwarder"}},
    }
    Path(os.environ["RALPH_AUTH_FILE"]).write_text(json.dumps([user]))


def main() -> None:
    write_auth_file()
    from ralph.backends.data.base import BaseOperationType
    from ralph.backends.lrs.fs import FSLRSBackend

    if os.environ.get("RALPH_TEST_STOCK_WRITE_MODE") != "1":  # set only by the test showing why
        FSLRSBackend.default_operation_type = BaseOperationType.APPEND

    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    config = uvicorn.Config("ralph.api:app", log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    main()

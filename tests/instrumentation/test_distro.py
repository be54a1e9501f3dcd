"""The documented zero-code command, exactly as written, in a virtualenv with only this package.

Before StudyIn's distro, ``OTEL_TRACES_EXPORTER=studyin_redis opentelemetry-instrument uvicorn
app:app`` exported nothing there (no distro, so no SDK configured), and with the stock
``opentelemetry-distro`` it aborted instrumentation (its OTLP metrics and logs defaults, no OTLP
exporter installed). Also what happens when another distro is installed too.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from studyin_analytics.aggregator.cli.settings import Settings
from studyin_analytics.exporter.wire import SPAN_KIND_SERVER
from studyin_analytics.instrumentation import Pseudonymizer
from studyin_analytics.instrumentation.distro import DEFAULTS, DISTRO_NAME, StudyInConfigurator, StudyInDistro
from tests.support import ROOT
from tests.support.filelock import locked
from tests.support.fresh_venv import CACHE, FreshVenv, clean_env, stop
from tests.support.instrumented_app import (
    analytics_env,
    free_port,
    read_spans,
    readme_command,
    wait_listening,
)

README = (ROOT / "README.md").read_text()
DOC = (ROOT / "docs" / "instrumentation.md").read_text()
APP = ROOT / "tests" / "support" / "zero_code_app.py"  # an app with no analytics code at all
USER = "distro-canary-user-8080"


def doc_script() -> tuple[dict[str, str], str]:
    """The zero-code block of docs/instrumentation.md: its exported variables and its command."""
    block = re.search(r"## Zero-code\n.*?```sh\n(.*?)```", DOC, re.S)
    assert block, "docs/instrumentation.md has no sh block under '## Zero-code'"
    exports: dict[str, str] = {}
    commands = []
    for line in block.group(1).splitlines():
        line = line.split("  #")[0].strip()
        if line.startswith("export "):
            name, _, value = line.removeprefix("export ").partition("=")
            exports[name] = value
        elif line:
            commands.append(line)
    assert len(commands) == 1 and "opentelemetry-instrument" in commands[0], commands
    return exports, commands[0]


def run_command(
    venv: FreshVenv, command: str, app_module: str, env: dict[str, str], tmp_path: Path
) -> tuple[int, str]:
    """Run ``command`` in a shell, in a folder holding the app, as a new user would; one request."""
    import httpx

    workdir = tmp_path / "project"
    workdir.mkdir(exist_ok=True)
    shutil.copy(APP, workdir / f"{app_module}.py")
    port = free_port()
    full_env = clean_env(venv, UVICORN_PORT=str(port), **env)  # uvicorn reads its options from UVICORN_*
    process = subprocess.Popen(
        ["bash", "-c", command],
        cwd=workdir,
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        wait_listening(port, process)
        response = httpx.get(
            f"http://127.0.0.1:{port}/materials/cardio-101", headers={"authorization": f"Bearer {USER}"}
        )
    finally:
        _out, err = stop(process)
    return response.status_code, err


def assert_exported(settings: Settings, err: str) -> None:
    spans = [s for s in read_spans(settings, want=1) if s.kind == SPAN_KIND_SERVER]
    assert [s.attributes.get("http.route") for s in spans] == ["/materials/{material_id}"], err[-3000:]
    assert spans[0].attributes["user.hash"] == Pseudonymizer.from_settings(settings).pseudonymize(USER)
    assert "Traceback" not in err and "Failed to auto initialize" not in err, err[-3000:]


def test_the_readme_command_exports_in_a_venv_with_only_this_package(
    new_user_venv: FreshVenv, settings: Settings, tmp_path: Path
) -> None:
    installed = new_user_venv.installed()
    assert "studyin-analytics" in installed and "opentelemetry-distro" not in installed
    status, err = run_command(new_user_venv, readme_command(), "app", analytics_env(settings), tmp_path)
    assert status == 200
    assert_exported(settings, err)


def test_the_documented_block_exports_in_a_venv_with_only_this_package(
    new_user_venv: FreshVenv, settings: Settings, tmp_path: Path
) -> None:
    exports, command = doc_script()
    assert set(exports) >= {"STUDYIN_ANALYTICS_REDIS_URL", "STUDYIN_ANALYTICS_PSEUDONYM_KEYS"}, exports
    # the documented OTEL_* values as written; the analytics settings point at this test's servers
    env = {name: value for name, value in exports.items() if name.startswith("OTEL_")}
    env.update(analytics_env(settings))
    app_module = command.rsplit(" ", 1)[-1].split(":")[0]
    status, err = run_command(new_user_venv, command, app_module, env, tmp_path)
    assert status == 200
    assert_exported(settings, err)


def other_distro(venv: FreshVenv) -> Path:
    """The stock ``opentelemetry-distro`` matching the venv's instrumentation, in a folder of its own
    (on ``PYTHONPATH``, so the fresh venv itself keeps only this package)."""
    version = venv.version_of("opentelemetry-instrumentation")
    target = CACHE / f"opentelemetry-distro-{version}"
    with locked(target.with_name(target.name + ".lock")):
        if not (target / ".ready").exists():
            shutil.rmtree(target, ignore_errors=True)
            venv.pip(
                "install", "-q", "--no-deps", "--target", str(target), f"opentelemetry-distro=={version}"
            )
            (target / ".ready").touch()
    return target


def test_with_another_distro_installed_the_documented_choice_exports(
    new_user_venv: FreshVenv, settings: Settings, tmp_path: Path
) -> None:
    env = {
        **analytics_env(settings),
        "PYTHONPATH": str(other_distro(new_user_venv)),
        "OTEL_PYTHON_DISTRO": DISTRO_NAME,
        "OTEL_PYTHON_CONFIGURATOR": DISTRO_NAME,
    }
    status, err = run_command(new_user_venv, readme_command(), "app", env, tmp_path)
    assert status == 200
    assert_exported(settings, err)
    assert f"OTEL_PYTHON_DISTRO={DISTRO_NAME}" in DOC and f"OTEL_PYTHON_CONFIGURATOR={DISTRO_NAME}" in DOC


def test_the_stock_distro_when_chosen_aborts_without_an_otlp_exporter(new_user_venv: FreshVenv) -> None:
    """What the docs warn about: its OTLP defaults for metrics and logs abort the whole set-up."""
    probe = "import os; print(os.environ['OTEL_METRICS_EXPORTER'], os.environ['OTEL_LOGS_EXPORTER'])"
    done = subprocess.run(
        ["opentelemetry-instrument", "python", "-c", probe],
        env=clean_env(
            new_user_venv,
            PYTHONPATH=str(other_distro(new_user_venv)),
            OTEL_PYTHON_DISTRO="distro",
            OTEL_TRACES_EXPORTER="studyin_redis",
        ),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.stdout.split() == ["otlp", "otlp"]
    assert "Failed to auto initialize OpenTelemetry" in done.stderr, done.stderr[-2000:]


def test_the_distro_sets_only_what_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in DEFAULTS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "prometheus")
    StudyInDistro().configure()
    assert os.environ["OTEL_TRACES_EXPORTER"] == "studyin_redis"
    assert os.environ["OTEL_METRICS_EXPORTER"] == "prometheus"  # the user's choice wins
    assert os.environ["OTEL_LOGS_EXPORTER"] == "studyin_redis"  # like the traces


def test_entry_points_name_the_distro_and_the_configurator() -> None:
    groups = {
        "opentelemetry_distro": StudyInDistro,
        "opentelemetry_configurator": StudyInConfigurator,
        "opentelemetry_instrumentor": None,
        "opentelemetry_traces_exporter": None,
    }
    ours = {
        (ep.group, ep.name): ep
        for ep in importlib.metadata.distribution("studyin-analytics").entry_points
        if ep.group in groups
    }
    assert ours[("opentelemetry_distro", DISTRO_NAME)].load() is StudyInDistro
    assert ours[("opentelemetry_configurator", DISTRO_NAME)].load() is StudyInConfigurator
    assert ("opentelemetry_traces_exporter", DEFAULTS["OTEL_TRACES_EXPORTER"]) in ours


def test_the_docs_state_each_default_once() -> None:
    for name, value in DEFAULTS.items():
        assert f"`{name}={value}`" in DOC, f"docs/instrumentation.md does not state {name}={value}"

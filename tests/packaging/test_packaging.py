"""The distribution installs one namespace and working imports, built as a real wheel."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

from tests.support import ROOT


def test_wheel_has_only_the_project_namespace(tmp_path: Path) -> None:
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # The build backend has nothing to warn about (pip's own configuration may add warnings of its own).
    backend_warnings = [
        line
        for line in (build.stdout + build.stderr).splitlines()
        if ("Setuptools" in line and "Warning" in line) or "BuildBackendWarning" in line
    ]
    assert backend_warnings == []
    (wheel,) = tmp_path.glob("studyin_analytics-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {
        "studyin_analytics",
        wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info",
    }
    for part in ("instrumentation", "exporter", "aggregator"):
        assert f"studyin_analytics/{part}/__init__.py" in names
    # The compiled funnel kernel (setup.py) is in the wheel, not only in an editable tree.
    assert any(
        n.startswith("studyin_analytics/aggregator/analysis/_funnel_kernel.") and n.endswith(".so")
        for n in names
    )
    assert "studyin_analytics/aggregator/storage/migrations/versions/0001_initial.py" in names
    for asset in ("dashboard.html", "dashboard.js", "dashboard.css", "vendor/uPlot.iife.min.js"):
        assert f"studyin_analytics/aggregator/api/static/{asset}" in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "studyin_redis = studyin_analytics.exporter:RedisStreamSpanExporter" in text

    # Installed without the source tree on the path, the wheel imports.
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(system_site_packages=False, with_pip=False).create(env_dir)
    site = subprocess.run(
        [str(env_dir / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Reuse this environment's dependencies, but only the wheel's own code.
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site) / "deps.pth").write_text("\n".join(deps) + "\n")
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    result = subprocess.run(
        [
            str(env_dir / "bin" / "python"),
            "-I",
            "-c",
            "import studyin_analytics.instrumentation as i, studyin_analytics.exporter as e, "
            "studyin_analytics.aggregator.cli.main as c, "
            "studyin_analytics.aggregator.analysis._funnel_kernel as k; print(i.__file__, k.__file__)",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert str(ROOT) not in result.stdout
    assert site in result.stdout

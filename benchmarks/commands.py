"""CLI command ``bench``, registered into ``studyin-analytics``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from ..aggregator.cli.exit_codes import EXIT_FAILURE, EXIT_OK, EXIT_USAGE


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``bench`` subcommand to the ``studyin-analytics`` parser."""
    p = subparsers.add_parser(
        "bench",
        help="measure the pipeline against same-run baselines",
        description=(
            "Run the registered benchmarks against the configured Redis/PostgreSQL "
            "(STUDYIN_ANALYTICS_REDIS_URL / _POSTGRES_URL) or embedded ones when unset. Each benchmark "
            "uses its own schema and key prefix and removes them afterwards. Prints a table (value, "
            "same-run baseline, ratio, target), writes the results with the environment as JSON and "
            "a PNG chart of the headline figures. A failing benchmark becomes an error row and makes "
            "the exit code 1; the others still run. See docs/benchmarks.md."
        ),
    )
    p.add_argument(
        "--quick", action="store_true", help="small sizes and one repeat (CI smoke run, under a minute)"
    )
    p.add_argument(
        "--only",
        nargs="+",
        action="extend",
        metavar="NAME",
        help="run only these benchmarks (see --list)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results.json"),
        help="JSON results file (default: bench-results.json)",
    )
    p.add_argument(
        "--chart", type=Path, default=Path("bench-results.png"), help="PNG chart (default: bench-results.png)"
    )
    p.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    p.add_argument("--markdown", type=Path, help="also write the table as Markdown (for the README)")
    p.add_argument(
        "--timeout",
        type=float,
        help="time limit per benchmark in seconds (default: 120 with --quick, else 600)",
    )
    p.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help=(
            "write cProfile stats (.prof) and top-function summaries (.txt) of each benchmark and of the "
            "processes it starts into DIR; profiled figures are slower than normal ones"
        ),
    )
    p.add_argument(
        "--repeats",
        type=int,
        metavar="N",
        help="repeats each median is taken over (default 5; 1 with --quick)",
    )
    p.add_argument("--list", action="store_true", help="list the benchmark names and exit")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..aggregator.devtools.embedded import servers_for
    from ..instrumentation.settings import load_settings as _settings
    from . import runner
    from .framework import REGISTRY

    err = Console(stderr=True, emoji=False)
    # A file or CI log: no need to squeeze. No emoji codes: names and errors are data.
    out = Console(emoji=False) if sys.stdout.isatty() else Console(width=160, emoji=False)
    import_errors = runner.load_modules()
    if args.list:
        for name in REGISTRY:
            out.print(escape(name), highlight=False)
        for module, error in import_errors.items():
            failed = f"[red]module {escape(module)} failed to import:[/] {escape(str(error))}"
            err.print(failed, highlight=False)
        return EXIT_FAILURE if import_errors else EXIT_OK
    try:
        runner.select(args.only)
    except runner.UsageError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}", highlight=False)
        return EXIT_USAGE

    if args.only:  # a broken module that was not asked for is worth a warning, not a failure
        for module, error in import_errors.items():
            warning = f"[yellow]warning:[/] module {escape(module)} failed to import: {escape(str(error))}"
            err.print(warning, highlight=False)
        import_errors = {}

    settings = _settings()
    need_redis = settings.redis_url is None
    need_postgres = settings.postgres_url is None
    with servers_for(settings) as settings:
        report = asyncio.run(
            runner.run(
                settings,
                quick=args.quick,
                only=args.only,
                console=err,
                timeout_s=args.timeout,
                import_errors=import_errors,
                profile_dir=args.profile,
                repeats=args.repeats,
            )
        )
        report.environment["embedded_servers"] = {"redis": need_redis, "postgres": need_postgres}

    from .report import baselines, table

    out.print(table(report))
    lines = baselines(report)
    if lines:
        out.print("[bold]Baselines[/] (same run):", highlight=False)
        for line in lines:
            out.print(f"  {escape(line)}", highlight=False, soft_wrap=True)
    for row in report.rows:
        if row.error:
            err.print(f"[red]{escape(row.name)}:[/] {escape(str(row.error))}", highlight=False)
    chart_ok = runner.write_outputs(
        report, args.out, None if args.no_chart else args.chart, err, markdown_path=args.markdown
    )
    err.print(f"bench finished in {report.seconds:.1f}s", highlight=False)
    return EXIT_FAILURE if report.failed or not chart_ok else EXIT_OK

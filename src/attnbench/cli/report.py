"""`attnbench report`: a stored run (or the history of all runs) as Markdown, JSON, CSV or HTML."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UserError
from .options import DB_OPT, check_output, open_store


def report(
    run_id: Optional[str] = typer.Argument(None, help="run id (default: the newest)"),
    fmt: str = typer.Option("md", "--format", help="md, json, html or csv (--history: md or html)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="write to a file instead of stdout"),
    history: bool = typer.Option(False, "--history", help="every stored run: each cell's median over time"),
    workload: Optional[str] = typer.Option(None, "--workload", help="--history: workload key or label substring"),
    impl: Optional[str] = typer.Option(None, "--impl", help="--history: impl name or label"),
    db: Optional[str] = DB_OPT,
) -> None:
    """Print a stored run as Markdown, JSON, CSV or a self-contained HTML page; or the history of all runs."""
    from ..report import tables as rep

    formats = ("md", "html") if history else ("md", "json", "html", "csv")
    if fmt not in formats:
        raise UserError(f"--format must be {', '.join(formats[:-1])} or {formats[-1]}"
                        f"{' with --history' if history else ''}, got {fmt!r}")
    if history and run_id is not None:
        raise UserError("--history covers every stored run; give no run id (filter with --workload/--impl)")
    if not history and (workload or impl):
        raise UserError("--workload and --impl filter --history only")
    check_output(output)
    with open_store(db, must_exist=True) as store:
        if history:
            from ..report import history as hist

            if fmt == "html":
                from ..report.html import render_history

                text = render_history(store, workload, impl)
            else:
                text = hist.markdown(hist.gather(store, workload, impl))
        elif fmt == "md":
            text = rep.markdown(store, run_id)
        elif fmt == "json":
            text = json.dumps(rep.json_report(store, run_id), indent=2, default=str)
        elif fmt == "csv":
            text = rep.csv_report(store, run_id)
        else:
            from ..report.html import render_run

            text = render_run(store, run_id)
    if output:
        output.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        typer.echo(f"wrote {output}", err=True)
    else:
        typer.echo(text, nl=not text.endswith("\n"))

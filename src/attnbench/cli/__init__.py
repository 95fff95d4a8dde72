"""The command line: a thin typer app, one module per command; each parses, calls the library and prints.
UserError -> one line on stderr, exit 2."""

from __future__ import annotations

import sys
from typing import List, Optional

from ..errors import UserError
from . import compare, env, gate, list_impls, report, run, runs, tune
from .app import app

# In the order `attnbench --help` lists them.
app.command()(run.run)
app.command("list")(list_impls.list_impls)
app.command()(report.report)
app.command()(runs.runs)
app.command()(compare.compare)
app.command()(env.env)
app.command()(gate.gate)
app.command()(tune.tune)


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, prog_name="attnbench")
    except UserError as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        sys.exit(2)

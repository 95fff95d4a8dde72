"""The command line: a thin typer app, one module per command; each parses, calls the library and prints.
UserError -> one line on stderr, exit 2."""

from __future__ import annotations

import inspect
import sys
from typing import List, Optional

from ..errors import UserError
from . import compare, env, gate, list_impls, report, run, runs, tune
from .app import app


def _command(fn, name: Optional[str] = None) -> None:
    """Register a command. Its line in `attnbench --help` is its docstring's first paragraph joined into one
    line: typer's rich list keeps the docstring's line breaks, which cut that line mid-sentence."""
    first = inspect.cleandoc(fn.__doc__ or "").split("\n\n")[0]
    app.command(name, short_help=" ".join(first.split()))(fn)


# In the order `attnbench --help` lists them.
_command(run.run)
_command(list_impls.list_impls, "list")
_command(report.report)
_command(runs.runs)
_command(compare.compare)
_command(env.env)
_command(gate.gate)
_command(tune.tune)


def main(argv: Optional[List[str]] = None) -> None:
    try:
        app(args=argv, prog_name="attnbench")
    except UserError as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        sys.exit(2)

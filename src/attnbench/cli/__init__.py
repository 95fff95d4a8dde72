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


class Terminated(KeyboardInterrupt):
    """SIGTERM (a CI job's timeout, a batch scheduler ending the job), raised where the command is, so that it
    stops as on Ctrl-C: the run is marked interrupted, a cluster's tasks are cancelled, --resume finishes."""


_TERMINATED: list = []


def _terminate(signum, frame) -> None:
    _TERMINATED.append(signum)
    raise Terminated()


def main(argv: Optional[List[str]] = None) -> None:
    import signal
    import threading

    here = threading.current_thread() is threading.main_thread()  # signal handlers live in the main thread only
    previous = signal.signal(signal.SIGTERM, _terminate) if here else None
    _TERMINATED.clear()
    try:
        app(args=argv, prog_name="attnbench")
    except UserError as exc:
        print(f"attnbench: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except Terminated:  # raised outside a command's own Ctrl-C handling
        sys.exit(128 + signal.SIGTERM)
    except SystemExit as exc:
        # A command that stopped on the signal exits as a process ended by SIGTERM does (143), not Ctrl-C's 130.
        if exc.code == 130 and _TERMINATED:
            sys.exit(128 + signal.SIGTERM)
        raise
    finally:
        if here:
            signal.signal(signal.SIGTERM, previous)

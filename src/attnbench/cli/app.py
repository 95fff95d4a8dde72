"""The typer app and its root options; each command lives in a module of its own beside this one."""

from __future__ import annotations

import typer

from .. import __version__

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Measure, compare, autotune and guard the speed of attention kernels.")


def _version(value: bool) -> None:
    if value:
        typer.echo(f"attnbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="print the version and exit")) -> None:
    pass

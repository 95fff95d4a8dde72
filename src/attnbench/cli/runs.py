"""`attnbench runs`: the stored runs."""

from __future__ import annotations

from typing import Optional

import typer

from .options import DB_OPT, open_store


def runs(db: Optional[str] = DB_OPT) -> None:
    """The stored runs, newest last."""
    import time

    with open_store(db, must_exist=True) as store:
        infos = store.runs()
        if not infos:
            typer.echo(f"no runs in {store.path}")
            return
        for r in infos:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
            noun = "measurement" if r.n_measurements == 1 else "measurements"
            typer.echo(f"{r.run_id:>4}  {when}  {r.status:<11}  {r.n_measurements:>4} {noun}  env {r.env_id}  {r.name}")

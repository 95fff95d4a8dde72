"""`attnbench runs`: the stored runs."""

from __future__ import annotations

from typing import Optional

import typer

from .options import DB_OPT, open_store


def runs(db: Optional[str] = DB_OPT) -> None:
    """The stored runs, newest last, each with the device it ran on (every device, when its workers differed)."""
    import time

    with open_store(db, must_exist=True) as store:
        infos = store.runs()
        if not infos:
            typer.echo(f"no runs in {store.path}")
            return
        for r in infos:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created))
            noun = "measurement" if r.n_measurements == 1 else "measurements"
            where = " + ".join(f"{_device(store.environment(e))} (env {e})" for e in store.run_env_ids(r.run_id))
            typer.echo(f"{r.run_id:>4}  {when}  {r.status:<11}  {r.n_measurements:>4} {noun:<12}  {where or 'env ?'}  "
                       f"{r.name}")


def _device(env: dict | None) -> str:
    """'NVIDIA H200', or 'CPU (model)'; '?' for an environment not stored."""
    if not env:
        return "?"
    return str(env.get("gpu_name") or f"CPU ({env.get('cpu_model') or '?'})")

"""`attnbench env`: the environment fingerprint, and the measured ceilings."""

from __future__ import annotations

import json
from typing import Optional

import typer

from ..errors import UserError
from .options import DB_OPT, open_store


def env(
    fmt: str = typer.Option("text", "--format", help="text or json"),
    ceilings: bool = typer.Option(False, "--ceilings", help="measure matmul and copy ceilings (cached per environment)"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N"),
    db: Optional[str] = DB_OPT,
) -> None:
    """The environment fingerprint (GPU, clocks, driver, CUDA, cuDNN, torch, triton, ...) and its id."""
    from ..analysis import device as devmod
    from ..measure.runner import resolve_device

    if fmt not in ("text", "json"):
        raise UserError(f"--format must be text or json, got {fmt!r}")
    dev = resolve_device(device)
    fp = devmod.fingerprint(dev)
    eid = devmod.env_id(fp)
    measured = None
    if ceilings:
        with open_store(db) as store:  # a bad --db fails before the ceilings are measured, not after
            measured = devmod.measure_ceilings(dev)
            store.add_environment(eid, fp)
            store.put("ceilings", eid, measured)
    if fmt == "json":
        typer.echo(json.dumps({"env_id": eid, "fingerprint": fp, "ceilings": measured}, indent=2, default=str))
        return
    typer.echo(devmod.format_env(fp))
    if measured is not None:
        typer.echo("")
        typer.echo(devmod.format_ceilings(measured, fp))

"""`attnbench list`: every impl, and whether it can run here."""

from __future__ import annotations

from typing import Optional

import typer


def list_impls(
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Every impl, and whether it can run here (with the reason when not)."""
    from ..impls import registry
    from ..measure.runner import resolve_device
    from ..spec import Workload

    dev = resolve_device(device)
    probe = Workload(batch=1, q_heads=8, kv_heads=8, q_len=128, kv_len=128, head_dim=64,
                     dtype="fp16" if dev.startswith("cuda") else "fp32")
    typer.echo(f"impls on {dev} (checked on {probe.label}):")
    impls = registry()
    width = max(len(n) for n in impls)
    for name, impl in impls.items():
        why = impl.supports(probe, dev)
        state = "yes" if why is None else f"no: {why}"
        typer.echo(f"  {name:<{width}}  {state:<40}  {impl.description}")
    typer.echo("plugins: --impl package.module:function, or the 'attnbench.impls' entry point group")

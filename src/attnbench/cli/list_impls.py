"""`attnbench list`: every impl, and whether it can run here; each library adapter's install state."""

from __future__ import annotations

from typing import Optional

import typer


def list_impls(
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda or cuda:N"),
) -> None:
    """Every impl, and whether it can run here (with the reason when not); for the library adapters, whether
    the library is ready (its version), not installed (the line that installs it) or unusable (its reason)."""
    from ..impls import registry
    from ..impls.adapters import LibraryImpl
    from ..measure.runner import resolve_device
    from ..spec import Workload

    dev = resolve_device(device)
    probe = Workload(batch=1, q_heads=8, kv_heads=8, q_len=128, kv_len=128, head_dim=64,
                     dtype="fp16" if dev.startswith("cuda") else "fp32")
    typer.echo(f"impls on {dev} (checked on {probe.label}):")
    impls = registry(include_absent=True)
    width = max(len(n) for n in impls)
    adapters = {n: i for n, i in impls.items() if isinstance(i, LibraryImpl)}
    states = {name: _state(impl, probe, dev) for name, impl in impls.items() if name not in adapters}
    state_width = min(max(len(s) for s in states.values()), 60)  # descriptions in one column, unless a reason is long
    for name, state in states.items():
        typer.echo(f"  {name:<{width}}  {state:<{state_width}}  {impls[name].description}")
    typer.echo("library adapters (optional; pip extras attnbench[fa], [flashinfer], [xformers], [cudnn]):")
    for name, impl in adapters.items():
        state = impl.state()
        line = state.text()
        if state.ready:
            why = impl.supports(probe.replace(dtype="fp16"), dev)
            line += "; here: " + ("yes" if why is None else f"no: {why}")
        typer.echo(f"  {name:<{width}}  {line}")
        typer.echo(f"  {'':<{width}}  declares {impl.declares()}")
    typer.echo("plugins: --impl package.module:function, or the 'attnbench.impls' entry point group")


def _state(impl, probe, dev: str) -> str:
    """'yes', 'no: REASON', or what a plugin's failing supports() raised: one broken plugin does not stop the list."""
    try:
        why = impl.supports(probe, dev)
    except Exception as exc:
        return f"error: supports() raised {type(exc).__name__}: {exc}"
    return "yes" if why is None else f"no: {why}"

"""What several commands share: the shape and store options, and turning them into workloads."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from ..errors import UserError

DB_OPT = typer.Option(None, "--db", help="results database (default: $ATTNBENCH_DB or ./attnbench.db)")

# Shape options shared by run, compare, gate and tune (each a comma list; the product is the sweep).
PRESET_OPT = typer.Option(None, "--preset", "-p", help="built-in sweep: characterize, llm-prefill, "
                          "decode, masks, training, long-context, cpu-smoke")
SWEEP_OPT = typer.Option(None, "--sweep", help="sweep file (TOML or YAML)")
HEADS_OPT = typer.Option(None, "-H", "--heads", help="query heads, comma list")
KV_HEADS_OPT = typer.Option(None, "--kv-heads", help="KV heads (GQA), comma list")
SEQ_OPT = typer.Option(None, "-s", "--seq", help="query length, comma list")
KV_SEQ_OPT = typer.Option(None, "--kv-seq", help="key/value length, comma list")
DIM_OPT = typer.Option(None, "-d", "--dim", help="head dim, comma list")
DTYPE_OPT = typer.Option(None, "--dtype", help="fp16, bf16, fp32, fp64; comma list")
CAUSAL_OPT = typer.Option(None, "--causal/--no-causal", help="causal mask (top-left, as SDPA's is_causal)")
MASK_OPT = typer.Option(None, "--mask", help="full, causal, causal-br, window:W, document:L1+L2+..., "
                        "document:rand:N; comma list")
SCORE_MOD_OPT = typer.Option(None, "--score-mod", help="softcap:C or alibi; comma list (none: plain scores)")
PASS_OPT = typer.Option(None, "--pass", help="fwd, bwd, fwd+bwd; comma list")
EXECUTOR_OPT = typer.Option("inproc", "--executor", help="where cells run: inproc (default), gpus (one worker "
                            "process per local GPU, dask-cuda) or dask://HOST:PORT (a running Dask scheduler)")

def check_output(path: Optional[Path]) -> None:
    """Refuse an -o/--output path that cannot be written before anything is measured or rendered."""
    if path is None:
        return
    if path.is_dir():
        raise UserError(f"--output {path} is a folder; give a file name")
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise UserError(f"--output {path}: folder does not exist: {parent}")


def open_store(db: Optional[str], *, must_exist: bool = False):
    """The results store; `must_exist` for commands that only read, so a mistyped --db is an error, not a new file."""
    from ..store import Store
    from ..store.database import default_path

    path = db or default_path()
    if must_exist and path != ":memory:" and not Path(path).expanduser().is_file():
        raise UserError(f"no results database at {path}; start one with `attnbench run`")
    return Store(path, read_only=must_exist)


def build_workloads(preset: Optional[str], sweep: Optional[Path], batch: Optional[str], heads: Optional[str],
                    kv_heads: Optional[str], seq: Optional[str], kv_seq: Optional[str], dim: Optional[str],
                    dtype: Optional[str], causal: Optional[bool], direction: Optional[str], device: str, *,
                    mask: Optional[str] = None, score_mod: Optional[str] = None):
    """Workloads from a preset, a sweep file or shape flags (comma lists; the product is the sweep)."""
    from ..spec import expand, load_preset, load_sweep, parse_list

    flags = {"batch": batch, "heads": heads, "kv_heads": kv_heads, "seq": seq, "kv_seq": kv_seq, "dim": dim,
             "dtype": dtype}
    given = {k: parse_list(v) for k, v in flags.items() if v is not None}
    if causal is not None:
        given["causal"] = [causal]
    if direction is not None:
        given["pass"] = parse_list(direction)
    if mask is not None:
        if causal is not None:
            raise UserError("give --mask or --causal, not both (--mask causal is --causal)")
        given["mask"] = parse_list(mask)
    if score_mod is not None:
        given["score_mod"] = parse_list(score_mod)
    sources = [s for s in (preset, sweep) if s is not None]
    if len(sources) > 1:
        raise UserError("give either --preset or --sweep, not both")
    if sources:
        sweep_obj = load_preset(preset) if preset else load_sweep(sweep)
        workloads = list(sweep_obj.workloads)
        if given:
            raise UserError("shape flags (-b, -H, -s, ...) cannot be combined with --preset/--sweep; "
                            "put the axes in a sweep file instead")
        return workloads, sweep_obj.name
    if not given:
        name = "characterize" if device.startswith("cuda") else "cpu-smoke"
        return list(load_preset(name).workloads), name
    # The original study's baseline shape fills the axes that were not given.
    axes = {"batch": ["32"], "heads": ["8"], "seq": ["512"], "dim": ["64"],
            "dtype": ["fp16" if device.startswith("cuda") else "fp32"], **given}
    return expand(axes), "custom"


def split_impls(given: Optional[List[str]]) -> List[str]:
    """--impl values, each repeatable and each a comma list (no impl name or plugin path holds a comma)."""
    return [name.strip() for item in given or [] for name in item.split(",") if name.strip()]


def default_impls() -> List[str]:
    from ..impls import registry

    return list(registry())

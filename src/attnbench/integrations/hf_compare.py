"""A transformers model end to end, attn_implementation "attnbench" (A) against "sdpa" (B): outputs checked
first, then interleaved timing, compared with kernel compare's statistics.

The model is built from its config with random weights (seeded), in the config's dtype (or the one given),
on the device; A is a copy that shares B's weights, so both run the same numbers. Each case is a batch
size and sequence length, and a pass: `forward` (the logits of a prefill, under inference_mode, no KV
cache kept) or, with train=True, a `training step` (forward, loss on the inputs as labels, backward;
gradients dropped before each step; no optimizer step; eval mode, so no dropout).

Correctness rule, before any timing counts: ||logits_A - logits_B|| / ||logits_B|| (float64, all
elements) within the dtype's attention tolerance (measure.correctness: fp32 2e-3, fp16 5e-3, bf16 3e-2),
and for a training step the same of all gradients together within 4x that, as the kernel gate's
gradient rule. A case that fails is `incorrect` for A and is not timed.

Timing: the two callables interleaved round by round (measure.timing.measure_interleaved); the default
timer is `host` (wall time of the call and a synchronize: the latency a caller sees, the dispatcher's own
cost included), on a GPU too; cold/warm/graph on request. Rows carry a Workload for the matching only: the
model's first attention layer in the prefill (its TFLOP/s, which would count that layer alone, are not
given); the row's label names the model and the case.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, Iterable

from ..errors import UserError
from .hf_workloads import (attention_layers, config_dtype, describe, layer_workload, load_config,
                           require_transformers, text_config)
from .transformers import NAME, explain_model, register

PASS_NAMES = {"fwd": "forward", "fwd+bwd": "training step"}
TOLERANCE_RULE = ("A's outputs were checked against B's before timing: ||A - B|| / ||B|| (float64) of the logits "
                  "within the dtype's attention tolerance (fp32 2e-3, fp16 5e-3, bf16 3e-2), and of all gradients "
                  "together within 4x that for a training step")


def build_models(config, dtype: str, device: str, seed: int = 0):
    """(sdpa model, attnbench model): random weights from the config (seeded), shared by both, in eval mode."""
    tf = require_transformers()
    import torch

    from ..impls.base import torch_dtype

    torch.manual_seed(seed)
    try:
        base = tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch_dtype(dtype))
    except ValueError as exc:
        raise UserError(f"transformers cannot build a causal LM from this config: {str(exc).splitlines()[0]}") from None
    base = base.to(device).eval()
    shared = {id(t): t for t in [*base.parameters(), *base.buffers()]}
    cand = copy.deepcopy(base, shared)  # the modules and config are copied, the weights are shared
    cand.set_attn_implementation(NAME)
    return base, cand


def _forward(model, ids) -> Callable[[], Any]:
    import torch

    def call():
        with torch.inference_mode():
            return model(input_ids=ids, use_cache=False).logits

    return call


def _train_step(model, ids) -> Callable[[], Any]:
    params = [p for p in model.parameters() if p.requires_grad]

    def call():
        for p in params:
            p.grad = None
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        return loss

    return call


def _grads(model) -> list:
    return [p.grad.detach().clone() if p.grad is not None else None for p in model.parameters() if p.requires_grad]


def _grad_error(ga: list, gb: list) -> float:
    import torch

    num = den = 0.0
    for a, b in zip(ga, gb):
        if a is None or b is None:
            if (a is None) != (b is None):
                return float("inf")
            continue
        num += float(torch.linalg.vector_norm((a.double() - b.double())) ** 2)
        den += float(torch.linalg.vector_norm(b.double()) ** 2)
    return (num / den) ** 0.5 if den > 0 else num ** 0.5


def check_outputs(call_a, call_b, model_a, direction: str, dtype: str) -> tuple[float, float, str]:
    """(relative error, tolerance, what was compared) of A's outputs against B's (see TOLERANCE_RULE)."""
    from ..measure.correctness import rel_error, tolerance

    out_a = call_a()
    grads_a = _grads(model_a) if direction != "fwd" else None
    out_b = call_b()
    if direction == "fwd":
        return rel_error(out_a, out_b.double()), tolerance(dtype), "logits"
    err = _grad_error(grads_a, _grads(model_a))  # the models share their parameters: B's grads are there now
    return err, tolerance(dtype, grad=True), "gradients"


def _status(exc: BaseException) -> str:
    return "oom" if "OutOfMemoryError" in type(exc).__name__ or "out of memory" in str(exc) else "error"


def _measurement(name: str, w, label: str, result, failure, device: str, env_id: str, err, tol, checked: str):
    """One side's Measurement, from its timing result or the (status, reason) there is none."""
    from ..store import Measurement

    common = dict(workload=w, impl=name, env_id=env_id, device=device, extra={"model_case": label, "checked": checked})
    if failure is not None:
        return Measurement(status=failure[0], reason=failure[1], **common)
    r = result
    # The batch sizes and the interleaving session let compare pair A and B round by round, as kernel compare
    # does; without them the rows were split into blocks and unpaired.
    sizes = tuple(r.batch_sizes) if sum(r.batch_sizes) == len(r.samples_ms) else ()
    if r.info:
        common["extra"] = {**common["extra"], "timing": r.info}
    return Measurement(status="ok", timer=r.mode, samples_ms=tuple(r.samples_ms), host_ms=tuple(r.host_ms),
                       clocks_mhz=tuple(r.clocks_mhz), batch_sizes=sizes, stop_reason=r.stop_reason,
                       compile_ms=r.first_call_ms, warmup_ms=r.warmup_ms, rel_err=err if name == NAME else None,
                       tolerance=tol, **common)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def measure_case(base, cand, ids, direction: str, dtype: str, w, label: str, timer, policy, device: str,
                 env_id: str, seed: int = 0):
    """(A's Measurement, B's): the output check, then (if it passed) the two calls timed interleaved."""
    from ..measure.timing import measure_interleaved

    make = _forward if direction == "fwd" else _train_step
    call_a, call_b = make(cand, ids), make(base, ids)
    failures: dict[str, tuple[str, str]] = {}
    results: dict = {}
    err, tol, checked = float("nan"), None, "logits" if direction == "fwd" else "gradients"
    try:
        err, tol, checked = check_outputs(call_a, call_b, cand, direction, dtype)
    except Exception as exc:  # a case that cannot run is recorded, and the others go on
        failures = {n: (_status(exc), _reason(exc)) for n in (NAME, "sdpa")}
    if not failures and not err <= tol:
        failures = {NAME: ("incorrect", f"{checked} relative error {err:.3g} > tolerance {tol:.1g} (against sdpa's)"),
                    "sdpa": ("ok", "not timed: the other side failed the output check")}
    if not failures:
        errors: dict[str, BaseException] = {}
        results = measure_interleaved(timer, {NAME: call_a, "sdpa": call_b}, policy, seed=seed, errors=errors)
        failures = {n: (_status(e), _reason(e)) for n, e in errors.items()}
    return tuple(_measurement(n, w, label, results.get(n), failures.get(n), device, env_id, err, tol, checked)
                 for n in (NAME, "sdpa"))


def compare_model(source, table, *, batches: Iterable[int] = (1,), seqs: Iterable[int] = (128,),
                  dtype: str | None = None, device: str | None = None, train: bool = False, timer="auto",
                  policy=None, threshold: float = 0.02, seed: int = 0,
                  progress: Callable[[str], None] | None = None):
    """Compare the model with attn_implementation "attnbench" (A, through `table`) and "sdpa" (B), one row
    per pass x batch x sequence length (see the module docstring); returns a compare.Comparison.

    source: a config.json path, a model folder, a model id in the local cache, or a config object.
    timer: a mode name ('auto' is 'host' here) or a Timer object (tests pass a FakeTimer).
    """
    import torch

    from ..analysis import device as devmod
    from ..compare.comparison import compare_measurements
    from ..measure.runner import resolve_device
    from ..measure.timing import TimingPolicy, make_timer

    config = load_config(source)
    first = attention_layers(config)[0]  # a config that is no causal LM is refused before anything else
    dt = config_dtype(config, dtype)
    dev = resolve_device(device)
    register(table)
    timer_obj = make_timer("host" if timer == "auto" else timer, dev) if isinstance(timer, str) else timer
    policy = policy or TimingPolicy(warmup_ms=25.0, min_samples=10, max_samples=50)
    env_id = devmod.env_id(devmod.fingerprint(dev))
    what = describe(config)
    vocab = int(text_config(config).vocab_size)
    base, cand = build_models(config, dt, dev, seed)
    side_a, side_b, labels, notes = [], [], {}, []
    gen = torch.Generator(device="cpu").manual_seed(seed)
    cases = [(d, int(b), int(s)) for d in (("fwd", "fwd+bwd") if train else ("fwd",)) for b in batches for s in seqs]
    for direction, b, s in cases:
        w = layer_workload(first, "prefill", b, s, dt, direction)
        labels[w.key] = label = f"{what} · {PASS_NAMES[direction]} B{b} S{s} {dt}"
        ids = torch.randint(0, vocab, (b, s), generator=gen).to(dev)
        ma, mb = measure_case(base, cand, ids, direction, dt, w, label, timer_obj, policy, dev, env_id, seed)
        side_a.append(ma)
        side_b.append(mb)
        if ma.ok:
            notes.append(_dispatch_note(cand, b, s, direction, label))
        if progress:
            progress(f"{label}: " + ", ".join(f"{m.impl} {_median_text(m)}" for m in (ma, mb)))
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    c = compare_measurements(side_a, side_b, threshold=threshold, a_name=NAME, b_name="sdpa", seed=seed)
    nan = float("nan")
    rows = tuple(dataclasses.replace(r, label=labels.get(r.key, r.label), a_tflops=nan, b_tflops=nan,
                                     tflops_ratio=nan, tflops_ratio_ci=(nan, nan)) for r in c.rows)
    excluded = tuple(dataclasses.replace(e, label=labels.get(e.key, e.label)) for e in c.excluded)
    head = (f"model {what}, random weights (seed {seed}), {dt}, on {dev}; A = attn_implementation "
            f"\"{NAME}\" (table {_table_name(table)}), B = \"sdpa\"; each row one end-to-end call")
    return dataclasses.replace(c, rows=rows, excluded=excluded, notes=(head, TOLERANCE_RULE) + c.notes + tuple(notes))


def _median_text(m) -> str:
    return f"{m.median_ms:.4g} ms" if m.ok else m.status


def _table_name(table) -> str:
    return getattr(table, "source", "") or (str(table) if not hasattr(table, "entries") else "given")


def _dispatch_note(model, batch: int, seq: int, direction: str, label: str) -> str:
    """Which impl A's layers ran in this case's phase (prefill), grouped."""
    runs: dict[str, list[int]] = {}
    for d in explain_model(model, batch, seq, direction=direction):
        if d.phase == "prefill":
            runs.setdefault(d.runs, []).append(d.layer)
    parts = [f"layers {','.join(map(str, layers))}: {text}" for text, layers in runs.items()]
    return f"{label}, attnbench ran: " + "; ".join(parts)

"""The CLI's model options: `tune --from-model` collects, tunes and writes a table the model then runs
through; `compare --model` times the model both ways on the CPU (host timer) and gives a verdict."""

import json

import torch

from attnbench.integrations import hf_workloads as hw
from attnbench.integrations import transformers as hf
from attnbench.measure.correctness import rel_error, tolerance
from attnbench.spec import Workload
from attnbench.tune.dispatch import load_table, workload_bucket

from ..clitools import cli
from . import tiny


def test_tune_from_model_collects_tunes_and_writes_a_table_the_model_uses(tmp_path, capsys):
    cfg = tiny.qwen2(window=12)
    cfg.save_pretrained(tmp_path / "m")
    out = tmp_path / "table.json"
    # candidates: the spy (the baseline, so sdpa-auto is not added) and sdpa-math
    code, text, err = cli(capsys, "tune", "--from-model", str(tmp_path / "m" / "config.json"), "-b", "2", "-s", "24",
                          "-i", "sdpa-math", "-i", tiny.SPY, "--baseline", tiny.SPY, "--budget", "0.2s",
                          "--samples", "5", "-o", str(out), "--db", str(tmp_path / "t.db"))
    assert code == 0, err
    want = [Workload(batch=2, q_heads=4, kv_heads=2, q_len=q, kv_len=kv, head_dim=16, dtype="fp32", mask=mask)
            for q, kv, mask in ((24, 24, "causal"), (24, 24, "window:11"), (1, 24, "causal-br"), (1, 12, "causal-br"))]
    assert "4 attention workloads: " + "; ".join(w.label for w in want) in err
    assert [line for line in text.splitlines() if line.startswith("## B")] == [f"## {w.label}" for w in want]
    table = load_table(out)
    assert set(table.entries) == {workload_bucket(w) for w in want}
    assert [Workload.from_dict(table.entries[workload_bucket(w)].workload) for w in want] == want
    winners = {b: e.impl for b, e in table.entries.items()}
    assert set(winners.values()) <= {tiny.SPY, "sdpa-math"}
    # the model runs through the table: every layer, prefill and decode, uses its bucket's winner
    hf.register(table=out)
    m = tiny.model(cfg)
    ids = tiny.tokens(batch=2, seq=24)
    with torch.no_grad():
        want_logits = m(ids).logits
        m.set_attn_implementation("attnbench")
        tiny.CALLS.clear()
        assert rel_error(m(ids).logits, want_logits.double()) <= tolerance("fp32")
        m.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=2, do_sample=False, pad_token_id=0)
    layers = hf.explain_model(m, 2, 24)
    assert [d.runs.split(" ")[0] for d in layers] == [winners[workload_bucket(d.workload)] for d in layers]
    spy_calls = {}
    for d in layers:  # the forward and generate's prefill, then one decode step
        if winners[workload_bucket(d.workload)] == tiny.SPY:
            spy_calls[d.workload.mask] = spy_calls.get(d.workload.mask, 0) + (2 if d.phase == "prefill" else 1)
    assert tiny.CALLS == spy_calls


def test_tune_from_model_refuses_shape_flags_and_unknown_models(tmp_path, capsys):
    tiny.llama().save_pretrained(tmp_path / "m")
    code, _, err = cli(capsys, "tune", "--from-model", str(tmp_path / "m"), "-s", "8", "-H", "8", "--db",
                       str(tmp_path / "t.db"))
    assert code == 2 and "--from-model takes the shapes from the model; drop --heads" in err
    code, _, err = cli(capsys, "tune", "--from-model", str(tmp_path / "m"), "--db", str(tmp_path / "t.db"))
    assert code == 2 and "needs --seq" in err
    code, _, err = cli(capsys, "tune", "--from-model", str(tmp_path / "nothing.json"), "-s", "8")
    assert code == 2 and "config file not found" in err and "Traceback" not in err
    tiny.gemma3(scalar=32).save_pretrained(tmp_path / "g")  # every layer's scale goes to SDPA: nothing to tune
    code, _, err = cli(capsys, "tune", "--from-model", str(tmp_path / "g"), "-s", "8", "--db", str(tmp_path / "t.db"))
    assert code == 2 and "layers 0, 1 scale their scores by 0.176777, not 1/sqrt(16) = 0.25" in err


def test_compare_model_on_the_cpu_with_the_host_timer(tmp_path, capsys):
    cfg = tiny.llama()
    cfg.save_pretrained(tmp_path / "m")
    table = tmp_path / "t.json"
    from .test_transformers import table_for

    table_for(hw.model_workloads(cfg, [1], [32])).save(table)
    tiny.CALLS.clear()
    code, text, err = cli(capsys, "compare", "--model", str(tmp_path / "m"), "--table", str(table), "-b", "1",
                          "-s", "32", "--samples", "8", "--min-samples", "8", "--warmup-ms", "1", "--format", "json")
    assert code == 0, err
    data = json.loads(text)
    (row,) = data["rows"]
    assert row["label"] == "llama: 2 layers, H4/2 D16 · forward B1 S32 fp32" and row["n_a"] == row["n_b"] == 8
    lo, hi = row["speedup_ci"]
    assert lo <= row["speedup"] <= hi and row["verdict"] in ("faster", "slower", "same", "inconclusive")
    assert any("timer `host`" in n for n in data["notes"])
    assert tiny.CALLS["causal"] >= 2 * 8  # two layers, every timed sample
    assert "llama: 2 layers, H4/2 D16 · forward B1 S32 fp32: attnbench " in err
    code, text, _ = cli(capsys, "compare", "--model", str(tmp_path / "m"), "--table", str(table), "-s", "32",
                        "--samples", "5", "--min-samples", "5", "--warmup-ms", "1", "-q")
    assert code == 0 and "| llama: 2 layers, H4/2 D16 · forward B1 S32 fp32 |" in text and "Verdicts:" in text


def test_compare_model_option_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("ATTNBENCH_DISPATCH", raising=False)
    code, _, err = cli(capsys, "compare", "--model", "x/config.json")
    assert code == 2 and "--model needs --table" in err
    code, _, err = cli(capsys, "compare", "--model", "x/config.json", "--table", "t.json", "-i", "sdpa-math")
    assert code == 2 and "drop --impl" in err
    code, _, err = cli(capsys, "compare", "-i", "sdpa-math", "-i", "reference", "--train")
    assert code == 2 and "--table and --train go with --model" in err


def test_model_options_give_one_line_errors_never_a_traceback_nor_a_download(tmp_path, capsys, monkeypatch):
    """A missing folder, a config that is no causal LM, and a model id not in the (empty) local cache, offline:
    exit 2 and one line, for tune --from-model and compare --model (a ViT config gave compare a traceback)."""
    from transformers import ViTConfig

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    import socket

    def no_network(*args, **kwargs):
        raise AssertionError("network access")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96).save_pretrained(
        tmp_path / "vit")
    table = tmp_path / "t.json"
    from .test_transformers import table_for

    table_for([]).save(table)
    cases = [(str(tmp_path / "missing"), "is neither a config.json, a model folder, nor a model id"),
             (str(tmp_path / "vit"), "is not a decoder-only causal LM"),
             ("someone/not-cached-model", "nor a model id in the local Hugging Face cache")]
    for source, message in cases:
        for args in (["tune", "--from-model", source, "-s", "8", "--dtype", "fp32", "--db", str(tmp_path / "t.db")],
                     ["compare", "--model", source, "--table", str(table), "-s", "8", "--dtype", "fp32"]):
            code, _, err = cli(capsys, *args)
            assert code == 2 and message in err, (args, err)
            assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from attnbench import __version__
from tests.clitools import cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ["-b", "1", "-H", "2", "-s", "32", "-d", "16", "--samples", "5", "--min-samples", "5",
        "--warmup-ms", "0", "-q"]


def test_version(capsys):
    code, out, _ = cli(capsys, "--version")
    assert code == 0 and out.strip() == f"attnbench {__version__}"


def test_help_lists_each_command_on_unbroken_lines(capsys):
    import typer

    from attnbench.cli import app

    commands = typer.main.get_command(app).commands
    assert set(commands) == {"run", "list", "report", "runs", "compare", "env", "gate", "tune"}
    for name, command in commands.items():
        # the first paragraph of the docstring, whole and on one line (rich keeps a docstring's line breaks)
        assert command.short_help and "\n" not in command.short_help, name
        assert command.short_help.rstrip(".") in " ".join(command.help.split()), name
    code, out, _ = cli(capsys, "--help")
    assert code == 0 and "whether\n" not in out


def test_run_then_report_md_and_json(capsys, tmp_path):
    db = str(tmp_path / "r.db")
    code, out, err = cli(capsys, "run", *TINY, "--db", db, "-i", "sdpa-math,sdpa-efficient",  # a comma list
                         "-i", "tests.fixtures.kernels:blockwise_qkv")                           # and repeated
    assert code == 0, err
    assert "| B1 H2 S32 D16 fp32 | sdpa-math | ok |" in out
    assert "| sdpa-efficient | unsupported |" in out and "needs a CUDA GPU" in out
    assert "tests.fixtures.kernels:blockwise_qkv | incorrect |" in out
    assert "## Methods" in out and "Timer `host`" in out
    code, out, _ = cli(capsys, "report", "--db", db, "--format", "json")
    data = json.loads(out)
    assert [m["status"] for m in data["measurements"]] == ["ok", "unsupported", "incorrect"]
    ok = data["measurements"][0]
    # On a CPU the sweep is measured three times by default (--repeats): one measurement per cell pooling
    # 3 x 5 samples in 3 x 5 batches, with each repeat recorded and the spread across them in the summary.
    assert len(ok["samples_ms"]) == 15 and ok["batch_sizes"] == [1] * 15 and ok["summary"]["median_ms"] > 0
    assert [r["repeat"] for r in ok["extra"]["repeats"]] == [1, 2, 3] and ok["summary"]["repeats"] == 3
    assert ok["summary"]["repeat_spread"] >= 0 and ok["summary"]["batches"] == 15
    assert ok["summary"]["ci95_ms"][0] <= ok["summary"]["median_ms"] <= ok["summary"]["ci95_ms"][1]
    assert data["measurements"][2]["summary"]["median_ms"] is None  # incorrect: no timing reported
    code, out, _ = cli(capsys, "runs", "--db", db)
    assert code == 0 and "complete" in out and "3 measurements" in out


def test_run_with_masks_takes_each_impl_or_says_why_not(capsys, tmp_path):
    db = str(tmp_path / "r.db")
    code, out, err = cli(capsys, "run", *TINY, "--db", db, "-i", "reference,sdpa-math",
                         "--mask", "window:8,document:rand:3", "--score-mod", "softcap:20")
    assert code == 0, err
    assert "| B1 H2 S32 D16 fp32 window:8 softcap:20 | reference | ok |" in out
    assert "| B1 H2 S32 D16 fp32 docs:3(rand) softcap:20 | reference | ok |" in out
    assert out.count("| sdpa-math | unsupported |") == 2 and "SDPA cannot express softcap" in out
    code, out, err = cli(capsys, "run", *TINY, "--db", db, "-i", "sdpa-math", "--mask", "window:8",
                         "--score-mod", "alibi")
    assert code == 0, err
    assert "| B1 H2 S32 D16 fp32 window:8 alibi | sdpa-math | ok |" in out


def test_resume_with_nothing_to_resume_says_it_starts_a_new_run(capsys, tmp_path):
    db = str(tmp_path / "r.db")
    code, _, err = cli(capsys, "run", *TINY, "--db", db, "-i", "reference", "--repeats", "1", "--resume")
    assert code == 0 and f"--resume: no unfinished run of this sweep (same shapes, impls and options) in {db}" in err
    code, _, err = cli(capsys, "run", *TINY, "--db", db, "-i", "reference", "--repeats", "1", "--resume")
    assert code == 0 and "no unfinished run" in err  # the first one completed: nothing to finish
    code, out, _ = cli(capsys, "runs", "--db", db)
    assert out.count("complete") == 2


def test_run_repeats_option(capsys, tmp_path):
    db = str(tmp_path / "r.db")
    code, out, err = cli(capsys, "run", *TINY, "--db", db, "-i", "sdpa-math", "--repeats", "2")
    assert code == 0, err
    assert "n=10 in 10 batches fixed" in out and "spread across 2 repeats" in out
    assert "Repeats: the sweep was measured 2 times" in out
    # a pooled cell's "converged ±1.3%" under a 1% target is explained, not left to contradict the Methods
    assert "Its stop reason is each repeat's (joined by / where they differ) and its ± the half-width" in out
    code, out, err = cli(capsys, "run", *TINY, "--db", db, "-i", "sdpa-math", "--repeats", "1")
    assert code == 0 and "n=5 in 5 batches fixed" in out and "Repeats: the sweep" not in out


@pytest.mark.parametrize("args, msg", [
    (["run", "-s", "8", "--repeats", "0"], "--repeats must be at least 1"),
    (["run", "-b", "0", "-H", "2", "-s", "8", "-d", "8"], "batch must be a positive integer"),
    (["run", "-b", "1", "-H", "4", "--kv-heads", "3", "-s", "8", "-d", "8"], "must divide q_heads"),
    (["run", "--preset", "nope"], "unknown preset 'nope'"),
    (["run", "-b", "1", "-H", "2", "-s", "64,,128"], "empty item in the comma list '64,,128'"),
    (["run", "-s", "8", "--dtype", "fp32,"], "empty item in the comma list 'fp32,'"),
    (["run", "--preset", "cpu-smoke", "-b", "2"], "cannot be combined"),
    (["run", "-s", "8", "--impl", "nope"], "unknown impl 'nope'"),
    (["run", "-s", "8", "--timer", "cold"], "needs a CUDA GPU"),
    (["run", "-s", "8", "--timer", "bogus"], "choose auto (the default), cold, warm, graph, graph-warm, host"),
    (["run", "-s", "8", "--warmup-ms", "-1"], "--warmup-ms must be >= 0, got -1.0"),
    (["run", "-s", "8", "--max-time-ms", "5"], "--min-time-ms must be between 0 and --max-time-ms (5.0), got 20.0"),
    (["compare", "-i", "sdpa-math", "-i", "reference", "-s", "8", "--warmup-ms", "-1"], "--warmup-ms must be >= 0"),
    (["compare", "-i", "sdpa-math", "-i", "reference", "-s", "8", "--max-time-ms", "-1"], "--max-time-ms must be >= 0"),
    (["gate", "--update", "--baseline", "b.json", "-s", "8", "--warmup-ms", "-1"], "--warmup-ms must be >= 0"),
    (["run", "--device", "tpu"], "unknown device"),
    (["compare", "1", "2", "-b", "4", "--rounds", "5"], "drop --batch, --rounds (they go with --impl A --impl B)"),
    (["compare", "1", "2", "--no-causal", "--samples", "9"], "stored runs are compared as they were measured; drop"),
    (["tune", "-s", "8", "--plan-impl", "reference"], "--latency-budget and --plan-impl go with --objective throughput"),
    (["gate", "--baseline", "b.json", "--reason", "agreed"], "--reason goes with --accept CELL"),
    (["report", "abc"], "run id must be a number"),
    (["report", "99"], "no run"),
    (["report", "--format", "pdf"], "--format must be md, json"),
    (["run", "-s", "8", "--mask", "diagonal"], "unknown mask 'diagonal'"),
    (["run", "-s", "8", "--mask", "window:4", "--causal"], "give --mask or --causal, not both"),
    (["run", "-s", "8", "--score-mod", "softcap:-1"], "the cap must be > 0"),
    # -o is checked before anything is measured or rendered: no traceback after a tune's racing
    (["report", "-o", "no-such-folder/r.html"], "--output no-such-folder/r.html: folder does not exist"),
    (["report", "-o", "."], "--output . is a folder"),
    (["tune", "-s", "8", "-o", "no-such-folder/d.json"], "folder does not exist"),
    (["gate", "--update", "--baseline", ".", "-s", "8"], "--baseline . is a folder; give the file"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, msg):
    from attnbench.store import Store

    Store(tmp_path / "r.db").close()  # an empty database: report's run ids are checked against it
    code, out, err = cli(capsys, *args, "--db", str(tmp_path / "r.db"))
    assert code == 2
    assert msg in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("args", [["report"], ["report", "--history"], ["runs"], ["compare", "1", "2"]])
def test_reading_commands_never_create_a_database(capsys, tmp_path, args):
    db = tmp_path / "typo.db"
    code, _, err = cli(capsys, *args, "--db", str(db))
    assert code == 2 and err.strip() == f"attnbench: error: no results database at {db}; start one with `attnbench run`"
    assert not db.exists()


def test_list_says_what_runs_here(capsys):
    code, out, _ = cli(capsys, "list")
    assert code == 0
    assert "sdpa-math" in out and "flex" in out and "reference" in out
    assert "sdpa-cudnn" in out and "no: needs a CUDA GPU" in out
    # the descriptions start in one column, after the longest "no: ..." reason of this machine
    rows = {line.split()[0]: line for line in out.splitlines()
            if line.startswith("  ") and line.split()[0] in ("sdpa-math", "sdpa-cudnn")}
    starts = {name: row.index(d) for name, row, d in ((n, rows[n], "SDPA restricted") for n in rows)}
    assert len(starts) == 2 and len(set(starts.values())) == 1, out


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_killed_run_resumes_from_the_command_line(tmp_path, sig, code):
    """Ctrl-C, or SIGTERM (a CI job's timeout, a batch scheduler's kill): the run is marked interrupted."""
    db = tmp_path / "r.db"
    cmd = [sys.executable, "-m", "attnbench", "run", "-b", "1", "-H", "2", "-s", "16,32,48,64", "-d", "16",
           "--samples", "5", "--min-samples", "5", "--warmup-ms", "0", "-q",
           "-i", "tests.fixtures.kernels:slow", "--db", str(db)]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 60
    count = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(db) as con:
                    count = con.execute("SELECT COUNT(*) FROM measurements").fetchone()[0]
            except sqlite3.Error:
                count = 0
        if count >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code
    assert "--resume" in err and "Traceback" not in err
    with sqlite3.connect(db) as con:
        before = dict(con.execute("SELECT workload_key, id FROM measurements").fetchall())
        status = con.execute("SELECT status FROM runs").fetchone()[0]
    assert 1 <= len(before) < 4 and status == "interrupted"

    done = subprocess.run(cmd + ["--resume"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "no unfinished run" not in done.stderr
    with sqlite3.connect(db) as con:
        after = dict(con.execute("SELECT workload_key, id FROM measurements").fetchall())
        runs = con.execute("SELECT run_id, status FROM runs").fetchall()
    assert len(after) == 4 and runs == [(1, "complete")]
    assert all(after[k] == before[k] for k in before)  # stored rows were not measured again


def test_env_on_the_cpu_says_no_gpu_and_caches_ceilings(capsys, tmp_path):
    db = str(tmp_path / "r.db")
    code, out, _ = cli(capsys, "env")
    assert code == 0 and "env_id:" in out and "no CUDA GPU is present" in out
    code, out, _ = cli(capsys, "env", "--format", "json", "--ceilings", "--db", db)
    data = json.loads(out)
    assert code == 0 and data["fingerprint"]["device_kind"] == "cpu"
    assert data["ceilings"]["gbps"] > 0 and "host-timed" in data["ceilings"]["note"]
    from attnbench.store import Store

    with Store(db) as s:
        assert s.get("ceilings", data["env_id"])["gbps"] == data["ceilings"]["gbps"]
    code, _, err = cli(capsys, "env", "--format", "xml")
    assert code == 2 and "--format must be text or json" in err


def _interrupt(*args, **kwargs):
    raise KeyboardInterrupt


def test_interrupted_tune_and_gate_say_what_was_kept(capsys, tmp_path, monkeypatch):
    db = str(tmp_path / "r.db")
    from attnbench.gate import orchestrate
    from attnbench.tune import tuner

    monkeypatch.setattr(tuner, "tune", _interrupt)
    code, _, err = cli(capsys, "tune", "-b", "1", "-H", "2", "-s", "16", "-d", "16", "-i", "sdpa-math", "--db", db)
    assert code == 130 and "interrupted; each workload tuned to the end is cached in" in err, err
    monkeypatch.setattr(orchestrate, "run_gate", _interrupt)
    base = tmp_path / "base.json"
    code, _, err = cli(capsys, "gate", "--update", "--baseline", str(base), "-b", "1", "-H", "2", "-s", "16",
                       "-d", "16", "-i", "sdpa-math", "--db", db)
    assert code == 130 and f"interrupted; nothing was decided and {base} was not changed" in err, err
    assert not base.exists()


def test_tune_says_the_baseline_races_beside_the_impls_given(capsys, tmp_path):
    import typer

    from attnbench.cli import app

    helps = {p.name: p.help for p in typer.main.get_command(app).commands["tune"].params}
    assert "the --baseline impl races too" in helps["impl"] and "always a candidate" in helps["baseline"]
    code, out, err = cli(capsys, "tune", "-b", "1", "-H", "2", "-s", "16", "-d", "16", "-i", "reference",
                         "--budget", "2s", "--samples", "10", "-q", "--db", str(tmp_path / "r.db"))
    assert code == 0, err
    assert "| sdpa-auto |" in out and "| reference |" in out  # the one impl given, and the baseline beside it


def test_env_ceilings_with_a_bad_db_fails_before_measuring(capsys, tmp_path, monkeypatch):
    from attnbench.analysis import device

    monkeypatch.setattr(device, "measure_ceilings", lambda dev: pytest.fail("measured before the --db check"))
    code, _, err = cli(capsys, "env", "--ceilings", "--db", str(tmp_path / "missing" / "r.db"))
    assert code == 2 and "database folder does not exist" in err


def test_runs_names_the_device_of_each_run_and_every_device_of_a_mixed_one(capsys, tmp_path):
    """`attnbench runs` gave an environment hash only, and for a run on two GPUs only the first."""
    from attnbench.spec import Workload
    from attnbench.store import Measurement, Store

    db = str(tmp_path / "r.db")
    w = Workload(1, 2, 2, 32, 32, 16, dtype="fp32")
    with Store(db) as s:
        s.add_environment("e100", {"device_kind": "cuda", "gpu_name": "NVIDIA H100 80GB HBM3"})
        s.add_environment("e200", {"device_kind": "cuda", "gpu_name": "NVIDIA H200"})
        rid = s.start_run("e100", {}, name="two gpus")
        for env, impl in (("e100", "a"), ("e200", "b")):
            s.add(rid, Measurement(workload=w, impl=impl, status="ok", samples_ms=(1.0,), env_id=env, timer="cold"))
        s.finish_run(rid)
        assert s.run_env_ids(rid) == ["e100", "e200"]
    code, out, _ = cli(capsys, "runs", "--db", db)
    assert code == 0 and "2 measurements  NVIDIA H100 80GB HBM3 (env e100) + NVIDIA H200 (env e200)  two gpus" in out

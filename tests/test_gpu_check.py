"""scripts/gpu_check.sh on the CPU: every command its sections would run, parsed by that command's own parser."""

import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"
PLUGIN = re.compile(r"tests\.fixtures\.[\w.]+:\w+")


def knobs() -> set[str]:
    """The environment variables the script reads with a default (${NAME:-...})."""
    return set(re.findall(r"\$\{([A-Z_]+):-", SCRIPT.read_text()))


def documented_examples() -> list[tuple[dict[str, str], list[str]]]:
    """The example calls in the script's comments: `#   NAME=VALUE ... scripts/gpu_check.sh SECTION ...`."""
    out = []
    for line in SCRIPT.read_text().splitlines():
        line = line.strip()
        if not line.startswith("#") or "scripts/gpu_check.sh" not in line:
            continue
        try:
            words = shlex.split(line.lstrip("#"), comments=True)
        except ValueError:   # prose with an apostrophe: not an example
            continue
        at = words.index("scripts/gpu_check.sh")
        if at and all(re.fullmatch(r"[A-Z_]+=.*", w) for w in words[:at]):
            out.append((dict(w.split("=", 1) for w in words[:at]), words[at + 1:]))
    return out


def usage_sections() -> list[str]:
    """The section names in the script's `# Sections:` comment, the benchmark groups in its `(= ...)` included."""
    text = SCRIPT.read_text()
    listed = re.search(r"^# Sections: (.*)\n# \(= (.*?)\)", text, re.M)
    names = re.split(r"[,\s]+", listed.group(1) + " " + listed.group(2))
    return [n for n in names if n and n != "all" and not n.startswith("(")]


def dry_run(out: Path, sections: list[str], env: dict[str, str] | None = None) -> list[tuple[list[str], str | None]]:
    """(argv, stdin) of each command `DRY_RUN=1 scripts/gpu_check.sh SECTIONS` records, in order."""
    base = {k: v for k, v in os.environ.items() if k not in knobs()}
    proc = subprocess.run(["bash", str(SCRIPT), *sections], capture_output=True, text=True, timeout=120,
                          env={**base, **(env or {}), "DRY_RUN": "1", "OUT": str(out)})
    assert proc.returncode == 0, proc.stderr
    calls = []
    for f in sorted((out / "dry-run").glob("*.args")):
        argv = [a.decode() for a in f.read_bytes().split(b"\0")[:-1]]
        stdin = f.with_suffix(".stdin")
        calls.append((argv, stdin.read_text() if stdin.exists() else None))
    assert proc.stdout.count("\n+ ") == len(calls), "every recorded command is printed, after a +"
    return calls


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """{label: recorded calls}: the default (`all`), and each documented example."""
    out = {"all": dry_run(tmp_path_factory.mktemp("all"), [])}
    for i, (env, sections) in enumerate(documented_examples()):
        label = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), *sections])
        out[label] = dry_run(tmp_path_factory.mktemp(f"example{i}"), sections, env)
    return out


def _bench(path: Path):
    sys.path.insert(0, str(path.parent))   # ncu_cache_probe imports timer_accuracy as run from its folder
    try:
        spec = importlib.util.spec_from_file_location(f"gpu_check_{path.stem}", path)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(path.parent))
    return mod


def check_impls(names) -> None:
    from attnbench.impls import resolve

    for name in [names] if isinstance(names, str) else names:
        for n in name.split(","):
            resolve(n.strip())


def check_attnbench(args: list[str]) -> None:
    """Parse `attnbench ARGS` with the CLI's click parser, then the values the command would turn into objects."""
    import click
    from typer.main import get_command

    from attnbench.cli import app
    from attnbench.cli.options import build_workloads
    from attnbench.execute.cluster import parse_executor
    from attnbench.measure.timing import TIMER_MODES, policy_from_options
    from attnbench.spec import load_preset
    from attnbench.tune.tuner import expand_ellipsis, parse_duration

    group = get_command(app)
    root = click.Context(group, info_name="attnbench")
    cmd = group.get_command(root, args[0])
    assert cmd is not None, f"no attnbench command {args[0]!r}"
    try:
        p = cmd.make_context(args[0], list(args[1:]), parent=root).params
    except click.ClickException as exc:
        raise AssertionError(f"attnbench {shlex.join(args)}: {exc.format_message()}") from None
    if p.get("impl"):
        check_impls(p["impl"])
    if p.get("preset"):
        load_preset(p["preset"])
    if p.get("timer"):
        assert p["timer"] in ("auto", *TIMER_MODES), p["timer"]
    if p.get("executor"):
        parse_executor(p["executor"])
    shape = ("preset", "sweep", "batch", "heads", "kv_heads", "seq", "kv_seq", "dim", "dtype", "causal", "direction")
    if all(k in p for k in shape) and not p.get("from_model") and not p.get("model") and not p.get("run_ids"):
        v = {k: p[k] for k in shape}
        if v["sweep"] is not None:
            v["sweep"] = ROOT / v["sweep"]   # the script runs from the repository root
        if args[0] == "tune":
            v["batch"] = expand_ellipsis(v["batch"])
        assert build_workloads(*v.values(), "cuda", mask=p.get("mask"), score_mod=p.get("score_mod"))
    if args[0] == "run":
        policy_from_options(samples=p["samples"], min_samples=p["min_samples"], max_samples=p["max_samples"],
                            warmup_ms=p["warmup_ms"], min_time_ms=p["min_time_ms"], max_time_ms=p["max_time_ms"],
                            target_precision=p["target_precision"])
    if args[0] == "tune":
        parse_duration(p["budget"])
        parse_duration(p["budget_total"], "--budget-total")


def check_benchmark(path: Path, args: list[str]) -> None:
    """Parse ARGS with the benchmark's own parser (build_parser: nothing runs), then the names it was given."""
    from attnbench.spec import load_preset
    from attnbench.tune.tuner import parse_duration

    mod = _bench(path)
    assert hasattr(mod, "build_parser"), f"{path.name} has no build_parser(): its flags cannot be checked"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = mod.build_parser().parse_args(args)
    except SystemExit:
        raise AssertionError(f"{path.name} {shlex.join(args)}: {err.getvalue().strip()}") from None
    if getattr(ns, "preset", None):
        load_preset(ns.preset)
    for name in ("impl", "impls"):
        if getattr(ns, name, None):
            check_impls(ns.impl if name == "impl" else ns.impls)
    if isinstance(getattr(ns, "budget", None), str):
        parse_duration(ns.budget)
    for argv in getattr(mod, "attnbench_commands", lambda ns: [])(ns):   # the attnbench children it starts
        check_attnbench(argv)


def check_call(argv: list[str], stdin: str | None) -> None:
    """One recorded command, checked by what it runs; a command of an unknown form fails."""
    if argv[0] == "nvidia-smi":
        return
    assert argv[0] == "python3", argv
    args = argv[1:]
    if args[:2] == ["-m", "attnbench"]:
        check_attnbench(args[2:])
    elif args[0] == "-c":
        compile(args[1], "<python3 -c>", "exec")
    elif args[0] == "-":
        compile(stdin, "<python3 - (here-document)>", "exec")
    elif args[:2] == ["-m", "pytest"]:
        assert "-m" in args[2:] and args[args.index("-m", 2) + 1] == "gpu"
        assert '"gpu:' in (ROOT / "pyproject.toml").read_text(), "the gpu marker is registered"
        assert (ROOT / args[-1]).is_dir(), args[-1]
    elif args[:3] == ["-m", "pip", "install"]:
        assert "--target" in args, "adapters installs into a folder of its own, never into the machine's site"
    elif args[0].startswith("benchmarks/") and args[0].endswith(".py"):
        assert (ROOT / args[0]).is_file(), args[0]
        check_benchmark(ROOT / args[0], args[1:])
    elif args[0] == "scripts/run_summary.py":
        assert 1 <= len(args[1:]) <= 2, "usage: run_summary.py DB [RUN]"
    else:
        raise AssertionError(f"a command of a form this test does not check: {shlex.join(argv)}")
    for arg in args:
        check_impls(PLUGIN.findall(arg))


def test_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_documented_examples_are_found():
    examples = documented_examples()
    named = {k for env, _ in examples for k in env}
    assert {"WORKLOAD_PARTS", "TRITON_FA_ARGS", "CORRECTNESS_ARGS", "TUNE_MODE"} <= named
    assert named <= knobs(), "an example sets a variable the script does not read"


def test_every_command_parses_with_its_own_parser(runs):
    failures = []
    seen = set()
    for label, calls in runs.items():
        for argv, stdin in calls:
            key = (tuple(argv), stdin)
            if key in seen:
                continue
            seen.add(key)
            try:
                check_call(argv, stdin)
            except Exception as exc:   # every failing command at once, each with the run it came from
                failures.append(f"[{label}] {shlex.join(argv)}\n    {type(exc).__name__}: {exc}")
    assert not failures, "\n".join(failures)


def test_all_runs_every_section_and_every_benchmark(runs):
    scripts = {a[1] for a, _ in runs["all"] if a[0] == "python3" and a[1].startswith("benchmarks/")}
    assert scripts == {f"benchmarks/{p.name}" for p in (ROOT / "benchmarks").glob("*.py")}
    subs = {a[3] for a, _ in runs["all"] if a[1:3] == ["-m", "attnbench"]}
    assert {"run", "report", "env", "compare", "tune", "list"} <= subs


def test_each_documented_section_runs_commands(tmp_path):
    preamble = len(dry_run(tmp_path / "none", ["no-such-section"]))
    for section in usage_sections():
        calls = dry_run(tmp_path / section, [section])
        assert len(calls) > preamble, f"section {section!r} (in the script's usage) runs nothing"

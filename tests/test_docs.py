"""What users copy from README.md, docs/*.md and benchmarks/README.md is true: every `attnbench ...` line parses
with the real CLI and its values are valid, benchmark command lines parse with their scripts' parsers, Python
blocks run on the CPU (or, where they need a GPU, a model or the user's own data, compile and resolve against the
package), referenced repository paths exist, and the output the README shows is what the command prints."""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:   # Python 3.10: the tomli backport, a dependency there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]

# Blocks not checked as commands or code, each marked in its file by the HTML comment just above it. The test
# fails when the marked blocks and this list differ, so a new exclusion is seen in review.
EXCLUDED = {
    ("README.md", "output", "| workload | impl | status | median ms [95% CI] |"),   # H100 output (checked below)
    ("README.md", "output", "| B2 H4 S128 D32 fp32 | tests.fixtures.kernels:blockwise_qkv |"),  # checked below
    ("docs/gate.md", "output", "{"),   # the baseline file's shape, with ... where its contents go
}

FENCE = re.compile(r"^(?:<!-- ([\w-]+) -->\n)?```(\w*)\n(.*?)^```", flags=re.S | re.M)


def blocks(path: Path):
    """(marker, language, text, line) of every fenced block; marker is the `<!-- marker -->` line above it."""
    text = path.read_text(encoding="utf-8")
    return [(m.group(1), m.group(2), m.group(3), text.count("\n", 0, m.start()) + 1) for m in FENCE.finditer(text)]


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


ALL = [(rel(p), *b) for p in DOCS for b in blocks(p)]


def test_the_exclusions_are_the_marked_blocks():
    marked = [(doc, marker, text) for doc, marker, _, text, _ in ALL if marker in ("output", "gpu-only")]
    matched = {e for e in EXCLUDED for doc, marker, text in marked if e[:2] == (doc, marker) and text.startswith(e[2])}
    assert matched == EXCLUDED and len(marked) == len(EXCLUDED), marked


# -- command lines --------------------------------------------------------------------------------------------

def shell_commands(text: str):
    """Each simple command of a shell block, as argv: continuations joined, comments dropped, split at && and &."""
    text = text.replace("\\\n", " ")
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        cmd: list[str] = []
        for w in words + ["&&"]:
            if w in ("&&", "&", ";", "||"):
                if cmd:
                    yield cmd
                cmd = []
            else:
                cmd.append(w)


INLINE = re.compile(r"`((?:attnbench|python3?|[A-Z_]+=|(?:scripts/|benchmarks/)?\w+\.(?:py|sh) )[^`]*)`")


def inline_commands(path: Path):
    """Inline `attnbench ...` / `python ...` spans in prose (not in fenced blocks), as argv."""
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.S | re.M)
    for m in INLINE.finditer(text):
        span = m.group(1)
        if span.startswith("attnbench") and not span.startswith("attnbench "):
            continue   # a Python name (attnbench.attention), not a command
        if "..." in span.split():
            continue   # `attnbench run ... --resume`: an elided command, named in prose
        yield from shell_commands(span)


def _commands():
    out = []
    for doc, marker, lang, text, line in ALL:
        if marker in ("output", "gpu-only") or lang not in ("", "bash", "sh", "console"):
            continue
        if text.lstrip().startswith(("{", '"', "|")):
            continue   # JSON fragments are checked by test_json_fragments
        out += [(f"{doc}:{line}", argv) for argv in shell_commands(text)]
    for p in DOCS:
        out += [(rel(p), argv) for argv in inline_commands(p)]
    return out


COMMANDS = _commands()
ATTNBENCH = [(where, argv) for where, argv in COMMANDS if argv[0] == "attnbench"]


def _bench(argv):
    """['benchmarks/X.py', args...] of `python benchmarks/X.py ...`, `benchmarks/X.py ...` or `X.py ...` (a
    benchmark named in the benchmarks' own prose); None for anything else."""
    argv = argv[1:] if argv[0] in ("python", "python3") else argv
    if not argv or not argv[0].endswith(".py"):
        return None
    script = argv[0] if "/" in argv[0] else f"benchmarks/{argv[0]}"
    return [script, *argv[1:]] if script.startswith("benchmarks/") else None


BENCH = [(where, _bench(argv)) for where, argv in COMMANDS if _bench(argv)]
GPU_CHECK = [(where, argv) for where, argv in COMMANDS
             if any(w.endswith("gpu_check.sh") for w in argv) and "DRY_RUN=1" not in argv]


def test_the_docs_have_commands():
    docs = {where.split(":")[0] for where, _ in ATTNBENCH}
    assert {"README.md", "docs/gate.md", "docs/gpu-results.md", "docs/methods.md"} <= docs
    assert len(ATTNBENCH) > 40 and len(BENCH) >= 10 and len(GPU_CHECK) >= 8


PLACEHOLDER_IMPLS = ("mypkg.", "mykern", "./mine.py", "./kernels/mine.py")


def _check_impl(name: str) -> None:
    from attnbench.impls import registry, resolve

    if name.startswith(PLACEHOLDER_IMPLS):
        return   # the reader's own kernel
    if ":" in name:
        resolve(name)   # a kernel of this repository (tests.fixtures...): it must load
    else:
        assert name in registry(include_absent=True), f"no impl {name!r}"


def _check_values(name: str, params: dict) -> None:
    """The values click cannot judge, judged by the functions the command itself calls."""
    from attnbench.cli.options import build_workloads, split_impls
    from attnbench.measure.timers import TIMER_MODES
    from attnbench.spec import preset_names
    from attnbench.tune.tuner import expand_ellipsis, parse_duration, parse_ms

    formats = {"run": "md json", "compare": "md json", "tune": "md json", "gate": "md json",
               "report": "md json csv html", "env": "text json"}
    if params.get("fmt") is not None:
        assert params["fmt"] in formats[name].split(), f"--format {params['fmt']}"
    if params.get("timer") not in (None, "auto"):
        assert params["timer"] in TIMER_MODES, f"--timer {params['timer']}"
    if params.get("preset") is not None:
        assert params["preset"] in preset_names(), f"--preset {params['preset']}"
    for impl in split_impls(params.get("impl")):
        _check_impl(impl)
    executor = params.get("executor")
    if executor is not None:
        assert executor in ("inproc", "gpus") or executor.startswith("dask://"), f"--executor {executor}"
    if params.get("budget") is not None:
        parse_duration(params["budget"])
    if params.get("latency_budget") is not None:
        parse_ms(params["latency_budget"])
    shape_keys = ("batch", "heads", "kv_heads", "seq", "kv_seq", "dim", "dtype", "causal", "direction", "mask",
                  "score_mod")
    if name in ("run", "compare", "tune", "gate") and not params.get("model") and not params.get("from_model") \
            and not params.get("sweep") and any(params.get(k) is not None for k in shape_keys):
        workloads, _ = build_workloads(params.get("preset"), None, expand_ellipsis(params.get("batch")),
                                       params.get("heads"), params.get("kv_heads"), params.get("seq"),
                                       params.get("kv_seq"), params.get("dim"), params.get("dtype"),
                                       params.get("causal"), params.get("direction"), "cuda",
                                       mask=params.get("mask"), score_mod=params.get("score_mod"))
        assert workloads


@pytest.mark.parametrize("where, argv", ATTNBENCH, ids=[" ".join(a)[:90] for _, a in ATTNBENCH])
def test_attnbench_command_parses(where, argv):
    import click
    import typer.main

    from attnbench.cli import app

    group = typer.main.get_command(app)
    ctx = click.Context(group, info_name="attnbench")   # the docs give no root options (--version)
    name, *rest = argv[1:]
    command = group.get_command(ctx, name)
    assert command is not None, f"{where}: no command {name!r}"
    if not rest and where.endswith(".md"):
        return   # `attnbench gate` in prose names the command; the lines that run it give its options
    sub = command.make_context(name, rest, parent=ctx)   # unknown flags, bad types, missing values raise
    _check_values(name, sub.params)


def _parser(script: str):
    spec = importlib.util.spec_from_file_location(f"docs_{Path(script).stem}", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


@pytest.mark.parametrize("where, argv", BENCH, ids=[" ".join(a)[:90] for _, a in BENCH])
def test_benchmark_command_parses(where, argv):
    script, *args = argv
    assert (ROOT / script).is_file(), f"{where}: no {script}"
    _parser(script).parse_args(args)   # SystemExit(2) on a flag the script does not have


@pytest.mark.parametrize("where, argv", GPU_CHECK, ids=[" ".join(a)[:90] for _, a in GPU_CHECK])
def test_gpu_check_call_names_its_sections_and_knobs(where, argv):
    from tests.test_gpu_check import knobs, usage_sections

    at = next(i for i, w in enumerate(argv) if w.endswith("gpu_check.sh"))
    for word in argv[:at]:
        assert re.fullmatch(r"[A-Z_]+=.*", word) and word.split("=")[0] in knobs(), f"{where}: {word}"
    assert argv[at + 1:], f"{where}: no section"
    unknown = [w for w in argv[at + 1:] if w not in usage_sections()]
    assert not unknown, f"{where}: gpu_check.sh has no section {unknown}"


def test_scripts_named_in_commands_exist():
    for where, argv in COMMANDS:
        for word in argv:
            if re.fullmatch(r"(scripts|benchmarks)/[\w.-]+\.(sh|py)", word):
                assert (ROOT / word).is_file(), f"{where}: {word}"


# -- paths -------------------------------------------------------------------------------------------------------

PATH = re.compile(r"(?<![\w/.-])((?:src|tests|docs|benchmarks|scripts|\.github|\.ci)/[\w./*<>-]*[\w*])")
LINK = re.compile(r"\]\(((?!https?:|#)[^)\s]+)\)")


def _paths():
    out = []
    for p in DOCS:
        text = p.read_text(encoding="utf-8")
        for m in list(PATH.finditer(text)) + list(LINK.finditer(text)):
            out.append((rel(p), m.group(1).split("#")[0], p.parent if m.re is LINK else ROOT))
    return out


@pytest.mark.parametrize("doc, path, base", _paths(), ids=lambda x: str(x)[:60])
def test_referenced_path_exists(doc, path, base):
    if "<" in path:   # cli/<command>.py: a pattern with a placeholder
        path = path.split("<")[0]
    hits = list(base.glob(path)) if "*" in path else [base / path]
    assert hits and all(h.exists() for h in hits), f"{doc}: {path} does not exist"


# -- Python ------------------------------------------------------------------------------------------------------

def python_blocks():
    return [(f"{doc}:{line}", text) for doc, marker, lang, text, line in ALL if lang == "python"]


def _resolve_names(where: str, text: str) -> list[str]:
    """Imports run; every attnbench.X.Y attribute chain named in the code exists. Returns the import lines and
    chains resolved."""
    import attnbench

    done = []
    for line in text.splitlines():
        if re.match(r"\s*(from|import)\s+attnbench\b", line):
            exec(line.strip(), {})
            done.append(line.strip())
    for chain in re.findall(r"\battnbench(?:\.\w+)+", text):
        done.append(chain)
        obj = attnbench
        parts = chain.split(".")[1:]
        for i, part in enumerate(parts):
            if not hasattr(obj, part):
                obj = importlib.import_module(".".join(["attnbench", *parts[:i + 1]]))
            else:
                obj = getattr(obj, part)
    return done


@pytest.mark.parametrize("where, text", python_blocks(), ids=[w for w, _ in python_blocks()])
def test_python_block_compiles_and_its_names_resolve(where, text):
    """Each block compiles, and what it takes from attnbench (imports, attribute chains) exists: a block that
    names nothing of attnbench would check nothing here, so that fails too."""
    assert compile(text, where, "exec").co_filename == where
    assert _resolve_names(where, text), f"{where}: the block uses nothing from attnbench"


def test_readme_attention_snippet_runs_on_the_cpu(tmp_path, monkeypatch):
    """README's `attnbench.attention(q, k, v, is_causal=True, table="dispatch.json")`, with a table tuned here."""
    import torch

    from tests.clitools import cli

    snippet = next(t for w, t in python_blocks() if w.startswith("README.md") and "attnbench.attention(" in t)
    monkeypatch.chdir(tmp_path)
    code = _run_cli(cli, "tune", "-b", "1", "-H", "2", "-s", "32", "-d", "16", "--causal", "-i", "sdpa-math",
                    "--budget", "2s", "--samples", "10", "--db", "t.db", "-o", "dispatch.json", "-q")
    assert code == 0 and (tmp_path / "dispatch.json").is_file()
    q, k, v = (torch.randn(1, 2, 32, 16) for _ in range(3))
    names = {"q": q, "k": k, "v": v}
    exec(snippet, names)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(names["out"], ref)


def _run_cli(cli, *args) -> int:
    import sys

    from attnbench.cli import main

    try:
        main(list(args))
    except SystemExit as exc:
        return exc.code or 0
    finally:
        sys.stdout.flush()
    return 0


def test_entry_point_snippet_names_the_group_plugins_read():
    from attnbench.impls.plugins import ENTRY_POINT_GROUP

    toml = [t for doc, _, lang, t, _ in ALL if lang == "toml" and doc == "README.md"]
    data = tomllib.loads(toml[0])
    assert list(data["project"]["entry-points"]) == [ENTRY_POINT_GROUP]


def test_json_fragments_parse():
    """gate.md's thresholds fragment is what the baseline's `thresholds` key holds."""
    fragments = [t for _, marker, lang, t, _ in ALL if marker is None and lang == "" and t.lstrip().startswith('"')]
    assert fragments
    for text in fragments:
        data = json.loads("{" + text + "}")
        assert data


# -- what the README says the output shows ------------------------------------------------------------------------

def test_readme_incorrect_row_is_what_the_command_prints(tmp_path, capsys):
    """`attnbench run -i tests.fixtures.kernels:blockwise_qkv` on a CPU: the README's row, up to its numbers."""
    from tests.clitools import cli

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = next(line for line in readme.splitlines() if line.startswith("| B2 H4 S128 D32 fp32 | tests.fixtures"))
    command = re.search(r"`(attnbench run -i tests\.fixtures\.kernels:blockwise_qkv)`", readme)
    assert command, "README names the command that prints the row"
    code, out, err = cli(capsys, *shlex.split(command.group(1))[1:], "--db", str(tmp_path / "r.db"), "-q")
    assert code == 0, err
    printed = [line for line in out.splitlines() if "| tests.fixtures.kernels:blockwise_qkv |" in line]
    number = r"[-+0-9.e]+"
    cells = [c.strip() for c in shown.strip("|").split("|")]
    pattern = [number.join(re.escape(part) for part in re.split(r"\d[\d.]*(?:e[+-]?\d+)?", c)) for c in cells]
    cut = cells.index("...")
    head, tail = pattern[:cut], pattern[cut + 1:]
    for line in printed:
        got = [c.strip() for c in line.strip("|").split("|")]
        if all(re.fullmatch(p, g) for p, g in zip(head, got)) and \
                all(re.fullmatch(p, g) for p, g in zip(tail, got[len(got) - len(tail):])):
            return
    pytest.fail(f"README shows\n{shown}\nthe command printed\n" + "\n".join(printed))


def test_no_arguments_on_a_cpu_is_the_cpu_smoke_preset():
    from attnbench.cli.options import build_workloads
    from attnbench.spec import load_preset

    workloads, name = build_workloads(*[None] * 11, "cpu")
    assert name == "cpu-smoke" and workloads == list(load_preset("cpu-smoke").workloads)
    assert any(w.label.startswith("B2 H4 S128 D32 fp32") for w in workloads)

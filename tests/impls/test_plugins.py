"""plugins.load_object: module:function from the working directory, path/to/file.py:function, one-line errors."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from attnbench.errors import UserError
from attnbench.impls import plugins, resolve
from tests.clitools import cli

ROOT = Path(__file__).resolve().parents[2]
TINY = ["-b", "1", "-H", "2", "-s", "32", "-d", "16", "--samples", "3", "--min-samples", "3", "--warmup-ms", "0",
        "-q"]
KERNEL = textwrap.dedent('''
    """A user's kernel file."""
    import torch.nn.functional as F
    {extra}

    def attn(q, k, v, is_causal=False, enable_gqa=False, **_):
        """exact attention from a file"""
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, enable_gqa=enable_gqa)
''')


def write(path: Path, extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(KERNEL.format(extra=extra))
    return path


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A fresh folder as the working directory, which is not on sys.path (as for the `attnbench` script)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert str(work) not in sys.path and "" not in sys.path
    return work


def test_module_from_the_working_directory_without_staying_on_sys_path(workdir):
    write(workdir / "mykern_wd.py")
    before = list(sys.path)
    fn = plugins.load_object("mykern_wd:attn")
    assert fn.__doc__.strip() == "exact attention from a file"
    assert sys.path == before  # importable for the import only
    assert plugins.load_object("mykern_wd:attn") is fn


def test_package_module_from_the_working_directory(workdir):
    write(workdir / "kpkg_wd" / "inner.py")
    (workdir / "kpkg_wd" / "__init__.py").write_text("")
    assert callable(plugins.load_object("kpkg_wd.inner:attn"))


def test_file_path_relative_and_absolute_and_its_sibling_imports(workdir):
    (workdir / "kernels").mkdir()
    (workdir / "kernels" / "helper_wd.py").write_text("SCALE = 1.0\n")
    write(workdir / "kernels" / "mine.py", extra="from helper_wd import SCALE")
    rel = plugins.load_object("./kernels/mine.py:attn")
    again = plugins.load_object(str(workdir / "kernels" / "mine.py") + ":attn")
    assert callable(rel) and again is rel  # one module per file, however its path is spelled
    assert str(workdir / "kernels") not in sys.path
    assert plugins.load_object("kernels/mine.py:SCALE") == 1.0


@pytest.mark.parametrize("spec, setup, msg", [
    ("./nothere.py:attn", None, "no file ./nothere.py"),
    ("broken_wd.py:attn", ("broken_wd.py", "def attn(q, k, v:\n    return q\n"), "syntax error in "),
    ("broken_wd2:attn", ("broken_wd2.py", "x = 1\ndef attn(:\n"), "line 2"),
    ("raises_wd.py:attn", ("raises_wd.py", "x = 1\nraise RuntimeError('no GPU here\\nsecond line')\n"),
     "RuntimeError: no GPU here ("),
    ("needs_wd:attn", ("needs_wd.py", "import no_such_dependency_xyz\n"), "No module named 'no_such_dependency_xyz'"),
    ("mykern_missing:nope", ("mykern_missing.py", KERNEL.format(extra="")), "has no attribute 'nope' (it has: attn"),
    ("no_such_module_wd:attn", None, "cannot import no_such_module_wd: no module named 'no_such_module_wd'"),
    ("mykern_wd:", None, "expected a registered name"),
    ("my-kern:attn", None, "neither a module name nor a path"),
])
def test_errors_are_one_line(workdir, spec, setup, msg):
    if setup:
        (workdir / setup[0]).write_text(setup[1])
    with pytest.raises(UserError) as err:
        resolve(spec)
    text = str(err.value)
    assert msg in text, text
    assert len(text.splitlines()) == 1 and text.startswith(f"--impl {spec!r}")


def test_run_from_a_folder_through_the_cli(workdir, capsys):
    write(workdir / "mykern_cli.py")
    write(workdir / "kernels" / "mine_cli.py")
    code, out, err = cli(capsys, "run", *TINY, "--db", str(workdir / "r.db"), "-i", "mykern_cli:attn",
                         "-i", "./kernels/mine_cli.py:attn")
    assert code == 0, err
    assert "| mykern_cli:attn | ok |" in out and "| ./kernels/mine_cli.py:attn | ok |" in out
    code, out, err = cli(capsys, "run", *TINY, "--db", str(workdir / "r.db"), "-i", "./kernels/absent.py:attn")
    assert code == 2 and "no file ./kernels/absent.py" in err and len(err.strip().splitlines()) == 1


def test_console_script_in_a_folder(tmp_path):
    """As the installed `attnbench` script runs: sys.path[0] is the script's folder, not the working directory."""
    work, bin_dir = tmp_path / "work", tmp_path / "bin"
    bin_dir.mkdir()
    write(work / "mykern.py")
    launcher = bin_dir / "attnbench_script.py"
    launcher.write_text("import sys\nfrom attnbench.cli import main\nsys.exit(main())\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, str(launcher), "run", *TINY, "--db", "r.db", "-i", "mykern:attn"],
                          cwd=work, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| mykern:attn | ok |" in proc.stdout


# -- a user's kernel, as README's "Plugins" paragraph tells them to add it -----------------------------------------

USER_KERNELS = textwrap.dedent('''
    """A user's kernels: one exact, and the ways a kernel goes wrong."""
    import torch
    import torch.nn.functional as F


    def exact(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """my exact kernel"""
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal, scale=scale, enable_gqa=enable_gqa)


    def off_by_one_percent(q, k, v, **kw):
        return exact(q, k, v, **kw) * 1.01


    def chunks_qkv(q, k, v, is_causal=False, **kw):
        return torch.cat([exact(a, b, c, is_causal=is_causal) for a, b, c in
                          zip(q.chunk(2, dim=2), k.chunk(2, dim=2), v.chunk(2, dim=2))], dim=2)


    def prescales_q(q, k, v, is_causal=False, **kw):
        q *= q.shape[-1] ** -0.5      # in place; SDPA then scales again
        return F.scaled_dot_product_attention(q, k, v, is_causal=is_causal)


    def explodes(q, k, v, **kw):
        raise ValueError("my kernel blew up")


    def picky(q, k, v, **kw):
        return exact(q, k, v, **kw)


    picky.supports = lambda workload, device: None if workload.head_dim == 128 else "only head dim 128"


    def says_true(q, k, v, **kw):
        return exact(q, k, v, **kw)


    says_true.supports = lambda workload, device: workload.head_dim == 16


    def supports_fails(q, k, v, **kw):
        return exact(q, k, v, **kw)


    def _lookup(workload, device):
        return {64: None}[workload.head_dim]


    supports_fails.supports = _lookup
''')

STATUS = {
    "exact": ("ok", ""),
    "off_by_one_percent": ("incorrect", "relative error"),
    "chunks_qkv": ("incorrect", "relative error"),
    "prescales_q": ("incorrect", "wrote to its input q in place"),
    "explodes": ("error", "first call: ValueError: my kernel blew up"),
    "picky": ("unsupported", "only head dim 128"),
    "says_true": ("error", "supports() returned True"),
    "supports_fails": ("error", "supports(): KeyError: 16"),
}


def _rows(store_path, run_id=None):
    from attnbench.store import Store

    with Store(str(store_path)) as store:
        run = store.run(run_id)
        return {m.impl: m for m in store.measurements(run.run_id)}


def test_a_users_kernels_by_module_path_each_get_their_status_and_reason(workdir, capsys):
    (workdir / "mykern.py").write_text(USER_KERNELS)
    args = [a for name in STATUS for a in ("-i", f"mykern:{name}")]
    code, out, err = cli(capsys, "run", *TINY, "--db", str(workdir / "r.db"), *args)
    assert code == 0, err
    rows = _rows(workdir / "r.db")
    for name, (status, reason) in STATUS.items():
        m = rows[f"mykern:{name}"]
        assert (m.status, reason in (m.reason or "")) == (status, True), (name, m.status, m.reason)


def test_a_typo_in_a_kernels_name_is_one_line_listing_what_exists(workdir, capsys):
    (workdir / "mykern.py").write_text(USER_KERNELS)
    for spec, listed in [("mykern:exakt", "(it has: chunks_qkv, exact, explodes,"),
                         ("mykernel", "known: sdpa-auto, sdpa-flash,")]:
        code, out, err = cli(capsys, "run", *TINY, "--db", str(workdir / "r.db"), "-i", spec)
        assert code == 2 and len(err.strip().splitlines()) == 1 and listed in err, err
        code, out, err = cli(capsys, "compare", *TINY, "--db", str(workdir / "r.db"), "-i", spec, "-i", "sdpa-auto")
        assert code == 2 and len(err.strip().splitlines()) == 1 and listed in err, err


def test_compare_with_impl_names_where_run_ids_go_says_how(workdir, capsys):
    code, out, err = cli(capsys, "compare", "mykern:exact", "sdpa-auto", "-b", "1", "-s", "32", "--db",
                         str(workdir / "r.db"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "not a run id" in err and "attnbench compare --impl mykern:exact --impl sdpa-auto" in err, err


def test_compare_a_users_kernel_with_sdpa(workdir, capsys):
    (workdir / "mykern.py").write_text(USER_KERNELS)
    code, out, err = cli(capsys, "compare", *TINY, "--db", str(workdir / "r.db"), "-i", "mykern:exact",
                         "-i", "sdpa-auto")
    assert code == 0, err
    assert "| B1 H2 S32 D16 fp32 |" in out and "No row could be compared" not in out
    for name in ("chunks_qkv", "prescales_q", "explodes", "picky"):
        code, out, err = cli(capsys, "compare", *TINY, "--db", str(workdir / "r.db"), "-i", f"mykern:{name}",
                             "-i", "sdpa-auto")
        status, reason = STATUS[name]
        assert code == 0 and "No row could be compared" in out and f"A {status}: " in out and reason in out, out


def test_an_entry_point_plugin_runs_by_its_name(tmp_path, monkeypatch, capsys):
    """As a package that declares `[project.entry-points."attnbench.impls"]` is seen once installed."""
    site = tmp_path / "site"
    dist = site / "mykernels-0.1.dist-info"
    dist.mkdir(parents=True)
    (site / "mykernels_ep.py").write_text(USER_KERNELS + "\n\nexplodes.supports = lambda workload, device: 1 / 0\n")
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mykernels\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[attnbench.impls]\nmykernel = mykernels_ep:exact\n"
                                           "mychunks = mykernels_ep:chunks_qkv\nmygone = mykernels_ep:renamed\n"
                                           "mybroken = mykernels_ep:explodes\n")
    monkeypatch.syspath_prepend(str(site))
    db = str(tmp_path / "r.db")
    code, out, err = cli(capsys, "list")
    assert code == 0 and "  mykernel " in out and "my exact kernel" in out
    assert "no: entry point mykernels_ep:renamed failed to load" in out
    broken = next(line for line in out.splitlines() if line.startswith("  mybroken "))
    assert broken.split()[1:6] == ["error:", "supports()", "raised", "ZeroDivisionError:", "division"]
    code, out, err = cli(capsys, "run", *TINY, "--db", db, "-i", "mykernel", "-i", "mychunks", "-i", "mygone")
    assert code == 0, err
    rows = _rows(db)
    assert rows["mykernel"].status == "ok" and rows["mychunks"].status == "incorrect"
    assert rows["mygone"].status == "unsupported" and "has no attribute 'renamed'" in rows["mygone"].reason
    code, out, err = cli(capsys, "compare", *TINY, "--db", db, "-i", "mykernel", "-i", "sdpa-auto")
    assert code == 0 and "A = mykernel (candidate)" in out, err
    code, out, err = cli(capsys, "run", *TINY, "--db", db, "-i", "mykernell")
    assert code == 2 and "unknown impl 'mykernell'" in err and "mykernel, mychunks" in err

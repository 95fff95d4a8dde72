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

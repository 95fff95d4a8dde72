from attnbench.impls.adapters import adapter_impls
from tests.clitools import cli


def test_list_shows_ready_missing_and_unusable_libraries(fakelibs, capsys):
    fakelibs(ok=("cudnn", "flashinfer"), broken=("flash_attn", "xformers"))
    code, out, _ = cli(capsys, "list")
    assert code == 0
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ") and line.split()}
    assert "ready (1.32.0, cuDNN 9.19.0); here: no: needs a CUDA GPU" in lines["cudnn-fe"]
    assert "ready (0.7.2)" in lines["flashinfer"]
    assert "not installed: build flash-attention's hopper/ folder" in lines["fa3"]
    assert "not installed: pip install flashinfer-python" not in out
    # installed but unusable, with the library's own reason on one line
    assert "installed but unusable: ImportError: " in lines["fa2"] and "undefined symbol" in lines["fa2"]
    assert ("installed 0.0.35 but unusable: xFormers can't load C++/CUDA extensions. xFormers was built for: "
            "PyTorch 2.10.0+cu128 with CUDA 1208 (you have 2.11.0+cu130)") in lines["xformers"]
    assert "not installed: pip install flash-attn-4" in lines["fa4"]  # flash_attn is there, flash_attn.cute not
    assert "declares masks full,causal,causal-br,window; mods alibi" in out
    assert "sdpa-cudnn" in out and "no: needs a CUDA GPU" in out


def test_list_without_any_library_says_how_to_install_each(fakelibs, capsys):
    fakelibs(ok=())
    code, out, _ = cli(capsys, "list")
    assert code == 0
    for impl in adapter_impls().values():
        assert f"not installed: {impl.install}" in out


def test_an_unusable_library_is_a_reason_in_a_run(fakelibs, capsys, tmp_path):
    fakelibs(ok=(), broken=("xformers",))
    code, out, err = cli(capsys, "run", "-b", "1", "-H", "2", "-s", "16", "-d", "16", "-i", "xformers,fa2",
                         "--db", str(tmp_path / "r.db"), "-q")
    assert code == 0, err
    assert "unsupported" in out and "xFormers can't load C++/CUDA extensions" in out
    assert "fa2: not installed: pip install flash-attn --no-build-isolation" in out

import subprocess
import sys

import attnbench


def test_every_public_name_resolves():
    for name in attnbench.__all__:
        assert getattr(attnbench, name) is not None
    assert callable(attnbench.autotune) and attnbench.autotune.__module__ == "attnbench.tune.tuner"
    assert callable(attnbench.attention) and callable(attnbench.run)
    from attnbench.tune.dispatch import explain

    assert attnbench.explain is explain


def test_import_is_light():
    code = "import sys, attnbench; attnbench.Workload; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"

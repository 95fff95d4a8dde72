import pytest


def pytest_collection_modifyitems(config, items):
    """GPU tests run only where torch sees a CUDA device (scripts/gpu_check.sh runs them there)."""
    try:
        import torch

        has_gpu = torch.cuda.is_available()
    except Exception:
        has_gpu = False
    if has_gpu:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

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


@pytest.fixture(scope="session")
def dask_client():
    """A Dask cluster of two CPU worker processes (one thread each) and its client, shared by the executor
    tests. As in clusters attnbench starts, a task whose worker dies is tried on another worker, and a
    second death marks it failed."""
    import dask
    import distributed

    from attnbench.execute.cluster import ALLOWED_FAILURES

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()

import os

import pytest
import torch

def pytest_collection_modifyitems(config, items):
    # `cuda` tests run only where a GPU is (the campaign runs them with -m cuda); elsewhere they skip
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# Tests must never touch a developer's own zoo or cache.
@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch, request):
    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path / "robench_home"))
    monkeypatch.setenv("ROBENCH_PROGRESS", "0")
    monkeypatch.setenv("ROBENCH_THREADS", "1")  # commands set torch's threads from it (see below)
    if "shipped_zoo" not in request.keywords:
        # A test sees only the checkpoints it saves itself, whatever weights the package ships today.
        import model_zoo.checkpoint

        empty = tmp_path / "shipped_zoo"
        empty.mkdir()
        monkeypatch.setattr(model_zoo.checkpoint, "SHIPPED_ZOO", empty)


# Tests use small batches, where a second OpenMP thread only adds synchronisation (and on a shared
# 2-core machine it can make a step many times slower).
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")  # and the CLI subprocesses tests start
os.environ.setdefault("ROBENCH_THREADS", "1")  # module-scoped fixtures run before the autouse fixture above

import os

import pytest
import torch

# Tests must never touch a developer's own zoo or cache.
@pytest.fixture(autouse=True)
def _isolated_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ROBENCH_HOME", str(tmp_path / "robench_home"))
    monkeypatch.setenv("ROBENCH_PROGRESS", "0")


torch.set_num_threads(min(2, os.cpu_count() or 1))

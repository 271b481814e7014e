import os

import pytest
import torch

torch.set_num_threads(1)  # double backward on a shared 2-core box is 10-30x slower with 2 threads
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    yield

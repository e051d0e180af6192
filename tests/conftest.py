import pytest
import torch


@pytest.fixture(autouse=True)
def _torch_threads_and_seed():
    # Explicit threads: 2 threads on a loaded 2-core box made timings and runtimes swing by 10x.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield

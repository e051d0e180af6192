import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _torch_threads_and_seed():
    # Explicit threads: 2 threads on a loaded 2-core box made timings and runtimes swing by 10x.
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def copy_project() -> Callable[[Path], None]:
    """Copies the project's sources (tracked and untracked-not-ignored files, no reports) into
    a folder, as a fresh clone of this working tree would have them."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split("\n")
    files = [f for f in listed if f and (REPO / f).is_file() and not f.startswith("reports/")]

    def copy(root: Path) -> None:
        for rel in files:
            dest = root / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest)

    return copy

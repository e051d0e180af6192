"""Atomic file writes for every stage: a file is written under a temporary name beside its
target and renamed into place once complete, so an interrupted stage never leaves a truncated
file where a finished one is expected."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path to write `path`'s content to, renamed to `path` when the block succeeds
    and removed when it fails. It ends in `.tmp`, so globs for data files never match it:
    writers that infer a format from the name must be given it explicitly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)

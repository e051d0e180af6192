"""Atomic file writes for every stage: a file is written under a temporary name beside its
target and renamed into place once complete, so an interrupted stage never leaves a truncated
file where a finished one is expected."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


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


def write_json(path: str | Path, payload: Any) -> Path:
    return write_text(path, json.dumps(payload, indent=2, default=float) + "\n")


def write_table(payload: dict[str, Any], out_dir: str | Path, stem: str,
                columns: Iterable[str]) -> tuple[Path, Path]:
    """<out_dir>/<stem>.csv (payload["rows"], in `columns` order) and <stem>.json (the whole
    payload), each written atomically."""
    import pandas as pd  # not at module level: most stages write no tables

    frame = pd.DataFrame(payload["rows"], columns=list(columns))
    out_dir = Path(out_dir)
    csv_path = write_text(out_dir / f"{stem}.csv", frame.to_csv(index=False))
    return csv_path, write_json(out_dir / f"{stem}.json", payload)

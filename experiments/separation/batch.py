"""Separating many files: input discovery, atomic output writing, skipping, per-file errors."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from experiments.atomic import atomic_path
from experiments.separation.audio import AUDIO_SUFFIXES
from experiments.separation.core import model_n_src, separate_file


@dataclass(frozen=True)
class FileResult:
    path: Path
    status: str  # "separated" | "skipped" | "failed"
    message: str = ""
    out_dir: Path | None = None
    audio_s: float = 0.0  # input duration (separated files)
    seconds: float = 0.0  # wall time to read, separate and write it


@dataclass
class RunSummary:
    results: list[FileResult] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    def line(self) -> str:
        """The final report: counts and the real-time factor (processing time / audio time)."""
        done = [r for r in self.results if r.status == "separated"]
        audio, seconds = sum(r.audio_s for r in done), sum(r.seconds for r in done)
        rtf = f"real-time factor {seconds / audio:.3f}" if audio > 0 else "no audio separated"
        return (f"{len(done)} separated, {self.count('skipped')} skipped, "
                f"{self.count('failed')} failed: {audio:.1f} s of audio in {seconds:.1f} s, {rtf}")


def _is_within(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def find_inputs(inputs: Iterable[str | Path], glob: str | None = None,
                exclude: Path | None = None
                ) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """Files and folders -> ([(file, output name)], [(path, one-line error)]). Folders are searched
    recursively for `glob` (default: the suffixes in AUDIO_SUFFIXES), skipping hidden files and
    anything under `exclude` (the output folder); a file found in folder F is named by its path
    relative to F without suffix, a file given directly by its stem. Two inputs that would
    share an output folder: the second is an error."""
    jobs: list[tuple[Path, Path]] = []
    errors: list[tuple[Path, str]] = []
    owners: dict[Path, Path] = {}
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(
                p for p in item.rglob(glob or "*")
                if p.is_file() and not p.name.startswith(".") and not _is_within(p, exclude)
                and (glob is not None or p.suffix.lower() in AUDIO_SUFFIXES)
            )
            if not found:
                errors.append((item, f"{item}: no audio files in this folder"
                                     + (f" match {glob!r}" if glob else "")))
            candidates = [(p, p.relative_to(item).with_suffix("")) for p in found]
        else:  # a missing file fails when it is read, with the other files still processed
            candidates = [(item, Path(item.stem))]
        for path, name in candidates:
            owner = owners.get(name)
            if owner is None:
                owners[name] = path
                jobs.append((path, name))
            elif owner.resolve() != path.resolve():  # the same file twice is one job
                errors.append((path, f"{path}: its output folder {name} is already {owner}'s; "
                                     "separate one of them in another run"))
    return jobs, errors


def output_subtype(input_subtype: str, float_out: bool) -> str:
    """The input's subtype when WAV can hold it (PCM_16, PCM_24, FLOAT...), else 32-bit float
    (compressed inputs: VORBIS, OPUS, MPEG); `float_out`: always float."""
    if not float_out and sf.check_format("WAV", input_subtype):
        return input_subtype
    return "FLOAT"


def source_paths(out_dir: Path, n_src: int) -> list[Path]:
    return [out_dir / f"s{k + 1}.wav" for k in range(n_src)]


def write_sources(sources: np.ndarray, sample_rate: int, out_dir: Path,
                  subtype: str) -> list[str]:
    """Write `out_dir/s1.wav ...` as WAV of `subtype`, all or none: each file goes to a temporary
    name and the names are swapped in once every file is complete. Returns notices (clipping)."""
    notes = []
    with ExitStack() as stack:
        for path, wav in zip(source_paths(out_dir, len(sources)), sources, strict=True):
            tmp = stack.enter_context(atomic_path(path))
            clipped = int((np.abs(wav) > 1).sum())
            if clipped and subtype not in ("FLOAT", "DOUBLE"):
                notes.append(f"{path}: {clipped} samples clipped to [-1, 1] in {subtype} "
                             "(--normalize or --float avoids it)")
            sf.write(tmp, wav, sample_rate, subtype=subtype, format="WAV")
    return notes


def _one_line(err: BaseException, path: Path) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text if text.startswith(str(path)) else f"{path}: {text}"


def _stderr(line: str) -> None:
    tqdm.write(line, file=sys.stderr)


def separate_files(model: Callable[[torch.Tensor], torch.Tensor], inputs: Iterable[str | Path],
                   out: str | Path, *,
                   glob: str | None = None, overwrite: bool = False, float_out: bool = False,
                   progress: bool = True, log: Callable[[str], None] = _stderr,
                   **options: Any) -> RunSummary:
    """Separate every input file (see `find_inputs`) into `out/<name>/s1.wav ...`.

    `options` go to `separate_file` (window_s, hop_s, channel, keep_model_rate, normalize,
    n_src). A file whose outputs all exist is skipped unless `overwrite`. A file that fails
    gets one `error: <file>: <reason>` line through `log` and no outputs; the others go on.
    """
    out = Path(out)
    jobs, errors = find_inputs(inputs, glob, exclude=out)
    summary = RunSummary()
    for path, message in errors:
        log(f"error: {message}")
        summary.results.append(FileResult(path, "failed", message))
    n_src = options.get("n_src") or model_n_src(model)
    for path, name in tqdm(jobs, desc="files", unit="file", disable=not progress):
        out_dir = out / name
        if (not overwrite and n_src is not None
                and all(p.is_file() for p in source_paths(out_dir, n_src))):
            summary.results.append(FileResult(path, "skipped", out_dir=out_dir))
            continue
        start = time.perf_counter()
        try:
            sep = separate_file(model, path, progress=progress, **options)
            subtype = output_subtype(sep.input_subtype, float_out)
            notes = write_sources(sep.sources, sep.sample_rate, out_dir, subtype)
        except (ValueError, RuntimeError, OSError) as err:  # model and I/O errors of one file
            message = _one_line(err, path)
            log(f"error: {message}")
            summary.results.append(FileResult(path, "failed", message))
            continue
        for note in (*sep.notes, *notes):
            log(note)
        summary.results.append(FileResult(path, "separated", out_dir=out_dir,
                                          audio_s=sep.input_seconds,
                                          seconds=time.perf_counter() - start))
    return summary

"""`python -m experiments.complexity`: params and MACs per second of audio for every registry model.

Each model is counted four times on `complexity.seconds` of noise at the profile's sample rate:
fvcore and ptflops (aten backend) with our handles (FFT, RNN, attention and SSM arithmetic
counted, one cost model: see `experiments.counting`) and with each tool's defaults (the naive
count). Writes reports/complexity.csv and reports/complexity.json, with the published params and
MACs from experiments/published.yaml beside the measured ones. `threads` models are counted at a
time, each in a forked process.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import multiprocessing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from experiments.atomic import write_text
from experiments.config import ConfigError, load_profile, require
from experiments.counting import ELEMENTWISE, FFT, MATMUL, NORM, MacCount, count_all, is_ssm_module
from experiments.env import environment

PUBLISHED = Path(__file__).with_name("published.yaml")
REFERENCE_MODEL, PAPER_MODEL = "sepformer", "s4m_tiny"  # the paper's "9.2% of Sepformer's MACs"

COLUMNS = (
    "model", "params_m", "published_params_m", "macs_g_per_s_fvcore", "macs_g_per_s_ptflops",
    "tools_rel_diff", "published_macs_g_per_s", "macs_pct_of_sepformer",
    "naive_macs_g_per_s_fvcore", "naive_macs_g_per_s_ptflops", "naive_missed_fvcore",
    "naive_missed_ptflops", "matmul_g_per_s", "fft_g_per_s", "norm_g_per_s",
    "elementwise_g_per_s", "uncounted_ops_fvcore", "uncounted_ops_ptflops",
    "naive_uncounted_fvcore", "naive_uncounted_ptflops", "published_params_source",
    "published_macs_source", "seconds", "sample_rate",
)


# ---- published figures -------------------------------------------------------------------------


def load_published(path: str | Path = PUBLISHED) -> dict[str, Any]:
    """published.yaml, checked: every figure has a value and a source listed under `sources`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: published figures file not found")
    with path.open() as f:
        data = yaml.safe_load(f)
    if not isinstance(data, dict) or not {"sources", "models"} <= set(data):
        raise ValueError(f"{path}: expected top-level `sources` and `models` mappings")
    sources = data["sources"]

    def check(figure: Any, where: str, keys: Iterable[str]) -> None:
        if not isinstance(figure, dict) or not set(keys) <= set(figure):
            raise ValueError(f"{path}: {where} needs keys {sorted(keys)}")
        if figure["source"] not in sources:
            raise ValueError(f"{path}: {where} cites unknown source {figure['source']!r}")

    for name, entry in data["models"].items():
        for key in ("params_m", "macs_g_per_s", "macs_ratio_to_sepformer"):
            if key in entry:
                check(entry[key], f"models.{name}.{key}", ("value", "source"))
        for dataset, results in entry.get("results", {}).items():
            for i, result in enumerate(results):
                where = f"models.{name}.results.{dataset}[{i}]"
                check(result, where, ("si_sdri", "sdri", "source"))
    if "reference_measurements" in data:
        check(data["reference_measurements"], "reference_measurements", ("source", "models"))
    return data


def _figure(published: dict[str, Any], model: str, key: str) -> dict[str, Any]:
    return published["models"].get(model, {}).get(key) or {}


# ---- measuring -------------------------------------------------------------------------------


def _ops(uncounted: dict[str, int]) -> str:
    return "; ".join(f"{op} x{n}" for op, n in uncounted.items()) or "none"


def measure(
    name: str, model: nn.Module, seconds: float, sample_rate: int, seed: int = 0,
    ssm_scope: Callable[[nn.Module], bool] = is_ssm_module,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One table row and the per-operator details of the four counts."""
    if seconds <= 0:
        raise ConfigError(f"params.yaml: `complexity.seconds` must be positive, got {seconds}")
    generator = torch.Generator().manual_seed(seed)
    wav = torch.randn(1, round(seconds * sample_rate), generator=generator)
    counts = count_all(model, wav, ssm_scope)
    g = {key: c.total / seconds / 1e9 for key, c in counts.items()}
    fv, pt = g["fvcore"], g["ptflops"]
    categories = counts["fvcore"].by_category
    row = {
        "model": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "macs_g_per_s_fvcore": fv,
        "macs_g_per_s_ptflops": pt,
        "tools_rel_diff": (pt - fv) / fv if fv else None,
        "naive_macs_g_per_s_fvcore": g["fvcore_default"],
        "naive_macs_g_per_s_ptflops": g["ptflops_default"],
        "naive_missed_fvcore": 1 - g["fvcore_default"] / fv if fv else None,
        "naive_missed_ptflops": 1 - g["ptflops_default"] / pt if pt else None,
        **{f"{cat}_g_per_s": categories.get(cat, 0.0) / seconds / 1e9
           for cat in (MATMUL, FFT, NORM, ELEMENTWISE)},
        "uncounted_ops_fvcore": _ops(counts["fvcore"].uncounted),
        "uncounted_ops_ptflops": _ops(counts["ptflops"].uncounted),
        "naive_uncounted_fvcore": _ops(counts["fvcore_default"].uncounted),
        "naive_uncounted_ptflops": _ops(counts["ptflops_default"].uncounted),
        "seconds": seconds,
        "sample_rate": sample_rate,
    }
    return row, {key: _details(c) for key, c in counts.items()}


def _details(count: MacCount) -> dict[str, Any]:
    return {"total": count.total, "by_category": count.by_category, "by_op": count.by_op,
            "uncounted": count.uncounted}


def complexity_table(
    names: Iterable[str], build: Callable[[str], nn.Module], seconds: float, sample_rate: int,
    published: dict[str, Any], seed: int = 0,
    ssm_scope: Callable[[nn.Module], bool] = is_ssm_module, workers: int = 1,
) -> dict[str, Any]:
    """Rows (COLUMNS), per-model details and the S4M-tiny / Sepformer summary. With workers > 1
    the models are counted that many at a time in forked processes of one torch thread each
    (counting is mostly Python-bound tracing; the counts do not depend on threads)."""
    names = list(names)

    def measure_at(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        name = names[index]
        print(f"[complexity] counting {name} on {seconds:g} s ...", flush=True)
        return measure(name, build(name), seconds, sample_rate, seed, ssm_scope)

    if workers > 1 and len(names) > 1:
        global _MEASURE_AT
        _MEASURE_AT = measure_at  # forked workers inherit it: builders need not be picklable
        try:
            with multiprocessing.get_context("fork").Pool(min(workers, len(names))) as pool:
                measured = pool.map(_measure_in_worker, range(len(names)), chunksize=1)
        finally:
            _MEASURE_AT = None
    else:
        measured = [measure_at(i) for i in range(len(names))]
    rows, details = [], {}
    for name, (row, details[name]) in zip(names, measured, strict=True):
        params = _figure(published, name, "params_m")
        macs = _figure(published, name, "macs_g_per_s")
        row.update(
            published_params_m=params.get("value"), published_params_source=params.get("source"),
            published_macs_g_per_s=macs.get("value"), published_macs_source=macs.get("source"),
        )
        rows.append(row)
    by_name = {row["model"]: row for row in rows}
    reference = by_name.get(REFERENCE_MODEL)
    for row in rows:
        if reference and reference["macs_g_per_s_fvcore"]:
            row["macs_pct_of_sepformer"] = (
                100 * row["macs_g_per_s_fvcore"] / reference["macs_g_per_s_fvcore"])
    rows = [{col: row.get(col) for col in COLUMNS} for row in rows]
    return {"rows": rows, "details": details, "summary": _summary(by_name, published)}


_MEASURE_AT: Callable[[int], tuple[dict[str, Any], dict[str, Any]]] | None = None


def _measure_in_worker(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    torch.set_num_threads(1)
    assert _MEASURE_AT is not None
    return _MEASURE_AT(index)


def _summary(by_name: dict[str, dict[str, Any]], published: dict[str, Any]) -> dict[str, Any]:
    tiny, ref = by_name.get(PAPER_MODEL), by_name.get(REFERENCE_MODEL)
    if tiny is None or ref is None:
        return {}
    paper = _figure(published, PAPER_MODEL, "macs_ratio_to_sepformer")
    measured = published.get("reference_measurements", {}).get("models", {})
    released = measured.get("released_s4m_tiny", {}).get("macs_g_per_s_fvcore")
    sepformer = measured.get(REFERENCE_MODEL, {}).get("macs_g_per_s_fvcore")
    ratio = {key: tiny[col] / ref[col] if ref[col] else None for key, col in (
        ("fvcore", "macs_g_per_s_fvcore"), ("ptflops", "macs_g_per_s_ptflops"),
        ("naive_fvcore", "naive_macs_g_per_s_fvcore"),
        ("naive_ptflops", "naive_macs_g_per_s_ptflops"))}
    return {"s4m_tiny_over_sepformer_macs": {
        **ratio,
        "paper": paper.get("value"),
        "paper_source": published["sources"].get(paper.get("source"), None),
        "released_code_measured": released / sepformer if released and sepformer else None,
    }}


# ---- writing ---------------------------------------------------------------------------------


def csv_text(rows: list[dict[str, Any]], columns: Iterable[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_reports(payload: dict[str, Any], out_dir: str | Path, stem: str,
                  columns: Iterable[str]) -> tuple[Path, Path]:
    """<out_dir>/<stem>.csv (the rows) and <stem>.json (everything), each written atomically."""
    out_dir = Path(out_dir)
    csv_path = write_text(out_dir / f"{stem}.csv", csv_text(payload["rows"], columns))
    json_path = write_text(out_dir / f"{stem}.json", json.dumps(payload, indent=2) + "\n")
    return csv_path, json_path


def format_table(rows: list[dict[str, Any]], columns: Iterable[str]) -> str:
    columns = list(columns)
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 1000 else f"{value:.0f}"
    return "-" if value is None else str(value)


# ---- CLI -------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out-dir", default="reports")
    parser.add_argument("--models", nargs="+", help="subset of params.yaml `models`")
    args = parser.parse_args(argv)

    from experiments.models import build_model, check_model_names

    cfg = load_profile(args.params)
    seconds = float(require(cfg, "complexity.seconds"))
    sample_rate = int(require(cfg, "data.sample_rate"))
    threads, seed = int(require(cfg, "threads")), int(require(cfg, "seed"))
    names = args.models or list(require(cfg, "models"))
    check_model_names(names, f"{args.params}: `models`")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    published = load_published()

    payload = complexity_table(
        names, lambda name: build_model(name, sample_rate=sample_rate), seconds, sample_rate,
        published, seed, workers=threads,
    )
    payload = {"environment": environment(cfg["profile"], threads),
               "settings": {"seconds": seconds, "sample_rate": sample_rate, "seed": seed},
               "sources": published["sources"], **payload}
    csv_path, json_path = write_reports(payload, args.out_dir, "complexity", COLUMNS)
    print(format_table(payload["rows"], (
        "model", "params_m", "published_params_m", "macs_g_per_s_fvcore", "macs_g_per_s_ptflops",
        "tools_rel_diff", "naive_macs_g_per_s_fvcore", "naive_macs_g_per_s_ptflops",
        "published_macs_g_per_s", "macs_pct_of_sepformer")))
    summary = payload["summary"].get("s4m_tiny_over_sepformer_macs")
    if summary:
        print(f"S4M-tiny / Sepformer MACs: fvcore {_pct(summary['fvcore'])}, ptflops "
              f"{_pct(summary['ptflops'])} (naive fvcore {_pct(summary['naive_fvcore'])}); "
              f"paper {_pct(summary['paper'])}, released code measured "
              f"{_pct(summary['released_code_measured'])}")
    print(f"wrote {csv_path} and {json_path}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


if __name__ == "__main__":
    main()

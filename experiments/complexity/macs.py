"""Params and MACs per second of audio for every registry model.

Each model is counted four times on `complexity.seconds` of noise at the profile's sample rate:
fvcore and ptflops (aten backend) with our handles (FFT, RNN, attention and SSM arithmetic
counted, one cost model: see `experiments.complexity.counting`) and with each tool's defaults
(the naive count), with the published params and MACs from experiments/published.yaml beside
the measured ones. `workers` models are counted at a time, each in a forked process.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from experiments.complexity.costs import ELEMENTWISE, FFT, MATMUL, NORM
from experiments.complexity.counting import MacCount, count_all, is_ssm_module
from experiments.config import ConfigError
from experiments.published import figure

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
# complexity.json `conventions`: total MACs (G) of one forward on `input_samples` samples
CONVENTION_COLUMNS = ("model", "input_samples", "sample_rate", "macs_g_fvcore", "macs_g_ptflops",
                      "naive_macs_g_fvcore", "naive_macs_g_ptflops")


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


def published_conventions(published: dict[str, Any]) -> list[int]:
    """The input lengths (samples) the published MAC figures were counted on."""
    return sorted({int(m["input_samples"]) for entry in published["models"].values()
                   for m in entry.get("macs", [])})


def at_our_convention(published: dict[str, Any], name: str, sample_rate: int) -> dict[str, Any]:
    """The model's first published MAC figure counted as ours are: per second at our rate."""
    return next((m for m in figure(published, name, "macs") or []
                 if m["per_second"] and m["sample_rate"] == sample_rate), {})


def complexity_table(
    names: Iterable[str], build: Callable[[str], nn.Module], seconds: float, sample_rate: int,
    published: dict[str, Any], seed: int = 0,
    ssm_scope: Callable[[nn.Module], bool] = is_ssm_module, workers: int = 1,
    conventions: Iterable[int] = (),
) -> dict[str, Any]:
    """Rows (COLUMNS), per-model details and the S4M-tiny / Sepformer summary, plus under
    `conventions` each model's total MACs (G, not per second; CONVENTION_COLUMNS) on each of
    `conventions` input lengths in samples (the published figures' inputs; see
    `published_conventions`), fed to the model as built for `sample_rate`. With workers > 1 the
    counts run that many at a time in forked processes of one torch thread each (counting is
    mostly Python-bound tracing; the counts do not depend on threads)."""
    names = list(names)
    ours = round(seconds * sample_rate)
    extra = [(name, n) for n in sorted(set(conventions)) if n != ours for name in names]
    jobs = [(name, seconds) for name in names] + [(name, n / sample_rate) for name, n in extra]

    def measure_at(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
        name, length = jobs[index]
        print(f"[complexity] counting {name} on {length:g} s ...", flush=True)
        return measure(name, build(name), length, sample_rate, seed, ssm_scope)

    if workers > 1 and len(jobs) > 1:
        global _MEASURE_AT
        _MEASURE_AT = measure_at  # forked workers inherit it: builders need not be picklable
        try:
            with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
                measured = pool.map(_measure_in_worker, range(len(jobs)), chunksize=1)
        finally:
            _MEASURE_AT = None
    else:
        measured = [measure_at(i) for i in range(len(jobs))]
    rows, details = [], {}
    for name, (row, details[name]) in zip(names, measured[: len(names)], strict=True):
        params = figure(published, name, "params_m")
        macs = at_our_convention(published, name, sample_rate)
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
    counted = [(name, ours, row) for name, row in by_name.items() if ours in set(conventions)]
    counted += [(name, n, row) for (name, n), (row, _) in zip(extra, measured[len(names):],
                                                              strict=True)]
    at_conventions = [{"model": name, "input_samples": n, "sample_rate": sample_rate,
                       **{col: row[col.replace("macs_g_", "macs_g_per_s_")] * n / sample_rate
                          for col in CONVENTION_COLUMNS[3:]}} for name, n, row in counted]
    rows = [{col: row.get(col) for col in COLUMNS} for row in rows]
    return {"rows": rows, "details": details, "summary": _summary(by_name, published),
            "conventions": at_conventions}


_MEASURE_AT: Callable[[int], tuple[dict[str, Any], dict[str, Any]]] | None = None


def _measure_in_worker(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    torch.set_num_threads(1)
    assert _MEASURE_AT is not None
    return _MEASURE_AT(index)


def _summary(by_name: dict[str, dict[str, Any]], published: dict[str, Any]) -> dict[str, Any]:
    tiny, ref = by_name.get(PAPER_MODEL), by_name.get(REFERENCE_MODEL)
    if tiny is None or ref is None:
        return {}
    paper = figure(published, PAPER_MODEL, "macs_ratio_to_sepformer")
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


# ---- CLI -------------------------------------------------------------------------------------

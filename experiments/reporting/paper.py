"""Published figures (experiments/published.yaml) beside ours: quality with its training
conditions, params, and MACs recounted at each source's convention."""

from __future__ import annotations

from typing import Any

import pandas as pd

from experiments.reporting.rule import Verdict

# The paper's Table 2 reports Libri2Mix; the "paper vs here" table compares against that column.
PAPER_DATASET = "libri2mix"
REFERENCES = ("sepformer", "convtasnet")  # MAC ratios, which do not depend on the convention


def figure_value(figure: dict[str, Any] | None, key: str = "value") -> float | None:
    value = None if figure is None else figure.get(key)
    return None if value is None else float(value)


def _said(value: Any) -> str:
    return "not stated" if value is None else str(value)


def paper_vs_here(results: pd.DataFrame, published: dict[str, Any], verdict: Verdict,
                  ) -> pd.DataFrame:
    """Each model's primary Libri2Mix figure (the paper's Table 2 where it has the model) with
    its training conditions, beside ours."""
    rows = []
    for row in results.itertuples():
        entry = published["models"].get(row.model, {})
        paper = (entry.get("results", {}).get(PAPER_DATASET) or [None])[0] or {}
        paper_si = figure_value(paper, "si_sdri")
        rows.append({
            "model": row.model, "SI-SDRi paper": paper_si,
            "SDRi paper": figure_value(paper, "sdri"),
            "training subset": _said(paper.get("train_subset")) if paper else None,
            "rate (Hz)": _said(paper.get("sample_rate")) if paper else None,
            "augmentation": _said(paper.get("augmentation")) if paper else None,
            verdict.label("SI-SDRi here"): row.si_sdri_db,
            "source": paper.get("source"),
        })
    return pd.DataFrame(rows)


def published_results(published: dict[str, Any], models: list[str]) -> pd.DataFrame:
    """Every published quality figure of our models with its training conditions."""
    rows = [{"model": model, "dataset": dataset, "task": r.get("task"), "SI-SDRi": r["si_sdri"],
             "SDRi": r["sdri"], "training subset": _said(r["train_subset"]),
             "rate (Hz)": _said(r["sample_rate"]), "augmentation": _said(r["augmentation"]),
             "source": r["source"], "note": r.get("note")}
            for model in models
            for dataset, results in published["models"].get(model, {}).get("results", {}).items()
            for r in results]
    return pd.DataFrame(rows)


def params_vs_here(results: pd.DataFrame, published: dict[str, Any]) -> pd.DataFrame:
    rows = []
    for row in results.itertuples():
        paper = published["models"].get(row.model, {}).get("params_m") or {}
        value = figure_value(paper)
        rows.append({"model": row.model, "params paper (M)": value, "source": paper.get("source"),
                     "params here (M)": row.params_m,
                     "here / paper": None if value is None else row.params_m / value})
    return pd.DataFrame(rows)


def _convention(m: dict[str, Any]) -> str:
    unit = "G/s" if m["per_second"] else "G"
    per = f"per second ({m['input_samples'] / m['sample_rate']:g} s)" if m["per_second"] else (
        "total, not per second")
    return (f"{m['input_samples']} samples at {m['sample_rate'] / 1000:g} kHz, {per}, "
            f"{m['counter'] or 'counter not stated'} [{unit}]")


def ours_at(conventions: pd.DataFrame, model: str, m: dict[str, Any],
            naive: bool = False) -> float | None:
    """Our MACs at a published figure's convention: counted on its input length, with its
    counter (fvcore when it names none), divided by its duration when it is per second."""
    hit = conventions[(conventions["model"] == model)
                      & (conventions["input_samples"] == m["input_samples"])]
    if hit.empty:
        return None
    counter = "ptflops" if m["counter"] == "ptflops" else "fvcore"
    total = float(hit.iloc[0][f"{'naive_' if naive else ''}macs_g_{counter}"])
    return total / (m["input_samples"] / m["sample_rate"]) if m["per_second"] else total


def macs_at_conventions(models: list[str], published: dict[str, Any],
                        conventions: pd.DataFrame) -> pd.DataFrame:
    """Every published MAC figure of our models beside ours counted the same way, and the
    ratios to Sepformer and Conv-TasNet within the same source (convention-free)."""
    def published_of(model: str, source: str) -> dict[str, Any] | None:
        return next((m for m in published["models"].get(model, {}).get("macs", [])
                     if m["source"] == source), None)

    rows = []
    for model in models:
        for m in published["models"].get(model, {}).get("macs", []):
            here = ours_at(conventions, model, m)
            row = {"model": model, "source": m["source"], "convention": _convention(m),
                   "published": m["value"], "here": here,
                   "here (counter defaults)": ours_at(conventions, model, m, naive=True),
                   "here / published": None if here is None else here / m["value"]}
            for ref in REFERENCES:
                other = published_of(ref, m["source"])
                ours_ref = None if other is None else ours_at(conventions, ref, other)
                row[f"published / {ref}"] = None if other is None else m["value"] / other["value"]
                row[f"here / {ref}"] = (here / ours_ref if here is not None and ours_ref
                                        else None)
            rows.append(row)
    return pd.DataFrame(rows)


def reconstruction_note(results: pd.DataFrame, published: dict[str, Any],
                        conventions: pd.DataFrame, model: str = "s4m") -> str:
    """How our reconstruction of the unreleased S4M compares on params and MACs."""
    entry = published["models"].get(model, {})
    hit = results[results["model"] == model]
    if hit.empty or not entry.get("macs"):
        return ""
    m, params = entry["macs"][0], figure_value(entry.get("params_m"))
    here, naive = ours_at(conventions, model, m), ours_at(conventions, model, m, naive=True)
    ours_params = float(hit.iloc[0]["params_m"])
    params_text = (f"{ours_params:.2f}M params against the published {params:g}M "
                   f"({ours_params / params:.2f}x)" if params else f"{ours_params:.2f}M params")
    if here is None:
        macs_text = ("its MACs at that convention were not counted (params.yaml "
                     "`complexity.published_conventions` is off)")
    else:
        macs_text = (f"{here:.1f} G at that convention ({m['counter']} with our handles; "
                     f"{naive:.1f} G with the counter's defaults) against {m['value']:g} G "
                     f"({here / m['value']:.2f}x)")
    return (f"**Our S4M reconstruction** (the {params:g}M design is unpublished): {params_text}; "
            f"{macs_text}; published convention: {_convention(m)} (`{m['source']}`).\n")

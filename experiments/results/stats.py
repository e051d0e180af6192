"""Statistics of the results runs: per-model means over seeds, bootstrap intervals over test
utterances, paired per-utterance comparisons, and the time each model took to reach a
validation SI-SDRi."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

METRICS = {"si_sdr_i": "si_sdri", "sdr_i": "sdri"}


def bootstrap_ci(values: np.ndarray, statistic: Any, resamples: int,
                 seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of `statistic` over `values` (a fixed seed: the same
    numbers give the same interval)."""
    result = stats.bootstrap((values,), statistic, n_resamples=resamples, confidence_level=0.95,
                             method="percentile", random_state=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def utterance_means(per_utterance: pd.DataFrame) -> pd.DataFrame:
    """Each model's per-utterance metrics averaged over its seeds: (model, utt_id) rows."""
    return per_utterance.groupby(["model", "utt_id"], sort=False)[list(METRICS)].mean()


def model_table(runs: pd.DataFrame, per_utterance: pd.DataFrame, resamples: int) -> pd.DataFrame:
    """One row per model: seeds, mean and std over seeds of each run's mean SI-SDRi / SDRi, and
    the 95% bootstrap interval of the mean over utterances (seed-averaged scores)."""
    means = utterance_means(per_utterance)
    rows = []
    for model, group in runs.groupby("model", sort=False):
        row: dict[str, Any] = {"model": model, "seeds": len(group)}
        for metric, short in METRICS.items():
            by_seed = group[f"{short}_db"]
            values = means.loc[model][metric].to_numpy()
            low, high = bootstrap_ci(values, np.mean, resamples)
            row |= {f"{short}_db": by_seed.mean(),
                    f"{short}_seed_std": by_seed.std(ddof=1) if len(group) > 1 else np.nan,
                    f"{short}_ci95_low": low, f"{short}_ci95_high": high}
        row["n_utterances"] = len(means.loc[model])
        rows.append(row)
    return pd.DataFrame(rows)


def paired_comparisons(per_utterance: pd.DataFrame, reference: str,
                       resamples: int) -> pd.DataFrame:
    """`reference` against every other model on the same test utterances (seed-averaged
    SI-SDRi): Wilcoxon signed-rank test, median difference with its 95% bootstrap interval,
    mean difference, and the matched-pairs rank-biserial correlation as effect size (+1: the
    reference better on every utterance, -1: worse on every one)."""
    means = utterance_means(per_utterance)["si_sdr_i"].unstack("model")
    rows = []
    for other in [m for m in means.columns if m != reference]:
        pair = means[[reference, other]].dropna()
        diff = (pair[reference] - pair[other]).to_numpy()
        test = stats.wilcoxon(diff)
        nonzero = diff[diff != 0]
        ranks = stats.rankdata(np.abs(nonzero))
        total = ranks.sum()
        effect = (ranks[nonzero > 0].sum() - ranks[nonzero < 0].sum()) / total if total else 0.0
        low, high = bootstrap_ci(diff, np.median, resamples)
        rows.append({"reference": reference, "other": other, "n_utterances": len(diff),
                     "mean_diff_db": float(diff.mean()), "median_diff_db": float(np.median(diff)),
                     "median_diff_ci95_low": low, "median_diff_ci95_high": high,
                     "wilcoxon_statistic": float(test.statistic), "p_value": float(test.pvalue),
                     "rank_biserial": float(effect),
                     "reference_better_share": float((diff > 0).mean())})
    return pd.DataFrame(rows)


def time_to(curves: pd.DataFrame, thresholds: list[float]) -> pd.DataFrame:
    """For each model and threshold: the first validation at which the seed-mean validation
    SI-SDRi reached it, as steps, training MACs (T) and training wall seconds (seed means at
    that validation); NaN where it was not reached."""
    rows = []
    for model, group in curves.groupby("model", sort=False):
        mean = group.groupby("step")[["val_sisdri", "train_tmacs", "wall_s"]].mean()
        for threshold in thresholds:
            hit = mean[mean["val_sisdri"] >= threshold]
            first = hit.iloc[0] if len(hit) else None
            rows.append({"model": model, "threshold_db": threshold,
                         "steps": hit.index[0] if first is not None else np.nan,
                         "train_tmacs": first["train_tmacs"] if first is not None else np.nan,
                         "wall_s": first["wall_s"] if first is not None else np.nan})
    return pd.DataFrame(rows)


def finding(paired: pd.DataFrame, models: pd.DataFrame, alpha: float = 0.05) -> str:
    """One sentence on the reference against each other model, whichever way it goes."""
    if paired.empty:
        return "No paired comparison: the profile has one model."
    by_model = models.set_index("model")
    reference = paired["reference"].iloc[0]
    parts = []
    for row in paired.itertuples():
        if row.p_value >= alpha:
            verdict = "no significant difference from"
        elif row.median_diff_db > 0:
            verdict = "better than"
        else:
            verdict = "worse than"
        parts.append(f"{verdict} {row.other} ({by_model.loc[row.other, 'si_sdri_db']:.2f} dB; "
                     f"median difference {row.median_diff_db:+.2f} dB, Wilcoxon p = "
                     f"{row.p_value:.2g})")
    return (f"At equal training MACs on the synthetic test split, {reference} "
            f"({by_model.loc[reference, 'si_sdri_db']:.2f} dB SI-SDRi, mean over seeds) is "
            + "; ".join(parts) + ".")

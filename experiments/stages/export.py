"""ONNX export of every model and its ONNX Runtime parity and int8 cost.

`python -m experiments.stages.export [--models M ...] [--profile P] [--results]`

For each model (params.yaml `models`; trained weights from runs/<model>/model.pt where they
exist; with `--results`, the CPU results profile's models with their first seed's weights from
`results.runs_dir`, reported in `results.out_dir`): export to `export.out_dir/<model>.onnx`
(dynamic batch and length, onnx.checker), the SI-SDR of ONNX Runtime's output against eager
PyTorch on test audio of each `export.parity_seconds`, ONNX Runtime dynamic int8 (its SI-SDR
against float32), and SI-SDRi of eager, ONNX float32 and int8 on `export.quality_mixtures` test
mixtures (trained weights only; labelled by the quality rule of params.yaml `report`, like every
SI-SDRi the suite reports).
A model that does not export gets its blocker instead. Each model's row is kept as
`export.out_dir/<model>.json` with what it depends on, so a run started again redoes only the
models whose weights or settings changed. Writes onnx.csv and onnx.md in the report folder.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from experiments.atomic import write_json, write_text
from experiments.config import load_profile, require
from experiments.data import make_dataset
from experiments.deploy.onnx import (
    INT8_SISDRI_TOLERANCE_DB,
    PARITY_DB,
    export_with_int8,
    parity_db,
    separate,
)
from experiments.env import environment, environment_markdown
from experiments.evaluation.metrics import separation_metrics
from experiments.registry import build_model, load_model
from experiments.reporting.rule import QualityRule
from experiments.results.plan import plan_runs, settings


def _si_sdri(run, mixtures: list, sample_rate: int) -> float:
    """Mean SI-SDRi of `run` ((B, T) -> (B, n_src, T)) over (mixture, sources) pairs."""
    scores = [separation_metrics(mix, refs, run(mix[None])[0], sample_rate)[0]["si_sdr_i"]
              for mix, refs in mixtures]
    return sum(scores) / len(scores)


REPO = Path(__file__).resolve().parents[2]
# the code a row depends on (as a DVC stage's deps would list it)
CODE = ("s4m", "baselines", "experiments/deploy", "experiments/registry.py",
        "experiments/stages/export.py")


def _sha256(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def row_key(name: str, cfg: dict, weights: Path) -> dict:
    """What a model's row depends on: the export code, the export settings, the sample rate,
    the seed and the weights (None: untrained, seeded)."""
    code = sorted(p for root in (REPO / c for c in CODE)
                  for p in ([root] if root.is_file() else root.rglob("*.py")))
    return {"code_sha256": _sha256(code), "export": cfg["export"],
            "sample_rate": int(require(cfg, "data.sample_rate")), "seed": cfg["seed"],
            "weights_sha256": _sha256([weights]) if weights.is_file() else None}


def parity_audio(cfg: dict) -> tuple[list, torch.Tensor]:
    """`export.quality_mixtures` (mixture, sources) pairs of the test split, and their mixtures
    joined (repeated) to the longest parity length."""
    test = make_dataset(cfg["data"], "test", None)
    count = min(int(require(cfg, "export.quality_mixtures")), len(test))
    mixtures = [(test[i][0], test[i][1]) for i in range(count)]
    longest = max(require(cfg, "export.parity_seconds")) * int(cfg["data"]["sample_rate"])
    long_audio = torch.cat([mix for mix, _ in mixtures])
    if long_audio.shape[-1] < longest:
        long_audio = long_audio.repeat(-(-longest // long_audio.shape[-1]))
    return mixtures, long_audio


def training_steps(weights: Path) -> int | None:
    """The steps the weights were trained for (the trainer's train_metrics.json beside them)."""
    metrics = weights.with_name("train_metrics.json")
    return json.loads(metrics.read_text()).get("steps") if metrics.is_file() else None


def export_row(name: str, cfg: dict, out_dir: Path, mixtures: list,
               long_audio: torch.Tensor, weights: Path) -> dict:
    ex, sample_rate = cfg["export"], int(require(cfg, "data.sample_rate"))
    trained = weights.is_file()
    torch.manual_seed(int(cfg["seed"]))
    model = (load_model(weights) if trained else build_model(name, sample_rate=sample_rate)).eval()
    info, runs = export_with_int8(model, out_dir / f"{name}.onnx",
                                  float(require(cfg, "export.max_seconds")), int(ex["threads"]))
    row = {"model": name, "trained": trained,
           "steps": training_steps(weights) if trained else None, **info}
    if not runs:
        return row

    def eager(wav: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(wav)

    fp32, int8 = runs["fp32"], runs["int8"]
    for seconds in ex["parity_seconds"]:
        wav = long_audio[None, : int(seconds * sample_rate)]
        row[f"parity_db_{seconds:g}s"] = parity_db(eager(wav), separate(fp32, wav))
    row["parity_ok"] = all(row[f"parity_db_{s:g}s"] >= PARITY_DB
                           for s in ex["parity_seconds"])
    wav = long_audio[None, : 4 * sample_rate]
    row["int8_vs_fp32_db"] = parity_db(separate(fp32, wav), separate(int8, wav))
    if not trained:  # SI-SDRi of random weights says nothing about int8's quality cost
        return row
    row["si_sdri_eager"] = _si_sdri(eager, mixtures, sample_rate)
    row["si_sdri_onnx"] = _si_sdri(lambda w: separate(fp32, w), mixtures, sample_rate)
    row["si_sdri_int8"] = _si_sdri(lambda w: separate(int8, w), mixtures, sample_rate)
    return row


def quality_label(rows: pd.DataFrame, cfg: dict) -> str:
    """What the SI-SDRi columns are, by the quality rule over the trained rows."""
    if "si_sdri_eager" not in rows or rows["si_sdri_eager"].isna().all():
        return "none (no trained weights)"
    trained = rows[rows["si_sdri_eager"].notna()]
    rule = QualityRule.from_config(cfg)
    verdict = rule.judge(trained["si_sdri_eager"],
                         trained["steps"] if "steps" in trained else [None] * len(trained))
    return (f"{verdict.label('SI-SDRi of trained weights')} ({verdict.reason}; "
            f"{rule.text()})")


def report(rows: pd.DataFrame, cfg: dict, env: dict) -> str:
    ex = cfg["export"]
    shown = rows.astype(object).where(rows.notna(), "")  # blank where a model has no value
    if "parity_ok" in rows:
        shown["parity_ok"] = rows["parity_ok"].map({True: "yes", False: "no"}).fillna("")
    lines = ["# ONNX export and ONNX Runtime", "",
             f"Every model exported with torch's dynamo exporter (dynamic batch and length up to "
             f"{ex['max_seconds']:g} s); parity is the SI-SDR (dB) of ONNX Runtime's float32 "
             f"output against eager PyTorch on test audio of {ex['parity_seconds']} s (required: "
             f"{PARITY_DB:g} dB); int8 is ONNX Runtime's dynamic quantization, compared "
             f"with float32 on 4 s; {ex['threads']} thread(s). SI-SDRi over "
             f"{ex['quality_mixtures']} test mixtures: {quality_label(rows, cfg)}.", "",
             shown.to_markdown(index=False, floatfmt=".4g"), ""]
    if "parity_ok" in rows:
        below = rows.loc[rows["parity_ok"].eq(False), "model"].tolist()
        if below:
            lines += [f"Below {PARITY_DB:g} dB parity at some length: {', '.join(below)}.", ""]
    if "si_sdri_int8" in rows and rows["si_sdri_int8"].notna().any():
        cost = (rows["si_sdri_onnx"] - rows["si_sdri_int8"]).abs()
        holds = rows.loc[cost <= INT8_SISDRI_TOLERANCE_DB, "model"].tolist()
        lines += [f"int8 keeps float32's SI-SDRi (within {INT8_SISDRI_TOLERANCE_DB:g} dB): "
                  f"{', '.join(holds) or 'none'}; does not: "
                  f"{', '.join(rows.loc[cost > INT8_SISDRI_TOLERANCE_DB, 'model']) or 'none'}.",
                  ""]
    untrained = rows.loc[~rows["trained"], "model"].tolist()
    if untrained:
        lines += [f"Untrained weights ({', '.join(untrained)}): parity and int8's distance "
                  "from float32 are measured on them; int8's quality cost (SI-SDRi) needs "
                  "trained weights (`runs/<model>/model.pt`) and is not measured.", ""]
    lines += ["## Environment of this report", "", environment_markdown(env)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--profile", default=None)
    parser.add_argument("--reports", type=Path, default=None,
                        help="report folder (default: reports, with --results its out_dir)")
    parser.add_argument("--results", action="store_true",
                        help="the CPU results profile's models and weights (make results)")
    args = parser.parse_args(argv)
    weights = {}
    if args.results:  # its profile, its models, each one's first seed
        results = settings(load_profile(args.params))
        cfg = load_profile(args.params, results["profile"])
        for run in plan_runs(cfg):
            weights.setdefault(run.model, run.run_dir / "model.pt")
        models, reports = args.models or list(weights), Path(results["out_dir"])
    else:
        cfg = load_profile(args.params, args.profile)
        models, reports = args.models or cfg["models"], Path("reports")
    reports = args.reports or reports
    torch.set_num_threads(int(require(cfg, "export.threads")))
    out_dir = Path(require(cfg, "export.out_dir"))
    rows, audio = [], None
    for name in models:
        # each model's row is kept beside its graph: a stopped run continues with the next model
        weights_path = weights.get(name, Path("runs") / name / "model.pt")
        done, key = out_dir / f"{name}.json", row_key(name, cfg, weights_path)
        kept = json.loads(done.read_text()) if done.is_file() else {}
        if kept.get("key") == key:
            print(f"[export] {name}: kept from {done}", flush=True)
            rows.append(kept["row"])
            continue
        print(f"[export] {name} ...", flush=True)
        audio = audio or parity_audio(cfg)
        rows.append(export_row(name, cfg, out_dir, *audio, weights_path))
        write_json(done, {"key": key, "row": rows[-1]})
        print(f"[export] {rows[-1]}", flush=True)
    table = pd.DataFrame(rows)
    for column in ("trained", "parity_ok"):
        if column in table:
            table[column] = table[column].astype("boolean")
    reports.mkdir(parents=True, exist_ok=True)
    write_text(reports / "onnx.csv", table.to_csv(index=False, float_format="%.4g"))
    env = environment(cfg["profile"], int(require(cfg, "export.threads")))
    write_text(reports / "onnx.md", report(table, cfg, env))
    return 0


if __name__ == "__main__":
    sys.exit(main())

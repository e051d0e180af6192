"""GPU check: every registry model on one device, in one command; prints one table.

    python -m tools.gpu_check                      # CUDA, full registry models (make gpu-check)
    python -m tools.gpu_check --device cpu --tiny  # the same checks in seconds on a CPU

Per model: a few training steps on a repeated batch in 32-true, bf16-mixed and (CUDA only)
16-mixed (loss finite and falling), SI-SDR of the result, and the speed stage's benchmark; a
2-process DDP run when two GPUs are present (`--ddp on` forces it, e.g. on the CPU with gloo).
Exits 1 when any check fails or the whole run takes longer than --budget-s. On a machine
without a package index, tools/gpu_check.sh installs the carried wheels first.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the project from this checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from experiments.devicecheck import (  # noqa: E402
    CheckSettings,
    ddp_worker,
    format_rows,
    run_checks,
    tiny_settings,
)
from experiments.registry import REGISTRY  # noqa: E402

BUDGET_S = 480  # the bound for one modern GPU


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true",
                        help="small model configurations and signals (CPU-sized)")
    parser.add_argument("--models", nargs="+", choices=list(REGISTRY), default=list(REGISTRY))
    parser.add_argument("--steps", type=int, help="training steps per precision")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads")
    parser.add_argument("--ddp", choices=("auto", "on", "off"), default="auto",
                        help="2-process DDP run: auto = when 2 CUDA devices are present")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S)
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="bf16-mixed", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: --device cuda but torch sees no CUDA device "
              f"(torch {torch.__version__}); use --device cpu --tiny on a CPU", file=sys.stderr)
        return 2
    settings = tiny_settings(args.device) if args.tiny else CheckSettings(device=args.device)
    settings = replace(settings, threads=args.threads,
                       **({"steps": args.steps} if args.steps else {}))
    if args.ddp_worker:
        ddp_worker(args.models[0], args.precision, settings)
        return 0

    ddp = args.ddp == "on" or (args.ddp == "auto" and args.device == "cuda"
                               and torch.cuda.device_count() >= 2)
    started = time.monotonic()
    rows = run_checks(settings, args.models, ddp)
    elapsed = time.monotonic() - started
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"\ngpu_check on {device} (torch {torch.__version__}, {settings.threads} CPU threads)")
    print(format_rows(rows))
    failed = [r for r in rows if r["status"] == "FAIL"]
    over = elapsed > args.budget_s
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed or skipped, {len(failed)} "
          f"failed; {elapsed:.0f} s (budget {args.budget_s:.0f} s{', EXCEEDED' if over else ''})")
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())

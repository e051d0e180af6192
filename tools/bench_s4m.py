"""Forward time of S4M configs and its split between SSM kernel generation and the rest.

    python tools/bench_s4m.py [--threads 1] [--seconds 4] [--repeats 5]   (or `make bench`)

Prints, per config: params, median (and min/max) forward time on `--seconds` of audio at batch 1
(after a warm-up), the median time of building every S4 kernel once (what each forward does
first), and the remaining time. Not a test: timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from s4m import CONFIGS, build_s4m


def _times(fn: Callable[[], object], warmup: int, repeats: int) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def bench(name: str, seconds: float, sample_rate: int, warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_s4m(name, sample_rate=sample_rate).eval()
    wav = torch.randn(1, int(seconds * sample_rate))
    frames = model.num_frames(wav.shape[-1])
    with torch.no_grad():
        fwd = _times(lambda: model(wav), warmup, repeats)
        kern = _times(lambda: model.block.kernel_ffts(frames), warmup, repeats)
    total, kernel = statistics.median(fwd), statistics.median(kern)
    return dict(model=name, params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                forward_s=total, forward_min_s=min(fwd), forward_max_s=max(fwd),
                kernel_s=kernel, rest_s=total - kernel, frames=frames)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    args = parser.parse_args(argv)
    if args.threads < 1 or args.seconds <= 0 or args.repeats < 1 or args.warmup < 0:
        parser.error("need --threads >= 1, --seconds > 0, --repeats >= 1, --warmup >= 0")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, "
          f"{args.seconds:g} s at {args.sample_rate} Hz, batch 1, "
          f"median of {args.repeats} after {args.warmup} warm-up")
    print(f"{'model':<10} {'params_M':>8} {'forward_s':>10} {'min_s':>7} {'max_s':>7} "
          f"{'ssm_kernel_s':>12} {'kernel_%':>8} {'rest_s':>7}")
    for name in args.models:
        r = bench(name, args.seconds, args.sample_rate, args.warmup, args.repeats)
        print(f"{r['model']:<10} {r['params_m']:>8.3f} {r['forward_s']:>10.3f} "
              f"{r['forward_min_s']:>7.3f} {r['forward_max_s']:>7.3f} {r['kernel_s']:>12.4f} "
              f"{100 * r['kernel_s'] / r['forward_s']:>8.1f} {r['rest_s']:>7.3f}")


if __name__ == "__main__":
    main()

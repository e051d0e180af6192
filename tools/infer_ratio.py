"""S4M-tiny vs Sepformer inference time on one thread, interleaved, medians (issue 17).

    python tools/infer_ratio.py [--seconds 4] [--repeats 5] [--models s4m_tiny sepformer]
                                [--compile] [--train]

Each repeat times every model once, in turn, so machine-load drifts hit all of them alike.
Prints each model's median and min and the ratios of the first model's median to the others'.
`--compile` also times `torch.compile`d copies (their compile time = the first call's).
`--train` times a training step instead (batch 2 of `--seconds`, PIT SI-SDR loss, backward), as
the speed stage does; compare with `--models s4m_tiny convtasnet --seconds 2`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from experiments.registry import build_model  # noqa: E402


def train_step(model: torch.nn.Module, mix: torch.Tensor) -> Callable[[torch.Tensor], None]:
    from asteroid.losses import PITLossWrapper, pairwise_neg_sisdr

    loss_fn = PITLossWrapper(pairwise_neg_sisdr, pit_from="pw_mtx")
    model.train()
    targets = torch.randn(mix.shape[0], model(mix[:, :800]).shape[1], mix.shape[1])

    def step(wav: torch.Tensor) -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(wav), targets).backward()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["s4m_tiny", "sepformer"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--train", action="store_true")
    args = parser.parse_args()
    if args.train and args.compile:
        parser.error("--train times eager training steps only")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wav = torch.randn(2 if args.train else 1, round(args.seconds * args.sample_rate))
    runs = {}
    for name in args.models:
        model = build_model(name, sample_rate=args.sample_rate).eval()
        runs[name] = train_step(model, wav) if args.train else model
        if args.compile:
            compiled = torch.compile(model)
            start = time.perf_counter()
            with torch.inference_mode():
                compiled(wav)
            print(f"{name}: compile + first call {time.perf_counter() - start:.1f} s", flush=True)
            runs[f"{name}+compile"] = compiled
    with torch.inference_mode(not args.train):
        for fn in runs.values():  # warm-up
            fn(wav)
        times: dict[str, list[float]] = {k: [] for k in runs}
        for _ in range(args.repeats):
            for key, fn in runs.items():
                start = time.perf_counter()
                fn(wav)
                times[key].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), "
          f"{'training step, batch 2 x' if args.train else 'inference'} {args.seconds:g} s at "
          f"{args.sample_rate} Hz, median of {args.repeats}, interleaved")
    for key, v in times.items():
        print(f"{key:<22} median {med[key]:.3f} s  min {min(v):.3f} s")
    first, *rest = args.models
    for other in rest:
        print(f"ratio {first}/{other}: {med[first] / med[other]:.3f}")
        if args.compile:
            print(f"ratio compiled {first}/{other}: "
                  f"{med[first + '+compile'] / med[other + '+compile']:.3f}")
    if args.compile:
        for name in args.models:
            print(f"{name} compiled/eager: {med[name + '+compile'] / med[name]:.3f}")


if __name__ == "__main__":
    main()

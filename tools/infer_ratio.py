"""S4M-tiny vs Sepformer inference time on one thread, interleaved, medians (issue 17).

    python tools/infer_ratio.py [--seconds 4] [--repeats 5] [--models s4m_tiny sepformer]
                                [--compile] [--train] [--profile] [--knockout [N]]

Each repeat times every model once, in turn, so machine-load drifts hit all of them alike.
Prints each model's median and min and the ratios of the first model's median to the others'.
`--compile` also times `torch.compile`d copies (their compile time = the first call's).
`--train` times a training step instead (batch 2 of `--seconds`, PIT SI-SDR loss, backward), as
the speed stage does; compare with `--models s4m_tiny convtasnet --seconds 2`. With `--compile`
it also times the step through the compiled model (what `train.compile: true` trains with).
`--profile` then profiles one inference per model (and per compiled model with `--compile`)
(torch.profiler, self CPU time): time per kind of op, the GEMMs' achieved GMAC/s, the streaming
bandwidth of one thread (an elementwise pass over a float32 map, to compare with the top ops'), and
the first model's ratio to the others if only its GEMMs cost time: the floor its ratio could reach
with every other op free.
`--knockout N` measures what each op costs the first model (eager inference): it times the
forward with one aten op at a time made free (its outputs replayed from a recording of the same
input, in-place ops skipped) for the N ops taking the most time. Each free op saves a time; the
first model's median minus it, over the second model's median, is the ratio that model would
reach without that op. It also prints the per-call times of the GEMMs and of all other ops.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from experiments.benchmark.speed import SpeedSettings, train_step  # noqa: E402
from experiments.registry import build_model  # noqa: E402

# ops by kind (self CPU time); everything else is "other". "inductor": the kernels a compiled
# graph generated (its call's self time); eager runs have none.
KINDS = {
    "gemm": ("aten::addmm", "aten::mm", "aten::bmm", "aten::baddbmm", "aten::_addmm_activation",
             "mkl::_mkl_linear"),
    "conv": ("aten::mkldnn_convolution", "aten::convolution_overrideable",
             "aten::_slow_conv2d_forward", "aten::slow_conv_transpose2d",
             "mkldnn::_convolution_pointwise"),
    "norm": ("aten::native_group_norm", "aten::native_layer_norm", "aten::native_batch_norm"),
    "fft": ("aten::_fft_r2c", "aten::_fft_c2r", "aten::_fft_c2c"),
    "copy": ("aten::copy_",),
    "inductor": (),  # "## Call CompiledFxGraph <name> ##" events
}


def op_profile(model: Callable[[torch.Tensor], object], wav: torch.Tensor, top: int = 0,
               ) -> tuple[dict[str, float], float]:
    """Self CPU seconds per kind of op in one inference, and the GEMMs' multiply-adds; prints
    the `top` ops by input shape with the bytes per second they move (float32 inputs read and
    an output as large as the largest input written)."""
    from torch.profiler import ProfilerActivity, profile

    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], with_flops=True,
                                         record_shapes=top > 0) as prof:
        model(wav)
    if top:
        events = sorted(prof.key_averages(group_by_input_shape=True),
                        key=lambda e: -e.self_cpu_time_total)[:top]
        for event in events:
            sizes = [math.prod(s) for s in event.input_shapes if s]
            seconds = event.self_cpu_time_total / 1e6
            moved = 4 * (sum(sizes) + max(sizes, default=0)) * event.count
            print(f"  {seconds:7.3f} s {event.key:<30} x{event.count:<4} "
                  f"{moved / seconds / 1e9 if seconds else 0:6.1f} GB/s  {event.input_shapes}")
    seconds = dict.fromkeys([*KINDS, "other"], 0.0)
    gemm_macs = 0.0
    for event in prof.key_averages():
        kind = "inductor" if event.key.startswith("## Call CompiledFxGraph") else next(
            (k for k, names in KINDS.items() if event.key in names), "other")
        seconds[kind] += event.self_cpu_time_total / 1e6
        if kind == "gemm":
            gemm_macs += (event.flops or 0) / 2
    return seconds, gemm_macs


MAP = (4008, 512)  # S4M-tiny's full-rate map for 4 s at 8 kHz: 8.2 MB, larger than the caches


def stream_gb_per_s(repeats: int = 20) -> float:
    """Bytes read and written per second by one elementwise pass over a float32 `MAP`."""
    x = torch.randn(*MAP)
    out = torch.empty_like(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mul(x, 1.5, out=out)
        times.append(time.perf_counter() - start)
    return 2 * x.numel() * x.element_size() / min(times) / 1e9


def print_profile(models: dict[str, Callable[[torch.Tensor], object]], wav: torch.Tensor,
                  med: dict[str, float]) -> None:
    bandwidth = stream_gb_per_s()
    print(f"\nprofile of one inference per model (self CPU s); one-thread stream bandwidth "
          f"{bandwidth:.1f} GB/s")
    print(f"{'model':<20}" + "".join(f"{k:>9}" for k in [*KINDS, "other"]) +
          f"{'total':>8}{'GEMM GMAC/s':>13}")
    rows = {}
    for name, model in models.items():
        top = 12 if name == next(iter(models)) else 0
        if top:
            print(f"{name}: top {top} ops by input shape, then its row")
        seconds, macs = op_profile(model, wav, top)
        rows[name] = seconds, macs
        total = sum(seconds.values())
        rate = macs / seconds["gemm"] / 1e9 if macs and seconds["gemm"] else float("nan")
        print(f"{name:<20}" + "".join(f"{v:9.3f}" for v in seconds.values()) +
              f"{total:8.3f}{rate:13.1f}")
    first, *rest = (name for name in models if not name.endswith("+compile"))
    seconds, _ = rows[first]
    for other in rest:
        print(f"floor {first}/{other}: GEMMs only {seconds['gemm'] / med[other]:.3f}; "
              f"measured {med[first] / med[other]:.3f}")


# KINDS' GEMMs as a dispatch mode names them, and the composites it sees before they decompose
GEMM_OPS = ("aten.linear", "aten.matmul", *(name.replace("::", ".") for name in KINDS["gemm"]))


def aliases(func: torch._ops.OpOverload) -> bool:
    """Whether an op may return a view or its input (`to`, `contiguous`; not in-place ops): it
    costs nothing or nothing more, and can't be made free, since an alias must be made anew."""
    return any(r.alias_info and not r.alias_info.is_write for r in func._schema.returns)


class OpTimes(TorchDispatchMode):
    """Wall time and calls per aten op (its overload packet's name) that `Replay` can make free,
    measured around each call."""

    def __init__(self):
        super().__init__()
        self.seconds: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        if aliases(func):
            return out
        name = str(func.overloadpacket)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start
        self.calls[name] = self.calls.get(name, 0) + 1
        return out


class Replay(TorchDispatchMode):
    """Runs every op, except that ops for which `free(name)` holds cost nothing: with `record`
    their outputs are kept in call order; after it they are returned again (in-place ops return
    their input unchanged). Same shapes and, but after a skipped in-place op, the same values as
    a real run, so the other ops' times hold."""

    def __init__(self, free: Callable[[str], bool]):
        super().__init__()
        self.free, self.outputs, self.record, self.index = free, [], True, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if aliases(func) or not self.free(name):
            return func(*args, **(kwargs or {}))
        if name.endswith("_"):
            return func(*args, **(kwargs or {})) if self.record else args[0]
        if self.record:  # a copy: later in-place ops change what the caller got
            out = func(*args, **(kwargs or {}))
            self.outputs.append(out.clone() if isinstance(out, torch.Tensor) else out)
            return out
        self.index += 1
        return self.outputs[self.index - 1]


def knockout(model: Callable[[torch.Tensor], object], wav: torch.Tensor, plain: float,
             other: float, top: int, repeats: int) -> None:
    """Prints, per op made free, the seconds it saves and the ratio `plain` - saved over `other`
    (the medians of the model and the model it is compared with)."""
    with torch.inference_mode():
        timer = OpTimes()
        with timer:
            model(wav)
        ops = sorted(timer.seconds, key=lambda k: -timer.seconds[k])[:top]
        saved: dict[str, list[float]] = {op: [] for op in ops}
        for _ in range(repeats):  # in turn, each right after a run with nothing free
            for op in ops:
                replay = Replay(lambda name, op=op: name == op)
                with replay:
                    model(wav)  # records
                replay.record = False
                with Replay(lambda name: False):  # the same dispatch cost, nothing free
                    start = time.perf_counter()
                    model(wav)
                    base = time.perf_counter() - start
                with replay:
                    start = time.perf_counter()
                    model(wav)
                    saved[op].append(base - (time.perf_counter() - start))
    print(f"\nknockout, eager inference, median of {repeats} pairs (seconds saved by making the "
          f"op free; ratio = ({plain:.3f} s - saved) / {other:.3f} s)")
    print(f"{'op made free':<26}{'calls':>7}{'timed s':>9}{'saved s':>9}{'ratio':>8}")
    for op, values in saved.items():
        gain = statistics.median(values)
        print(f"{op:<26}{timer.calls[op]:>7}{timer.seconds[op]:9.3f}{gain:9.3f}"
              f"{(plain - gain) / other:8.3f}")
    # together, thousands of small calls: only the per-call timer (a knockout would also save
    # the dispatch mode's own cost per call, which the plain forward does not pay)
    gemm = sum(v for k, v in timer.seconds.items() if k in GEMM_OPS)
    rest = sum(v for k, v in timer.seconds.items() if k not in GEMM_OPS)
    calls = sum(n for k, n in timer.calls.items() if k not in GEMM_OPS)
    print(f"timed: GEMMs {gemm:.3f} s, every other op {rest:.3f} s ({calls} calls); ratio with "
          f"every other op free {(plain - rest) / other:.3f}, with the GEMMs free "
          f"{(plain - gemm) / other:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--sample-rate", type=int, default=8000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--models", nargs="+", default=["s4m_tiny", "sepformer"])
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--train", action="store_true")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--knockout", type=int, nargs="?", const=8, default=0, metavar="N")
    args = parser.parse_args()
    if args.train and (args.profile or args.knockout):
        parser.error("--train times training steps, unprofiled")
    if args.knockout and len(args.models) < 2:
        parser.error("--knockout compares the first model with the second")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    wav = torch.randn(2 if args.train else 1, round(args.seconds * args.sample_rate))
    runs = {}
    settings = SpeedSettings.defaults(train_batch=2, train_seconds=args.seconds)

    def as_run(model: torch.nn.Module) -> Callable[[torch.Tensor], object]:
        if not args.train:
            return model
        # the speed stage's training step, on its own batch of 2 x --seconds
        step = train_step(model, settings, args.sample_rate, torch.device("cpu"))
        return lambda _wav: step()

    for name in args.models:
        model = build_model(name, sample_rate=args.sample_rate).eval()
        runs[name] = as_run(model)
        if args.compile:
            start = time.perf_counter()
            compiled = as_run(torch.compile(model))  # shares the model's parameters
            with torch.inference_mode(not args.train):
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
    if args.profile:  # eager and, with --compile, compiled
        print_profile(runs, wav, med)
    if args.knockout:
        first, second = args.models[:2]
        knockout(runs[first], wav, med[first], med[second], args.knockout, args.repeats)


if __name__ == "__main__":
    main()

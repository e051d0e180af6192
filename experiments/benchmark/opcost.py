"""Where a model's inference time goes, by op: torch.profiler's self CPU time per kind of op
(`op_profile`) and the knockout (`knockout`): the forward timed with one aten op at a time made
free, its outputs replayed from a recording of the same input (in-place ops skipped). The
knockout is the one to use for shares: torch.profiler inflates many small ops."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

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
TOP_OPS = 12  # ops by input shape listed for the first model of a profile
MAP = (4008, 512)  # S4M-tiny's full-rate map for 4 s at 8 kHz: 8.2 MB, larger than the caches


def op_profile(call: Callable[[], object], top: int = 0) -> dict[str, Any]:
    """Self CPU seconds per kind of op in one `call()` and the GEMMs' multiply-adds; with `top`,
    the `top` ops by input shape with the bytes per second they move (float32 inputs read and an
    output as large as the largest input written)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], with_flops=True,
                 record_shapes=top > 0) as prof:
        call()
    lines = []
    if top:
        events = sorted(prof.key_averages(group_by_input_shape=True),
                        key=lambda e: -e.self_cpu_time_total)[:top]
        for event in events:
            sizes = [math.prod(s) for s in event.input_shapes if s]
            seconds = event.self_cpu_time_total / 1e6
            moved = 4 * (sum(sizes) + max(sizes, default=0)) * event.count
            lines.append(f"  {seconds:7.3f} s {event.key:<30} x{event.count:<4} "
                         f"{moved / seconds / 1e9 if seconds else 0:6.1f} GB/s  "
                         f"{event.input_shapes}")
    seconds = dict.fromkeys([*KINDS, "other"], 0.0)
    gemm_macs = 0.0
    for event in prof.key_averages():
        kind = "inductor" if event.key.startswith("## Call CompiledFxGraph") else next(
            (k for k, names in KINDS.items() if event.key in names), "other")
        seconds[kind] += event.self_cpu_time_total / 1e6
        if kind == "gemm":
            gemm_macs += (event.flops or 0) / 2
    return {"seconds": seconds, "gemm_macs": gemm_macs, "top_ops": lines}


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


def profile_calls(calls: dict[str, Callable[[], object]]) -> dict[str, Any]:
    """`op_profile` of each call (the first with its top ops) and the stream bandwidth."""
    first = next(iter(calls))
    return {"stream_gb_per_s": stream_gb_per_s(),
            "models": {name: op_profile(call, TOP_OPS if name == first else 0)
                       for name, call in calls.items()}}


def format_profile(result: dict[str, Any], medians: dict[str, float]) -> str:
    """The profile's rows, and the first eager model's ratio to each other eager model if only
    its GEMMs cost time: the floor its ratio could reach with every other op free."""
    lines = [f"\nprofile of one inference per model (self CPU s); one-thread stream bandwidth "
             f"{result['stream_gb_per_s']:.1f} GB/s",
             f"{'model':<20}" + "".join(f"{k:>9}" for k in [*KINDS, "other"]) +
             f"{'total':>8}{'GEMM GMAC/s':>13}"]
    for name, row in result["models"].items():
        if row["top_ops"]:
            lines += [f"{name}: top {len(row['top_ops'])} ops by input shape, then its row",
                      *row["top_ops"]]
        seconds, macs = row["seconds"], row["gemm_macs"]
        rate = macs / seconds["gemm"] / 1e9 if macs and seconds["gemm"] else float("nan")
        lines.append(f"{name:<20}" + "".join(f"{v:9.3f}" for v in seconds.values()) +
                     f"{sum(seconds.values()):8.3f}{rate:13.1f}")
    first, *rest = (name for name in result["models"] if not name.endswith("+compile"))
    gemm = result["models"][first]["seconds"]["gemm"]
    lines += [f"floor {first}/{other}: GEMMs only {gemm / medians[other]:.3f}; "
              f"measured {medians[first] / medians[other]:.3f}" for other in rest]
    return "\n".join(lines)


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


def knockout(call: Callable[[], object], top: int, repeats: int) -> dict[str, Any]:
    """Per op among the `top` that take the most time in one `call()`: its calls, its timed
    seconds and the seconds making it free saves in each of `repeats` pairs (each run right
    after one with nothing free); and the timed totals of the GEMMs and of every other op."""
    timer = OpTimes()
    with timer:
        call()
    ops = sorted(timer.seconds, key=lambda k: -timer.seconds[k])[:top]
    saved: dict[str, list[float]] = {op: [] for op in ops}
    for _ in range(repeats):
        for op in ops:
            replay = Replay(lambda name, op=op: name == op)
            with replay:
                call()  # records
            replay.record = False
            with Replay(lambda name: False):  # the same dispatch cost, nothing free
                start = time.perf_counter()
                call()
                base = time.perf_counter() - start
            with replay:
                start = time.perf_counter()
                call()
                saved[op].append(base - (time.perf_counter() - start))
    return {"ops": {op: {"calls": timer.calls[op], "timed_s": timer.seconds[op],
                         "saved_s": saved[op]} for op in ops},
            "gemm_s": sum(v for k, v in timer.seconds.items() if k in GEMM_OPS),
            "rest_s": sum(v for k, v in timer.seconds.items() if k not in GEMM_OPS),
            "rest_calls": sum(n for k, n in timer.calls.items() if k not in GEMM_OPS)}


def format_knockout(result: dict[str, Any], plain: float, other: float) -> str:
    """Per op made free, the median seconds it saves and the ratio `plain` - saved over `other`
    (the medians of the model and the model it is compared with)."""
    repeats = len(next(iter(result["ops"].values()))["saved_s"]) if result["ops"] else 0
    lines = [f"\nknockout, eager inference, median of {repeats} pairs (seconds saved by making "
             f"the op free; ratio = ({plain:.3f} s - saved) / {other:.3f} s)",
             f"{'op made free':<26}{'calls':>7}{'timed s':>9}{'saved s':>9}{'ratio':>8}"]
    for op, row in result["ops"].items():
        gain = statistics.median(row["saved_s"])
        lines.append(f"{op:<26}{row['calls']:>7}{row['timed_s']:9.3f}{gain:9.3f}"
                     f"{(plain - gain) / other:8.3f}")
    # together, thousands of small calls: only the per-call timer (a knockout would also save
    # the dispatch mode's own cost per call, which the plain forward does not pay)
    lines.append(f"timed: GEMMs {result['gemm_s']:.3f} s, every other op {result['rest_s']:.3f} s "
                 f"({result['rest_calls']} calls); ratio with every other op free "
                 f"{(plain - result['rest_s']) / other:.3f}, with the GEMMs free "
                 f"{(plain - result['gemm_s']) / other:.3f}")
    return "\n".join(lines)

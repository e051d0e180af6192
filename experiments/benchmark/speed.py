"""Inference time, real-time factor, training-step time and peak memory of registry models.

Each model runs in its own process, started from a multiprocessing forkserver that has imported
the model libraries but run nothing (so the libraries load once, not once per model), so one
model's allocations and thread pools cannot colour the next one's numbers and the CPU peak
memory is an honest RSS delta: the peak resident set (VmHWM, reset through
/proc/self/clear_refs) minus the resident set just before the measured calls. On CUDA it
synchronises, times with CUDA events and reads `torch.cuda.max_memory_allocated` above the
memory allocated before the calls.
"""

from __future__ import annotations

import os
import statistics
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any
from unittest import mock

import torch
from torch import nn

from experiments.benchmark import opcost
from experiments.benchmark.goals import GOAL_PAIRS, goal_ratios
from experiments.benchmark.onnxrt import ONNX_COLUMNS, onnx_inference
from experiments.benchmark.timing import PeakMemory, time_calls
from experiments.benchmark.workers import (
    WorkerDied,
    WorkerTimeout,
    load_factory,
    run_in_subprocess,
)
from experiments.config import ConfigError, repo_defaults, require
from experiments.env import cpu_has_bf16, resolve_device, runs_bf16

DEVICE_SETTING = "params.yaml: `speed.device`"
# speed_vs_length.csv; status: ok | too_slow (past speed.length_timeout_s, or slower than that
# at a shorter length) | died (the process was killed: out of memory, a signal)
LENGTH_COLUMNS = ("model", "length_s", "status", "infer_s", "rtf", "peak_mem_mb", "device",
                  "threads", "repeats", "mem_method")

# speed.compile: torch.compile'd inference beside eager (compile_s: compilation and first call,
# with an empty compiler cache; graph_breaks: dynamo's count; compiled_vs_eager_sisdr_db: the
# compiled output's SI-SDR against eager's on the same input; compile_error: why it failed, the
# stage goes on)
COMPILED_COLUMNS = ("infer_s_compiled", "compile_s", "graph_breaks", "compiled_vs_eager_sisdr_db",
                    "compile_error")
# speed.bf16: inference under bfloat16 autocast and its output's SI-SDR against float32's on the
# same input (dB); bf16_native: the CPU has AVX512-BF16 or AMX (elsewhere oneDNN emulates bf16)
BF16_COLUMNS = ("infer_s_bf16", "bf16_vs_fp32_sisdr_db", "bf16_native")
COLUMNS = (
    "model", "device", "threads", "params_m", "infer_seconds", "infer_s_median", "infer_s_min",
    "infer_s_max", "rtf", "infer_peak_mem_mb", "train_batch", "train_seconds", "train_step_s",
    "train_step_s_min", "train_step_s_max", "peak_mem_mb", "warmup", "repeats", "train_repeats",
    "mem_method", *COMPILED_COLUMNS, *BF16_COLUMNS, *ONNX_COLUMNS,
)

@dataclass(frozen=True)
class SpeedSettings:
    """params.yaml's `speed` section; `SpeedSettings.defaults()` without a profile."""

    device: str  # cpu | cuda | auto
    threads: int
    infer_seconds: float
    warmup: int
    repeats: int
    train_batch: int
    train_seconds: float
    train_repeats: int
    ratio_repeats: int  # timed rounds of each goal pair (GOAL_PAIRS)
    timeout_s: float
    lengths_s: tuple[float, ...]
    length_repeats: int
    length_timeout_s: float
    compile: bool
    bf16: bool | str  # true | false | auto (where bf16 is native)
    onnx: bool  # ONNX Runtime float32 and int8 beside eager (CPU devices only)

    @classmethod
    def defaults(cls, **changes: Any) -> SpeedSettings:
        """The repository params.yaml's top-level `speed` settings, with `changes`."""
        return cls.from_config({"speed": {**repo_defaults("speed"), **changes}})

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> SpeedSettings:
        section = require(cfg, "speed")
        if not isinstance(section, dict):
            raise ConfigError("params.yaml: `speed` must be a mapping")
        unknown = sorted(set(section) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"params.yaml: unknown `speed` settings {unknown}")
        values = {f.name: require(cfg, f"speed.{f.name}") for f in fields(cls)}
        lengths = values["lengths_s"]
        if not isinstance(lengths, list | tuple) or not lengths or not all(
                isinstance(x, int | float) and x > 0 for x in lengths):
            raise ConfigError("params.yaml: `speed.lengths_s` must be a list of positive seconds")
        settings = cls(**{**values, "lengths_s": tuple(sorted(float(x) for x in lengths))})
        settings.validate()
        return settings

    def validate(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise ConfigError(f"params.yaml: `speed.device` must be cpu, cuda or auto, "
                              f"got {self.device!r}")
        for name in ("threads", "repeats", "train_batch", "train_repeats", "ratio_repeats",
                     "length_repeats"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"params.yaml: `speed.{name}` must be >= 1")
        if self.warmup < 0:
            raise ConfigError("params.yaml: `speed.warmup` must be >= 0")
        for name in ("infer_seconds", "train_seconds", "timeout_s", "length_timeout_s"):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"params.yaml: `speed.{name}` must be positive")
        for name in ("compile", "onnx"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"params.yaml: `speed.{name}` must be true or false")
        runs_bf16(self.bf16, "speed.bf16")

    def runs_onnx(self, device: torch.device) -> bool:
        """Whether ONNX Runtime is timed: `speed.onnx` on a CPU device (its CPU provider)."""
        return self.onnx and device.type == "cpu"

    def runs_bf16(self, device: torch.device) -> bool:
        """Whether bf16 inference is timed (`bf16: auto`: where bf16 is native)."""
        return runs_bf16(self.bf16, "speed.bf16", device.type)


# ---- measuring, inside the worker --------------------------------------------------------------


def bf16_inference(model: nn.Module, wav: torch.Tensor, settings: SpeedSettings,
                   device: torch.device) -> dict[str, Any]:
    """Inference time under bfloat16 autocast, and how far its output is from float32's."""
    from experiments.evaluation.metrics import si_sdr

    with torch.inference_mode():
        reference = model(wav)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            times = time_calls(lambda: model(wav), settings.warmup, settings.repeats, device)
            estimate = model(wav)
    return {"infer_s_bf16": statistics.median(times),
            "bf16_vs_fp32_sisdr_db": float(si_sdr(estimate.float(), reference).mean()),
            "bf16_native": device.type == "cuda" or cpu_has_bf16()}


@contextmanager
def empty_compiler_cache() -> Iterator[None]:
    """Inductor compiles into a temporary cache: nothing from an earlier run is reused."""
    with (tempfile.TemporaryDirectory(prefix="inductor-") as cache,
          mock.patch.dict(os.environ, {"TORCHINDUCTOR_CACHE_DIR": cache})):
        yield


def train_step(model: nn.Module, settings: SpeedSettings, sample_rate: int,
               device: torch.device) -> Callable[[], None]:
    """One training step of `model` (forward + backward of PIT neg-SI-SDR on a random batch of
    `train_batch` x `train_seconds`) as a call; puts the model in training mode."""
    from asteroid.losses import PITLossWrapper, pairwise_neg_sisdr

    mix = torch.randn(settings.train_batch, round(settings.train_seconds * sample_rate),
                      device=device)
    model.eval()
    with torch.inference_mode():
        n_src = model(mix[:1, : sample_rate // 10]).shape[1]
    targets = torch.randn(mix.shape[0], n_src, mix.shape[1], device=device)
    loss_fn = PITLossWrapper(pairwise_neg_sisdr, pit_from="pw_mtx")
    model.train()

    def step() -> None:
        model.zero_grad(set_to_none=True)
        loss_fn(model(mix), targets).backward()

    return step


def compiled_inference(model: nn.Module, wav: torch.Tensor, settings: SpeedSettings,
                       device: torch.device) -> dict[str, Any]:
    """torch.compile (inductor) inference: compile time (the first call), median time of the
    compiled model, dynamo's graph-break count and how far the compiled output is from eager's.
    A failure is recorded, not raised. Compilation starts from an empty compiler cache, so that
    compile_s does not depend on what an earlier run left on disk."""
    import torch._dynamo

    from experiments.evaluation.metrics import si_sdr

    torch.compiler.reset()
    # private: dynamo's graph-break count has no public API (tests/test_complexity_speed.py
    # pins it)
    torch._dynamo.utils.counters.clear()
    compiled = torch.compile(model)
    with empty_compiler_cache():
        try:
            with torch.inference_mode():
                reference = model(wav)
                compile_s = time_calls(lambda: compiled(wav), 0, 1, device)[0]
                times = time_calls(lambda: compiled(wav), settings.warmup, settings.repeats,
                                   device)
                agreement = float(si_sdr(compiled(wav), reference).mean())
        except Exception as err:  # noqa: BLE001 - any compiler failure is a result to report
            return {"compile_error": f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"}
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    return {"infer_s_compiled": statistics.median(times), "compile_s": compile_s,
            "graph_breaks": breaks, "compiled_vs_eager_sisdr_db": agreement,
            "compile_error": ""}


def benchmark_model(model: nn.Module, settings: SpeedSettings, sample_rate: int, seed: int = 0,
                    ) -> dict[str, Any]:
    """Inference and training-step timings and peak memory of one model, in this process."""
    device = resolve_device(settings.device, DEVICE_SETTING)
    torch.manual_seed(seed)
    model = model.to(device).eval()
    wav = torch.randn(1, round(settings.infer_seconds * sample_rate), device=device)
    with torch.inference_mode(), PeakMemory(device) as infer_mem:
        infer = time_calls(lambda: model(wav), settings.warmup, settings.repeats, device)
    modes = {**(bf16_inference(model, wav, settings, device) if settings.runs_bf16(device)
                else {}),
             **(compiled_inference(model, wav, settings, device) if settings.compile else {}),
             **(onnx_inference(model, wav, sample_rate, settings.threads, settings.warmup,
                               settings.repeats) if settings.runs_onnx(device) else {})}
    step = train_step(model, settings, sample_rate, device)
    with PeakMemory(device) as train_mem:
        train = time_calls(step, settings.warmup, settings.train_repeats, device)
    model.zero_grad(set_to_none=True)
    median = statistics.median(infer)
    return {
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "infer_seconds": settings.infer_seconds,
        "infer_s_median": median, "infer_s_min": min(infer), "infer_s_max": max(infer),
        "infer_s_all": infer,
        "rtf": median / settings.infer_seconds,
        "infer_peak_mem_mb": infer_mem.mib,
        "train_batch": settings.train_batch, "train_seconds": settings.train_seconds,
        "train_step_s": statistics.median(train), "train_step_s_min": min(train),
        "train_step_s_max": max(train), "train_step_s_all": train,
        "peak_mem_mb": train_mem.mib,
        "warmup": settings.warmup, "repeats": settings.repeats,
        "train_repeats": settings.train_repeats, "mem_method": train_mem.method, **modes,
    }


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Build the model the spec names and benchmark it (the body of a worker process)."""
    settings = SpeedSettings(**spec["settings"])
    torch.set_num_threads(settings.threads)
    model = load_factory(spec["factory"])(**spec["kwargs"])
    return {"model": spec["model"],
            **benchmark_model(model, settings, spec["sample_rate"], spec.get("seed", 0))}


def run_in_turn_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Models' times in one process, timed in turn (a b, then b a, ...) for `ratio_repeats`
    rounds after `warmup` calls each (at least one: it compiles): spec["kind"] infer | compiled |
    train, spec["pair"] the models' specs (two for a goal pair, any number else). Optional:
    spec["also_compiled"] (kind infer or train) also times each model's torch.compile'd copy
    as "<model>+compile"; spec["profile"] (not train) torch.profiler's op kinds of every call
    (`opcost.profile_calls`); spec["knockout"] N (kind infer) the first model's N costliest ops
    made free (`opcost.knockout`). Returns {"kind", "times": {name: [s, ...]}, "first_call_s":
    {name: s} (with compilation for compiled calls), "torch", "threads"} and "profile" /
    "knockout" where asked."""
    settings = SpeedSettings(**spec["settings"])
    torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device, DEVICE_SETTING)
    torch.manual_seed(spec.get("seed", 0))
    kind, calls = spec["kind"], {}
    with empty_compiler_cache():
        for one in spec["pair"]:
            model = load_factory(one["factory"])(**one["kwargs"]).to(device).eval()
            runs = {one["model"]: torch.compile(model) if kind == "compiled" else model}
            if spec.get("also_compiled"):
                runs[one["model"] + "+compile"] = torch.compile(model)  # shares the parameters
            wav = torch.randn(1, round(settings.infer_seconds * one["sample_rate"]),
                              device=device)
            for name, run in runs.items():
                if kind == "train":
                    calls[name] = train_step(run, settings, one["sample_rate"], device)
                    continue

                def infer(run: Callable[..., Any] = run, wav: torch.Tensor = wav) -> None:
                    with torch.inference_mode():
                        run(wav)

                calls[name] = infer
        first = {name: time_calls(call, 0, 1, device)[0] for name, call in calls.items()}
        for call in calls.values():
            time_calls(call, settings.warmup - 1, 0, device)
        times: dict[str, list[float]] = {name: [] for name in calls}
        for i in range(settings.ratio_repeats):
            for name in list(calls)[:: 1 if i % 2 == 0 else -1]:
                times[name] += time_calls(calls[name], 0, 1, device)
        out = {"kind": kind, "times": times, "first_call_s": first, "torch": torch.__version__,
               "threads": torch.get_num_threads()}
        if spec.get("profile"):
            out["profile"] = opcost.profile_calls(calls)
        if spec.get("knockout"):
            out["knockout"] = opcost.knockout(next(iter(calls.values())), spec["knockout"],
                                              settings.ratio_repeats)
    return out


def run_length_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Inference time (median of `length_repeats` calls after one untimed call on 0.25 s) and
    peak memory of one model on one input length, batch 1 (the body of a worker process)."""
    settings = SpeedSettings(**spec["settings"])
    torch.set_num_threads(settings.threads)
    device = resolve_device(settings.device, DEVICE_SETTING)
    torch.manual_seed(spec.get("seed", 0))
    model = load_factory(spec["factory"])(**spec["kwargs"]).to(device).eval()
    rate, length = spec["sample_rate"], spec["length_s"]
    wav = torch.randn(1, round(length * rate), device=device)
    with torch.inference_mode():
        model(wav[:, : max(rate // 4, 1)])
        with PeakMemory(device) as mem:
            times = time_calls(lambda: model(wav), 0, settings.length_repeats, device)
    median = statistics.median(times)
    return {"model": spec["model"], "length_s": length, "status": "ok", "infer_s": median,
            "rtf": median / length, "peak_mem_mb": mem.mib,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "threads": torch.get_num_threads(), "repeats": settings.length_repeats,
            "mem_method": mem.method}


def speed_table(specs: Iterable[dict[str, Any]], timeout_s: float,
                published: dict[str, Any]) -> dict[str, Any]:
    """One row (COLUMNS) per model, each measured in a process of its own; then the goal pairs
    (GOAL_PAIRS) among them, each pair in one process; the goals from both."""
    rows, raw, by_name = [], {}, {}
    for spec in specs:
        print(f"[speed] {spec['model']} ...", flush=True)
        result = run_in_subprocess(spec, timeout_s, run_worker)
        raw[spec["model"]] = {"infer_s_all": result.pop("infer_s_all"),
                              "train_step_s_all": result.pop("train_step_s_all")}
        rows.append({col: result.get(col) for col in COLUMNS})
        by_name[spec["model"]] = spec
    pairs = {}
    for kind, a, b in GOAL_PAIRS:
        if a in by_name and b in by_name and (kind != "compiled"
                                              or by_name[a]["settings"]["compile"]):
            print(f"[speed] {a} and {b} in turn, one process ({kind}) ...", flush=True)
            result = run_in_subprocess(
                {"model": f"{a} + {b}", "kind": kind, "pair": [by_name[a], by_name[b]],
                 "settings": by_name[a]["settings"], "seed": by_name[a].get("seed", 0)},
                timeout_s, run_in_turn_worker)
            pairs[kind] = {"kind": kind, "times": result["times"]}
    return {"rows": rows, "timings": raw, "pairs": pairs,
            "summary": goal_ratios(rows, published, pairs)}


def length_table(specs: Iterable[dict[str, Any]], lengths: Iterable[float],
                 timeout_s: float) -> list[dict[str, Any]]:
    """One row (LENGTH_COLUMNS) per (model, length), each measured in a fresh process. A length
    that runs past `timeout_s` marks the model too slow there and at every longer length (not
    run); a process that dies marks that length `died` and the sweep goes on."""
    rows = []
    for spec in specs:
        slow_from = None
        for length in sorted(lengths):
            row = {"model": spec["model"], "length_s": length}
            if slow_from is not None:
                rows.append({**row, "status": "too_slow"})
                continue
            print(f"[speed] {spec['model']} on {length:g} s ...", flush=True)
            try:
                row = run_in_subprocess({**spec, "length_s": length}, timeout_s,
                                        run_length_worker, "speed.length_timeout_s")
            except WorkerTimeout:
                slow_from, row = length, {**row, "status": "too_slow"}
            except WorkerDied:
                row = {**row, "status": "died"}
            rows.append(row)
    return [{col: row.get(col) for col in LENGTH_COLUMNS} for row in rows]


def format_in_turn(result: dict[str, Any], settings: SpeedSettings, sample_rate: int) -> str:
    """`run_in_turn_worker`'s result: compile times, each call's median and min, the first
    model's ratio to each other model (eager and compiled) and each model's compiled / eager."""
    times = result["times"]
    med = {name: statistics.median(t) for name, t in times.items()}
    what = (f"training step, batch {settings.train_batch} x {settings.train_seconds:g} s"
            if result["kind"] == "train" else f"inference {settings.infer_seconds:g} s")
    lines = [f"{name.removesuffix('+compile')}: compile + first call {first:.1f} s"
             for name, first in result["first_call_s"].items() if name.endswith("+compile")]
    lines.append(f"torch {result['torch']}, {result['threads']} thread(s), {what} at "
                 f"{sample_rate} Hz, median of {settings.ratio_repeats}, in turn")
    lines += [f"{name:<22} median {med[name]:.3f} s  min {min(t):.3f} s"
              for name, t in times.items()]
    compiled = [name for name in times if name.endswith("+compile")]
    first, *rest = (name for name in times if not name.endswith("+compile"))
    for other in rest:
        lines.append(f"ratio {first}/{other}: {med[first] / med[other]:.3f}")
        if compiled:
            lines.append(f"ratio compiled {first}/{other}: "
                         f"{med[first + '+compile'] / med[other + '+compile']:.3f}")
    lines += [f"{name.removesuffix('+compile')} compiled/eager: "
              f"{med[name] / med[name.removesuffix('+compile')]:.3f}" for name in compiled]
    return "\n".join(lines)

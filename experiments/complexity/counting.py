"""MAC counting with fvcore and ptflops (aten backend) under one cost model.

Both tools see the model's ops (fvcore through a JIT trace, ptflops through a dispatch mode) but
count only convolutions and matrix products by default: FFTs, RNN kernels, attention kernels and
the complex arithmetic of SSM kernel generation count as zero. `count_fvcore` / `count_ptflops`
with ``ours=True`` give both tools the same handles, built from the same formulas
(`experiments.complexity.costs`), so their totals cross-check each other; ``ours=False`` runs
each tool's defaults (the naive count).
"""

from __future__ import annotations

import io
import re
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import torch
from fvcore.nn import FlopCountAnalysis, jit_analysis
from ptflops.aten_engine import FlopCounterMode
from torch import nn

from experiments.complexity.costs import DATA_MOVEMENT, DISPATCH_COSTS, JIT_COSTS, Cost, Meta


@dataclass
class MacCount:
    tool: str  # "fvcore" | "ptflops"
    handles: str  # "ours" | "default"
    total: float  # MACs of one forward on the given input
    by_category: dict[str, float]  # ours: matmul/fft/norm/elementwise; defaults: {}
    by_op: dict[str, float]  # "aten::name" -> MACs
    uncounted: dict[str, int] = field(default_factory=dict)  # arithmetic op -> calls not counted


# ---- SSM scope ---------------------------------------------------------------------------------


def is_ssm_module(module: nn.Module) -> bool:
    """Default SSM scope: the registry's state-space modules (s4m's S4/S4D layers, their kernel
    generators and the selective SSM)."""
    from experiments.registry import is_ssm_module as registered

    return registered(module)


def _ssm_names(model: nn.Module, scope: Callable[[nn.Module], bool]) -> set[str]:
    return {name for name, m in model.named_modules() if name and scope(m)}


@contextmanager
def _counting_mode(model: nn.Module) -> Iterator[None]:
    """Eval, no grad, MHA's fused fast path off so attention shows as separate ops, and s4m's
    CPU fast path off: a model's MACs are those of its reference modules, whichever kernels run
    it elsewhere (the fast path folds gLNs into multiply-adds the counters would not see)."""
    from experiments.registry import reference_computation

    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), reference_computation():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)


def _split(counts: Counter) -> tuple[dict[str, float], dict[str, float]]:
    """{"category/op": MACs} (ours) or {op: MACs} (defaults) -> (by category, by op)."""
    by_category: Counter = Counter()
    by_op: Counter = Counter()
    for key, macs in counts.items():
        category, _, op = key.rpartition("/")
        if category:
            by_category[category] += macs
        by_op[op] += macs
    return _nonzero(by_category), _nonzero(by_op)


def _nonzero(counts: Counter) -> dict[str, float]:
    return {k: float(v) for k, v in sorted(counts.items()) if v}


def _arithmetic_only(ops: Counter) -> dict[str, int]:
    """Drop data movement from a tool's list of ops it counted as zero."""
    return {op: n for op, n in sorted(ops.items())
            if op.split("::")[-1].removesuffix("_") not in DATA_MOVEMENT}


# ---- fvcore ------------------------------------------------------------------------------------


def _unscripted(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return fn


@contextmanager
def _inline_scripted_functions() -> Iterator[None]:
    """Trace through `script_if_tracing` helpers instead of scripting them.

    asteroid runs its encoder/decoder convolutions and norms in such helpers; scripted, they
    appear in the trace as an opaque prim::CallFunction whose ops fvcore cannot count.
    """
    with ExitStack() as stack:
        # private: script_if_tracing looks `script` up in torch.jit._trace, its own module
        # (tests/test_counting.py pins it)
        for owner in (torch.jit, torch.jit._trace):
            if hasattr(owner, "script"):
                stack.enter_context(mock.patch.object(owner, "script", _unscripted))
        yield


@contextmanager
def _one_trace_per_model() -> Iterator[None]:
    """fvcore traces the model afresh for every analysis; inside this block a model traced once
    (same module, same input tensors) reuses its graph, so the count with our handles and the
    count with fvcore's defaults cost one trace (most of the time on a many-op model like S4M)."""
    # private: fvcore has no hook to reuse a trace; every analysis traces through this function
    # (tests/test_counting.py pins it)
    trace = jit_analysis._get_scoped_trace_graph
    graphs: dict[tuple[int, ...], Any] = {}

    def traced_once(module: nn.Module, inputs: tuple, aliases: Any) -> Any:
        key = (id(module), *map(id, inputs))
        if key not in graphs:
            graphs[key] = (module, inputs, trace(module, inputs, aliases))  # pins the ids
        return graphs[key][2]

    with mock.patch.object(jit_analysis, "_get_scoped_trace_graph", traced_once):
        yield


def _from_jit(value: Any) -> Any:
    kind = value.type()
    if isinstance(kind, torch.TensorType):
        sizes = kind.sizes()
        if sizes is None:
            raise ValueError(f"fvcore trace: tensor without a known shape at {value.node()}")
        return Meta(tuple(sizes), "Complex" in str(kind.scalarType()))
    node = value.node()
    if node.kind() == "prim::ListConstruct":
        return [_from_jit(v) for v in node.inputs()]
    if node.kind() == "prim::Constant":
        return value.toIValue()
    return None  # computed while tracing (a size, a traced scalar)


def _fvcore_handle(op: str, cost: Cost, ssm_names: set[str]) -> Callable:
    """A handle for the traced node `op` ("aten::name")."""
    def handle(inputs: list, outputs: list) -> Counter:
        scope = outputs[0].node().scopeName() if outputs else ""
        in_ssm = any(part in ssm_names for part in scope.split("/"))
        counts = cost([_from_jit(v) for v in inputs], [_from_jit(v) for v in outputs], in_ssm)
        return Counter({f"{category}/{op}": float(v) for category, v in counts.items()})

    return handle


def count_fvcore(
    model: nn.Module, inputs: torch.Tensor, ours: bool = True,
    ssm_scope: Callable[[nn.Module], bool] = is_ssm_module,
) -> MacCount:
    """fvcore's FlopCountAnalysis of `model(inputs)`, with our handles or its defaults."""
    with _counting_mode(model), _inline_scripted_functions():
        analysis = FlopCountAnalysis(model, (inputs,))
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        if ours:
            names = _ssm_names(model, ssm_scope)
            analysis.clear_op_handles()
            analysis.set_op_handle(**{f"aten::{op}": _fvcore_handle(f"aten::{op}", cost, names)
                                      for op, cost in JIT_COSTS.items()})
        total = float(analysis.total())
        counts = analysis.by_operator()
        uncounted = _arithmetic_only(analysis.unsupported_ops())
    if not ours:  # fvcore names its default handles' ops without the namespace
        counts = Counter({f"aten::{op}": v for op, v in counts.items()})
    return MacCount("fvcore", "ours" if ours else "default", total, *_split(counts), uncounted)


# ---- ptflops (aten backend) --------------------------------------------------------------------


def _from_eager(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return Meta(tuple(value.shape), value.is_complex())
    if isinstance(value, (list, tuple)):
        return [_from_eager(v) for v in value]
    return value


@contextmanager
def _scope_depth(model: nn.Module, scope: Callable[[nn.Module], bool]) -> Iterator[list[int]]:
    """A one-element list holding how many SSM modules are running now."""
    depth = [0]

    def enter(*_: Any) -> None:
        depth[0] += 1

    def leave(*_: Any) -> None:
        depth[0] -= 1

    hooks = []
    for m in model.modules():
        if scope(m):
            hooks.append(m.register_forward_pre_hook(enter))
            hooks.append(m.register_forward_hook(leave, always_call=True))
    try:
        yield depth
    finally:
        for h in hooks:
            h.remove()


def count_ptflops(
    model: nn.Module, inputs: torch.Tensor, ours: bool = True,
    ssm_scope: Callable[[nn.Module], bool] = is_ssm_module,
) -> MacCount:
    """ptflops' aten-backend counter (the engine of `get_model_complexity_info(backend="aten")`).

    Run directly rather than through `get_model_complexity_info`, which would leave its module
    hooks on the model and build an uninitialised input.
    """
    log = io.StringIO()
    params = {"print_params": {"file": log}, "serialize_params": {"units": None, "precision": 2}}
    tally: Counter = Counter()
    with _counting_mode(model), _scope_depth(model, ssm_scope) as depth:
        hooks = {}
        if ours:
            for op, cost in DISPATCH_COSTS.items():
                packet = getattr(torch.ops.aten, op, None)
                if packet is None:
                    continue

                def handle(args: tuple, outputs: tuple, op: str = op, cost: Cost = cost) -> float:
                    counts = cost(_from_eager(list(args)), _from_eager(list(outputs)), depth[0] > 0)
                    tally.update({f"{category}/aten::{op}": v for category, v in counts.items()})
                    return float(sum(counts.values()))

                hooks[packet] = handle
        counter = FlopCounterMode(None, verbose=True, output_params=params, custom_hooks=hooks)
        with counter:
            model(inputs)
    skipped = Counter(
        "aten::" + m.group(1).removeprefix("aten.")
        for m in re.finditer(r"Warning: (\S+) operation is treated as a zero-op", log.getvalue())
    )
    if not ours:
        tally = Counter({"aten::" + str(op).removeprefix("aten."): v
                         for op, v in counter.flop_counts["Global"].items()})
    return MacCount(
        "ptflops", "ours" if ours else "default", float(counter.complexity), *_split(tally),
        _arithmetic_only(skipped),
    )


def count_all(
    model: nn.Module, inputs: torch.Tensor,
    ssm_scope: Callable[[nn.Module], bool] = is_ssm_module,
) -> dict[str, MacCount]:
    """The four counts, keyed "fvcore", "ptflops", "fvcore_default", "ptflops_default"."""
    with _one_trace_per_model():
        counts = {"fvcore": count_fvcore(model, inputs, True, ssm_scope),
                  "fvcore_default": count_fvcore(model, inputs, False, ssm_scope)}
    counts["ptflops"] = count_ptflops(model, inputs, True, ssm_scope)
    counts["ptflops_default"] = count_ptflops(model, inputs, False, ssm_scope)
    return counts

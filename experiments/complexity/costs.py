"""The cost model both MAC counters share: a formula per aten op.

Cost model (1 MAC = one real multiply-accumulate; a "complex" op has a complex operand or result):
- Matrix products, convolutions, einsum, attention (QK^T and AV), RNN layers: the product of the
  contracted sizes, as fvcore counts them (bias additions not counted); x4 when complex, since a
  complex multiply-accumulate takes four real ones.
- FFT: a complex FFT over N points costs 5 N log2 N real flops (radix-2 Cooley-Tukey), i.e.
  2.5 N log2 N MACs at two flops per MAC; a real-input FFT (rfft, r2c) or real-output inverse
  (irfft, c2r) of N real points costs half, 1.25 N log2 N MACs. Each transform counts once, N is
  the transform length (the product of the lengths for an n-d transform).
- Norm layers: fvcore's convention, 5 (affine) or 4 per element; batch norm in eval 2 or 1.
- Element-wise arithmetic and reductions: counted inside SSM modules (`is_ssm_module`) and on
  complex tensors anywhere, zero elsewhere (as conventional MAC counts do). Per output element
  (per input element for reductions): 1 when real; complex add/sub/sum 2, multiply 4, divide 8,
  exp 5, any other complex op 4.
- Data movement (views, copies, padding, concatenation, indexing, creation): zero.
An op in none of these lists is reported in `MacCount.uncounted` instead of being guessed.
"""

from __future__ import annotations

import math
import string
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

# Categories of `MacCount.by_category` for our handles.
MATMUL, FFT, NORM, ELEMENTWISE = "matmul", "fft", "norm", "elementwise"


@dataclass(frozen=True)
class Meta:
    """What a cost formula needs to know about a tensor, read alike from a trace or a dispatch."""

    shape: tuple[int, ...]
    is_complex: bool

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


Cost = Callable[[list[Any], list[Any], bool], Counter]  # (args, outputs, in_ssm) -> MACs


# ---- formulas, shared by both tools -------------------------------------------------------------


def fft_macs(n_points: int, transform_len: int, real: bool) -> float:
    """MACs of FFTs over `n_points` time-domain points in transforms of `transform_len` each."""
    if transform_len <= 1:
        return 0.0
    return (1.25 if real else 2.5) * n_points * math.log2(transform_len)


def _metas(values: list[Any]) -> Iterator[Meta]:
    for v in values:
        if isinstance(v, Meta):
            yield v
        elif isinstance(v, list):
            yield from _metas(v)


def _complex(args: list[Any], outs: list[Any]) -> bool:
    return any(m.is_complex for m in _metas(args + outs))


def _matmul(macs: float, args: list[Any], outs: list[Any]) -> Counter:
    return Counter({MATMUL: macs * (4 if _complex(args, outs) else 1)})


def _contract_last(a: int = 0) -> Cost:
    """mm, bmm, matmul, mv, dot, addmm, baddbmm: output elements x the contracted size."""

    def cost(args, outs, in_ssm):
        return _matmul(outs[0].numel * args[a].shape[-1], args, outs)

    return cost


def _linear(args, outs, in_ssm):
    return _matmul(args[0].numel * args[1].shape[0], args, outs)


def _conv(transposed_arg: int | None, transposed: bool = False) -> Cost:
    def cost(args, outs, in_ssm):
        x, w, y = args[0], args[1], outs[0]
        t = bool(args[transposed_arg]) if transposed_arg is not None else transposed
        spatial = (x if t else y).shape[2:]  # each weight tap runs once per input/output position
        return _matmul(x.shape[0] * w.numel * math.prod(spatial), args, outs)

    return cost


def einsum_macs(equation: str, shapes: list[tuple[int, ...]]) -> float:
    """Left-to-right pairwise contraction: each step costs the product of all sizes involved."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    pairs = list(zip(lhs.split(","), shapes, strict=True))
    spare = [c for c in string.ascii_letters if c not in eq]
    n_ell = max((len(s) - len(t) + 3 for t, s in pairs if "..." in t), default=0)
    ell = "".join(spare[:n_ell])  # broadcast dims, aligned right
    terms = [t.replace("...", ell[n_ell - (len(s) - len(t) + 3) :]) for t, s in pairs]
    sizes: dict[str, int] = {}
    for term, shape in zip(terms, shapes, strict=True):
        for letter, size in zip(term, shape, strict=True):
            sizes[letter] = max(sizes.get(letter, 1), size)
    letters = "".join(terms)
    out = out.replace("...", ell) if arrow else ell + "".join(
        sorted(c for c in set(letters) if letters.count(c) == 1 and c not in ell))
    if len(terms) == 1:  # a reduction adds every element; a permutation or diagonal is free
        return float(math.prod(sizes.values())) if set(terms[0]) - set(out) else 0.0
    macs, current = 0.0, terms[0]
    for i, nxt in enumerate(terms[1:], start=1):
        macs += math.prod(sizes[c] for c in set(current) | set(nxt))
        needed = set(out).union(*terms[i + 1 :])
        current = "".join(c for c in dict.fromkeys(current + nxt) if c in needed)
    return macs


def _einsum(args, outs, in_ssm):
    operands = list(_metas(args[1:2]))
    return _matmul(einsum_macs(args[0], [m.shape for m in operands]), args, outs)


def _attention(args, outs, in_ssm):
    """softmax(Q K^T) V with q (..., Lq, E), k (..., Lk, E), v (..., Lk, Ev)."""
    q, k, v = args[0], args[1], args[2]
    lq, e = q.shape[-2:]
    batch = q.numel // (lq * e)
    return _matmul(batch * lq * k.shape[-2] * (e + v.shape[-1]), args, outs)


def _rnn_jit(args, outs, in_ssm):
    """aten::lstm/gru/rnn_*: every (layer, direction) multiplies each step by W_ih and W_hh."""
    x, params, has_biases = args[0], args[2], bool(args[3])
    weights = list(_metas([params]))
    per_group = 4 if has_biases else 2
    steps = x.numel // x.shape[-1]  # T x B, in either layout
    pairs = zip(weights[0::per_group], weights[1::per_group], strict=True)
    macs = sum(steps * (w_ih.numel + w_hh.numel) for w_ih, w_hh in pairs)
    return _matmul(macs, args, outs)


def _rnn_layer_mkldnn(args, outs, in_ssm):
    """aten.mkldnn_rnn_layer (input, w_ih, w_hh, b_ih, b_hh, ...): one layer, one direction."""
    x, w_ih, w_hh = args[0], args[1], args[2]
    return _matmul(x.numel // x.shape[-1] * (w_ih.numel + w_hh.numel), args, outs)


def _solve(args, outs, in_ssm):
    """linalg_solve / _linalg_solve_ex (A (..., n, n), B): LU n^3/3, then n^2 per right side."""
    a, b = args[0], args[1]
    n = a.shape[-1]
    batch = a.numel // (n * n)
    rhs = b.numel // (batch * n)
    return _matmul(batch * (n**3 / 3 + n * n * rhs), args, outs)


def _matrix_power(args, outs, in_ssm):
    """linalg_matrix_power (A, k) by binary powering, as torch runs it: one product per bit
    after the lowest (squaring) and one per set bit after the first (accumulating)."""
    a, k = args[0], args[1]
    if not isinstance(k, int):
        raise ValueError("linalg_matrix_power with a traced exponent: cannot count it")
    k = abs(k)
    products = max(k.bit_length() - 1, 0) + max(k.bit_count() - 1, 0)
    return _matmul(products * a.numel * a.shape[-1], args, outs)


def _dims(dim: Any, rank: int) -> list[int]:
    if dim is None:
        return list(range(rank))
    return [d % rank for d in (dim if isinstance(dim, list) else [dim])]


def _fft_jit(kind: str, multi: bool = False) -> Cost:
    """torch.fft.{rfft,irfft,fft,ifft}{,2,n} as traced: (self, n | s, dim, norm)."""

    def cost(args, outs, in_ssm):
        y, size, dim = outs[0], args[1], args[2]
        rank = len(y.shape)
        if multi:
            dims = _dims(dim, rank)
        else:
            dims = [dim % rank if isinstance(dim, int) else rank - 1]
        lens = [y.shape[d] for d in dims]
        if kind == "rfft":  # real side: the input padded or cut to n; bins = n // 2 + 1
            last = size[-1] if isinstance(size, list) else size
            lens[-1] = last if isinstance(last, int) else 2 * (lens[-1] - 1)
        points = y.numel // math.prod(y.shape[d] for d in dims) * math.prod(lens)
        return Counter({FFT: fft_macs(points, math.prod(lens), real=kind != "fft")})

    return cost


def _fft_r2c(args, outs, in_ssm):
    x = args[0]
    lens = [x.shape[d] for d in _dims(args[1], len(x.shape))]
    return Counter({FFT: fft_macs(x.numel, math.prod(lens), real=True)})


def _fft_c2r_or_c2c(real: bool) -> Cost:
    def cost(args, outs, in_ssm):
        y = outs[0]
        lens = [y.shape[d] for d in _dims(args[1], len(y.shape))]
        return Counter({FFT: fft_macs(y.numel, math.prod(lens), real=real)})

    return cost


def _norm(affine_arg: int, training_arg: int | None = None, training: bool = True) -> Cost:
    def cost(args, outs, in_ssm):
        affine = isinstance(args[affine_arg], Meta)
        train = bool(args[training_arg]) if training_arg is not None else training
        per_element = (5 if affine else 4) if train else (2 if affine else 1)
        return Counter({NORM: args[0].numel * per_element})

    return cost


def _elementwise(complex_cost: int, reduce: bool = False, glu: bool = False) -> Cost:
    def cost(args, outs, in_ssm):
        is_complex = _complex(args, outs)
        if not (in_ssm or is_complex):
            return Counter()
        tensors = list(_metas(args[:1] if reduce else outs[:1])) or list(_metas(args))
        n = tensors[0].numel if tensors else 1
        return Counter({ELEMENTWISE: n * (complex_cost if is_complex else 2 if glu else 1)})

    return cost


def _zero(args, outs, in_ssm):
    return Counter()


def _avg_pool(args, outs, in_ssm):
    """Average pooling: one add per input element summed (windows tile or overlap little)."""
    return Counter({ELEMENTWISE: args[0].numel})


# Names shared by the trace (aten::name) and the dispatcher (aten.name); in-place twins added below.
_ELEMENTWISE_COSTS: dict[str, Cost] = {
    **{n: _elementwise(2) for n in ("add", "sub", "rsub", "neg", "conj_physical")},
    **{n: _elementwise(4) for n in ("mul", "square", "addcmul", "lerp")},
    **{n: _elementwise(8) for n in ("div", "true_divide", "reciprocal", "addcdiv")},
    **{n: _elementwise(5) for n in ("exp", "exp2", "expm1")},
    **{n: _elementwise(3) for n in ("abs",)},
    **{n: _elementwise(4) for n in (
        "pow", "log", "log1p", "log2", "log10", "sqrt", "rsqrt", "sin", "cos", "tan", "tanh",
        "sigmoid", "gelu", "silu", "relu", "elu", "leaky_relu", "hardtanh", "softplus", "prelu",
        "_prelu_kernel", "erf", "clamp", "clamp_min", "clamp_max", "maximum", "minimum", "atan2",
        "angle", "sgn", "xlogy", "polar",
    )},
    "glu": _elementwise(8, glu=True),
    **{n: _elementwise(2, reduce=True) for n in (
        "sum", "mean", "cumsum", "prod", "var", "std", "var_mean", "std_mean", "amax", "amin",
        "logsumexp", "softmax", "_softmax", "log_softmax", "_log_softmax", "linalg_vector_norm",
        "norm", "col2im",
    )},
}

# Zero-cost data movement and bookkeeping (both tools' names, without prefix).
DATA_MOVEMENT = frozenset("""
    view _unsafe_view reshape permute transpose t expand expand_as squeeze unsqueeze flatten
    unflatten contiguous clone copy copy_ _to_copy to type_as detach alias lift_fresh slice select
    narrow index index_select gather scatter index_put cat stack split split_with_sizes chunk
    unbind repeat roll flip constant_pad_nd pad reflection_pad1d reflection_pad2d replication_pad1d
    zeros zeros_like ones ones_like empty empty_like empty_strided new_empty new_zeros new_ones full
    full_like new_full fill fill_ zero_ arange linspace view_as_real view_as_complex real imag
    _conj conj resolve_conj resolve_neg complex masked_fill where dropout eye diag_embed diagonal
    _linalg_check_errors tril triu
    native_dropout feature_dropout Int ScalarImplicit size numel scalar_tensor _local_scalar_dense
    item as_strided unfold im2col upsample_nearest1d upsample_nearest2d eq ne lt le gt ge
    logical_and logical_or logical_not bitwise_and bitwise_or bitwise_not __and__ __or__ floor
    ceil round trunc remainder fmod floor_divide sign max min argmax argmin sort topk
    _unsafe_index alias_copy lift bernoulli rand randn randint uniform_ normal_
""".split())

_MATMUL_SHARED: dict[str, Cost] = {
    "mm": _contract_last(0), "bmm": _contract_last(0), "matmul": _contract_last(0),
    "mv": _contract_last(0), "dot": _contract_last(0), "vdot": _contract_last(0),
    "addmm": _contract_last(1), "baddbmm": _contract_last(1), "addmv": _contract_last(1),
    "convolution": _conv(6), "_convolution": _conv(6),
    **{n: _avg_pool for n in ("avg_pool1d", "avg_pool2d", "adaptive_avg_pool1d",
                              "adaptive_avg_pool2d", "_adaptive_avg_pool2d")},
}

_JIT_ONLY: dict[str, Cost] = {
    "linear": _linear, "einsum": _einsum, "scaled_dot_product_attention": _attention,
    "linalg_solve": _solve, "linalg_matrix_power": _matrix_power,
    **{n: _conv(None) for n in ("conv1d", "conv2d", "conv3d")},
    **{n: _conv(None, transposed=True) for n in (
        "conv_transpose1d", "conv_transpose2d", "conv_transpose3d")},
    **{n: _rnn_jit for n in ("lstm", "gru", "rnn_tanh", "rnn_relu")},
    **{f"fft_{name}{suffix}": _fft_jit(kind, multi=suffix != "")
       for name, kind in (("rfft", "rfft"), ("irfft", "irfft"), ("fft", "fft"), ("ifft", "fft"))
       for suffix in ("", "2", "n")},
    "layer_norm": _norm(2), "group_norm": _norm(2), "instance_norm": _norm(1),
    "batch_norm": _norm(1, training_arg=5),
}

_DISPATCH_ONLY: dict[str, Cost] = {
    **{n: _attention for n in (
        "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention",
        "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
        "_scaled_dot_product_attention_math")},
    "mkldnn_rnn_layer": _rnn_layer_mkldnn, "_linalg_solve_ex": _solve,
    "_fft_r2c": _fft_r2c, "_fft_c2r": _fft_c2r_or_c2c(True), "_fft_c2c": _fft_c2r_or_c2c(False),
    "native_layer_norm": _norm(2), "native_group_norm": _norm(1),
    "_native_batch_norm_legit_no_training": _norm(1, training=False),
    "_native_batch_norm_legit": _norm(1, training_arg=5),
    "native_batch_norm": _norm(1, training_arg=5),
}


def _cost_table(tool_only: dict[str, Cost]) -> dict[str, Cost]:
    table: dict[str, Cost] = {n: _zero for name in DATA_MOVEMENT for n in (name, name + "_")}
    for name, cost in _ELEMENTWISE_COSTS.items():
        table[name] = table[name + "_"] = cost
    table.update(_MATMUL_SHARED)
    table.update(tool_only)
    return table


JIT_COSTS = _cost_table(_JIT_ONLY)  # keyed "name" for the traced "aten::name"
DISPATCH_COSTS = _cost_table(_DISPATCH_ONLY)  # keyed "name" for torch.ops.aten.name

"""Every registry model runs on any device (issue 12, item 2; mixed precision: test_precision).

Devices, without a GPU: models, S4/S4D kernels and `discretize` run with parameters and inputs
on the `meta` device, where mixing in a CPU tensor raises. Every op they use has a meta kernel
in torch 2.13 (linalg.solve and linalg.matrix_power included). A dispatch-level recorder also
catches CPU tensors that are created but never meet a device tensor: those made by this
repository's code fail the test; the libraries' own (asteroid's shape and dim tensors, which
stay on the host by design, and SpeechBrain's chunk padding, made on the CPU and moved to the
input's device) are allowed.
"""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from experiments.devicecheck import TINY
from experiments.registry import REGISTRY, build_model
from s4m.ssm import DiagKernel, DPLRKernel, S4Layer

REPO = Path(__file__).resolve().parents[1]
TORCH_DIR = str(Path(torch.__file__).parent)
META = torch.device("meta")
OUR_CODE = tuple(str(REPO / d) + "/" for d in ("s4m", "baselines", "experiments", "tests"))


class OffDevice(TorchDispatchMode):
    """Records every tensor an op returns that is not on `device`, with the innermost
    non-torch source line that caused it."""

    def __init__(self, device: torch.device = META) -> None:
        super().__init__()
        self.device, self.found = device, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.device != self.device:
                frame = next(f for f in reversed(traceback.extract_stack()[:-1])
                             if not f.filename.startswith(TORCH_DIR))
                self.found.append((str(func), t.device.type, f"{frame.filename}:{frame.lineno}"))
        return out

    def ours(self) -> list[tuple[str, str, str]]:
        """Those made by this repository's code (models, adapters, tests)."""
        return [f for f in self.found if f[2].startswith(OUR_CODE)]


def test_tiny_configs_cover_the_registry() -> None:
    assert set(TINY) == set(list(REGISTRY))


def test_the_guards_catch_a_cpu_tensor() -> None:
    class Mixes(nn.Module):
        def forward(self, x):
            return x + torch.arange(x.shape[-1])

    class Creates(nn.Module):
        def forward(self, x):
            return x[..., : int(torch.arange(3).sum())]

    x = torch.randn(2, 5, device=META)
    with pytest.raises(RuntimeError, match="device"):
        Mixes()(x)
    with OffDevice() as rec:
        y = Creates()(x)  # runs on meta; the CPU arange never meets a meta tensor
    assert y.shape == (2, 3)
    assert [f[0] for f in rec.ours()] == ["aten.arange.default", "aten.sum.default"]


def _forward_backward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    y = model(x)
    y.float().square().mean().backward()
    return y


@pytest.mark.parametrize("name", list(REGISTRY))
def test_forward_and_backward_on_meta(name: str) -> None:
    model = build_model(name, **TINY[name]).to(META)
    x = torch.randn(2, 203, device=META)
    with OffDevice() as rec:
        y = _forward_backward(model, x)
    assert y.shape == (2, 2, 203) and y.device == META
    assert all(p.grad is not None and p.grad.device == META for p in model.parameters()
               if p.grad is not None)
    assert rec.ours() == [], f"CPU tensors made by this repository's code: {rec.ours()}"
    if name.startswith("s4m"):  # all of S4M is this repository's code
        assert rec.found == []


KERNELS = {
    "s4": lambda: DPLRKernel(3, 8, channels=2),
    "s4d-lin": lambda: DiagKernel(3, 8, channels=2, init="lin"),
    "s4d-inv": lambda: DiagKernel(3, 8, channels=2, init="inv"),
}


@pytest.mark.parametrize("kind", KERNELS)
def test_kernels_discretize_and_layer_on_meta(kind: str) -> None:
    kernel = KERNELS[kind]().to(META)
    with OffDevice() as rec:
        k = kernel(37)
        d_a, d_b, c = kernel.discretize()
    assert k.shape == (2, 3, 37) and k.device == META
    assert d_a.shape == (3, 8, 8) and d_b.shape == (3, 8) and c.shape == (2, 3, 8)
    assert {t.device for t in (d_a, d_b, c)} == {META}
    layer = S4Layer(3, 8, ssm=kind[:3].rstrip("-"), bidirectional=True).to(META)
    with rec:
        y = _forward_backward(layer, torch.randn(2, 3, 29, device=META))
    assert y.shape == (2, 3, 29) and y.device == META
    assert rec.found == []


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, list | tuple):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


@pytest.mark.parametrize("name", list(REGISTRY))
def test_to_device_leaves_no_tensor_behind(name: str) -> None:
    model = build_model(name, **TINY[name])
    x = torch.randn(2, 203)
    _forward_backward(model, x)  # anything cached by a CPU forward would exist now
    model.zero_grad(set_to_none=True)
    model.to(META)
    for mod_name, module in model.named_modules():
        tensors = {f"{mod_name}.{k}": t for k, v in vars(module).items()
                   for t in _tensors(v)}  # _parameters, _buffers and plain attributes
        behind = [k for k, t in tensors.items() if t.device != META]
        assert behind == [], f"{name}: tensors left on the CPU: {behind}"
    with OffDevice() as rec:
        _forward_backward(model, x.to(META))
    assert rec.ours() == []

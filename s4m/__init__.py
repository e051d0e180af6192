"""S4M model library: S4/S4D layers, the multi-scale block, S4M and its named configs.

Public API: `S4M` (with `S4M.param_groups` for optimizers), `build_s4m` and `CONFIGS` (S4M-tiny,
S4M, TDANet), the S4 layer and kernels, the other global layers (`SelectiveSSM`,
`SelfAttention`), `SSM_MODULES` (the module types that make up the SSMs) and `fused` (the CPU
fast path, on by default; `fused.enabled(False)` runs the plain reference modules).
"""

from . import fused
from .configs import CONFIGS, build_s4m
from .global_layers import SSM_MODULES, SelectiveSSM, SelfAttention
from .model import S4M
from .optim import ssm_param_groups
from .ssm import DiagKernel, DPLRKernel, S4Layer

__all__ = ["CONFIGS", "S4M", "SSM_MODULES", "S4Layer", "DPLRKernel", "DiagKernel", "SelectiveSSM",
           "SelfAttention", "build_s4m", "fused", "ssm_param_groups"]

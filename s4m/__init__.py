"""S4M model library: S4/S4D layers, the multi-scale block, S4M and its named configs."""

from .configs import CONFIGS, build_s4m
from .model import S4M
from .optim import ssm_param_groups
from .ssm import DiagKernel, DPLRKernel, S4Layer

__all__ = ["CONFIGS", "S4M", "S4Layer", "DPLRKernel", "DiagKernel", "build_s4m",
           "ssm_param_groups"]

"""Optimizer parameter groups: SSM parameters without weight decay and with their own lr."""

from __future__ import annotations

from torch import nn

from .ssm import SSMKernel


def ssm_param_groups(model: nn.Module, lr: float, weight_decay: float = 0.0,
                     ssm_lr: float | None = None) -> list[dict]:
    """Groups for a torch optimizer. SSM parameters (A, dt, B, C of every S4/S4D kernel) get
    weight_decay 0 and lr = `ssm_lr`, else the lr tagged on them (`_optim`), else `lr`; all
    other trainable parameters get `lr` and `weight_decay`. Empty groups are left out."""
    ssm_ids = {id(p) for m in model.modules() if isinstance(m, SSMKernel)
               for p in m.parameters(recurse=False)}
    groups: dict[float, list] = {}
    rest = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in ssm_ids:
            group_lr = ssm_lr if ssm_lr is not None else getattr(p, "_optim", {}).get("lr", lr)
            groups.setdefault(group_lr, []).append(p)
        else:
            rest.append(p)
    out = [{"params": rest, "lr": lr, "weight_decay": weight_decay}] if rest else []
    out += [{"params": ps, "lr": g_lr, "weight_decay": 0.0} for g_lr, ps in groups.items()]
    return out

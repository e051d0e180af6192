"""The quality rule (params.yaml `report`): SI-SDRi/SDRi count as results only when the best
model reaches `min_sisdri_db` and every model trained at least `min_steps` steps; otherwise
tables and figures say "training check, not a result"."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from experiments.config import ConfigError, require

NOT_A_RESULT = "training check, not a result"


def finite(values: Iterable[Any]) -> list[float]:
    out = []
    for v in values:
        try:
            f = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(f):
            out.append(f)
    return out


@dataclass(frozen=True)
class Verdict:
    is_result: bool
    reason: str

    def label(self, text: str) -> str:
        return text if self.is_result else f"{text}, {NOT_A_RESULT}"


@dataclass(frozen=True)
class QualityRule:
    min_sisdri_db: float
    min_steps: int

    @classmethod
    def from_config(cls, cfg: dict[str, Any]) -> QualityRule:
        sisdri, steps = require(cfg, "report.min_sisdri_db"), require(cfg, "report.min_steps")
        if not isinstance(sisdri, int | float) or not isinstance(steps, int) or steps < 0:
            raise ConfigError("params.yaml: report.min_sisdri_db must be a number and "
                              "report.min_steps a non-negative integer")
        return cls(float(sisdri), steps)

    def text(self) -> str:
        return (f"SI-SDRi counts as a result only when the best model reaches "
                f"{self.min_sisdri_db:g} dB and every model trained at least {self.min_steps} "
                "steps (params.yaml `report`)")

    def judge(self, si_sdri: Iterable[Any], steps: Iterable[Any]) -> Verdict:
        values, steps = finite(si_sdri), list(steps)
        if not values:
            return Verdict(False, "no SI-SDRi values")
        best, reasons = max(values), []
        if best < self.min_sisdri_db:
            reasons.append(f"best SI-SDRi {best:.2f} dB < {self.min_sisdri_db:g} dB")
        known = finite(steps)
        if len(known) < len(steps):
            reasons.append(f"{len(steps) - len(known)} run(s) without a training record")
        if known and min(known) < self.min_steps:
            reasons.append(f"fewest training steps {int(min(known))} < {self.min_steps}")
        if reasons:
            return Verdict(False, "; ".join(reasons))
        return Verdict(True, f"best SI-SDRi {best:.2f} dB >= {self.min_sisdri_db:g} dB and "
                             f"every run trained >= {self.min_steps} steps")

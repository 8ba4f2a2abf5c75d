"""Plain LoRA hyper-parameters (PEFT semantics)."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from adapters.registry import MethodConfig


class LoraConfig(MethodConfig):
    kind: Literal["lora"] = "lora"
    rank: int = Field(8, ge=1, le=4096, description="r: rank of A (r×in) and B (out×r).")
    alpha: float = Field(16.0, gt=0, description="α: the update is scaled by α/r (α/√r with rslora).")
    use_rslora: bool = Field(False, description="Rank-stabilised scaling α/√r instead of α/r.")

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.rank) if self.use_rslora else self.rank)

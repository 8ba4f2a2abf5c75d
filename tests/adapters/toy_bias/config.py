"""Toy bias hyper-parameters."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adapters.registry import MethodConfig


class ToyBiasConfig(MethodConfig):
    kind: Literal["toy_bias"] = "toy_bias"
    scale: float = Field(1.0, gt=0, description="s: the bias is added as s·b[t].")

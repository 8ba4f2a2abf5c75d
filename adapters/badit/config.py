"""BADIT hyper-parameters (reference: gate_proj only, K = 6, r = 4, α = 32)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from adapters.registry import MethodConfig


class BaditConfig(MethodConfig):
    kind: Literal["badit"] = "badit"
    num_experts: int = Field(6, ge=1, le=256, description="K: number of rank-r ability experts.")
    expert_rank: int = Field(4, ge=1, le=1024, description="r: rank of each expert; the top K·r triplets are split.")
    alpha: float = Field(32.0, gt=0, description="α: the experts' output is scaled by s = α/r.")
    route_top_k: int | None = Field(
        None,
        ge=1,
        description="Keep only the k largest gate weights and renormalise them (PEFT LoRAMoE top_k); None = all K.",
    )
    routing: Literal["input", "task"] = Field(
        "input",
        description="input: w = softmax(G x̄) from the prompt mean / decode token; task: a fixed mixture w_t per task.",
    )

    @model_validator(mode="after")
    def _route_top_k_within_experts(self) -> BaditConfig:
        if self.route_top_k is not None and self.route_top_k > self.num_experts:
            raise ValueError(f"route_top_k = {self.route_top_k} exceeds num_experts = {self.num_experts}.")
        return self

    @property
    def top_k(self) -> int:
        """k = K·r singular triplets taken from the base weight."""
        return self.num_experts * self.expert_rank

    @property
    def scale(self) -> float:
        return self.alpha / self.expert_rank

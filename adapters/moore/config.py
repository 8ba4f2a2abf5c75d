"""MoORE hyper-parameters (paper defaults: h = 8, E = 128, e = 64, all 7 projections)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from adapters.registry import MethodConfig


class MooreConfig(MethodConfig):
    kind: Literal["moore"] = "moore"
    householder_count: int = Field(8, ge=1, le=256, description="h: Householder vectors per matrix (M = H_1⋯H_h).")
    router_width: int = Field(128, ge=1, le=4096, description="E: width of the router G (E×in) and G_up (d×E).")
    task_embedding_width: int = Field(64, ge=1, le=4096, description="e: width of the task table Emb and of T (d×e).")

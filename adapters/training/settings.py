"""Hyper-parameters of `orthoserve train`, with per-method defaults taken from the official code.

MoORE (MoE-PEFT, CSR-MTL): AdamW lr 3e-4, weight decay 0.01, ≈10 % warm-up then constant, loss on the
whole sequence, no clipping, batch 16, 2 epochs, cutoff 512, seed 42.
BADIT (PEFT LoRAMoE): AdamW lr 2e-4, cosine with 3 % warm-up, no weight decay, clip 1.0, loss on the
completion only, batch 1, 10 epochs, DOG regrouping on; orthoserve also trains and saves the gate.
LoRA (the MoORE paper's baseline): MoORE's recipe.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.training.examples import TrainingInputError

Kind = Literal["moore", "badit", "lora"]


class TrainSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(gt=0, le=1.0, description="AdamW learning rate (peak).")
    weight_decay: float = Field(ge=0, le=1.0, description="AdamW weight decay.")
    schedule: Literal["constant", "cosine"] = Field(description="After warm-up: constant, or cosine decay to 0.")
    warmup_ratio: float = Field(ge=0, lt=1.0, description="Share of the steps with a linear warm-up.")
    grad_clip: float | None = Field(gt=0, description="Clip the gradient norm to this (None: no clipping).")
    loss: Literal["all", "completion"] = Field(description="Cross-entropy on every real token, or on the completion only.")
    batch_size: int = Field(ge=1, le=4096, description="Examples per optimiser step.")
    epochs: int = Field(ge=1, le=1000, description="Passes over the data.")
    max_length: int = Field(ge=2, le=1_000_000, description="Tokens kept per example (prompt + completion + EOS).")
    dog: bool = Field(False, description="BADIT: DOG regrouping at epoch ends in the first half of training.")
    train_gate: bool = Field(True, description="BADIT: train the gate G (the official code leaves it random).")
    seed: int = Field(42, ge=0, description="Seed of the initialisation and the data order.")
    dtype: Literal["float32", "bfloat16"] = Field("float32", description="Dtype of the frozen base weights.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when present, else CPU.")

    def torch_device(self) -> torch.device:
        if self.device == "cuda" and not torch.cuda.is_available():
            raise TrainingInputError("--device cuda was asked for but no CUDA device is available.")
        return torch.device("cuda" if self.device == "cuda" or (self.device == "auto" and torch.cuda.is_available()) else "cpu")


DEFAULTS: dict[str, dict[str, Any]] = {
    "moore": dict(
        learning_rate=3e-4, weight_decay=0.01, schedule="constant", warmup_ratio=0.1, grad_clip=None,
        loss="all", batch_size=16, epochs=2, max_length=512,
    ),
    "badit": dict(
        learning_rate=2e-4, weight_decay=0.0, schedule="cosine", warmup_ratio=0.03, grad_clip=1.0,
        loss="completion", batch_size=1, epochs=10, max_length=512, dog=True,
    ),
    "lora": dict(
        learning_rate=3e-4, weight_decay=0.01, schedule="constant", warmup_ratio=0.1, grad_clip=None,
        loss="all", batch_size=16, epochs=2, max_length=512,
    ),
}  # fmt: skip


def resolve_settings(kind: str, overrides: dict[str, Any]) -> TrainSettings:
    """The method's defaults with the given (non-None) overrides; bad values name the option."""
    if kind not in DEFAULTS:
        raise TrainingInputError(f"Unknown kind {kind!r}; choose one of {', '.join(DEFAULTS)}.")
    given = {key: value for key, value in overrides.items() if value is not None}
    if kind != "badit":
        for option in ("dog", "train_gate"):
            if given.get(option):
                raise TrainingInputError(f"--{option.replace('_', '-')} applies to BADIT only.")
    try:
        return TrainSettings(**(DEFAULTS[kind] | given))
    except ValidationError as error:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in error.errors())
        raise TrainingInputError(f"Invalid training hyper-parameter(s): {problems}.") from error

"""Hyper-parameters of `orthoserve train`: each method's recipe (`MethodTraining.defaults`, taken from
its official code; adapters/<method>/training.py) with the options given on top."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adapters.registry import get_method, registered_methods
from adapters.training.examples import TrainingInputError
from adapters.training.method_training import MethodTraining


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


def method_training(kind: str) -> MethodTraining:
    """How sets of `kind` train; refused for methods whose sets are only made or imported."""
    training = get_method(kind).training
    if training is None:
        raise TrainingInputError(f"orthoserve train cannot train {kind} sets.")
    return training


def resolve_settings(kind: str, overrides: dict[str, Any]) -> TrainSettings:
    """The method's defaults with the given (non-None) overrides; bad values name the option."""
    training = method_training(kind)
    given = {key: value for key, value in overrides.items() if value is not None}
    for option in sorted({option for other in _trainings() for option in other.options} - set(training.options)):
        if given.get(option):
            taking = methods_offering(lambda other: option in other.options)
            raise TrainingInputError(f"--{option.replace('_', '-')} applies to {taking} only.")
    try:
        return TrainSettings(**(dict(training.defaults) | given))
    except ValidationError as error:
        problems = "; ".join(f"--{'-'.join(str(p) for p in e['loc']).replace('_', '-')}: {e['msg']}" for e in error.errors())
        raise TrainingInputError(f"Invalid training hyper-parameter(s): {problems}.") from error


def methods_offering(offers: Callable[[MethodTraining], bool]) -> str:
    """The titles of the methods whose training offers something ("BADIT", "MoORE and LoRA"), for messages."""
    return " and ".join(method.title for method in registered_methods().values() if method.training and offers(method.training))


def _trainings() -> list[MethodTraining]:
    return [method.training for method in registered_methods().values() if method.training]

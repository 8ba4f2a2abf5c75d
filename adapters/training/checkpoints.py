"""Training checkpoints: `<out>.checkpoints/step-{n}.pt`, the latest `keep` of them kept.

A checkpoint holds the trainable parameters, the optimiser and scheduler state, the losses so far and
the run's fingerprint (kind, base, hyper-parameters, data); resuming with a different fingerprint is
refused rather than silently mixing two runs.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from adapters.training.examples import TrainingInputError

_NAME = re.compile(r"^step-(\d+)\.pt$")


class CheckpointStore:
    def __init__(self, directory: Path, fingerprint: dict[str, Any], keep: int) -> None:
        if keep < 1:
            raise TrainingInputError(f"--keep-checkpoints must be at least 1; got {keep}.")
        self.directory, self.fingerprint, self.keep = directory, fingerprint, keep

    def steps(self) -> list[int]:
        if not self.directory.is_dir():
            return []
        return sorted(int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name)))

    def save(
        self,
        step: int,
        params: dict[str, torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        losses: list[float],
    ) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"step-{step}.pt"
        staging = path.with_suffix(".tmp")
        torch.save(
            {
                "step": step,
                "fingerprint": self.fingerprint,
                "params": {name: p.detach().clone() for name, p in params.items()},
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "losses": list(losses),
            },
            staging,
        )
        staging.replace(path)
        for old in self.steps()[: -self.keep]:
            (self.directory / f"step-{old}.pt").unlink()
        return path

    def load_latest(
        self,
        params: dict[str, torch.nn.Parameter],
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> tuple[int, list[float]] | None:
        """Restore the latest checkpoint into params/optimizer/scheduler; None when there is none."""
        steps = self.steps()
        if not steps:
            return None
        path = self.directory / f"step-{steps[-1]}.pt"
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["fingerprint"] != self.fingerprint:
            changed = sorted(k for k in self.fingerprint if state["fingerprint"].get(k) != self.fingerprint[k])
            raise TrainingInputError(f"{path} belongs to a different run (changed: {', '.join(changed)}); start without --resume.")
        if set(state["params"]) != set(params):
            raise TrainingInputError(f"{path} does not hold this run's parameters.")
        with torch.no_grad():
            for name, param in params.items():
                param.copy_(state["params"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        return int(state["step"]), list(state["losses"])

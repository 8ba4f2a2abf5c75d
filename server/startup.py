"""Checks made before the engine starts, so a bad start-up ends with one clear line, not a traceback.

`resolve_serving_settings` settles everything the engine needs from the model folder (the context
length) and refuses what cannot work: a missing or unsupported model, a context longer than the
model's, an unreadable `--adapter-sets` folder.
"""

from __future__ import annotations

import json
from pathlib import Path

from adapters.base_model import describe_base_model
from adapters.errors import BaseModelInvalid
from server.settings import Settings

DEFAULT_MAX_MODEL_LEN = 2048


def model_context_length(model_dir: Path) -> int:
    """The context length a model folder declares (what vLLM uses when no max model length is set)."""
    config = json.loads((model_dir / "config.json").read_text())
    return int(config["max_position_embeddings"])


class StartupError(Exception):
    """A start-up problem the operator must fix; its message is the whole explanation."""


def resolve_serving_settings(settings: Settings, model_dir: Path) -> Settings:
    """`settings` with the context length settled, after checking the model and the start-up sets."""
    context = _check_model(model_dir)
    max_model_len = settings.max_model_len
    if max_model_len is None:
        max_model_len = min(DEFAULT_MAX_MODEL_LEN, context)
    elif max_model_len > context:
        raise StartupError(
            f"--max-model-len {max_model_len} is longer than the model's context "
            f"(max_position_embeddings = {context} in {model_dir / 'config.json'})."
        )
    _check_adapter_sets_dir(settings.adapter_sets)
    for root in settings.adapter_roots:
        if not root.is_dir():
            raise StartupError(f"--adapter-root {root} is not a directory.")
    if settings.adapter_resolver_root is not None and not settings.adapter_resolver_root.is_dir():
        raise StartupError(f"--adapter-resolver-root {settings.adapter_resolver_root} is not a directory.")
    return settings.model_copy(update={"max_model_len": max_model_len})


def _check_model(model_dir: Path) -> int:
    """The model's context length, once the folder is known to be a servable model."""
    if not model_dir.is_dir():
        raise StartupError(f"--model {model_dir}: no such directory.")
    try:
        config = json.loads((model_dir / "config.json").read_text())
    except FileNotFoundError:
        raise StartupError(f"--model {model_dir} is not a Hugging Face model folder (no config.json).") from None
    except (OSError, ValueError) as exc:
        raise StartupError(f"--model {model_dir}: config.json cannot be read: {exc}") from None
    if not isinstance(config, dict) or "max_position_embeddings" not in config:
        raise StartupError(f"--model {model_dir}: config.json has no max_position_embeddings.")
    try:
        describe_base_model(model_dir)
    except BaseModelInvalid as exc:
        raise StartupError(f"--model {model_dir}: {exc.message}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise StartupError(f"--model {model_dir}: the model cannot be read: {exc!r}") from None
    return int(config["max_position_embeddings"])


def _check_adapter_sets_dir(adapter_sets: Path | None) -> None:
    if adapter_sets is None:
        return
    if not adapter_sets.is_dir():
        raise StartupError(f"--adapter-sets {adapter_sets} is not a directory.")
    try:
        next(adapter_sets.iterdir(), None)
    except OSError as exc:
        raise StartupError(f"--adapter-sets {adapter_sets} cannot be read: {exc.strerror}.") from None

"""The seams to vLLM: every vLLM import of orthoserve is in this package, and nowhere else.

- `engine`: vLLM's public engine API (engines, sampling parameters, outputs, errors, options).
- `worker`: the internals the adapted layers hook into inside each worker (linear layers, the model
  runner's step, the punica kernels).
- `openai`: vLLM's OpenAI serving classes, built on orthoserve's engine client.

vLLM is pinned exactly (pyproject.toml); several of these names are internal interfaces, so any other
release is refused (`check_pinned_version`), and `tests/server/engine/test_vllm_internals.py` fails
loudly when one of them moves.
"""

from __future__ import annotations

import vllm

PINNED_VLLM_VERSION = "0.32.0"


class UnsupportedEngineLayout(RuntimeError):
    """The engine's model or vLLM version is not one orthoserve can adapt."""


def check_pinned_version() -> None:
    if vllm.__version__ != PINNED_VLLM_VERSION:
        raise UnsupportedEngineLayout(
            f"orthoserve needs vLLM {PINNED_VLLM_VERSION} (it uses internal interfaces); found {vllm.__version__}"
        )

"""Banks take the model's dtype wherever the hardware multiplies it natively, fp32 elsewhere, and the
engine's workers get that policy and the compilation that keeps the adapter op out of graphs."""

from __future__ import annotations

import pytest
import torch

from adapters.serving.bank import compute_dtype, cpu_multiplies_fast
from server.engine.capacity import capacity_from_settings
from server.engine.worker.adapted_linear import ADAPTED_LINEAR_OP
from server.engine.worker.extension import BANK_DTYPE_KEY
from server.settings import Settings

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_auto_follows_the_hardware(dtype: torch.dtype) -> None:
    assert compute_dtype(CUDA, dtype) == dtype
    native = bool(getattr(torch.ops.mkldnn, f"_is_mkldnn_{'bf16' if dtype == torch.bfloat16 else 'fp16'}_supported")())
    assert cpu_multiplies_fast(dtype) == native
    assert compute_dtype(CPU, dtype) == (dtype if native else torch.float32)
    assert compute_dtype(CPU, torch.float32) == torch.float32


def test_policies_override_the_hardware() -> None:
    assert compute_dtype(CPU, torch.bfloat16, "model") == torch.bfloat16
    assert compute_dtype(CUDA, torch.bfloat16, "float32") == torch.float32
    assert compute_dtype(CPU, torch.float32, "model") == torch.float32


def test_engine_options_carry_the_policy_and_keep_the_op_out_of_graphs() -> None:
    capacity = capacity_from_settings(Settings(admin_token="t", adapter_dtype="model"))
    options = capacity.engine_options(max_model_len=512)
    assert options["additional_config"][BANK_DTYPE_KEY] == "model"
    assert options["compilation_config"]["cudagraph_mode"] == "PIECEWISE"
    assert ADAPTED_LINEAR_OP in options["compilation_config"]["splitting_ops"]
    assert capacity.adapter_dtype(torch.bfloat16) == torch.bfloat16
    assert capacity_from_settings(Settings()).engine_options(max_model_len=512) == {}  # no adapters: vLLM's defaults


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError, match="adapter_dtype"):
        Settings(adapter_dtype="float8")

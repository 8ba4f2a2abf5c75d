"""Adapter capacity from the serve flags: what each engine reserves and what it refuses (no engine)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from adapters.base_model import describe_base_model
from adapters.format import read_manifest
from adapters.initialise import init_adapter_set
from adapters.lora.config import LoraConfig
from adapters.manifest import Manifest
from router.errors import AdapterCapacityExceeded
from server.engine.capacity import AdapterCapacity, capacity_from_settings
from server.settings import Settings


def test_no_way_to_load_sets_means_the_stock_engine() -> None:
    capacity = capacity_from_settings(Settings())
    assert not capacity.enabled and capacity.engine_options(2048) == {}


def test_flags_reach_each_method_and_badit_turns_chunked_prefill_off() -> None:
    capacity = capacity_from_settings(
        Settings(admin_token="t", max_adapter_sets=3, max_lora_sets=64, max_lora_rank=32, max_moore_tasks=1000)
    )
    assert capacity.methods["lora"].max_sets == 64 and capacity.methods["lora"].max_rank == 32
    assert capacity.methods["moore"].max_sets == 3 and capacity.methods["moore"].max_tasks == 1000
    assert capacity.methods["badit"].max_sets == 3
    options = capacity.engine_options(4096)
    assert options["enable_chunked_prefill"] is False and options["max_num_batched_tokens"] == 4096
    assert options["additional_config"]["orthoserve"]["lora"]["max_rank"] == 32


def test_without_badit_capacity_vllm_keeps_chunked_prefill() -> None:
    capacity = capacity_from_settings(Settings(admin_token="t", adapter_kinds=["moore", "lora"]))
    assert set(capacity.methods) == {"moore", "lora"}
    assert "enable_chunked_prefill" not in capacity.engine_options(2048)


def test_unknown_kind_is_refused() -> None:
    with pytest.raises(ValidationError, match="unknown adapter kinds"):
        Settings(adapter_kinds=["moore", "dora"])


def test_a_set_beyond_capacity_is_refused_naming_the_limit(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = describe_base_model(tiny_model_dir)

    def lora_manifest(rank: int) -> Manifest:
        path = init_adapter_set(tmp_path / f"r{rank}", kind="lora", base=base, tasks=["chat"], config=LoraConfig(rank=rank)).path
        return read_manifest(path)

    capacity = AdapterCapacity.build({"lora": {"max_sets": 2, "max_rank": 16}})
    with pytest.raises(AdapterCapacityExceeded, match="max_lora_rank = 64; this server allows 16"):
        capacity.check_limits(lora_manifest(64))
    fits = lora_manifest(8)
    capacity.check_limits(fits)  # however many sets are registered: slots are swapped, not a wall
    assert capacity.slot_limits()["lora"].slots == 2
    with pytest.raises(AdapterCapacityExceeded, match="without capacity for lora"):
        AdapterCapacity.build({"moore": {}}).check_limits(fits)

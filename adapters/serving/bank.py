"""What every method's serving bank looks like, and the per-step rows a bank reads.

A *bank* holds one method's serving weights for one base projection, for every slot of that method at
once, in preallocated stacked tensors (`weights[slot, ...]`). Loading a set writes its slot in place;
unloading zeroes it. At each step a bank receives the rows of its method, sorted by slot, and runs
one grouped pass for all slots, whatever their number.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from pydantic import BaseModel, ConfigDict, Field

from adapters.serving.grouped import GroupedWeights, Groups, SegmentedKernel, default_kernel
from adapters.serving.pages import zero_and_release


class MethodCapacity(BaseModel):
    """Fixed capacity of one method inside an engine; each method extends it with its own limits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sets: int = Field(default=4, ge=1, description="Set versions of this method resident at once.")


@dataclass(frozen=True)
class ProjectionShape:
    """This engine rank's part of one projection `W (out, in)`. With tensor parallelism a rank holds
    output rows [out_start, out_start + out_features) (column-parallel layers), or input columns
    [in_start, in_start + in_features) (row-parallel layers: products with the input are partial and
    `reduce` sums them over the ranks). Without it, the whole projection."""

    in_features: int
    out_features: int
    full_in: int = 0  # 0: same as in_features
    full_out: int = 0
    in_start: int = 0
    out_start: int = 0
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def rank(self) -> int:
        """d = min(in, out) of the whole projection."""
        return min(self.full_in or self.in_features, self.full_out or self.out_features)

    def input_part(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's part of `t` along its input-features dimension `dim`."""
        return t.narrow(dim, self.in_start, self.in_features)

    def output_part(self, t: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's part of `t` along its output-features dimension `dim`."""
        return t.narrow(dim, self.out_start, self.out_features)

    def summed(self, partial: torch.Tensor) -> torch.Tensor:
        """A product with this rank's input part, summed over ranks (row-parallel layers)."""
        return partial if self.reduce is None else self.reduce(partial)

    def summed_together(self, partials: list[torch.Tensor]) -> list[torch.Tensor]:
        """Products with this rank's input part (n, ·), each summed over ranks, in one reduction."""
        if self.reduce is None:
            return partials
        summed = self.reduce(torch.cat(partials, 1))
        return [part.contiguous() for part in summed.split([p.shape[1] for p in partials], dim=1)]


@dataclass(frozen=True)
class KindRows:
    """The rows of one method in this step, sorted by slot (device tensors, except the counts)."""

    rows: torch.Tensor  # (n,) int64 batch row of each sorted row
    groups: Groups  # rows per slot
    slot: torch.Tensor  # (n,) int64 slot of each sorted row
    task_row: torch.Tensor  # (n,) int64 row of the method's task pool
    segment: torch.Tensor  # (n,) int64 request segment, numbered in sorted order
    segment_groups: Groups  # segments per slot
    num_rows: int
    num_segments: int
    covers_batch: bool  # rows are exactly 0..n-1 of the batch: no gather or scatter needed

    def take(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.covers_batch else x.index_select(0, self.rows)


@dataclass(frozen=True)
class SlotContents:
    """What a bank needs to fill one slot for one projection."""

    module: Any  # the method's per-module view (adapters/<method>/loader.py)
    config: Any  # the method's config (hyper-parameters)
    task_rows: torch.Tensor  # (n_tasks,) int64 row of each of the set's tasks in the method's task pool
    base_factors: Callable[[], Any]  # () -> SvdFactors of this projection (fp32), read on demand


class ProjectionBank(Protocol):
    replaces_base: bool  # True: the bank writes its rows' whole output; False: it adds a change

    def write(self, slot: int, contents: SlotContents) -> int:
        """Fill `slot`, which is clear (never written, or cleared since); returns the bytes of the set's
        own weights written (padding excluded)."""

    def clear(self, slot: int) -> None:
        """Zero `slot` (its padding included) and give its memory back where the device allows."""

    def apply(self, x: torch.Tensor, columns: torch.Tensor, rows: KindRows) -> None:
        """Write (or add) the output columns of this projection for `rows` of `x`."""

    def held(self) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Every tensor the bank fills: those indexed by slot, and those indexed by task row."""

    @property
    def nbytes(self) -> int: ...


BankDtype = Literal["auto", "float32", "model"]
"""How an engine picks its banks' dtype: by the hardware (auto), always fp32, or always the model's."""


def compute_dtype(device: torch.device, model_dtype: torch.dtype, policy: BankDtype = "auto") -> torch.dtype:
    """Dtype of adapter weights and their products. `auto`: the model's dtype wherever the hardware
    multiplies it fast (accelerators; CPUs whose oneDNN has native bf16/fp16 matmul support, such as
    AVX512-BF16 or AMX), fp32 elsewhere: CPUs without such units run small half-precision products
    tens of times slower than fp32."""
    if policy == "float32" or model_dtype == torch.float32:
        return torch.float32
    if policy == "model" or device.type != "cpu":
        return model_dtype
    return model_dtype if cpu_multiplies_fast(model_dtype) else torch.float32


def cpu_multiplies_fast(dtype: torch.dtype) -> bool:
    """Whether this CPU's oneDNN runs `dtype` matmuls natively (PyTorch's own capability check)."""
    if not torch.backends.mkldnn.is_available():
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if dtype == torch.float16:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    return dtype == torch.float32


def cpu_capability() -> str:
    """What this CPU offers for adapter products, as PyTorch reports it (for benchmarks and logs)."""
    return (
        f"{torch.backends.cpu.get_cpu_capability()}, "
        f"bf16 matmul {'native' if cpu_multiplies_fast(torch.bfloat16) else 'emulated'}, "
        f"fp16 matmul {'native' if cpu_multiplies_fast(torch.float16) else 'emulated'}"
    )


@dataclass(frozen=True)
class BankPlacement:
    """Where a bank keeps its weights: the device, the dtype, and the segmented-product kernel that
    reads them. Everything a bank holds is allocated here, and everything written into it is moved
    here first (`put`), so host tensors never meet device ones."""

    device: torch.device
    dtype: torch.dtype
    kernel: SegmentedKernel

    @classmethod
    def default(cls, device: torch.device, dtype: torch.dtype) -> BankPlacement:
        return cls(device, dtype, default_kernel(device, dtype))

    def grouped(self, slots: int, a: int, b: int) -> GroupedWeights:
        """Zeroed `W[s] (a × b)` for every slot, run by this placement's kernel."""
        return GroupedWeights(slots, a, b, device=self.device, dtype=self.dtype, kernel=self.kernel)

    def zeros(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """Zeroed weights (per slot or per task row). On the CPU their pages are given back until
        written, so capacity costs address space, not resident memory."""
        weights = torch.empty(*shape, device=self.device, dtype=dtype or self.dtype)
        zero_and_release(weights)
        return weights

    def put(self, t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """`t` on this device, in `dtype` (default: the bank's)."""
        return t.to(self.device, dtype or self.dtype)


def aligned(size: int) -> int:
    """`size` rounded up to a multiple of 8, so rows of every dtype are 16-byte aligned (grouped kernels
    need it); the padding holds zeros and changes nothing."""
    return -(-size // 8) * 8


def tensors_nbytes(*tensors: torch.Tensor, dtype: torch.dtype | None = None) -> int:
    """Bytes of `tensors`, as stored in `dtype` when given."""
    return sum(t.numel() * (dtype or t.dtype).itemsize for t in tensors)


def scatter_add(columns: torch.Tensor, rows: KindRows, delta: torch.Tensor) -> None:
    """columns[rows] += delta, through a contiguous buffer (indexed adds into a strided view are slow)."""
    if rows.covers_batch:
        columns.add_(delta.to(columns.dtype))
        return
    dense = columns.new_zeros(columns.shape)
    dense.index_copy_(0, rows.rows, delta.to(columns.dtype))
    columns.add_(dense)


def scatter_set(columns: torch.Tensor, rows: KindRows, values: torch.Tensor) -> None:
    """columns[rows] = values."""
    if rows.covers_batch:
        columns.copy_(values)
    else:
        columns.index_copy_(0, rows.rows, values.to(columns.dtype))


@dataclass(frozen=True)
class MethodServing:
    """How a method runs inside the engine; registered with the method's `MethodSpec`."""

    capacity_cls: type[MethodCapacity]
    # (capacity, shape, placement, shared factors of the projection) -> bank
    make_bank: Callable[..., ProjectionBank]
    # (capacity, config, n_tasks) -> [(limit name, needed, capacity)]
    capacity_limits: Callable[..., list[tuple[str, int, int]]]
    # (config, n_tasks) -> rows the set takes in the method's task pool
    task_rows_needed: Callable[..., int] = lambda config, n_tasks: 0
    shares_base_factors: bool = False  # holds the base U, S, V once per engine (MoORE)
    # routes a prompt on all of its tokens (BADIT): prefilled in one piece, never from cached prefix KV
    whole_prompt_prefill: bool = False

"""Every knob of the server, read once from flags or `ORTHOSERVE_*` environment variables.

This class is the only reader of the process environment in the project.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from adapters.registry import registered_methods
from adapters.serving.bank import BankDtype
from server.capacity_settings import CapacitySettings
from server.metrics import DEFAULT_LATENCY_BUCKETS, DEFAULT_MAX_TASKS, parse_buckets

Dtype = Literal["auto", "bfloat16", "float16", "float32"]


class Settings(CapacitySettings):  # the `max_<kind>_<limit>` settings come from the methods' capacity classes
    model_config = SettingsConfigDict(env_prefix="ORTHOSERVE_", protected_namespaces=(), populate_by_name=True)

    model: Path | None = Field(
        default=None,
        description="Local Hugging Face Llama-family folder to serve; unset serves SmolLM2-135M-Instruct.",
    )
    served_model_name: str | None = Field(
        default=None, description="Name clients pass as `model`; defaults to the model folder's name."
    )
    host: str = Field(default="127.0.0.1", description="Address to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind.")
    dtype: Dtype = Field(default="auto", description="Weight and activation dtype.")
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        description="Context length (prompt + output tokens); unset: the smaller of 2048 and the model's own.",
    )
    kv_cache_gib: float = Field(default=1.0, gt=0, description="Memory reserved for the KV cache, in GiB.")
    tensor_parallel_size: int = Field(default=1, ge=1, description="Tensor-parallel degree passed to vLLM.")
    pipeline_parallel_size: int = Field(
        default=1, ge=1, description="Pipeline-parallel degree passed to vLLM; above 1 only without adapter capacity."
    )
    cpu_threads_bind: str | None = Field(
        default=None,
        validation_alias="VLLM_CPU_OMP_THREADS_BIND",
        description="vLLM's CPU core list of each worker, the lists separated by a vertical bar; unset: one worker "
        "unpinned, tensor-parallel workers on cores of their own, chosen by the server.",
    )
    cpu_threads: int = Field(
        default=1, ge=1, description="Torch threads of the CPU engine worker (1 decodes fastest on small CPUs)."
    )
    cache_dir: Path = Field(
        default=Path.home() / ".cache" / "orthoserve",
        description="Where converted models and SVD factors are kept.",
    )
    admin_token: str | None = Field(
        default=None, description="Bearer token of the admin API; without one the admin API is not served."
    )
    admin_token_file: Path | None = Field(
        default=None,
        description="File holding the admin API's bearer token (surrounding whitespace ignored), "
        "so the token is not on the command line.",
    )
    admin_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="Serve the admin API on this port (same host) instead of the public one.",
    )
    max_queued_requests: int | None = Field(
        default=None,
        ge=0,
        description="Generation requests accepted but not yet running (no first token) before new ones "
        "get 429; unset: no limit.",
    )
    max_queued_requests_per_set: int | None = Field(
        default=None,
        ge=0,
        description="The same limit for each adapter set (and the base model) on its own; unset: no limit.",
    )
    request_timeout: float | None = Field(
        default=None,
        gt=0,
        description="Seconds a generation request may take before its engine work is aborted and it gets "
        "504; a request may ask for less or more with the `x-request-timeout` header. Unset: no limit.",
    )
    max_request_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger ones get 413."
    )
    engine_death_exit_seconds: float = Field(
        default=5.0,
        ge=0,
        le=15,
        description="After the engine process dies, seconds for in-flight requests to get their 503 "
        "before the server stops and exits non-zero (at most 15; the stop itself is cut off after 15 more).",
    )
    adapter_sets: Path | None = Field(
        default=None,
        description="Folder whose sub-folders with a manifest.json are loaded as adapter sets at start; "
        "a bad one is logged and skipped.",
    )
    adapter_roots: list[Path] = Field(
        default_factory=list,
        description="Folder the admin API may load adapter sets from (repeatable); paths that resolve "
        "outside every root, symlinks included, are refused.",
    )
    adapter_memory_budget: int | None = Field(
        default=None,
        ge=0,
        description="Bytes of engine memory the adapter sets in engine slots may occupy; idle sets are evicted to "
        "make room, and a set larger than the whole budget is refused.",
    )
    max_host_sets: int | None = Field(
        default=None,
        ge=0,
        description="Evicted adapter sets kept as host copies (bringing one back is a copy); past it the least "
        "recently used are read from their folders again. Unset: no limit; 0: no host copies.",
    )
    host_memory_budget: int | None = Field(
        default=None,
        ge=0,
        description="Bytes the host copies of evicted adapter sets may occupy, least recently used dropped first. "
        "Unset: no limit.",
    )
    pinned_sets: list[str] = Field(
        default_factory=list,
        description="Adapter sets (by name) that stay in engine slots and are never evicted (repeatable); "
        "applies to --adapter-sets at start.",
    )
    adapter_resolver_root: Path | None = Field(
        default=None,
        description="Folder of adapter sets registered on first request: a request for an unknown set whose "
        "folder of that name exists here is validated, registered and served.",
    )
    enforce_eager: bool = Field(
        default=True,
        description="Run the model eagerly; false lets vLLM compile it (torch.compile), which starts slower.",
    )
    adapter_dtype: BankDtype = Field(
        default="auto",
        description="Dtype of adapter weights and products: auto (the model's dtype where the hardware multiplies it "
        "natively: GPUs, CPUs with bf16/fp16 matmul units; fp32 elsewhere), float32, or model (always the model's).",
    )
    adapter_kinds: list[str] = Field(
        default_factory=lambda: list(registered_methods()),
        description="Adapter methods the engine reserves capacity for; an empty list serves the stock model only. "
        "Without badit, vLLM keeps chunked prefill.",
    )
    max_adapter_sets: int | None = Field(
        default=None, ge=1, description="Set versions resident at once, per method (a replace holds two); unset: each method's default."
    )
    tool_call_parser: str | None = Field(
        default=None,
        description="vLLM tool-call parser that reads tool calls out of generated text (e.g. `hermes`, "
        "`llama3_json`); tool calls need it and --enable-auto-tool-choice.",
    )
    enable_auto_tool_choice: bool = Field(
        default=False,
        description="Turn on tool calls (`tool_choice` auto, required or a named function), as vLLM's flag "
        "of that name does; needs --tool-call-parser.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(default="info", description="Log level.")
    metrics_max_tasks: int = Field(
        default=DEFAULT_MAX_TASKS,
        ge=1,
        description="Distinct (set, task) label pairs in /metrics, first come; later ones fold into task=\"_other\".",
    )
    metrics_buckets: Annotated[tuple[float, ...], NoDecode] = Field(
        default=DEFAULT_LATENCY_BUCKETS,
        description="Latency histogram bucket upper bounds in seconds, comma-separated and increasing.",
    )

    @field_validator("adapter_kinds")
    @classmethod
    def _known_kinds(cls, kinds: list[str]) -> list[str]:
        known = registered_methods()
        unknown = [kind for kind in kinds if kind not in known]
        if unknown:
            raise ValueError(f"unknown adapter kinds {unknown}; known: {sorted(known)}")
        return kinds

    @model_validator(mode="after")
    def _read_admin_token_file(self) -> Settings:
        if self.admin_token_file is None:
            return self
        if self.admin_token is not None:
            raise ValueError("give the admin token either directly or as a file, not both")
        try:
            token = self.admin_token_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"cannot read the admin token file {self.admin_token_file}: {exc.strerror}") from None
        if not token:
            raise ValueError(f"the admin token file {self.admin_token_file} is empty")
        self.admin_token = token
        return self

    @model_validator(mode="after")
    def _admin_port_needs_token(self) -> Settings:
        if self.admin_port is not None and self.admin_token is None:
            raise ValueError("--admin-port needs an admin token (--admin-token or --admin-token-file)")
        if self.admin_port is not None and self.admin_port == self.port and self.port != 0:
            raise ValueError("--admin-port must differ from --port")
        return self

    @model_validator(mode="after")
    def _no_adapters_across_pipeline_stages(self) -> Settings:
        can_load_sets = bool(self.admin_token or self.adapter_sets) and bool(self.adapter_kinds)
        if self.pipeline_parallel_size > 1 and can_load_sets:
            raise ValueError(
                "adapter sets are not served on pipeline-parallel engines (vLLM 0.32's CPU engine cannot run "
                "pipeline parallelism at all); use --tensor-parallel-size, or serve the base model only"
            )
        return self

    @field_validator("metrics_buckets", mode="before")
    @classmethod
    def _parse_buckets(cls, value: object) -> object:
        return parse_buckets(value) if isinstance(value, str) else value

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def svd_cache_dir(self) -> Path:
        """Thin SVD factors of base models, shared by every MoORE and BADIT set on a base."""
        return self.cache_dir / "svd"


def export_environment(values: dict[str, str]) -> None:
    """Set variables for child processes (the engine's); with `scoped_environment`, the one writer of
    the process environment."""
    os.environ.update(values)


@contextlib.contextmanager
def scoped_environment(values: dict[str, str]) -> Iterator[None]:
    """Set variables for the block only, then put back what was there."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

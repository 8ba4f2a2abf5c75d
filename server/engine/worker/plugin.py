"""vLLM general plugin (entry point `vllm.general_plugins`): runs in every vLLM process.

It makes each model runner install orthoserve's adapted layers right after its model loads, before
profiling, compilation and graph capture, when the engine was created with orthoserve's adapter
capacity (`additional_config["orthoserve"]`). Any other engine, `vllm serve` included, is untouched.
"""

from __future__ import annotations


def register() -> None:
    from server.engine.vllm import worker as vllm_worker
    from server.engine.worker.extension import install_adapters

    vllm_worker.after_model_load(install_adapters)

"""The default model: SmolLM2-135M-Instruct converted from its PyPI GGUF, served for real."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import openai
import pytest

from server_process import REPO_ROOT, start_server
from server.default_model import MODEL_NAME, default_model_dir, ensure_default_model, is_converted
from server.settings import Settings

pytestmark = pytest.mark.first

# A question whose greedy answer has a clear lead at every token: on the bare "What is the capital of
# France?" the 135M model's first tokens ("The" against "L") are 0.13 nats apart, and bf16 kernels
# (vLLM's AMX attention on CPU) flip them.
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]


def test_is_converted_needs_config_and_weights(tmp_path):
    assert not is_converted(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    assert not is_converted(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert is_converted(tmp_path)


def test_cache_dir_setting_moves_the_model_folder(tmp_path):
    settings = Settings(cache_dir=tmp_path)
    assert default_model_dir(settings) == tmp_path / "models" / MODEL_NAME


@pytest.fixture(scope="module")
def smollm2_dir():
    """Convert once through the CLI (into the user's cache, where `make serve` looks too)."""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "prepare-model"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-5000:]
    model_dir = default_model_dir(Settings())
    assert done.stdout.strip().splitlines()[-1] == str(model_dir)
    return model_dir


@pytest.mark.slow
def test_prepared_folder_is_a_plain_llama_and_is_reused(smollm2_dir):
    import json

    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (30, 576, 49152)
    weights = smollm2_dir / "model.safetensors"
    before = os.stat(weights).st_mtime_ns
    assert ensure_default_model(Settings()) == smollm2_dir
    assert os.stat(weights).st_mtime_ns == before
    leftovers = [path.name for path in smollm2_dir.parent.iterdir() if path.name.startswith(".")]
    assert leftovers == []


@pytest.fixture(scope="module")
def smollm2_server(smollm2_dir, tmp_path_factory):
    """SmolLM2 served as the README's adapter-set section serves it: fp32, with the paper-init MoORE
    set `csr` made by the CLI (MoORE's bf16 CPU kernels need AVX-512)."""
    work = tmp_path_factory.mktemp("smollm2")
    made = subprocess.run(
        [sys.executable, "-m", "server.cli", "adapters", "init", "moore", "--base-model", str(smollm2_dir),
         "--tasks", "arc-e,boolq,piqa", "--out", str(work / "sets" / "csr")],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr[-5000:]
    extra = ["--dtype", "float32", "--adapter-sets", str(work / "sets")]
    with start_server(smollm2_dir, MODEL_NAME, work / "smollm2.log", extra) as server:
        yield openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=300)


@pytest.mark.slow
def test_smollm2_answers_paris(smollm2_server):
    answer = smollm2_server.chat.completions.create(model=MODEL_NAME, messages=QUESTION, max_tokens=30, temperature=0)
    assert "Paris" in answer.choices[0].message.content
    stream = smollm2_server.chat.completions.create(
        model=MODEL_NAME, messages=QUESTION, max_tokens=30, temperature=0, stream=True
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert "Paris" in streamed
    assert streamed == answer.choices[0].message.content


@pytest.mark.slow
def test_readme_structured_output_call_on_a_task_tag(smollm2_server):
    """The README's quick start: JSON asked for on a task tag of the paper-init set, and of the base model."""
    schema = {"type": "object", "properties": {"answer": {"type": "boolean"}}, "required": ["answer"]}
    replies = {}
    for model in (MODEL_NAME, "csr/boolq"):
        reply = smollm2_server.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Is Paris the capital of France? Answer in JSON."}],
            response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}},
            max_tokens=20,
            temperature=0,
        )
        assert reply.model == model
        replies[model] = json.loads(reply.choices[0].message.content)
        assert isinstance(replies[model]["answer"], bool)
    assert replies["csr/boolq"] == replies[MODEL_NAME]  # paper init computes the base model

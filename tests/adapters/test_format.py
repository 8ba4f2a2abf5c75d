"""On-disk format: round trip, atomic writes, and one hand-made bad set per validation failure."""

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from adapters import errors
from adapters.base_model import BaseModelInfo
from adapters.format import MANIFEST_FILE, TENSORS_FILE, load_adapter_set, save_adapter_set
from adapters.safetensors_io import read_header, tensor_checksums


def _copy(set_dirs: dict[str, Path], name: str, tmp_path: Path) -> Path:
    return Path(shutil.copytree(set_dirs[name], tmp_path / name))


def _edit_manifest(set_dir: Path, edit: Callable[[dict], None]) -> None:
    manifest = json.loads((set_dir / MANIFEST_FILE).read_text())
    edit(manifest)
    (set_dir / MANIFEST_FILE).write_text(json.dumps(manifest))


def _rewrite_tensors(set_dir: Path, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Change the stored tensors and keep the manifest's records in step, so only `edit` is wrong."""
    tensors = load_file(str(set_dir / TENSORS_FILE))
    edit(tensors)
    save_file(tensors, str(set_dir / TENSORS_FILE))
    entries, checksums = read_header(set_dir / TENSORS_FILE), tensor_checksums(set_dir / TENSORS_FILE)

    def fix(manifest: dict) -> None:
        manifest["tensors"] = {
            name: {"sha256": checksums[name], "shape": list(entry.shape), "dtype": entry.dtype}
            for name, entry in entries.items()
        }

    _edit_manifest(set_dir, fix)


def test_round_trip(set_dirs: dict[str, Path], base: BaseModelInfo, tmp_path: Path) -> None:
    for name in ("moore-random", "badit-tasks", "lora-random"):
        loaded = load_adapter_set(set_dirs[name], base)
        saved = save_adapter_set(
            tmp_path / name,
            name=loaded.name,
            config=loaded.config,
            base=base,
            target_modules=loaded.target_modules,
            tasks=loaded.tasks,
            tensors=loaded.tensors,
        )
        again = load_adapter_set(tmp_path / name, base)
        assert again.manifest.tensors == loaded.manifest.tensors == saved.manifest.tensors
        assert again.config == loaded.config and again.tasks == loaded.tasks
        assert again.nbytes == loaded.nbytes == sum(t.numel() * 4 for t in loaded.tensors.values())
        for key, tensor in loaded.tensors.items():
            assert torch.equal(again.tensors[key], tensor)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["badit-tasks", "lora-random", "moore-random"]


def test_typed_module_views(set_dirs: dict[str, Path], base: BaseModelInfo) -> None:
    moore = load_adapter_set(set_dirs["moore-random"], base).module(1, "down_proj")
    out_f, in_f = base.shape("down_proj")
    d = min(out_f, in_f)
    assert (moore.Y.shape, moore.G.shape, moore.G_up.shape) == ((8, in_f), (128, in_f), (d, 128))
    assert (moore.T.shape, moore.Emb.shape) == ((d, 64), (2, 64))
    torch.testing.assert_close(moore.task_vectors()[1], moore.T @ moore.Emb[1])
    badit_set = load_adapter_set(set_dirs["badit-random"], base)
    badit = badit_set.module(0, "gate_proj")
    assert (badit.A.shape, badit.B.shape, badit.G.shape) == ((24, 128), (256, 24), (6, 128))
    assert badit.scale == 32 / 4 and badit.task_mixture is None and badit_set.input_routed
    lora = load_adapter_set(set_dirs["lora-random"], base).module(0, "v_proj")
    assert (lora.A.shape, lora.B.shape, lora.scaling) == ((8, 128), (64, 8), 2.0)


def test_inspection_without_base(set_dirs: dict[str, Path]) -> None:
    loaded = load_adapter_set(set_dirs["badit-tasks"], None)
    assert loaded.tasks == ("summarise", "classify") and loaded.kind == "badit"


def _bad_shape(t: dict) -> None:
    t["layers.0.q_proj.G"] = torch.zeros(129, 128)


def _nan(t: dict) -> None:
    t["layers.1.up_proj.G_up"][3, 4] = float("nan")


def _extra(t: dict) -> None:
    t["layers.0.q_proj.bias"] = torch.zeros(3)


def _missing(t: dict) -> None:
    del t["layers.1.down_proj.T"]


def _bf16_householder(t: dict) -> None:
    t["layers.0.k_proj.Y"] = t["layers.0.k_proj.Y"].bfloat16()


def _integer(t: dict) -> None:
    t["layers.0.k_proj.G"] = t["layers.0.k_proj.G"].to(torch.int32)


@pytest.mark.parametrize(
    "edit,error,field",
    [
        (_bad_shape, errors.ShapeMismatch, "layers.0.q_proj.G"),
        (_nan, errors.NonFiniteTensor, "layers.1.up_proj.G_up"),
        (_extra, errors.ExtraTensor, "layers.0.q_proj.bias"),
        (_missing, errors.MissingTensor, "layers.1.down_proj.T"),
        (_bf16_householder, errors.DtypeInvalid, "layers.0.k_proj.Y"),
        (_integer, errors.DtypeInvalid, "layers.0.k_proj.G"),
    ],
)
def test_bad_tensors(set_dirs, base, tmp_path, edit, error, field) -> None:
    set_dir = _copy(set_dirs, "moore-random", tmp_path)
    _rewrite_tensors(set_dir, edit)
    with pytest.raises(error) as raised:
        load_adapter_set(set_dir, base)
    assert raised.value.param == field and field in raised.value.message


@pytest.mark.parametrize(
    "edit,error,field",
    [
        (lambda m: m.update(base_fingerprint="0" * 32), errors.FingerprintMismatch, "base_fingerprint"),
        (lambda m: m.update(kind="dora"), errors.UnknownKind, "kind"),
        (lambda m: m.pop("kind"), errors.ManifestInvalid, "kind"),
        (lambda m: m.pop("tasks"), errors.TaskListInvalid, "tasks"),
        (lambda m: m.update(tasks=[]), errors.TaskListInvalid, "tasks"),
        (lambda m: m.update(tasks=["a", "a"]), errors.TaskListInvalid, "tasks"),
        (lambda m: m.update(tasks=["a/b", "c"]), errors.TaskListInvalid, "tasks"),
        (lambda m: m.update(format_version=2), errors.UnsupportedVersion, "format_version"),
        (lambda m: m["hyper_parameters"].update(router_width=0), errors.ManifestInvalid, "hyper_parameters.router_width"),
        (lambda m: m["hyper_parameters"].update(rank=4), errors.ManifestInvalid, "hyper_parameters.rank"),
        (lambda m: m.update(target_modules=["q_proj", "q_proj"]), errors.ManifestInvalid, "target_modules"),
        (lambda m: m.update(target_modules=["lm_head"]), errors.ManifestInvalid, "target_modules.0"),
        (lambda m: m.update(unknown_field=1), errors.ManifestInvalid, "unknown_field"),
        (lambda m: m["tensors"].pop("layers.0.o_proj.Emb"), errors.MissingTensor, "layers.0.o_proj.Emb"),
        (lambda m: m.update(num_layers=3), errors.ShapeMismatch, "num_layers"),
    ],
)
def test_bad_manifests(set_dirs, base, tmp_path, edit, error, field) -> None:
    set_dir = _copy(set_dirs, "moore-random", tmp_path)
    _edit_manifest(set_dir, edit)
    with pytest.raises(error) as raised:
        load_adapter_set(set_dir, base)
    assert raised.value.param == field


def test_lora_with_two_tasks_and_bad_mixture(set_dirs, base, tmp_path) -> None:
    lora_dir = _copy(set_dirs, "lora-random", tmp_path)
    _edit_manifest(lora_dir, lambda m: m.update(tasks=["a", "b"]))
    with pytest.raises(errors.TaskListInvalid):
        load_adapter_set(lora_dir, base)
    badit_dir = _copy(set_dirs, "badit-tasks", tmp_path)
    _rewrite_tensors(badit_dir, lambda t: t["layers.1.gate_proj.W_task"].mul_(2))
    with pytest.raises(errors.TensorValueInvalid, match="layers.1.gate_proj.W_task"):
        load_adapter_set(badit_dir, base)


def test_truncated_file_names_the_tensor(set_dirs, base, tmp_path) -> None:
    set_dir = _copy(set_dirs, "lora-random", tmp_path)
    data = (set_dir / TENSORS_FILE).read_bytes()
    (set_dir / TENSORS_FILE).write_bytes(data[:-100])
    with pytest.raises(errors.FileTruncated, match="layers.1.v_proj.B"):
        load_adapter_set(set_dir, base)
    (set_dir / TENSORS_FILE).write_bytes(data[:5])
    with pytest.raises(errors.FileTruncated):
        load_adapter_set(set_dir, base)


def test_flipped_byte_fails_the_checksum(set_dirs, base, tmp_path) -> None:
    set_dir = _copy(set_dirs, "lora-random", tmp_path)
    entry = read_header(set_dir / TENSORS_FILE)["layers.0.q_proj.A"]
    data = bytearray((set_dir / TENSORS_FILE).read_bytes())
    data[entry.start + 5] ^= 0x40
    (set_dir / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(errors.ChecksumMismatch) as raised:
        load_adapter_set(set_dir, base)
    assert raised.value.param == "layers.0.q_proj.A"


def test_missing_files(set_dirs, base, tmp_path) -> None:
    with pytest.raises(errors.AdapterNotFound):
        load_adapter_set(tmp_path / "nowhere", base)
    set_dir = _copy(set_dirs, "lora-random", tmp_path)
    (set_dir / MANIFEST_FILE).write_text("{not json")
    with pytest.raises(errors.ManifestInvalid):
        load_adapter_set(set_dir, base)
    (set_dir / MANIFEST_FILE).unlink()
    with pytest.raises(errors.ManifestInvalid, match="manifest.json"):
        load_adapter_set(set_dir, base)


def test_save_is_validated_and_atomic(set_dirs, base, tmp_path) -> None:
    loaded = load_adapter_set(set_dirs["lora-random"], base)
    kwargs = dict(name="x", config=loaded.config, base=base, target_modules=loaded.target_modules, tasks=["t"])
    bad = dict(loaded.tensors) | {"layers.0.q_proj.A": torch.full((8, 128), float("inf"))}
    with pytest.raises(errors.NonFiniteTensor):
        save_adapter_set(tmp_path / "out", tensors=bad, **kwargs)
    assert not any(tmp_path.iterdir())
    save_adapter_set(tmp_path / "out", tensors=loaded.tensors, **kwargs)
    with pytest.raises(FileExistsError):
        save_adapter_set(tmp_path / "out", tensors=loaded.tensors, **kwargs)
    save_adapter_set(tmp_path / "out", tensors=loaded.tensors, overwrite=True, **kwargs | {"tasks": ["other"]})
    assert load_adapter_set(tmp_path / "out", base).tasks == ("other",)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_error_codes_are_unique() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.AdapterError)]
    codes = [c.code for c in classes]
    assert len(codes) == len(set(codes)) and len(codes) >= 18
    assert issubclass(errors.ChecksumMismatch, errors.AdapterInvalid)

"""Raw access to safetensors files: header, byte ranges, checksums, without trusting the file.

`safetensors` itself is used to read tensors; this module only checks a file is whole and hashes
the exact bytes each tensor occupies, so checksums do not depend on dtype support in numpy.
"""

from __future__ import annotations

import hashlib
import json
import math
import stat
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adapters.errors import FileNotRegular, FileTruncated, SafetensorsInvalid

_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100 * 1024 * 1024
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype tag, e.g. "F32", "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse the header of `path` without trusting it: every tensor's byte range must match its shape
    and dtype, lie inside the file and overlap no other; a name may appear once."""
    check_regular_file(path)
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw_length = handle.read(_HEADER_LENGTH_BYTES)
        if len(raw_length) < _HEADER_LENGTH_BYTES:
            raise FileTruncated(f"{path.name} is {size} bytes long: too short to be a safetensors file.")
        (header_length,) = struct.unpack("<Q", raw_length)
        if header_length > min(_MAX_HEADER_BYTES, size - _HEADER_LENGTH_BYTES):
            raise FileTruncated(f"{path.name} is truncated or not a safetensors file (header of {header_length} bytes).")
        try:
            header = json.loads(handle.read(header_length), object_pairs_hook=_refuse_repeated_names)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SafetensorsInvalid(f"{path.name} has an unreadable safetensors header: {error}.") from error
    if not isinstance(header, dict):
        raise SafetensorsInvalid(f"{path.name}: the safetensors header must be a JSON object.")
    data_start = _HEADER_LENGTH_BYTES + header_length
    entries = {
        name: _entry(path.name, name, info, data_start) for name, info in header.items() if name != "__metadata__"
    }
    for entry in entries.values():
        if entry.end > size:
            raise FileTruncated(
                f"{path.name} is truncated: tensor '{entry.name}' needs bytes up to {entry.end} but the file has {size}."
            )
    ordered = sorted(entries.values(), key=lambda entry: (entry.start, entry.end))
    for before, after in zip(ordered, ordered[1:]):
        if after.start < before.end:
            raise SafetensorsInvalid(f"{path.name}: tensors '{before.name}' and '{after.name}' overlap.")
    return entries


def check_regular_file(path: Path) -> None:
    """Refuse FIFOs, devices, sockets and directories before anything opens them (a FIFO would block)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return  # the caller reports the missing file in its own words
    if not stat.S_ISREG(mode):
        raise FileNotRegular(f"{path.name} is not a regular file.", field=path.name)


def _refuse_repeated_names(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) < len(pairs):
        repeated = sorted(name for name, count in Counter(name for name, _ in pairs).items() if count > 1)
        raise SafetensorsInvalid(f"The safetensors header lists {', '.join(repeated)} more than once.")
    return result


def _entry(file_name: str, name: str, info: Any, data_start: int) -> TensorEntry:
    try:
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
        valid = (
            isinstance(dtype, str)
            and isinstance(shape, list)
            and all(isinstance(dim, int) and dim >= 0 for dim in [*shape, begin, end])
            and begin <= end
        )
    except (KeyError, TypeError, ValueError):
        valid = False
    if not valid:
        raise SafetensorsInvalid(
            f"{file_name}: tensor '{name}' needs a dtype, a shape and data_offsets [begin, end].", field=name
        )
    itemsize = _ITEMSIZE.get(dtype)
    if itemsize is not None and end - begin != math.prod(shape) * itemsize:
        raise SafetensorsInvalid(
            f"{file_name}: tensor '{name}' ({dtype}, shape {shape}) occupies {end - begin} bytes, "
            f"not {math.prod(shape) * itemsize}.",
            field=name,
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + begin, data_start + end)


def read_bytes(path: Path, entry: TensorEntry) -> bytes:
    with path.open("rb") as handle:
        handle.seek(entry.start)
        return handle.read(entry.end - entry.start)


def tensor_checksums(path: Path) -> dict[str, str]:
    """sha256 of each tensor's stored bytes."""
    entries = read_header(path)
    checksums = {}
    with path.open("rb") as handle:
        for name, entry in entries.items():
            handle.seek(entry.start)
            checksums[name] = hashlib.sha256(handle.read(entry.end - entry.start)).hexdigest()
    return checksums

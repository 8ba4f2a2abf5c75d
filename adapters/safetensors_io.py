"""Raw access to safetensors files: header, byte ranges, checksums, without trusting the file.

`safetensors` itself is used to read tensors; this module only checks a file is whole and hashes
the exact bytes each tensor occupies, so checksums do not depend on dtype support in numpy.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from adapters.errors import FileTruncated

_HEADER_LENGTH_BYTES = 8
_MAX_HEADER_BYTES = 100 * 1024 * 1024


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype tag, e.g. "F32", "BF16"
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


def read_header(path: Path) -> dict[str, TensorEntry]:
    """Parse the header of `path` and check every tensor's bytes lie inside the file."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        raw_length = handle.read(_HEADER_LENGTH_BYTES)
        if len(raw_length) < _HEADER_LENGTH_BYTES:
            raise FileTruncated(f"{path.name} is {size} bytes long: too short to be a safetensors file.")
        (header_length,) = struct.unpack("<Q", raw_length)
        if header_length > min(_MAX_HEADER_BYTES, size - _HEADER_LENGTH_BYTES):
            raise FileTruncated(f"{path.name} is truncated or not a safetensors file (header of {header_length} bytes).")
        try:
            header = json.loads(handle.read(header_length))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise FileTruncated(f"{path.name} has an unreadable safetensors header: {error}.") from error
    data_start = _HEADER_LENGTH_BYTES + header_length
    entries = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        entry = TensorEntry(name, info["dtype"], tuple(info["shape"]), data_start + begin, data_start + end)
        if entry.end > size:
            raise FileTruncated(
                f"{path.name} is truncated: tensor '{name}' needs bytes up to {entry.end} but the file has {size}."
            )
        entries[name] = entry
    return entries


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

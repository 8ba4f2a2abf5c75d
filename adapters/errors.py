"""Adapter-set errors: every failure of a set (or of the base model it is checked against) with a
stable `code` naming what to fix. All are `errors.domain.DomainError`s."""

from __future__ import annotations

from errors.domain import DomainError


class AdapterError(DomainError):
    """Base of every adapter-set error; `field` names the manifest field or tensor to fix."""

    code = "adapter_error"
    status = 422

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message, param=field)


class AdapterNotFound(AdapterError):
    code = "adapter_not_found"


class AdapterInvalid(AdapterError):
    """The set exists but cannot be served as it is."""

    code = "adapter_invalid"


class ManifestInvalid(AdapterInvalid):
    code = "manifest_invalid"


class UnknownKind(AdapterInvalid):
    code = "unknown_kind"


class UnsupportedVersion(AdapterInvalid):
    code = "unsupported_version"


class TaskListInvalid(AdapterInvalid):
    code = "task_list_invalid"


class FingerprintMismatch(AdapterInvalid):
    code = "fingerprint_mismatch"


class FileTruncated(AdapterInvalid):
    code = "file_truncated"


class SafetensorsInvalid(AdapterInvalid):
    """The tensor file's header is not a well-formed safetensors header (bad JSON, repeated or
    overlapping tensors, byte ranges that disagree with shape and dtype)."""

    code = "safetensors_invalid"


class FileNotRegular(AdapterInvalid):
    """A set file is a FIFO, device, socket or directory: reading it could block or never end."""

    code = "file_not_regular"


class ChecksumMismatch(AdapterInvalid):
    code = "checksum_mismatch"


class MissingTensor(AdapterInvalid):
    code = "missing_tensor"


class ExtraTensor(AdapterInvalid):
    code = "extra_tensor"


class ShapeMismatch(AdapterInvalid):
    code = "shape_mismatch"


class DtypeInvalid(AdapterInvalid):
    code = "dtype_invalid"


class NonFiniteTensor(AdapterInvalid):
    code = "non_finite_tensor"


class TensorValueInvalid(AdapterInvalid):
    """Finite, well-shaped, but outside what the method allows (e.g. a mixture that does not sum to 1)."""

    code = "tensor_value_invalid"


class BaseModelInvalid(AdapterError):
    """The base-model folder cannot be described (missing config, unsupported architecture, missing weight)."""

    code = "base_model_invalid"


class ImportFailed(AdapterError):
    """A foreign checkpoint does not have the layout its importer expects."""

    code = "import_failed"


class MethodRegistrationError(AdapterError):
    code = "method_registration_error"


def format_names(names: list[str] | tuple[str, ...] | set[str], limit: int = 8) -> str:
    """`a, b, c (+5 more)` for error messages; sorted so that messages are stable."""
    ordered = sorted(names)
    shown = ", ".join(ordered[:limit])
    return shown if len(ordered) <= limit else f"{shown} (+{len(ordered) - limit} more)"

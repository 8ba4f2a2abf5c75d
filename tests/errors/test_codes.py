"""Each error code has one spelling: the `code` attribute of one `DomainError` subclass, which every
response, middleware and stream uses; no product module passes a code as a string of its own."""

from __future__ import annotations

import ast
from pathlib import Path

import adapters.errors
import router.errors
import server.errors
from errors.domain import DomainError

REPO = Path(__file__).resolve().parents[2]
PRODUCT_DIRS = ("errors", "adapters", "router", "server")
ERROR_MODULES = (adapters.errors, router.errors, server.errors)


def _error_classes() -> list[type[DomainError]]:
    found: list[type[DomainError]] = []
    pending = [DomainError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return [cls for cls in found if cls.__module__ in {module.__name__ for module in ERROR_MODULES}]


def _declared_codes() -> dict[str, list[str]]:
    codes: dict[str, list[str]] = {}
    for cls in _error_classes():
        code = cls.__dict__.get("code")
        if code is not None:
            codes.setdefault(code, []).append(cls.__qualname__)
    return codes


def test_no_two_error_classes_declare_the_same_code():
    codes = _declared_codes()
    assert "engine_unavailable" in codes and "model_not_found" in codes
    assert {code: owners for code, owners in codes.items() if len(owners) > 1} == {}


def _spelled_codes(tree: ast.Module) -> list[tuple[int, object]]:
    """(line, value) of every string given as an error code: a `code=` argument or a `"code":` entry."""
    spelled: list[tuple[int, object]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "code" and isinstance(node.value, ast.Constant):
            spelled.append((node.value.lineno, node.value.value))
        elif isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "code" and isinstance(value, ast.Constant):
                    spelled.append((value.lineno, value.value))
    return spelled


def test_no_product_module_spells_a_code_itself():
    spelled = [
        f"{path.relative_to(REPO)}:{line} {value!r}"
        for folder in PRODUCT_DIRS
        for path in sorted((REPO / folder).rglob("*.py"))
        for line, value in _spelled_codes(ast.parse(path.read_text(), filename=str(path)))
        if value is not None
    ]
    assert spelled == []

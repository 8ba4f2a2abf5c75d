"""The package structure, read from the import statements of every product module.

- Layers import downwards only: `errors` ← `adapters` ← `router` ← `server`.
- vLLM is imported in one package, `server/engine/vllm/`, and nowhere else.
- The worker side (`server/engine/worker/`) reaches vLLM through that package and uses no
  request-side module (HTTP, admission, the registry).
- Benchmarks, soak and the offline engine live in `server/tools/`; serving modules never import them.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("errors", "adapters", "router", "server")  # each may import those before it, never after
VLLM_SEAM = "server.engine.vllm"
WORKER = "server.engine.worker"
TOOLS = "server.tools"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names a module imports (relative imports resolved against its package)."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, node.module] if node.module else base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


MODULES = {module_name(path): imports_of(path) for layer in LAYERS for path in sorted((ROOT / layer).rglob("*.py"))}


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def test_the_modules_were_found() -> None:
    assert {name.split(".")[0] for name in MODULES} == set(LAYERS)
    assert any(within(name, VLLM_SEAM) for name in MODULES) and any(within(name, WORKER) for name in MODULES)


@pytest.mark.parametrize("layer", LAYERS)
def test_layers_import_downwards_only(layer: str) -> None:
    above = LAYERS[LAYERS.index(layer) + 1 :]
    wrong = {
        module: sorted(name for name in names if name.split(".")[0] in above)
        for module, names in MODULES.items()
        if module.split(".")[0] == layer
    }
    assert not {module: names for module, names in wrong.items() if names}


def test_vllm_is_imported_in_its_seam_package_only() -> None:
    outside = {
        module: sorted(name for name in names if within(name, "vllm"))
        for module, names in MODULES.items()
        if not within(module, VLLM_SEAM)
    }
    assert not {module: names for module, names in outside.items() if names}


def test_the_worker_side_uses_no_request_side_module() -> None:
    allowed = ("errors", "adapters", WORKER, VLLM_SEAM)
    wrong = {
        module: sorted(
            name for name in names if name.split(".")[0] in LAYERS and not any(within(name, ok) for ok in allowed)
        )
        for module, names in MODULES.items()
        if within(module, WORKER)
    }
    assert not {module: names for module, names in wrong.items() if names}


def test_serving_modules_do_not_import_the_tools() -> None:
    wrong = {
        module: sorted(name for name in names if within(name, TOOLS))
        for module, names in MODULES.items()
        if not within(module, TOOLS) and module != "server.cli"
    }
    assert not {module: names for module, names in wrong.items() if names}

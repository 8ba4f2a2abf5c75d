"""A method is one folder: a toy fourth method (`toy_method.py`), installed without editing any
repository file, is found through its entry point.

The engines of `tests/server/engine/test_adapter_exactness.py` serve it, in the same mixed batches as
the built-in methods, exactly as its own PyTorch reference computes it.
"""

from __future__ import annotations

import inspect
from pathlib import Path

from adapters.registry import registered_methods
from tests.adapters.toy_method import TOY_KIND, toy_method_installed


def test_the_toy_method_is_found_through_its_entry_point(tmp_path: Path) -> None:
    with toy_method_installed(tmp_path) as toy:
        assert registered_methods()[TOY_KIND] is toy
        assert Path(inspect.getfile(toy.config_cls)).is_relative_to(tmp_path)
        assert {"badit", "lora", "moore"} < set(registered_methods())
    assert TOY_KIND not in registered_methods()  # later tests see the built-in methods only

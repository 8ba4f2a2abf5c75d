"""The toy fourth method (`toy_bias/` beside this file: a per-task additive bias with its own config,
math, reference, initialiser and serving bank), installed the way a third-party method would be.

`toy_method_installed(site)` copies the toy into a temporary package and writes a distribution that
announces it in the `orthoserve.methods` entry-point group, first on `sys.path`. The registry finds it
there, in this process and in an engine's worker processes alike (both read the same `sys.path`).
Once the block ends, later tests see the built-in methods only, and the toy's modules are forgotten.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from adapters import registry
from adapters.registry import ENTRY_POINT_GROUP, MethodSpec, get_method

TOY_SOURCE = Path(__file__).parent / "toy_bias"
TOY_KIND = "toy_bias"


@contextlib.contextmanager
def toy_method_installed(site: Path) -> Iterator[MethodSpec]:
    shutil.copytree(TOY_SOURCE, site / "toy_bias", ignore=shutil.ignore_patterns("__pycache__"))
    dist_info = site / "orthoserve_toy_bias-0.1.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: orthoserve-toy-bias\nVersion: 0.1\n")
    (dist_info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\n{TOY_KIND} = toy_bias.method:METHOD\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(site))
        patch.setattr(registry, "_METHODS", dict(registry._METHODS))
        try:
            yield get_method(TOY_KIND)
        finally:  # a later installation imports its own copy
            for module in [name for name in sys.modules if name.partition(".")[0] == "toy_bias"]:
                del sys.modules[module]

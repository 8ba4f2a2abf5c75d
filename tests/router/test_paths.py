"""Adapter roots: only real directories inside a root are accepted."""

import pytest

from router.errors import AdapterPathMissing, PathNotAllowed
from router.paths import AdapterRoots


@pytest.fixture
def layout(tmp_path):
    root = tmp_path / "root"
    (root / "good").mkdir(parents=True)
    (root / "good" / "manifest.json").write_text("{}")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.safetensors").write_text("x")
    (root / "escape").symlink_to(outside)
    (root / "inner-link").symlink_to(root / "good")
    (root / "leaky").mkdir()
    (root / "leaky" / "weights.safetensors").symlink_to(outside / "secret.safetensors")
    return root, outside


def test_accepts_dirs_inside_root(layout):
    root, _ = layout
    roots = AdapterRoots([root])
    assert roots.resolve(str(root / "good")) == (root / "good").resolve()
    assert roots.resolve("good") == (root / "good").resolve()
    assert roots.resolve(str(root / "inner-link")) == (root / "good").resolve()


@pytest.mark.parametrize(
    "relative", ["escape", "leaky", "good/../../outside", "../outside"], ids=["symlink-dir", "symlink-file", "dotdot", "relative-dotdot"]
)
def test_refuses_escapes(layout, relative):
    root, _ = layout
    with pytest.raises(PathNotAllowed):
        AdapterRoots([root]).resolve(str(root / relative) if not relative.startswith("..") else relative)


def test_refuses_outside_and_without_roots(layout):
    root, outside = layout
    with pytest.raises(PathNotAllowed):
        AdapterRoots([root]).resolve(str(outside))
    with pytest.raises(PathNotAllowed):
        AdapterRoots([]).resolve(str(root / "good"))


def test_missing_dir(layout):
    root, _ = layout
    with pytest.raises(AdapterPathMissing):
        AdapterRoots([root]).resolve(str(root / "absent"))

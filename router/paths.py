"""Adapter-set paths accepted from the admin API: only directories inside the configured roots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from router.errors import AdapterPathMissing, PathNotAllowed


class AdapterRoots:
    """The configured `--adapter-root` directories, symlinks resolved once at start."""

    def __init__(self, roots: Sequence[Path | str]) -> None:
        self.roots = tuple(Path(root).expanduser().resolve() for root in roots)

    def resolve(self, raw_path: str) -> Path:
        """The real directory `raw_path` names; relative paths are taken from the first root.

        Refuses `..` components, paths whose real location (symlinks followed) is outside every
        root, and set directories holding a symlink that leads outside the roots.
        """
        if not self.roots:
            raise PathNotAllowed("Loading adapter sets by path is disabled: no --adapter-root is configured.")
        candidate = Path(raw_path).expanduser()
        if ".." in candidate.parts:
            raise PathNotAllowed(f"The path '{raw_path}' contains '..'.")
        if not candidate.is_absolute():
            candidate = self.roots[0] / candidate
        real = _resolve(candidate, raw_path)
        if not self._inside(real):
            raise PathNotAllowed(f"The path '{raw_path}' is outside the configured adapter roots.")
        if not real.is_dir():
            raise AdapterPathMissing(raw_path)
        for entry in real.rglob("*"):
            if entry.is_symlink() and not self._inside(_resolve(entry, f"{raw_path}/{entry.relative_to(real)}")):
                raise PathNotAllowed(
                    f"'{entry.relative_to(real)}' in '{raw_path}' links outside the configured adapter roots."
                )
        return real

    def _inside(self, real: Path) -> bool:
        return any(real == root or real.is_relative_to(root) for root in self.roots)


def _resolve(path: Path, shown: str) -> Path:
    """`path` with every symlink followed; a symlink loop is refused like any path that leads nowhere allowed."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as error:  # Python raises RuntimeError on a symlink loop
        raise PathNotAllowed(f"The path '{shown}' cannot be resolved: {error}.") from None

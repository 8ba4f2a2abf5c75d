import threading
import time
from pathlib import Path

import pytest
import torch

from adapters.base_model import BaseModelInfo
from adapters import svd_cache
from adapters.svd_cache import FACTORS_FILE, META_FILE, SVD_ROUTINE, base_factors, ensure_base_factors


def test_factors_reconstruct_every_target(base: BaseModelInfo, factors) -> None:
    for layer, proj in base.targets():
        f = factors.get(layer, proj)
        out_features, in_features = base.shape(proj)
        d = min(out_features, in_features)
        assert (f.U.shape, f.S.shape, f.V.shape) == ((out_features, d), (d,), (in_features, d))
        assert bool((f.S[:-1] >= f.S[1:]).all())
        torch.testing.assert_close(f.reconstruct(), base.read_weight(layer, proj), atol=1e-5, rtol=1e-5)


def test_cache_is_reused_verified_and_recomputed_when_corrupt(base: BaseModelInfo, tmp_path: Path) -> None:
    folder = ensure_base_factors(base, tmp_path, progress=False)
    assert folder == tmp_path / base.fingerprint
    meta = (folder / META_FILE).read_text()
    assert SVD_ROUTINE in meta and torch.__version__ in meta
    first_write = (folder / FACTORS_FILE).stat().st_mtime_ns
    assert ensure_base_factors(base, tmp_path, progress=False) == folder
    assert (folder / FACTORS_FILE).stat().st_mtime_ns == first_write  # reused, not recomputed

    data = (folder / FACTORS_FILE).read_bytes()
    (folder / FACTORS_FILE).write_bytes(data[: len(data) // 2])
    ensure_base_factors(base, tmp_path, progress=False)
    assert (folder / FACTORS_FILE).read_bytes() == data

    (folder / META_FILE).write_text(meta.replace(base.fingerprint, "f" * 32))
    factors = base_factors(base, tmp_path, progress=False)
    assert base.fingerprint in (folder / META_FILE).read_text()
    torch.testing.assert_close(factors.get(0, "q_proj").reconstruct(), base.read_weight(0, "q_proj"), atol=1e-5, rtol=0)
    assert {p.name for p in tmp_path.iterdir()} <= {base.fingerprint, f".{base.fingerprint}.lock"}  # no staging left


def test_concurrent_callers_on_one_cache_compute_once_and_share_it(
    base: BaseModelInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two replicas starting together on one cache folder: one computes, the other waits and reuses it."""
    compute = svd_cache._compute_into
    computed: list[Path] = []

    def slow_compute(folder: Path, base: BaseModelInfo, progress: bool) -> None:
        computed.append(folder)
        time.sleep(0.5)  # both callers are inside ensure_base_factors while the first computes
        compute(folder, base, progress)

    monkeypatch.setattr(svd_cache, "_compute_into", slow_compute)
    results: list[Path | BaseException] = []

    def call() -> None:
        try:
            results.append(ensure_base_factors(base, tmp_path, progress=False))
        except BaseException as error:  # noqa: BLE001 - the test reports it
            results.append(error)

    callers = [threading.Thread(target=call) for _ in range(3)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert results == [tmp_path / base.fingerprint] * 3
    assert len(computed) == 1
    assert svd_cache.cache_problem(tmp_path / base.fingerprint, base) is None

"""A short soak in CI: mixed traffic on a real server while sets are replaced and reloaded.

The full run (2,000 requests at concurrency 32) is `orthoserve soak`; its numbers are in
docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

from server.tools.soak import SoakConfig, render_report, run_soak


def test_short_soak_has_no_failures_and_no_wrong_versions(tiny_model_dir: Path, tmp_path: Path):
    config = SoakConfig(
        model_dir=tiny_model_dir, work_dir=tmp_path, requests=160, concurrency=16, replace_every=0.5, cycle_every=1.5
    )
    report = run_soak(config, log=lambda _: None)
    summary = render_report(report)
    assert report.failures == 0 and report.wrong_version == 0, summary
    assert report.ok >= 100, summary
    assert report.replacements >= 2 and report.reloads >= 1, summary
    assert report.by_target.keys() == {"soak-base", "swapped/arc", "swapped/boolq", "swapped/piqa", "cycled", "static"}
    assert 0 < report.p50_seconds <= report.p99_seconds, summary
    assert report.rss_end_mib > 0 and report.rss_after_warmup_mib > 0, summary

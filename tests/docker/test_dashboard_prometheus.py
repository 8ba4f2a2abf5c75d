"""A real Prometheus, configured from docker/prometheus.yml, scrapes the test server and evaluates
every dashboard query: each must run without error, and the request panels must show a request
sent while it scrapes.
"""

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from docker_support import (
    PROMETHEUS_CONFIG,
    dashboard_panels,
    complete_once,
    fill_grafana_variables,
    find_tool,
    load_yaml,
)

SCRAPE_INTERVAL_S = 1
RATE_WINDOW = "1m"
# Panels that one finished base-model request must fill.
PANELS_WITH_DATA = (
    "Request rate per set/task",
    "Time to first token",
    "End-to-end request latency",
    "Token throughput per set/task",
    "Running and waiting requests",
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def query(prometheus_url: str, expr: str) -> dict:
    response = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "success", f"{expr!r}: {body}"
    return body["data"]


def scrape_config_for(target: str) -> dict:
    """docker/prometheus.yml with the orthoserve job pointed at the test server, scraped every second."""
    config = load_yaml(PROMETHEUS_CONFIG)
    config["global"]["scrape_interval"] = f"{SCRAPE_INTERVAL_S}s"
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "orthoserve"]
    job["static_configs"] = [{"targets": [target]}]
    return config


@pytest.fixture(scope="module")
def prometheus(served_request, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir: Path = tmp_path_factory.mktemp("prometheus")
    config_file = workdir / "prometheus.yml"
    config_file.write_text(yaml.safe_dump(scrape_config_for(urlsplit(served_request.base_url).netloc)))
    url = f"http://127.0.0.1:{free_port()}"
    log = (workdir / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            find_tool("prometheus"),
            f"--config.file={config_file}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={urlsplit(url).netloc}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # A request while Prometheus watches, so that rate() and increase() see the counters move.
        wait_until(url, 'count_over_time(up{job="orthoserve"}[1m]) >= 2', process, workdir / "prometheus.log")
        complete_once(served_request.base_url)
        wait_until(url, 'increase(orthoserve_requests_total{set="base"}[1m]) > 0', process, workdir / "prometheus.log")
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_until(url: str, expr: str, process: subprocess.Popen, log: Path, timeout_s: float = 60) -> None:
    """Until `expr` returns a series (Prometheus has scraped what the check needs)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited with {process.returncode}:\n{log.read_text()}")
        try:
            response = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10)
        except httpx.TransportError:
            response = None  # not listening yet
        if response is not None and response.status_code == 200 and response.json()["data"]["result"]:
            return
        time.sleep(SCRAPE_INTERVAL_S)
    pytest.fail(f"no result for {expr!r} within {timeout_s}s:\n{log.read_text()}")


def test_prometheus_scrapes_the_server(prometheus: str) -> None:
    (up,) = query(prometheus, 'up{job="orthoserve"}')["result"]
    assert up["value"][1] == "1"


def test_every_dashboard_query_evaluates(prometheus: str) -> None:
    for panel in dashboard_panels():
        for target in panel["targets"]:
            data = query(prometheus, fill_grafana_variables(target["expr"], RATE_WINDOW))
            if panel["title"] in PANELS_WITH_DATA:
                assert data["result"], f"panel {panel['title']!r}: {target['expr']!r} returned no series"


def test_request_rate_panel_shows_the_base_request(prometheus: str) -> None:
    (panel,) = [p for p in dashboard_panels() if p["title"] == "Request rate per set/task"]
    result = query(prometheus, fill_grafana_variables(panel["targets"][0]["expr"], RATE_WINDOW))["result"]
    base = [r for r in result if r["metric"] == {"set": "base", "task": "base"}]
    assert base and float(base[0]["value"][1]) > 0

"""Checks of the container images and the monitoring stack in docker/.

No Docker engine is needed: the compose files, Dockerfiles and dashboard are checked with the
real linters (hadolint, promtool) and against a live scrape of the test server's /metrics.
"""

import fnmatch
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import httpx
import pytest
import yaml
from docker_support import (
    DOCKER,
    PROMETHEUS_CONFIG,
    REPO,
    dashboard,
    dashboard_expressions,
    dashboard_panels,
    fill_grafana_variables,
    find_tool,
    grouping_labels,
    load_yaml,
    metric_names,
)
from prometheus_client.parser import text_string_to_metric_families

COMPOSE_FILES = (DOCKER / "compose.yaml", DOCKER / "compose.cuda.yaml")
DOCKERFILES = (DOCKER / "Dockerfile.cpu", DOCKER / "Dockerfile.cuda")

# Series suffixes each metric type exports in the Prometheus text format.
SERIES_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def compose_services() -> Iterator[tuple[Path, str, dict]]:
    for compose_file in COMPOSE_FILES:
        for name, service in load_yaml(compose_file)["services"].items():
            yield compose_file, name, service


def bind_sources(service: dict) -> Iterator[str]:
    """Host paths of a service's bind mounts, in short or long volume syntax."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"]
        else:
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                yield source


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` (or a folder holding it) out of the build context."""
    parts = PurePosixPath(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        if pattern.startswith("**/"):
            tail = pattern[3:]
            suffixes = ["/".join(parts[i: j + 1]) for i in range(len(parts)) for j in range(i, len(parts))]
            if any(fnmatch.fnmatchcase(s, tail) for s in suffixes):
                return True
        elif any(fnmatch.fnmatchcase(prefix, pattern.rstrip("/")) for prefix in prefixes):
            return True
    return False


def dockerfile_instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            instructions.append((keyword.upper(), args.strip()))
    return instructions


# --- compose -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_build_files_exist(compose_file: Path) -> None:
    base_services = load_yaml(COMPOSE_FILES[0])["services"]
    builds = {name: s["build"] for name, s in load_yaml(compose_file)["services"].items() if "build" in s}
    assert builds, f"{compose_file.name} builds no image"
    for name, build in builds.items():
        build = base_services.get(name, {}).get("build", {}) | build  # an override inherits the context
        context = (compose_file.parent / build["context"]).resolve()
        assert context == REPO, f"build context {context} is not the repository root"
        assert (context / build["dockerfile"]).is_file(), build["dockerfile"]


def test_compose_mounted_files_exist() -> None:
    checked = 0
    for compose_file, name, service in compose_services():
        for source in bind_sources(service):
            if "${" in source:
                continue  # operator data (models, adapter sets), chosen at deploy time
            assert (compose_file.parent / source).exists(), f"{compose_file.name}: {name} mounts missing {source}"
            checked += 1
    assert checked >= 3, "expected the Prometheus config and Grafana provisioning/dashboards mounts"


def test_compose_named_volumes_are_declared() -> None:
    declared = {name for f in COMPOSE_FILES for name in (load_yaml(f).get("volumes") or {})}
    for compose_file, name, service in compose_services():
        for volume in service.get("volumes", []):
            source = volume["source"] if isinstance(volume, dict) else volume.split(":", 1)[0]
            if not source.startswith((".", "/", "$")):
                assert source in declared, f"{compose_file.name}: {name} uses undeclared volume {source}"


def test_cuda_override_reserves_gpus_and_builds_cuda_image() -> None:
    cuda = load_yaml(DOCKER / "compose.cuda.yaml")["services"]["orthoserve"]
    assert cuda["build"]["dockerfile"] == "docker/Dockerfile.cuda"
    devices = cuda["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    base = load_yaml(DOCKER / "compose.yaml")["services"]
    assert "orthoserve" in base, "the override must extend the base file's orthoserve service"


def test_prometheus_scrapes_the_compose_service() -> None:
    targets = [
        target
        for job in load_yaml(PROMETHEUS_CONFIG)["scrape_configs"]
        if job["job_name"] == "orthoserve"
        for static in job["static_configs"]
        for target in static["targets"]
    ]
    services = load_yaml(DOCKER / "compose.yaml")["services"]
    port = str(services["orthoserve"]["environment"]["ORTHOSERVE_PORT"])
    assert targets == [f"orthoserve:{port}"]


def test_grafana_datasource_points_at_compose_prometheus() -> None:
    provisioning = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    (datasource,) = load_yaml(provisioning)["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    assert "prometheus" in load_yaml(DOCKER / "compose.yaml")["services"]


# --- Dockerfiles ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run([find_tool("hadolint"), str(dockerfile)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_installs_and_starts_with_project_commands(dockerfile: Path) -> None:
    instructions = dockerfile_instructions(dockerfile)
    runs = " ".join(args for keyword, args in instructions if keyword == "RUN")
    assert "scripts/install.sh" in runs, "images install with the project's one setup script"
    starts = [args for keyword, args in instructions if keyword == "CMD"]
    assert starts and json.loads(starts[-1])[:2] == ["orthoserve", "serve"]
    assert any(keyword == "HEALTHCHECK" and "/health" in args for keyword, args in instructions)
    users = [args for keyword, args in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the server runs as a non-root user"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copies_only_what_the_context_holds(dockerfile: Path) -> None:
    ignore = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [p.strip() for p in ignore if p.strip() and not p.startswith("#")]
    copies = [args for keyword, args in dockerfile_instructions(dockerfile) if keyword == "COPY"]
    assert copies
    for args in copies:
        if "--from=" in args:
            continue
        sources = [a for a in args.split() if not a.startswith("--")][:-1]
        for source in sources:
            assert (REPO / source).exists(), f"{dockerfile.name} copies missing {source}"
            assert not dockerignored(source.rstrip("/"), patterns), f".dockerignore drops {source}"


# --- Prometheus and the dashboard ----------------------------------------------------------------


def test_promtool_accepts_prometheus_config() -> None:
    result = subprocess.run(
        [find_tool("promtool"), "check", "config", str(PROMETHEUS_CONFIG)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_panels_have_targets() -> None:
    board = dashboard()
    assert board["uid"] == "orthoserve"
    panels = dashboard_panels()
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"
    for panel in panels:
        assert panel["targets"], f"panel {panel['title']!r} has no queries"
        for target in panel["targets"]:
            assert target["expr"].strip(), f"panel {panel['title']!r} has an empty query"
            assert target["datasource"]["uid"] == "${datasource}"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"


def test_dashboard_promql_parses(tmp_path: Path) -> None:
    """promtool parses every dashboard expression, with Grafana's variables filled in."""
    rules = []
    for index, expr in enumerate(dashboard_expressions()):
        rules.append({"record": f"dashboard:expr_{index}", "expr": fill_grafana_variables(expr)})
    rules_file = tmp_path / "dashboard-rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [find_tool("promtool"), "check", "rules", str(rules_file)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboard_covers_required_views() -> None:
    names = set().union(*(metric_names(e) for e in dashboard_expressions()))
    required = {
        "orthoserve_requests_total",
        "orthoserve_time_to_first_token_seconds_bucket",
        "orthoserve_inter_token_latency_seconds_bucket",
        "orthoserve_e2e_request_latency_seconds_bucket",
        "orthoserve_request_queue_time_seconds_bucket",
        "orthoserve_requests_running",
        "orthoserve_requests_waiting",
        "orthoserve_adapter_sets_resident",
        "orthoserve_adapter_set_bytes",
        "orthoserve_adapter_set_load_seconds_bucket",
        "orthoserve_adapter_set_load_failures_total",
    }
    assert required <= names, f"dashboard lacks {sorted(required - names)}"


def test_metric_names_parser() -> None:
    expr = 'histogram_quantile(0.95, sum by (le, set) (rate(a_bucket{set=~"$set"}[5m]))) / on (set) b:c_total'
    assert metric_names(expr) == {"a_bucket", "b:c_total"}


@pytest.fixture(scope="module")
def scraped(served_request) -> tuple[set[str], dict[str, set[str]]]:
    """Series names the live server exports, and the label names seen on each series.

    Families without samples (labelled metrics never observed) count as exported through
    their # HELP / # TYPE lines.
    """
    response = httpx.get(f"{served_request.base_url}/metrics", timeout=30)
    response.raise_for_status()
    exported: set[str] = set()
    labels: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(response.text):
        exported.update(family.name + suffix for suffix in SERIES_SUFFIXES[family.type])
        for sample in family.samples:
            exported.add(sample.name)
            labels.setdefault(sample.name, set()).update(sample.labels)
    return exported, labels


def test_dashboard_metrics_are_exported(scraped: tuple[set[str], dict[str, set[str]]]) -> None:
    exported, _ = scraped
    for expr in dashboard_expressions():
        missing = metric_names(expr) - exported
        assert not missing, f"{expr!r} names metrics the server does not export: {sorted(missing)}"


def test_dashboard_groups_by_exported_labels(scraped: tuple[set[str], dict[str, set[str]]]) -> None:
    """Labels in `by (...)` exist on the series, where the scrape has samples to show them."""
    _, labels = scraped
    assert labels.get("orthoserve_requests_total", set()) >= {"set", "task", "outcome"}
    for expr in dashboard_expressions():
        for name in metric_names(expr) & labels.keys():
            assert grouping_labels(expr) <= labels[name], f"{expr!r} groups by labels that {name} lacks"

"""Shared by the docker tests: the dashboard's PromQL, the checker binaries, a request to the test server."""

import json
import re
import shlex
import shutil
import sys
from pathlib import Path

import pytest
import yaml
from openai import OpenAI

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "orthoserve.json"
PROMETHEUS_CONFIG = DOCKER / "prometheus.yml"

PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless",
     "inf", "nan"}
)


def find_tool(name: str) -> str:
    """Path of a checker binary: on PATH or beside this interpreter (the project's venv)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if found is None:
        pytest.fail(f"{name} is not installed; hadolint comes with the dev extra, promtool and prometheus "
                    "with the Debian package prometheus")
    return found


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def dashboard_panels() -> list[dict]:
    """Every panel that shows data (rows left out, panels inside collapsed rows included)."""
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return [p for p in panels if p["type"] != "row"]


def dashboard_expressions() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template-variable queries."""
    exprs = [t["expr"] for panel in dashboard_panels() for t in panel["targets"]]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            label_values = re.fullmatch(r"label_values\((.+),\s*\w+\)", variable["query"]["query"])
            assert label_values, f"variable {variable['name']}: unexpected query {variable['query']!r}"
            exprs.append(label_values.group(1))
    return exprs


def fill_grafana_variables(expr: str, window: str = "5m") -> str:
    """The expression Prometheus gets once Grafana has filled in its range and template variables."""
    expr = re.sub(r"\$__(rate_interval|interval|range)\b", window, expr)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects (identifiers that are not functions or keywords)."""
    stripped = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)  # string literals
    stripped = re.sub(r"\{[^}]*\}", " ", stripped)  # label matchers
    stripped = re.sub(r"\[[^\]]*\]", " ", stripped)  # range selectors
    stripped = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", stripped)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", stripped):
        is_call = stripped[match.end():].lstrip().startswith("(")
        if not is_call and match.group() not in PROMQL_KEYWORDS:
            names.add(match.group())
    return names


def grouping_labels(expr: str) -> set[str]:
    labels = set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        labels.update(label.strip() for label in group.split(",") if label.strip())
    return labels


def complete_once(base_url: str) -> None:
    """One short base-model completion through the official client."""
    client = OpenAI(base_url=f"{base_url}/v1", api_key="unused")
    model = client.models.list().data[0].id
    completion = client.completions.create(model=model, prompt="hello", max_tokens=4)
    assert completion.choices[0].text is not None


class Dockerfile:
    """A single-stage Dockerfile, parsed: the ARGs before FROM, the base, and what the image carries."""

    def __init__(self, path: Path) -> None:
        self.path = path
        text = re.sub(r"\\\n", " ", path.read_text())  # line continuations
        self.instructions: list[tuple[str, str]] = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keyword, _, args = line.partition(" ")
                self.instructions.append((keyword.upper(), args.strip()))
        keywords = [keyword for keyword, _ in self.instructions]
        assert keywords.count("FROM") == 1, f"{path.name}: expected one stage"
        first_from = keywords.index("FROM")
        self.global_args = dict(_arg(args) for keyword, args in self.instructions[:first_from] if keyword == "ARG")
        self.base = self.instructions[first_from][1]

    def all(self, keyword: str) -> list[str]:
        return [args for k, args in self.instructions if k == keyword]

    def last(self, keyword: str) -> str | None:
        found = self.all(keyword)
        return found[-1] if found else None

    def expand(self, value: str, variables: dict[str, str]) -> str:
        return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: variables.get(m.group(1) or m.group(2), m.group(0)), value)

    def default_base(self) -> str:
        """The FROM image with every global ARG at its default."""
        resolved: dict[str, str] = {}
        for name, default in self.global_args.items():
            resolved[name] = self.expand(default, resolved)
        return self.expand(self.base, resolved)

    def env(self) -> dict[str, str]:
        """The image's environment, ENV instructions applied in order (values unexpanded)."""
        env: dict[str, str] = {}
        for args in self.all("ENV"):
            for pair in shlex.split(args):
                name, sep, value = pair.partition("=")
                assert sep, f"{self.path.name}: ENV {args!r} is not in KEY=VALUE form"
                env[name] = value
        return env

    def healthcheck(self) -> tuple[dict[str, str], str]:
        """(options, probe command) of the last HEALTHCHECK."""
        args = self.last("HEALTHCHECK")
        assert args, f"{self.path.name} has no HEALTHCHECK"
        options, sep, command = args.partition(" CMD ")
        assert sep, f"{self.path.name}: HEALTHCHECK without CMD"
        parsed = dict(option.removeprefix("--").split("=", 1) for option in options.split())
        return parsed, command.strip()

    def apt_packages(self) -> set[str]:
        """Packages every `apt-get install` of the RUN instructions names."""
        packages: set[str] = set()
        for run in self.all("RUN"):
            for command in re.split(r"&&|;", run):
                words = command.split()
                if words[:2] == ["apt-get", "install"]:
                    packages.update(w for w in words[2:] if not w.startswith("-"))
        return packages


def _arg(args: str) -> tuple[str, str]:
    name, _, default = args.partition("=")
    return name.strip(), default.strip()

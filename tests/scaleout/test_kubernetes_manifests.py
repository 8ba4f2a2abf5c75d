"""deploy/kubernetes/: the core resources validate with `kubernetes-validate --strict`; the custom
resources and the router configuration agree with the Deployment and with the upstream schemas'
required fields (InferencePool inference.networking.k8s.io/v1, InferenceModelRewrite llm-d.ai/v1alpha2,
EndpointPickerConfig of the llm-d router)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from router.tags import SET_NAME_PATTERN

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
CORE = ROOT / "orthoserve.yaml"


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def one(path: Path, kind: str) -> dict[str, Any]:
    (doc,) = [doc for doc in documents(path) if doc["kind"] == kind]
    return doc


def kubernetes_validate(*paths: Path) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("kubernetes-validate", path=str(Path(sys.executable).parent)) or shutil.which("kubernetes-validate")
    assert tool, "kubernetes-validate (PyPI, the dev extra) is required"
    return subprocess.run([tool, "--strict", *map(str, paths)], capture_output=True, text=True, timeout=300, check=False)


def test_core_resources_validate_strictly() -> None:
    done = kubernetes_validate(CORE)
    assert done.returncode == 0, done.stdout + done.stderr
    passed = {line.split()[-4] for line in done.stdout.splitlines() if " passed for resource " in line}
    assert passed == {"secret/orthoserve-admin", "persistentvolumeclaim/orthoserve-adapter-sets",
                      "deployment/orthoserve", "service/orthoserve"}  # fmt: skip


def test_strict_validation_rejects_an_unknown_field(tmp_path: Path) -> None:
    deployment = one(CORE, "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    broken = tmp_path / "broken.yaml"
    broken.write_text(yaml.safe_dump(deployment))
    assert kubernetes_validate(broken).returncode != 0


def test_probes_and_ports_of_the_deployment() -> None:
    (container,) = one(CORE, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["startupProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert [port["containerPort"] for port in container["ports"]] == [8000]
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert "/adapter-sets" in mounts


def test_inference_pool_selects_the_orthoserve_pods_on_the_api_port() -> None:
    pool = one(ROOT / "inferencepool.yaml", "InferencePool")
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    spec = pool["spec"]
    assert {"selector", "targetPorts"} <= spec.keys()  # required by the v1 schema
    pod_labels = one(CORE, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    assert [port["number"] for port in spec["targetPorts"]] == [8000]
    picker = spec["endpointPickerRef"]
    assert picker["name"] and picker.get("kind", "Service") == "Service" and 1 <= picker["port"]["number"] <= 65535
    assert picker["failureMode"] in ("FailOpen", "FailClose")


def test_model_rewrite_splits_one_model_between_two_set_versions() -> None:
    rewrite = one(ROOT / "inferencemodelrewrite.yaml", "InferenceModelRewrite")
    assert rewrite["apiVersion"] == "llm-d.ai/v1alpha2"
    spec = rewrite["spec"]
    assert spec["poolRef"]["name"] == one(ROOT / "inferencepool.yaml", "InferencePool")["metadata"]["name"]
    (rule,) = spec["rules"]
    assert [match["model"]["type"] for match in rule["matches"]] == ["Exact"]
    targets = rule["targets"]
    assert len(targets) == 2 and all(1 <= target["weight"] <= 1_000_000 for target in targets)
    sets = [target["modelRewrite"].split("/")[0] for target in targets]
    assert len(set(sets)) == 2 and all(SET_NAME_PATTERN.fullmatch(name) for name in sets)


def test_router_values_enable_lora_affinity_queue_and_kv_cache_scorers() -> None:
    values = yaml.safe_load((ROOT / "llm-d-router-values.yaml").read_text())["router"]
    pod_labels = one(CORE, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert values["modelServers"]["matchLabels"].items() <= pod_labels.items()
    assert values["modelServers"]["targetPorts"] == [{"number": 8000}]
    epp = values["epp"]
    config = yaml.safe_load(epp["pluginsCustomConfig"][epp["pluginsConfigFile"]])
    assert (config["apiVersion"], config["kind"]) == ("llm-d.ai/v1alpha1", "EndpointPickerConfig")
    declared = {plugin.get("name", plugin["type"]) for plugin in config["plugins"]}
    (profile,) = config["schedulingProfiles"]
    used = {entry["pluginRef"] for entry in profile["plugins"]}
    assert used <= declared
    assert {"lora-affinity-scorer", "queue-scorer", "kv-cache-utilization-scorer"} <= used
    source = next(plugin for plugin in config["plugins"] if plugin["type"] == "metrics-data-source")
    assert source["parameters"]["path"] == "/metrics"


@pytest.mark.parametrize("path", sorted(ROOT.glob("*.yaml")), ids=lambda path: path.name)
def test_every_manifest_is_yaml(path: Path) -> None:
    assert documents(path)

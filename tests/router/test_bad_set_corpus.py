"""The bad-set corpus against the real server: every case gets its own 4xx code, nothing changes, and
the resident sets answer exactly as before."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.router.bad_sets import BAD_SETS, make_bad_set

PROMPT = "The quick brown fox"
KEEPERS = ("corpus-moore", "corpus-lora")


def _answers(server) -> dict[str, str]:
    answers = {}
    for model in (server.model, f"{KEEPERS[0]}/boolq", f"{KEEPERS[0]}/piqa", f"{KEEPERS[1]}/boolq"):
        body = {"model": model, "prompt": PROMPT, "max_tokens": 8, "temperature": 0}
        response = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=120)
        assert response.status_code == 200, response.text
        answers[model] = response.json()["choices"][0]["text"]
    return answers


@pytest.fixture(scope="module")
def corpus(server, write_set) -> dict:
    """The keepers loaded, the answers they give, and the valid set every case starts from."""
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    http = httpx.Client(base_url=server.base_url, headers=headers, timeout=300)
    for name, kind in zip(KEEPERS, ("moore", "lora")):
        tasks = ("boolq", "piqa") if kind == "moore" else ("boolq",)
        path = write_set(name, kind=kind, tasks=tasks, seed=21)
        response = http.post("/v1/adapter-sets", json={"name": name, "path": str(path)})
        assert response.status_code == 201, response.text
    state = {"http": http, "valid": write_set("corpus-valid", seed=22), "before": _answers(server)}
    state["listing"] = _resident(http)
    yield state
    for name in KEEPERS:
        http.delete(f"/v1/adapter-sets/{name}", params={"wait": True})
    http.close()


def _resident(http: httpx.Client) -> list[tuple[str, int]]:
    return sorted((entry["name"], entry["version"]) for entry in http.get("/v1/adapter-sets").json()["data"])


def test_the_corpus_has_at_least_30_distinct_cases():
    assert len(BAD_SETS) >= 30
    assert len({case.code for case in BAD_SETS.values()}) >= 15


@pytest.mark.parametrize("case", sorted(BAD_SETS))
def test_a_bad_set_is_refused_with_its_code(case: str, corpus, adapter_root: Path):
    broken = make_bad_set(corpus["valid"], adapter_root / f"bad-{case}", case)
    expected = BAD_SETS[case]
    for replace in (False, True):
        name = KEEPERS[0] if replace else "corpus-bad"
        response = corpus["http"].post("/v1/adapter-sets", json={"name": name, "path": str(broken), "replace": replace})
        assert response.status_code == expected.status, response.text
        error = response.json()["error"]
        assert error["code"] == expected.code and error["message"], error
    assert _resident(corpus["http"]) == corpus["listing"]


@pytest.mark.parametrize(
    ("path", "status", "code"),
    [
        ("/etc", 403, "path_not_allowed"),
        ("../outside", 403, "path_not_allowed"),
        ("no-such-set", 422, "adapter_path_not_found"),
    ],
)
def test_bad_paths_are_refused(corpus, path: str, status: int, code: str):
    response = corpus["http"].post("/v1/adapter-sets", json={"name": "corpus-bad", "path": path})
    assert response.status_code == status and response.json()["error"]["code"] == code, response.text


def test_a_symlinked_set_folder_that_loops_is_refused(corpus, adapter_root: Path):
    loop = adapter_root / "corpus-loop"
    loop.symlink_to(loop)
    response = corpus["http"].post("/v1/adapter-sets", json={"name": "corpus-bad", "path": str(loop)})
    assert response.status_code == 403 and response.json()["error"]["code"] == "path_not_allowed", response.text


def test_residents_answer_exactly_as_before_the_corpus(server, corpus):
    assert _answers(server) == corpus["before"]
    assert _resident(corpus["http"]) == corpus["listing"]
    assert httpx.get(f"{server.base_url}/health", timeout=30).status_code == 200

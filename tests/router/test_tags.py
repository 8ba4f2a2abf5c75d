"""Task-tag parsing and task choice: every accepted form and every refusal."""

import pytest

from router.errors import AdapterSetNameInvalid, TaskNotFound, TaskRequired, TaskTagInvalid
from router.tags import TaskTag, check_set_name, choose_task, named_set, parse_tag

BASE = "org/base-model"  # a served name with a '/' is still the base model, never a set and a task


@pytest.mark.parametrize(
    ("model", "body_task", "expected"),
    [
        ("mtl", None, TaskTag("mtl", None)),
        ("mtl/boolq", None, TaskTag("mtl", "boolq")),
        ("mtl", "boolq", TaskTag("mtl", "boolq")),
        ("mtl/boolq", "boolq", TaskTag("mtl", "boolq")),
        ("mtl/a/b", None, TaskTag("mtl", "a/b")),
        (BASE, None, TaskTag(None, None)),
    ],
)
def test_parse_tag_accepts(model, body_task, expected):
    tag = parse_tag(model, body_task, BASE)
    assert tag == expected and tag.is_base == (model == BASE)


@pytest.mark.parametrize(("model", "body_task"), [("mtl/", None), ("mtl/boolq", "piqa"), ("mtl", ""), (BASE, "boolq")])
def test_parse_tag_refuses(model, body_task):
    with pytest.raises(TaskTagInvalid):
        parse_tag(model, body_task, BASE)


def test_named_set_is_what_admission_counts_under():
    assert named_set("mtl/boolq", BASE) == "mtl" and named_set("mtl", BASE) == "mtl"
    assert named_set(BASE, BASE) is None


def test_choose_task():
    tasks = ("boolq", "piqa")
    assert choose_task("mtl", tasks, False, "piqa") == 1
    assert choose_task("one", ("only",), False, None) == 0
    assert choose_task("badit", ("default",), True, None) == 0
    assert choose_task("badit", ("a", "b"), True, None) is None
    with pytest.raises(TaskRequired) as required:
        choose_task("mtl", tasks, False, None)
    assert required.value.valid_tasks == tasks
    with pytest.raises(TaskNotFound) as unknown:
        choose_task("mtl", tasks, False, "siqa")
    assert "boolq, piqa" in unknown.value.message and unknown.value.code == "task_not_found"


@pytest.mark.parametrize("name", ["", "a/b", "-x", "x" * 65, "has space", "base", "org"])
def test_check_set_name_refuses(name):
    with pytest.raises(AdapterSetNameInvalid):
        check_set_name(name, "base" if name != "org" else "org/model")


def test_check_set_name_accepts():
    check_set_name("csr-mtl_v2.1", "org/model")

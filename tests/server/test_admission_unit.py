"""The admission controller's bookkeeping, without a server."""

from __future__ import annotations

from server.admission import AdmissionController, _current_ticket, requested_set
from server.lifecycle import RequestRecord


def _record(request_id: str) -> RequestRecord:
    return RequestRecord(request_id=request_id, endpoint="completions", model="m", stream=False)


def test_total_and_per_set_limits():
    controller = AdmissionController(max_queued=3, max_queued_per_set=2)
    tickets = [controller.admit("hot"), controller.admit("hot")]
    assert controller.refusal("hot") is not None and "per set" in controller.refusal("hot")
    assert controller.refusal("cold") is None
    tickets.append(controller.admit("cold"))
    assert controller.refusal("cold") is not None and "limit 3" in controller.refusal("cold")
    tickets[0].release()
    tickets[0].release()  # idempotent
    assert controller.queued == 2 and controller.refusal("hot") is None


def test_a_ticket_is_returned_at_the_first_token_or_the_end():
    controller = AdmissionController(max_queued=1, max_queued_per_set=None)
    for event in ("on_first_token", "on_finish"):
        ticket = controller.admit("base")
        token = _current_ticket.set(ticket)
        record = _record(f"r-{event}")
        controller.on_arrival(record)
        _current_ticket.reset(token)
        assert controller.refusal("base") is not None
        getattr(controller, event)(record)
        assert ticket.released and controller.queued == 0 and controller.refusal("base") is None
        controller.on_finish(record)  # a finish after the first token changes nothing
        assert controller.queued == 0


def test_client_names_do_not_accumulate():
    controller = AdmissionController(max_queued=None, max_queued_per_set=5)
    for index in range(100):
        controller.admit(f"random-{index}").release()
    assert controller.queued == 0 and not controller._queued_per_set


def test_the_set_is_read_from_the_model_field():
    assert requested_set(b'{"model": "mtl/boolq"}', "base-model") == "mtl"
    assert requested_set(b'{"model": "mtl"}', "base-model") == "mtl"
    assert requested_set(b'{"model": "base-model"}', "base-model") == "base"
    assert requested_set(b"not json", "base-model") == "base"
    assert requested_set(b'["a list"]', "base-model") == "base"
    assert requested_set(b'{"model": 7}', "base-model") == "base"

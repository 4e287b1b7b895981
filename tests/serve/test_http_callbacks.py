"""The worker contract over real HTTP: `servo serve`'s callbacks on a loopback socket."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator

import httpx
from serve_helpers import Stage

from servo.core.builders import TaskDef


def _ledger_types(stage: Stage) -> dict[str, str]:
    """event_id -> event_type of every event in the home's ledger."""
    out = {}
    for event_id in stage.ledger.list_event_ids().event_ids:
        event = json.loads(stage.ledger.read(event_id))
        out[event["event_id"]] = event["event_type"]
    return out


def test_valid_callbacks_are_accepted_and_land_in_the_ledger(api: httpx.Client, stage: Stage) -> None:
    stage.start_run("run_1", TaskDef("extract"))
    call = stage.dispatch("run_1", "extract", 1)
    started = api.post("/v1/callbacks/started", **call)
    assert started.status_code == 200, started.text
    beat = api.post("/v1/callbacks/heartbeat", json={**call["json"], "progress_pct": 40}, headers=call["headers"])
    assert beat.status_code == 200, beat.text
    done = api.post("/v1/callbacks/finished", json={**call["json"], "outcome": "SUCCEEDED"}, headers=call["headers"])
    assert done.status_code == 200, done.text
    bodies = [started.json(), beat.json(), done.json()]
    assert all(b["accepted"] is True for b in bodies)
    types = _ledger_types(stage)
    assert [types[b["event_id"]] for b in bodies] == ["TaskStarted", "TaskHeartbeat", "TaskFinished"]
    stage.compact()  # the serve process notified the spool; the compactor folds the facts
    assert stage.tasks()["extract"]["state"] == "SUCCEEDED"
    shown = api.get("/v1/runs/run_1").json()
    assert shown["run"]["state"] == "SUCCEEDED"
    assert [(t["task_key"], t["state"]) for t in shown["tasks"]] == [("extract", "SUCCEEDED")]


def test_a_just_dispatched_attempt_is_not_refused_because_of_projection_lag(api: httpx.Client, stage: Stage) -> None:
    """The serve process refreshes its projection (and waits briefly) before calling an attempt stale."""
    stage.start_run("run_1", TaskDef("a"))
    assert api.get("/v1/runs").status_code == 200  # the server has read the projection once
    call = stage.dispatch("run_1", "a", 1, compact=False)  # appended, not yet published
    threading.Timer(0.3, stage.compact).start()
    response = api.post("/v1/callbacks/started", **call)
    assert response.status_code == 200, response.text


def test_an_old_attempt_after_a_retry_gets_409_with_a_clear_message(api: httpx.Client, stage: Stage) -> None:
    stage.start_run("run_1", TaskDef("t", max_attempts=2))
    first = stage.dispatch("run_1", "t", 1)
    assert api.post("/v1/callbacks/started", **first).status_code == 200
    failed = {**first["json"], "outcome": "FAILED", "error_message": "boom"}
    assert api.post("/v1/callbacks/finished", json=failed, headers=first["headers"]).status_code == 200
    stage.compact()
    assert stage.tasks()["t"]["state"] == "RETRY_WAIT"
    ended = api.post("/v1/callbacks/heartbeat", **first)
    assert ended.status_code == 409
    assert "attempt 1" in ended.json()["detail"] and "has already ended (task RETRY_WAIT)" in ended.json()["detail"]
    second = stage.retry("run_1", "t", 1)
    before = set(_ledger_types(stage))
    stale = api.post("/v1/callbacks/heartbeat", **first)
    assert stale.status_code == 409
    body = stale.json()
    assert body["error"] == "stale_attempt"
    assert "attempt 1" in body["detail"] and "not current" in body["detail"] and "attempt 2" in body["detail"]
    assert set(_ledger_types(stage)) == before  # nothing appended for a stale callback
    assert api.post("/v1/callbacks/started", **second).status_code == 200


def test_concurrent_finishes_of_one_attempt_accept_one_outcome_only(api: httpx.Client, stage: Stage) -> None:
    """Two holders of one attempt (a paused worker whose lease ran out) or a client's
    retries may report its finish at once. Only the first outcome is accepted; a
    report of another outcome gets 409, never "accepted" for a result that is then
    dropped as a DUPLICATE. The same outcome again is accepted (an idempotent retry)."""
    stage.start_run("run_1", TaskDef("a"))
    call = stage.dispatch("run_1", "a", 1)
    assert api.post("/v1/callbacks/started", **call).status_code == 200
    outcomes = ["FAILED", "SUCCEEDED", "FAILED", "SUCCEEDED", "SUCCEEDED", "FAILED"]
    answers: list[tuple[str, int]] = []
    gate = threading.Barrier(len(outcomes))

    def report(outcome: str) -> None:
        gate.wait(5)
        response = api.post("/v1/callbacks/finished", json={**call["json"], "outcome": outcome}, headers=call["headers"])
        answers.append((outcome, response.status_code))

    threads = [threading.Thread(target=report, args=(o,)) for o in outcomes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    accepted = {o for o, status in answers if status == 200}
    assert len(accepted) == 1, answers
    assert all(status == 409 for o, status in answers if o not in accepted), answers
    (winner,) = accepted
    stage.compact()
    assert stage.tasks()["a"]["state"] == ("SUCCEEDED" if winner == "SUCCEEDED" else "FAILED")


def test_a_forged_token_or_another_tenant_gets_403(api: httpx.Client, stage: Stage) -> None:
    stage.start_run("run_1", TaskDef("a"))
    call = stage.dispatch("run_1", "a", 1)
    before = set(_ledger_types(stage))
    forged = api.post("/v1/callbacks/started", json=call["json"], headers={"Authorization": "Bearer " + "0" * 64})
    assert forged.status_code == 403
    assert forged.json()["error"] == "forged_callback"
    other = api.post("/v1/callbacks/started", json={**call["json"], "tenant": "acme"}, headers=call["headers"])
    assert other.status_code == 403 and other.json()["error"] == "forged_callback"
    missing = api.post("/v1/callbacks/started", json=call["json"])
    assert missing.status_code == 401 and missing.json()["error"] == "missing_token"
    for raw in (b"Bearer \xc3\xa9", b"Bearer \xff" + b"0" * 63):  # not ASCII: forged, not a 500
        odd = api.post("/v1/callbacks/started", json=call["json"], headers={"Authorization": raw})  # type: ignore[dict-item]
        assert odd.status_code == 403 and odd.json()["error"] == "forged_callback", odd.text
    assert set(_ledger_types(stage)) == before


def test_malformed_bodies_get_422_with_a_json_message_never_a_500(api: httpx.Client, stage: Stage) -> None:
    stage.start_run("run_1", TaskDef("a"))
    call = stage.dispatch("run_1", "a", 1)
    headers = {**call["headers"], "Content-Type": "application/json"}
    cases = {
        "not json": b"{not json",
        "not an object": b"[1, 2]",
        "missing attempt_id": json.dumps({k: v for k, v in call["json"].items() if k != "attempt_id"}).encode(),
        "attempt as text": json.dumps({**call["json"], "attempt": "1"}).encode(),
    }
    for case, content in cases.items():
        response = api.post("/v1/callbacks/started", content=content, headers=headers)
        assert response.status_code == 422, (case, response.text)
        body = response.json()
        assert body["error"] == "invalid_request", case
        assert "Traceback" not in response.text
    missing = api.post("/v1/callbacks/started", content=cases["missing attempt_id"], headers=headers).json()
    assert "attempt_id" in missing["detail"]
    bad_outcome = api.post("/v1/callbacks/finished", json={**call["json"], "outcome": "MAYBE"}, headers=call["headers"])
    assert bad_outcome.status_code == 422 and "outcome" in bad_outcome.json()["detail"]
    bad_pct = api.post("/v1/callbacks/heartbeat", json={**call["json"], "progress_pct": 250}, headers=call["headers"])
    assert bad_pct.status_code == 422 and "progress_pct" in bad_pct.json()["detail"]
    unknown = api.post("/v1/callbacks/exploded", **call)
    assert unknown.status_code == 404 and unknown.json()["error"] == "not_found"


def test_an_oversized_or_non_utf8_body_is_refused_before_it_is_read_whole(api: httpx.Client, stage: Stage) -> None:
    """A callback body is small (error texts are cut at 4,000 characters): one of more
    than a mebibyte gets 413 at once, declared or streamed, instead of the server
    reading it all into memory; bytes that are not UTF-8 are a malformed body (422)."""
    from servo.api._http import MAX_BODY_BYTES

    stage.start_run("run_1", TaskDef("a"))
    call = stage.dispatch("run_1", "a", 1)
    headers = {**call["headers"], "Content-Type": "application/json"}
    huge = json.dumps({**call["json"], "outcome": "FAILED", "error_message": "x" * MAX_BODY_BYTES}).encode()
    declared = api.post("/v1/callbacks/finished", content=huge, headers=headers)
    assert declared.status_code == 413, declared.text
    assert declared.json()["error"] == "payload_too_large"
    assert str(MAX_BODY_BYTES) in declared.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    streamed = api.post("/v1/callbacks/finished", content=chunks(), headers=headers)
    assert streamed.status_code == 413, streamed.text
    assert streamed.json()["error"] == "payload_too_large"
    body = json.dumps(call["json"])
    for what, content in (
        ("not UTF-8", b'{"tenant": "\xff\xfe"}'),
        ("UTF-16 with a BOM", body.encode("utf-16")),
        ("UTF-16 without one", body.encode("utf-16-le")),  # json.loads would guess it
        ("nested past any sense", b"[" * 100_000 + b"]" * 100_000),
    ):
        refused = api.post("/v1/callbacks/started", content=content, headers=headers)
        assert refused.status_code == 422, (what, refused.text)
        assert refused.json()["error"] == "invalid_request", what
        assert "Traceback" not in refused.text
    missing = api.post("/v1/callbacks/started", json=call["json"])
    assert missing.status_code == 401
    metrics = api.get("/metrics").text  # every refusal is counted by its code (SPEC §6: each error a metric)
    for code in ("payload_too_large", "invalid_request", "missing_token"):
        assert f'servo_errors_total{{component="http",error_type="{code}"}}' in metrics, code
    assert set(_ledger_types(stage).values()) == {"RunTriggered", "PlanCreated", "DispatchRequested"}
    fine = api.post("/v1/callbacks/finished", json={**call["json"], "outcome": "FAILED", "error_message": "y" * 20000}, headers=call["headers"])
    assert fine.status_code == 200, fine.text


def test_health_runs_and_metrics_read_endpoints(api: httpx.Client, stage: Stage) -> None:
    stage.start_run("run_1", TaskDef("a"), TaskDef("b", ["a"]))
    health = api.get("/healthz")
    assert health.status_code == 200 and health.json()["ok"] is True
    runs = api.get("/v1/runs").json()["runs"]
    assert [(r["run_id"], r["state"]) for r in runs] == [("run_1", "RUNNING")]
    assert api.get("/v1/runs", params={"state": ["RUNNING", "FAILED"], "limit": 1}).json()["runs"] == runs
    assert api.get("/v1/runs", params={"state": "SUCCEEDED"}).json()["runs"] == []
    assert api.get("/v1/runs", params={"state": "running"}).json()["runs"] == runs  # any case, as the CLI
    for bad in ({"state": "DONE"}, {"limit": 0}, {"limit": "many"}):
        refused = api.get("/v1/runs", params=bad)
        assert refused.status_code == 422 and refused.json()["error"] == "invalid_request", (bad, refused.text)
    assert api.get("/v1/runs").json()["next"] is None  # everything fitted
    shown = api.get("/v1/runs/run_1").json()
    assert {t["task_key"]: t["state"] for t in shown["tasks"]} == {"a": "READY", "b": "BLOCKED"}
    missing = api.get("/v1/runs/run_nope")
    assert missing.status_code == 404 and missing.json()["error"] == "unknown_run"
    call = stage.dispatch("run_1", "a", 1)
    assert api.post("/v1/callbacks/started", json=call["json"], headers=call["headers"]).status_code == 200
    metrics = api.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain")
    # Servo's own registry (callback latency, errors by type), not only the process's
    assert 'servo_callback_seconds_count{callback="started"}' in metrics.text
    assert "servo_errors_total" in metrics.text and "process_" in metrics.text


def test_runs_page_through_with_the_next_cursor(api: httpx.Client, stage: Stage) -> None:
    """`limit` cuts a page; `next` names where the following page starts (`after`)."""
    for run_id in ("run_1", "run_2", "run_3", "run_4", "run_5"):
        stage.start_run(run_id, TaskDef("a"))
    everything = [r["run_id"] for r in api.get("/v1/runs").json()["runs"]]
    assert everything == ["run_5", "run_4", "run_3", "run_2", "run_1"]  # newest first
    pages: list[list[str]] = []
    after: str | None = None
    while True:
        body = api.get("/v1/runs", params={"limit": 2} | ({"after": after} if after else {})).json()
        pages.append([r["run_id"] for r in body["runs"]])
        after = body["next"]
        if after is None:
            break
    assert pages == [["run_5", "run_4"], ["run_3", "run_2"], ["run_1"]]
    exact = api.get("/v1/runs", params={"limit": 1, "after": "run_2"}).json()
    assert [r["run_id"] for r in exact["runs"]] == ["run_1"] and exact["next"] is None  # a full last page
    filtered = api.get("/v1/runs", params={"state": "RUNNING", "after": "run_4"}).json()
    assert [r["run_id"] for r in filtered["runs"]] == ["run_3", "run_2", "run_1"]
    unknown = api.get("/v1/runs", params={"after": "run_nope"})
    assert unknown.status_code == 422 and unknown.json()["error"] == "invalid_request", unknown.text
    assert "run_nope" in unknown.json()["detail"]

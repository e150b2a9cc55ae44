"""The HTTP API: roles and ownership, due process end to end, limits, one error shape.

Every test runs on SQLite and on PostgreSQL (the ``ops_url`` fixture)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from civiscore.api.app import api_spec
from tests.api_utils import ORG, P1, P2, P3, Api, days_ago, running
from tests.utils import write_csv

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def api(tmp_path: Path, ops_url: str) -> Iterator[Api]:
    with running(
        tmp_path / "home",
        ops_url,
        rate_limit_per_second=1000,
        rate_limit_burst=1000,
        max_body_bytes=200_000,
        max_batch_checks=1000,
    ) as a:
        yield a


def default(subject: str = P1, record_id: str = "C1", ref: str = "(2025)J1") -> dict[str, Any]:
    return {
        "record_id": record_id,
        "subject_id": subject,
        "kind": "court.judgment_default",
        "occurred_at": days_ago(30),
        "reference": ref,
        "quantity": 50000,
    }


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "field"}, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]  # type: ignore[no-any-return]


# -- one error shape ---------------------------------------------------------------------------


def test_every_error_has_the_one_shape(api: Api) -> None:
    c = api.client
    assert error_of(c.get("/v1/me"))["code"] == "unauthenticated"
    assert error_of(c.get("/v1/me", headers={"Authorization": "Bearer nope"}))["code"] == (
        "unauthenticated"
    )
    assert error_of(api.get("p1", "/v1/nowhere"))["code"] == "not_found"
    assert error_of(c.delete("/v1/me", headers=api.h("p1")))["code"] == "method_not_allowed"
    bad = error_of(api.post("rail", "/v1/eligibility/check", {"service": "high_speed_rail"}))
    assert bad["code"] == "invalid" and bad["field"] == "subject_id"
    bad_id = error_of(
        api.post(
            "rail", "/v1/eligibility/check", {"subject_id": "123", "service": "high_speed_rail"}
        )
    )
    assert bad_id["field"] == "subject_id" and "18" in bad_id["message"]
    big = api.post("courts", "/v1/records", {"records": [default()] * 2000})
    assert big.status_code == 413 and error_of(big)["code"] == "too_large"


def test_rate_limit_answers_429_with_retry_after(tmp_path: Path, ops_url: str) -> None:
    with running(tmp_path / "home", ops_url, rate_limit_per_second=1, rate_limit_burst=2) as a:
        codes = [a.get("p1", "/v1/me/appeals").status_code for _ in range(4)]
        assert codes[:2] == [200, 200] and codes[-1] == 429
        r = a.get("p1", "/v1/me/appeals")
        assert error_of(r)["code"] == "rate_limited" and int(r.headers["Retry-After"]) >= 1
        # Another key has its own bucket.
        assert a.get("p2", "/v1/me/appeals").status_code == 200


# -- roles × endpoints × ownership --------------------------------------------------------------

ENDPOINTS: list[tuple[str, str, Any, set[str]]] = [
    ("POST", "/v1/records", {"records": [default()]}, {"courts", "transport"}),
    ("POST", "/v1/eligibility/check", {"subject_id": P1, "service": "high_speed_rail"}, {"rail"}),
    (
        "POST",
        "/v1/eligibility/batch",
        {"subject_ids": [P1], "service": "high_speed_rail"},
        {"rail"},
    ),
    ("GET", "/v1/me", None, {"p1", "p2"}),
    ("GET", "/v1/me/accesses", None, {"p1", "p2"}),
    ("GET", "/v1/me/appeals", None, {"p1", "p2"}),
    (
        "POST",
        "/v1/me/appeals",
        {"department": "courts", "record_id": "C1", "statement": "x"},
        {"p1", "p2"},
    ),
    ("GET", "/v1/me/appeals/{appeal_id}", None, {"p1", "p2"}),
    ("GET", "/v1/appeals", None, {"reviewer"}),
    ("GET", "/v1/appeals/{appeal_id}", None, {"reviewer"}),
    (
        "POST",
        "/v1/appeals/{appeal_id}/decision",
        {"outcome": "uphold", "reason": "x"},
        {"reviewer"},
    ),
    ("GET", "/v1/audit", None, {"auditor"}),
    ("GET", "/v1/audit/verify", None, {"auditor"}),
    ("GET", "/v1/stats", None, {"auditor", "admin"}),
    ("POST", "/v1/admin/rulebooks", {"yaml": "rulebook: x"}, {"admin"}),
    ("PUT", "/v1/admin/stop-switch", {"suspended": False, "reason": "test"}, {"admin"}),
    ("GET", "/v1/admin/keys", None, {"admin"}),
    ("POST", "/v1/admin/keys", {"name": "k", "role": "auditor"}, {"admin"}),
    ("DELETE", "/v1/admin/keys/{name}", None, {"admin"}),
]
PARTIES = [
    "admin",
    "courts",
    "transport",
    "rail",
    "airline",
    "rental",
    "p1",
    "p2",
    "reviewer",
    "auditor",
]


def test_the_role_matrix_covers_every_endpoint() -> None:
    routes = {
        (method.upper(), path)
        for path, operations in api_spec()["paths"].items()
        for method in operations
        if path.startswith("/v1/")
    }
    assert routes == {(m, u) for m, u, _, _ in ENDPOINTS}


def test_every_role_is_refused_every_endpoint_it_has_no_business_with(api: Api) -> None:
    refusals = 0
    for method, url, body, allowed in ENDPOINTS:
        url = url.replace("{appeal_id}", "1").replace("{name}", "nobody")
        for party in PARTIES:
            r = api.client.request(method, url, json=body, headers=api.h(party))
            if party in allowed:
                # Admitted: whatever the answer (200, 404 for a missing appeal, 422 for a bad
                # rulebook), it is not a refusal of the role.
                assert r.status_code != 403 or (url, party) == ("/v1/records", "transport"), (
                    method,
                    url,
                    party,
                    r.text,
                )
            else:
                assert r.status_code == 403, (method, url, party, r.status_code)
                assert error_of(r)["code"] == "forbidden"
                refusals += 1
    logged = [e for e in api.service.audit.entries(limit=5000) if e.action.startswith("refused.")]
    assert len(logged) >= refusals


def test_ownership_is_enforced_and_logged(api: Api) -> None:
    # A department writing another department's records.
    r = api.post("transport", "/v1/records", {"department": "courts", "records": [default()]})
    assert r.status_code == 403 and error_of(r)["field"] == "department"
    # A department submitting a kind from another department's catalogue: rejected row.
    r = api.post("transport", "/v1/records", {"records": [default()]})
    assert r.status_code == 200 and r.json()["rejected"][0]["field"] == "kind"
    # A service asking about a service it is not registered for.
    r = api.post("rail", "/v1/eligibility/check", {"subject_id": P1, "service": "air_travel"})
    assert r.status_code == 403 and error_of(r)["field"] == "service"
    # A subject asking for another subject's appeal.
    assert api.post("courts", "/v1/records", {"records": [default(P2, "C9")]}).status_code == 200
    appeal = api.post(
        "p2",
        "/v1/me/appeals",
        {"department": "courts", "record_id": "C9", "statement": "not my debt"},
    )
    assert appeal.status_code == 201
    other = api.get("p1", f"/v1/me/appeals/{appeal.json()['id']}")
    assert other.status_code == 404 and error_of(other)["code"] == "not_found"
    # A subject appealing a record that is not theirs.
    r = api.post(
        "p1", "/v1/me/appeals", {"department": "courts", "record_id": "C9", "statement": "x"}
    )
    assert r.status_code == 404
    actions = [e.action for e in api.service.audit.entries(limit=5000)]
    assert actions.count("refused.records.submit") == 1
    assert actions.count("refused.eligibility") == 1


# -- due process end to end --------------------------------------------------------------------


def test_refusal_notice_appeal_overturn_and_outcome(api: Api) -> None:
    assert api.post("courts", "/v1/records", {"records": [default()]}).json()["accepted"] == 1
    denied = api.post(
        "rail", "/v1/eligibility/check", {"subject_id": P1, "service": "high_speed_rail"}
    )
    body = denied.json()
    assert denied.status_code == 200 and body["allowed"] is False
    assert body["reason_code"] == "listed:dishonest_judgment_debtor"
    assert '"score"' not in json.dumps(body) and "band" not in body
    (notice,) = body["notices"]
    assert notice["department"] == "courts" and notice["reference"] == "(2025)J1"
    assert "Fa Shi [2015] No. 17" in notice["legal_basis"]
    assert (
        notice["since"]
        and notice["until"]
        and notice["remedy"]
        and "Appeal by" in (notice["appeal"])
    )
    assert "free copy" in notice["free_copy"]

    me = api.get("p1", "/v1/me").json()
    assert me["band"] == "B" and [x["listing"] for x in me["listings"]] == [
        "dishonest_judgment_debtor"
    ]
    assert me["score"] == me["base"] + sum(line["points"] for line in me["lines"])
    accesses = api.get("p1", "/v1/me/accesses").json()
    assert accesses[0]["party"] == "rail" and accesses[0]["allowed"] is False

    filed = api.post(
        "p1",
        "/v1/me/appeals",
        {
            "department": "courts",
            "record_id": "C1",
            "listing": "dishonest_judgment_debtor",
            "statement": "The debt was paid in 2024.",
        },
    )
    assert filed.status_code == 201
    appeal = filed.json()
    queue = api.get("reviewer", "/v1/appeals").json()
    assert [q["id"] for q in queue] == [appeal["id"]] and queue[0]["overdue"] is False
    evidence = api.get("reviewer", f"/v1/appeals/{appeal['id']}").json()
    assert evidence["record"]["rule"] == "court.judgment_default"
    assert evidence["appeal"]["statement"] == "The debt was paid in 2024."

    decided = api.post(
        "reviewer",
        f"/v1/appeals/{appeal['id']}/decision",
        {"outcome": "overturn", "reason": "Receipt of payment verified."},
    )
    assert decided.json()["status"] == "overturned"
    allowed = api.post(
        "rail", "/v1/eligibility/check", {"subject_id": P1, "service": "high_speed_rail"}
    ).json()
    assert allowed["allowed"] is True and allowed["notices"] == []
    mine = api.get("p1", "/v1/me/appeals").json()[0]
    assert mine["status"] == "overturned" and mine["reason"] == "Receipt of payment verified."
    assert [e["event"] for e in mine["events"]] == ["filed", "overturned"]
    me = api.get("p1", "/v1/me").json()
    assert me["listings"] == [] and me["score"] == 1000
    assert any("withdrawn by record appeal-" in n["reason"] for n in me["not_counted"])
    again = api.post(
        "reviewer", f"/v1/appeals/{appeal['id']}/decision", {"outcome": "uphold", "reason": "x"}
    )
    assert again.status_code == 422


def test_a_settlement_lifts_the_restriction_at_once(api: Api) -> None:
    api.post("courts", "/v1/records", {"records": [default(P3, "C3", "J3")]})
    ask = {"subject_id": P3, "service": "high_speed_rail"}
    assert api.post("rail", "/v1/eligibility/check", ask).json()["allowed"] is False
    settled = {
        "record_id": "C4",
        "subject_id": P3,
        "kind": "court.judgment_settled",
        "occurred_at": days_ago(0),
        "reference": "J3",
    }
    assert api.post("courts", "/v1/records", {"records": [settled]}).json()["accepted"] == 1
    assert api.post("rail", "/v1/eligibility/check", ask).json()["allowed"] is True


def test_listings_expire_without_a_refresh(api: Api) -> None:
    api.post("courts", "/v1/records", {"records": [default()]})
    ask = {"subject_id": P1, "service": "high_speed_rail"}
    assert api.post("rail", "/v1/eligibility/check", ask).json()["allowed"] is False
    api.clock.advance(days=2 * 366)
    assert api.post("rail", "/v1/eligibility/check", ask).json()["allowed"] is True


def test_overdue_appeals_are_flagged_in_queue_and_stats(api: Api) -> None:
    api.post("courts", "/v1/records", {"records": [default()]})
    api.post(
        "p1",
        "/v1/me/appeals",
        {"department": "courts", "record_id": "C1", "statement": "wrong person"},
    )
    assert api.get("auditor", "/v1/stats").json()["appeals_overdue"] == 0
    api.clock.advance(days=16)
    assert api.get("reviewer", "/v1/appeals").json()[0]["overdue"] is True
    stats = api.get("auditor", "/v1/stats").json()
    assert stats["appeals_open"] == 1 and stats["appeals_overdue"] == 1


def test_stop_switch_suspends_every_adverse_decision_and_is_logged(api: Api) -> None:
    api.post("courts", "/v1/records", {"records": [default()]})
    ask = {"subject_id": P1, "service": "high_speed_rail"}
    on = api.put("admin", "/v1/admin/stop-switch", {"suspended": True, "reason": "court order"})
    assert on.json() == {"suspended": True}
    r = api.post("rail", "/v1/eligibility/check", ask).json()
    assert r["allowed"] is True and r["enforcement_suspended"] is True
    batch = api.post(
        "rail", "/v1/eligibility/batch", {"service": "high_speed_rail", "subject_ids": [P1]}
    ).json()
    assert batch["results"] == [
        {"allowed": True, "reason_code": "listed:dishonest_judgment_debtor"}
    ]
    api.put("admin", "/v1/admin/stop-switch", {"suspended": False, "reason": "order lifted"})
    assert api.post("rail", "/v1/eligibility/check", ask).json()["allowed"] is False
    actions = [e.action for e in api.service.audit.entries(limit=1000)]
    assert "stop_switch.on" in actions and "stop_switch.off" in actions


def test_batch_checks_answer_in_order_within_the_cap(api: Api) -> None:
    api.post("courts", "/v1/records", {"records": [default()]})
    r = api.post(
        "rail", "/v1/eligibility/batch", {"service": "high_speed_rail", "subject_ids": [P2, P1, P3]}
    ).json()
    assert [x["allowed"] for x in r["results"]] == [True, False, True]
    too_many = api.post(
        "rail", "/v1/eligibility/batch", {"service": "high_speed_rail", "subject_ids": [P2] * 1001}
    )
    assert too_many.status_code == 422 and error_of(too_many)["field"] == "subject_ids"


def test_benefit_services_and_organisations(api: Api) -> None:
    r = api.post(
        "rental", "/v1/eligibility/check", {"subject_id": ORG, "service": "deposit_free_rental"}
    ).json()
    assert r["allowed"] is False and r["reason_code"] == "not_granted:green_channel"


def test_rulebook_publication_is_linted(api: Api, tmp_path: Path) -> None:
    broken = (ROOT / "tests/rulebook_fixtures/broken").glob("*.yaml")
    text = next(iter(sorted(broken))).read_text()
    r = api.post("admin", "/v1/admin/rulebooks", {"yaml": text})
    assert r.status_code == 422 and error_of(r)["code"] == "rulebook_refused"
    assert error_of(r)["field"]
    demo = (ROOT / "src/civiscore/rulebook/data/demo.yaml").read_text()
    newer = demo.replace('version: "2026.1"', 'version: "2026.2"')
    r = api.post("admin", "/v1/admin/rulebooks", {"yaml": newer})
    assert r.status_code == 201 and r.json() == {"version": "2026.2"}
    assert any(e.action == "rulebook.publish" for e in api.service.audit.entries(limit=1000))


def test_keys_through_the_admin_api(api: Api) -> None:
    made = api.post(
        "admin", "/v1/admin/keys", {"name": "hotel", "role": "service", "services": ["star_hotel"]}
    )
    assert made.status_code == 201
    key = made.json()["key"]
    listed = api.get("admin", "/v1/admin/keys").json()
    assert "hotel" in {k["name"] for k in listed}
    assert all("key" not in k and "key_hash" not in k for k in listed)
    ask = {"subject_id": P1, "service": "star_hotel"}
    hdr = {"Authorization": f"Bearer {key}"}
    assert api.client.post("/v1/eligibility/check", json=ask, headers=hdr).status_code == 200
    assert api.delete("admin", "/v1/admin/keys/hotel").status_code == 204
    api.service.keys._cache.clear()
    assert api.client.post("/v1/eligibility/check", json=ask, headers=hdr).status_code == 401
    assert api.delete("admin", "/v1/admin/keys/nobody").status_code == 404
    bad = api.post("admin", "/v1/admin/keys", {"name": "x", "role": "department"})
    assert bad.status_code == 422 and "--department" in error_of(bad)["message"]


def test_auditor_verifies_the_log_and_sees_no_record_contents(api: Api) -> None:
    api.post("courts", "/v1/records", {"records": [default()]})
    api.post("rail", "/v1/eligibility/check", {"subject_id": P1, "service": "high_speed_rail"})
    report = api.get("auditor", "/v1/audit/verify").json()
    assert report["ok"] is True and report["entries"] >= 2 and report["problems"] == []
    entries = api.get("auditor", "/v1/audit?limit=500").json()
    dumped = json.dumps(entries)
    assert P1 not in dumped and "(2025)J1" not in dumped
    assert {"records.submit", "eligibility.check", "key.create"} <= {e["action"] for e in entries}


def test_the_checked_in_openapi_document_is_current() -> None:
    checked_in = json.loads((ROOT / "docs/openapi.json").read_text())
    assert checked_in == json.loads(json.dumps(api_spec())), (
        "regenerate with: civiscore openapi > docs/openapi.json"
    )


def test_a_batch_is_in_each_subjects_access_log_at_once_and_after_it_is_indexed(api: Api) -> None:
    # Batches of 32 or more are logged as one packed row and moved into the subject index
    # later; a subject's log and the statistics must not see the difference.
    api.post("courts", "/v1/records", {"records": [default()]})
    before = api.get("auditor", "/v1/stats").json()
    asked = [P2] * 20 + [P1] + [P3] * 20 + [P1]
    r = api.post(
        "rail", "/v1/eligibility/batch", {"service": "high_speed_rail", "subject_ids": asked}
    ).json()
    assert [x["allowed"] for x in r["results"]] == [s != P1 for s in asked]
    packed = api.get("p1", "/v1/me/accesses").json()
    assert [(a["service"], a["allowed"], a["reason_code"]) for a in packed] == [
        ("high_speed_rail", False, "listed:dishonest_judgment_debtor")
    ] * 2
    assert len(api.get("p2", "/v1/me/accesses").json()) == 20
    stats = api.get("auditor", "/v1/stats").json()
    assert stats["checks"] - before["checks"] == len(asked)
    assert stats["checks_denied"] - before["checks_denied"] == 2

    api.service.recorder.flush()
    assert api.get("p1", "/v1/me/accesses").json() == packed
    assert len(api.get("p2", "/v1/me/accesses", params={"limit": 5, "offset": 18}).json()) == 2
    after = api.get("auditor", "/v1/stats").json()
    assert (after["checks"], after["checks_denied"]) == (stats["checks"], stats["checks_denied"])


def test_records_ingested_beside_the_server_are_served_within_the_refresh_period(
    tmp_path: Path, ops_url: str
) -> None:
    # Records that reach the store without passing through the service's submission (here the
    # workspace's file ingest, in the server's process) are not refreshed at once; the periodic
    # refresh (`refresh_seconds`) brings them to the decisions.
    with running(tmp_path / "home", ops_url, refresh_seconds=1) as a:
        ask = {"subject_id": P1, "service": "high_speed_rail"}
        assert a.post("rail", "/v1/eligibility/check", ask).json()["allowed"] is True
        row = default()
        row["occurred_at"] = days_ago(30)
        a.service.ws.ingest("courts", write_csv(tmp_path / "courts.csv", [row]))
        deadline = time.monotonic() + 10
        while a.post("rail", "/v1/eligibility/check", ask).json()["allowed"]:
            assert time.monotonic() < deadline, "not served 10 s after ingestion"
            time.sleep(0.2)

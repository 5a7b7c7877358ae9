"""The reliability matrix: faults at each stage of a cron `run`, one table per system, each row with its expected
outcome, and for every row 0 alerts lost and 0 write-backs or containments done twice.

Outcomes: retried (the run ends clean), reconciled (a reply was lost; the vendor's own record settles what
happened, and the run ends clean), surfaced (the run lists what is pending, exits 4, and a later run completes
it once the system is back).

* Splunk (splunkd emulator): alert fetch, searches, notable write-back, HEC case record.
* Elastic (Elasticsearch + Kibana emulator): alert fetch, searches, Kibana `signals/status` write-back, Kibana
  case record. A row may inject several faults in turn at one stage (`429+503+timeout+drop`).
* EDR containment (the four vendor emulators): an approved isolation's send, its status polling and the
  vendor's confirmation.

The README's matrix is these tables; crash points (kill -9 between steps) are in test_spine_e2e.py and
test_audit.py, poison inputs in test_poison_intake.py and the guard corpora, each vendor's lost replies and
lookups by marker in test_edr_executor.py.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import EXAMPLES
from emulators.e2e_helpers import notable, security_alert, splunk_events, winlogbeat_events
from emulators.edr_common import Reply
from emulators.edr_testkit import KITS, VendorKit
from emulators.elastic import ElasticEmulator
from emulators.splunkd import SplunkdEmulator, connector_settings
from emulators.winlogbeat import index_mappings

from siemcrew.config.settings import Settings
from siemcrew.crew.models import Alert
from siemcrew.crew.operations import RunSummary, decide, investigate, propose, run
from siemcrew.crew.runtime import Runtime

ATTACK, BENIGN = "demo-2-encoded-powershell", "demo-4-procdump"
NOW = 1795392000.0
IDS = {ATTACK: "0000A1B2-E2E0-4C1A-9D5B-3F2A1C0E9B70@@notable@@0abc",
       BENIGN: "0000A1B3-E2E0-4C1A-9D5B-3F2A1C0E9B71@@notable@@1abc"}


@dataclass(frozen=True)
class Fault:
    """One row of a matrix: what the system does wrong, where, and what the run must make of it."""

    stage: str
    kind: str  # one fault, or several joined by "+" injected in turn at the same stage
    count: int
    outcome: str  # "retried" | "reconciled" | "surfaced"
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def kinds(self) -> list[str]:
        return self.kind.split("+")

    @property
    def label(self) -> str:
        where = f"{self.options['vendor']} " if "vendor" in self.options else ""
        return f"{where}{self.stage}: {self.kind} x{self.count} -> {self.outcome}"


def rows(matrix: list[Fault]) -> Any:
    return pytest.mark.parametrize("fault", matrix, ids=[f.label for f in matrix])


def settle(fault: Fault, run_once: Callable[[], RunSummary], pending: Callable[[RunSummary], list[str]],
           recover: Callable[[], None], fetched: int) -> None:
    """The row's outcome, the same for every system: retried or reconciled -> the first run ends clean; surfaced ->
    the first run names what is pending (exit 4), and once the system recovers the next run completes it."""
    first = run_once()
    assert first.fetched == fetched and first.failed == 0, first.errors  # nothing lost: every alert admitted
    if fault.outcome != "surfaced":
        assert not first.incomplete, (first.writeback_pending, first.containment_unconfirmed, first.rejected_inputs)
        return
    assert pending(first) and first.incomplete, first.as_dict()
    recover()
    second = run_once()
    assert second.fetched == 0 and not second.incomplete, (second.writeback_pending, second.containment_unconfirmed)


def assert_nothing_lost(rt: Runtime, alert_ids: list[str]) -> None:
    """Every alert has its case, no query was left failed (a retried search is evidence, not an error), and no
    write-back is left in the outbox."""
    cases = rt.cases.list()
    assert sorted(c.alert.id for c in cases) == sorted(alert_ids)
    assert [e.id for c in cases for e in c.evidence if e.status == "error"] == []
    assert not rt.outbox.pending()


# -- Splunk ---------------------------------------------------------------------------------------------------------
SPLUNK = [
    Fault("alert fetch", "status", 1, "retried", {"path": "search/v2/jobs", "code": 500}),
    Fault("alert fetch", "drop", 1, "retried", {"path": "search/v2/jobs"}),
    Fault("alert fetch", "expire", 1, "retried"),
    Fault("search", "quota", 3, "retried", {"after": 4}),
    Fault("search", "slow", 3, "retried", {"after": 6, "polls": 4}),
    Fault("search", "drop", 2, "retried", {"path": "/results", "after": 10}),
    Fault("write-back", "status", 1, "retried", {"path": "notable_update", "code": 503}),
    Fault("write-back", "lost_reply", 1, "retried", {"path": "notable_update"}),
    Fault("write-back", "status", 40, "surfaced", {"path": "notable_update", "code": 500}),
    Fault("case record", "hec_busy", 1, "retried"),
    Fault("case record", "hec_busy", 200, "surfaced"),
]


@pytest.fixture
def splunkd(tmp_path: Path) -> Iterator[SplunkdEmulator]:
    with SplunkdEmulator(splunk_events(ATTACK, BENIGN), tls=True, tls_dir=tmp_path / "tls", now=NOW) as emulator:
        emulator.load([], [notable(ATTACK, IDS[ATTACK]), notable(BENIGN, IDS[BENIGN])])
        yield emulator


@pytest.fixture(autouse=True)
def _secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {"SPLUNK_TOKEN": "test-bearer-token", "SPLUNK_HEC_TOKEN": "test-hec-token",
                       "SPLUNK_PASSWORD": "changeme"}.items():
        monkeypatch.setenv(key, value)


def _runtime(home: Path, events: list[str] | None = None, **settings: Any) -> Runtime:
    """The demo's configuration (CONTOSO inventory, policy) against the system under test; local events only when
    the EDR rows' one investigation needs them."""
    return Runtime(Settings.load(EXAMPLES / "demo.yaml", home=str(home), local={"events": events or [], "alerts": []},
                                 **settings))


@rows(SPLUNK)
def test_splunk_faults_are_retried_or_surfaced_and_nothing_is_lost_or_done_twice(
        tmp_path: Path, splunkd: SplunkdEmulator, fault: Fault) -> None:
    splunkd.fail_next(fault.kind, fault.count, **fault.options)
    splunk = connector_settings(splunkd, auth="password", username="admin")
    splunk["hec"]["ca_file"] = str(splunkd.tls.ca_file)  # type: ignore[union-attr]
    rt = _runtime(tmp_path / "home", source="splunk", splunk=splunk)

    def recover() -> None:
        for pending in splunkd.faults:
            pending.remaining = 0

    settle(fault, lambda: run(rt), lambda summary: summary.writeback_pending, recover, fetched=2)
    assert not [f for f in splunkd.faults if f.remaining and f.kind != "hec_busy"]  # every fault fired
    # every notable carries its verdict, each write-back landed once (a retry never writes twice)
    for name in (ATTACK, BENIGN):
        updates = [u for u in splunkd.notable_updates if u["ruleUIDs"] == [IDS[name]]]
        assert updates and len({u["comment"] for u in updates}) == len(updates), updates
        assert splunkd.review[IDS[name]]["status"] == ("5" if name == BENIGN else "2")
    assert_nothing_lost(rt, list(IDS.values()))


# -- Elastic --------------------------------------------------------------------------------------------------------
ELASTIC = [
    Fault("alert fetch", "429+503+timeout+drop", 1, "retried", {"server": "es", "path": ".alerts-security"}),
    Fault("search", "429+503+timeout+drop", 1, "retried", {"server": "es", "path": "logs-"}),
    Fault("write-back", "429+503+timeout+drop", 1, "retried", {"server": "kibana", "path": "signals/status"}),
    Fault("write-back", "503", 40, "surfaced", {"server": "kibana", "path": "signals/status"}),
    Fault("case record", "429+503+timeout+drop", 1, "retried", {"server": "kibana", "path": "/api/cases"}),
    Fault("case record", "503", 200, "surfaced", {"server": "kibana", "path": "/api/cases"}),
]
ELASTIC_TIMEOUT_S = 0.5
ATTACK_UUID = "9f3c0b7a1e2d4c5b8a6f0e1d2c3b4a5f" * 2


@pytest.fixture(scope="module")
def agent_events() -> list[tuple[str, str, dict[str, Any]]]:
    return winlogbeat_events(ATTACK)


@pytest.fixture
def elastic(tmp_path: Path, agent_events: list[tuple[str, str, dict[str, Any]]],
            monkeypatch: pytest.MonkeyPatch) -> Iterator[ElasticEmulator]:
    with ElasticEmulator(tls=True, cert_dir=tmp_path / "tls", timeout_delay=ELASTIC_TIMEOUT_S + 0.3) as emulator:
        for stream, doc_id, doc in agent_events:
            emulator.index(stream, [doc], ids=[doc_id], mappings=index_mappings())
        emulator.add_alerts([security_alert(ATTACK, ATTACK_UUID)])
        monkeypatch.setenv("ELASTIC_API_KEY", emulator.api_key)
        yield emulator


@rows(ELASTIC)
def test_elastic_faults_are_retried_or_surfaced_and_nothing_is_lost_or_done_twice(
        tmp_path: Path, elastic: ElasticEmulator, fault: Fault) -> None:
    where = fault.options
    for kind in fault.kinds:
        elastic.fail_next(kind, fault.count, server=where["server"], path=where["path"], retry_after="0")
    settings = {"url": elastic.es_url, "kibana_url": elastic.kibana_url, "api_key_env": "ELASTIC_API_KEY",
                "ca_file": str(elastic.ca_file), "request_timeout": ELASTIC_TIMEOUT_S, "retries": 4,
                "retry_wait": 0.01, "retry_wait_max": 0.05}
    rt = _runtime(tmp_path / "home", source="elastic", elastic=settings)

    def recover() -> None:
        with elastic.lock:
            elastic.faults.clear()

    settle(fault, lambda: run(rt), lambda summary: summary.writeback_pending, recover, fetched=1)
    assert elastic.faults == []  # every fault fired (a surfaced row's rest was cleared by the recovery)
    # the attack is acknowledged in Kibana (a repeated status is the same status: setting it is idempotent) and
    # has exactly one Kibana case, holding the alert once: a lost or refused case creation was never repeated
    statuses = [u for u in elastic.signal_status_updates if u["signal_ids"] == [ATTACK_UUID]]
    assert statuses and {u["status"] for u in statuses} == {"acknowledged"}
    kibana = [c for c in elastic.cases.values() if f"siemcrew-alert:{ATTACK_UUID}" in c["tags"]]
    assert len(kibana) == 1, kibana
    attached = [c for c in kibana[0]["comments"] if c.get("type") == "alert"]
    assert len(attached) == 1
    notes = [c["comment"] for c in kibana[0]["comments"] if c.get("type") == "user"]
    assert notes and len(set(notes)) == len(notes)
    assert_nothing_lost(rt, [ATTACK_UUID])


# -- EDR containment ------------------------------------------------------------------------------------------------
EDR = [
    Fault("send", "5xx", 1, "retried", {"vendor": "crowdstrike"}),
    Fault("send", "429", 1, "retried", {"vendor": "crowdstrike"}),  # X-RateLimit-RetryAfter, an epoch second
    Fault("send", "429", 1, "retried", {"vendor": "defender"}),  # Retry-After
    Fault("send", "lost_reply", 1, "reconciled", {"vendor": "defender"}),
    Fault("send", "lost_reply", 1, "reconciled", {"vendor": "elastic_defend"}),
    Fault("send", "lost_reply", 1, "reconciled", {"vendor": "sentinelone"}),
    Fault("status poll", "5xx", 3, "retried", {"vendor": "defender", "path": "/api/machineactions/"}),
    Fault("confirmation", "timeout", 1, "surfaced", {"vendor": "defender"}),
    Fault("send", "lost_reply+list_down", 1, "surfaced", {"vendor": "elastic_defend", "path": "/api/endpoint/action"}),
]
HOST, HOST_ID = "WS-HR-02", "a1b2c3d4e5f60718293a4b5c6d7e8f90"
STAGER = "demo-2-encoded-powershell"


def _edr_settings(kit: VendorKit, emulator: Any) -> dict[str, Any]:
    """`executor: edr` with `kit`'s vendor covering the workstations; test-sized timeouts and retries."""
    retry = {"attempts": 2, "initial_wait_s": 0.01, "max_wait_s": 0.02, "max_retry_after_s": 2.0}
    return {"executor": "edr", "edr": {"action_timeout_s": 0.3, "poll_interval_s": 0.05,
                                       kit.name: {**kit.section(emulator), "retry": retry},
                                       "coverage": [{"hosts": ["WS-*"], "vendor": kit.name}]}}


@dataclass(frozen=True)
class Investigated:
    home: Path
    case_id: str
    alert_id: str


@pytest.fixture(scope="module")
def investigated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Investigated]:
    """One real investigation of the stager on a Falcon-covered workstation, every proposal denied for now: the
    verified, escalated case that each EDR row copies and then contains (one person proposes the isolation, another
    approves it), so the rows pay for the containment, not for an investigation each."""
    kit = KITS["crowdstrike"]
    home = tmp_path_factory.mktemp("edr") / "home"
    emulator = kit.emulator()
    kit.add_host(emulator, HOST_ID, HOST)
    emulator.start()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in kit.env.items():
                patch.setenv(name, value)
            rt = _runtime(home, events=[str(EXAMPLES / "events")], **_edr_settings(kit, emulator))
            alert = Alert.model_validate_json((EXAMPLES / "alerts" / f"{STAGER}.json").read_text(encoding="utf-8"))
            case = investigate(rt, alert)
            for pending in rt.approvals.pending(case.id):
                if pending.action != "isolate_host":
                    _, case = decide(rt, case.id, pending.action, "deny", by="bob", reason="no", target=pending.target)
    finally:
        emulator.stop()
    assert case.verdict == "malicious" and case.status == "awaiting_approval", (case.verdict, case.status)
    yield Investigated(home, case.id, alert.id)


def _inject(fault: Fault, kit: VendorKit, emulator: Any) -> Callable[[], None]:
    """Set the row's faults on the vendor's emulator; returns what makes the vendor well again."""
    path = fault.options.get("path", kit.send_path)
    unavailable = Reply(503, {"error": "service unavailable"})
    for kind in fault.kinds:
        if kind == "5xx":  # refused unapplied: on the send (POST) or on the status reads (GET)
            method = "POST" if fault.stage == "send" else "GET"
            emulator.fail_next(*[unavailable] * fault.count, method=method, path_contains=path)
        elif kind == "429":  # with the vendor's own header (Falcon: X-RateLimit-RetryAfter; others: Retry-After)
            emulator.fail_next(emulator.too_many_requests(1.0), method="POST", path_contains=path)
        elif kind == "lost_reply":  # applied, then the connection closes unanswered
            emulator.lose_reply_next("POST", kit.send_path)
        elif kind == "list_down":  # the action list (and the host state built on it) down after the pre-send reads
            emulator.fail_next(*[unavailable] * 1000, after=2, method="GET", path_contains=path)
        elif kind == "timeout":  # the vendor never confirms within action_timeout_s
            emulator.lifecycle.outcome = "never"

    def recover() -> None:  # the vendor is back, and by the next run its pending actions have finished
        with emulator.lock:
            emulator.faults.clear()
        emulator.lifecycle.outcome, emulator.lifecycle.reads = "succeed", 1

    return recover


@rows(EDR)
def test_edr_containment_faults_are_retried_reconciled_or_surfaced_and_never_done_twice(
        tmp_path: Path, investigated: Investigated, fault: Fault, monkeypatch: pytest.MonkeyPatch) -> None:
    kit = KITS[fault.options["vendor"]]
    home = tmp_path / "home"
    shutil.copytree(investigated.home, home)
    emulator = kit.emulator()
    kit.add_host(emulator, HOST_ID, HOST)
    emulator.start()
    try:
        for name, value in kit.env.items():
            monkeypatch.setenv(name, value)
        recover = _inject(fault, kit, emulator)
        rt = _runtime(home, **_edr_settings(kit, emulator))
        decide(rt, investigated.case_id, "isolate_host", "approve", by="alice", reason="confirmed", target=HOST)
        settle(fault, lambda: run(rt), lambda summary: summary.containment_unconfirmed, recover, fetched=0)
        result = next(r for r in rt.cases.get(investigated.case_id).results if r.action == "isolate_host")
        assert result.state == "done" and rt.ledger.get(result.key).state == "done", result  # type: ignore[union-attr]
        applied = kit.applied(emulator)
        assert len(applied) == 1, applied  # the vendor contained the host once
        refused = fault.count if fault.stage == "send" and fault.kind in ("5xx", "429") else 0
        assert len(kit.sends(emulator)) == 1 + refused  # a send again only after one the vendor refused unapplied
        if kit.lists_actions:
            assert result.ticket == applied[0]  # the case holds the vendor's own action id
        assert_nothing_lost(rt, [investigated.alert_id])
    finally:
        emulator.stop()

"""The outbox keeps every write-back that failed until it lands (crew/outbox.py), and `run` surfaces what needs an
operator: pending write-backs and alert inputs it could not read (exit 4), never an exit 0 with nothing said."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import EXAMPLES, run_cli

from servers.postgres import StateDb
from siemcrew.crew.outbox import BACKOFF_S, Outbox


def test_a_failed_write_back_is_pending_with_a_growing_delay_until_it_lands(state_db: StateDb) -> None:
    box = Outbox(state_db.target("outbox"))
    first = box.failed("case-1:update_alert:a1", "case-1", "action", "update_alert", "a1", "HTTP 500", now=1000.0)
    assert (first.state, first.attempts, first.next_at.timestamp()) == ("pending", 1, 1000.0 + BACKOFF_S[0])
    assert box.due(now=1000.0) == [] and [i.key for i in box.due(now=1000.0 + BACKOFF_S[0])] == [first.key]
    second = box.failed(first.key, "case-1", "action", "update_alert", "a1", "HTTP 503", now=2000.0)
    assert second.attempts == 2 and second.next_at.timestamp() == 2000.0 + BACKOFF_S[1]
    assert second.last_error == "HTTP 503" and second.created_at == first.created_at
    for attempt in range(3, 12):  # the delay stops growing at the last step
        later = box.failed(first.key, "case-1", "action", "update_alert", "a1", "down", now=3000.0)
    assert later.attempts == 11 and later.next_at.timestamp() == 3000.0 + BACKOFF_S[-1]
    assert [i.key for i in box.pending("case-1")] == [first.key] and box.pending("case-2") == []
    assert box.done(first.key) and not box.done(first.key)  # landed once; nothing was waiting the second time
    assert box.pending() == [] and box.due(now=10**12) == []
    # a new failure of the same key later starts a pending item again (counting on from its attempts)
    assert box.failed(first.key, "case-1", "action", "update_alert", "a1", "again", now=4000.0).state == "pending"


def test_run_lists_alert_inputs_it_cannot_read_and_exits_4(tmp_path: Path) -> None:
    alerts = tmp_path / "alerts"
    shutil.copytree(EXAMPLES / "alerts", alerts)
    (alerts / "truncated.json").write_text('{"id": "x", "rule_name": ', encoding="utf-8")
    config = tmp_path / "siemcrew.yaml"
    config.write_text(json.dumps({"source": "local", "home": str(tmp_path / "home"), "assets_file": str(EXAMPLES / "assets.yaml"),
                                  "local": {"db": ":memory:", "events": [str(EXAMPLES / "events")], "alerts": [str(alerts)]}}),
                      encoding="utf-8")
    proc = run_cli("run", "--json", "--limit", "1", "--config", str(config), timeout=300)
    assert proc.returncode == 4, proc.stderr[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["failed"] == 0 and summary["investigated"] == 1
    assert len(summary["rejected_inputs"]) == 1 and "truncated.json" in summary["rejected_inputs"][0]
    assert "needs attention" in proc.stderr and "truncated.json" in proc.stderr


class FlakySiem:
    """The local SIEM, whose alert updates fail while `down` (as a SIEM in maintenance would answer)."""

    def __init__(self, inner: object) -> None:
        self.inner, self.down = inner, True

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def update_alert(self, alert: object, update: object) -> None:
        from siemcrew.connectors.base import ConnectorError

        if self.down:
            raise ConnectorError("local: the SIEM is in maintenance (HTTP 503)")
        self.inner.update_alert(alert, update)  # type: ignore[attr-defined]


def test_serve_sends_pending_write_backs_while_idle(tmp_path: Path) -> None:
    import time

    from siemcrew.config.settings import Settings
    from siemcrew.connectors.local.factory import local_connector
    from siemcrew.crew.models import Alert
    from siemcrew.crew.operations import investigate
    from siemcrew.crew.runtime import Runtime
    from siemcrew.service import Worker

    settings = Settings.load(EXAMPLES / "demo.yaml", home=str(tmp_path / "home"))
    siem = FlakySiem(local_connector(settings))
    rt = Runtime(settings, siem=siem)
    benign = Alert.model_validate_json((EXAMPLES / "alerts" / "demo-4-procdump.json").read_text(encoding="utf-8"))
    case = investigate(rt, benign)
    assert case.verdict == "benign" and case.status == "escalated"  # its alert could not be closed
    assert [i.action for i in rt.outbox.pending(case.id)] == ["close_alert"] and not siem.verdicts(benign.id)

    siem.down = False
    worker = Worker(rt, outbox_every_s=0.1)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while rt.outbox.pending() and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()
    assert rt.outbox.pending() == []
    assert [v["status"] for v in siem.verdicts(benign.id)] == ["closed"]
    assert rt.cases.get(case.id).status == "closed"

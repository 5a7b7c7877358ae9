"""The outbox keeps every write-back that failed until it lands (crew/outbox.py), and `run` surfaces what needs an
operator: pending write-backs and alert inputs it could not read (exit 4), never an exit 0 with nothing said."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import EXAMPLES, run_cli

from siemcrew.crew.outbox import BACKOFF_S, Outbox


def test_a_failed_write_back_is_pending_with_a_growing_delay_until_it_lands(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "outbox.db")
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

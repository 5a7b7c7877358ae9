"""Real SigmaHQ rules over real OTRF recordings must hit what the labelled alert CSV says they hit."""

from __future__ import annotations

from datetime import timedelta

import pytest
from emulators.local_data import SIGMA, labelled_alerts, recording

from siemcrew.connectors.base import ConnectorError
from siemcrew.connectors.local import EventStore, LocalConnector, rules_for_techniques, sigma_rule_index
from siemcrew.crew.models import TimeRange
from siemcrew.crew.timeutil import parse_time

# PsExec: lower-case "security" channel, 4697 + 7045 + Sysmon 1/13 + PowerShell 4103/4104.
# Fodhelper: process_creation rules that only Security 4688 events satisfy, registry and PowerShell.
DATASETS = ("SDWIN-190518210652_empire_psexec", "SDWIN-200904032946_empire_uac_fodhelper")
CASES = [(dataset, row) for dataset in DATASETS for row in labelled_alerts(dataset)]


@pytest.fixture(scope="module")
def connector() -> LocalConnector:
    store = EventStore()
    for dataset in DATASETS:
        store.load(sorted(recording(dataset).glob("*.zip")), scope=dataset)
    return LocalConnector(store)


def test_labelled_rows_exist():
    assert len(CASES) >= 25  # the CSV is the oracle; an empty parametrization would prove nothing


@pytest.mark.parametrize(("dataset", "row"), CASES, ids=[f"{d[6:18]}-{r['rule_path'].rsplit('/', 1)[-1][:-4]}" for d, r in CASES])
def test_rule_hits_match_labelled_alert(connector, dataset, row):
    rule_yaml = (SIGMA / row["rule_path"]).read_text(encoding="utf-8")
    result = connector.run_sigma(rule_yaml, limit=1000, scope=dataset)
    assert result.language == "sigma"
    assert result.query == connector.sigma_sql(rule_yaml)  # the SQL sent; the scope is the events view's
    assert result.query.startswith("SELECT * FROM events WHERE ")
    hits = sorted(e["@timestamp"] for e in result.events if e.get("host.hostname") == row["host"])
    assert len(hits) == int(row["n_events"]) >= 1
    assert (hits[0], hits[-1]) == (row["first"], row["last"])
    channel, _, event_id = row["sample_event"].rpartition("/")
    first = next(e for e in result.events if e["@timestamp"] == row["first"] and e["host.hostname"] == row["host"])
    assert first["event.code"] == event_id and first["winlog.channel"].lower() == channel.lower()


def test_time_range_and_scope_restrict_sigma(connector):
    row = next(r for r in labelled_alerts(DATASETS[1]) if r["rule_path"].endswith("proc_creation_win_uac_bypass_fodhelper.yml"))
    rule_yaml = (SIGMA / row["rule_path"]).read_text(encoding="utf-8")
    first = parse_time(row["first"])
    before = TimeRange(start=first - timedelta(hours=1), end=first - timedelta(seconds=1))
    around = TimeRange(start=first - timedelta(seconds=1), end=first + timedelta(minutes=5))
    assert connector.run_sigma(rule_yaml, time_range=before).total == 0
    assert connector.run_sigma(rule_yaml, time_range=around).total == int(row["n_events"])
    assert connector.run_sigma(rule_yaml, scope=DATASETS[0]).total == 0
    page = connector.run_sigma(rule_yaml, limit=1)
    assert len(page.events) == 1 and page.total == 2 and page.truncated


def test_unconvertible_rules_raise_connector_error_with_title(connector):
    keywords = """
title: Keyword Only Rule
id: 11111111-2222-3333-4444-555555555555
logsource: {product: windows, service: security}
detection:
    keywords: ['mimikatz']
    condition: keywords
level: high
"""
    with pytest.raises(ConnectorError, match="Keyword Only Rule"):
        connector.run_sigma(keywords)
    with pytest.raises(ConnectorError, match="not valid YAML"):
        connector.run_sigma("title: [unclosed")
    with pytest.raises(ConnectorError):
        connector.run_sigma("just a string")


def test_rule_index_by_technique():
    index = sigma_rule_index(SIGMA)
    by_id = {meta.id: meta for meta in index}
    lsass = by_id["0f920ebe-7aea-4c54-b202-9aa0c609cfe5"]
    assert lsass.title == "Potential Credential Dumping Attempt Via PowerShell"
    assert lsass.techniques == ["T1003.001"] and lsass.level == "medium"
    assert lsass.logsource == {"category": "process_access", "product": "windows"}
    assert lsass.path.endswith("proc_access_win_lsass_powershell_access.yml")
    exact = {meta.id for meta in rules_for_techniques(["T1003.001"], SIGMA)}
    parent = {meta.id for meta in rules_for_techniques(["t1003"], SIGMA)}
    assert lsass.id in exact and exact <= parent
    assert all(any(t.startswith("T1003") for t in meta.techniques) for meta in rules_for_techniques(["T1003"], SIGMA))
    assert not rules_for_techniques(["T9999"], SIGMA)
    assert sigma_rule_index(SIGMA) == index  # cached, same answer


def test_rule_index_skips_unreadable_files(tmp_path):
    (tmp_path / "bad.yml").write_text("title: [broken", encoding="utf-8")
    (tmp_path / "notarule.yml").write_text("just: data", encoding="utf-8")
    (tmp_path / "ok.yml").write_text(
        "title: Ok\nid: abc\nlogsource: {category: process_creation, product: windows}\n"
        "detection: {sel: {Image|endswith: '\\\\x.exe'}, condition: sel}\ntags: [attack.execution, attack.t1059.001]\n",
        encoding="utf-8",
    )
    index = sigma_rule_index(tmp_path)
    assert [(m.title, m.techniques, m.tactics) for m in index] == [("Ok", ["T1059.001"], ["execution"])]


def test_rule_on_a_field_no_event_carries_matches_nothing_instead_of_failing() -> None:
    from siemcrew.connectors.local.connector import LocalConnector
    from siemcrew.connectors.local.store import EventStore

    store = EventStore(":memory:")
    rule = """
title: Needs a field nobody logged
id: 2f6c8a2e-2a7e-4c55-9d7c-3b2f0a1e9f01
logsource: {product: windows, service: security}
detection:
  selection: {EventID: 4697, ServiceFileNameThatNoEventHas: '*powershell*'}
  condition: selection
level: high
"""
    connector = LocalConnector(store)
    result = connector.run_sigma(rule)
    assert result.total == 0 and result.events == []
    assert "servicefilenamethatnoeventhas" in {c.lower() for c in connector.store.columns()}

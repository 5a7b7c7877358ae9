"""Every behavioural indicator and every benign explanation against synthetic cases
(tests/data/knowledge_cases.yaml): each indicator hits its attacks and misses the benign look-alikes;
each explanation explains the genuine process and none of its spoofs (wrong folder, wrong parent,
wrong account, wrong signer, missing activity). Knowledge added to config/ without cases, or without
a source, fails here. Imports only the two interpreters (no crewAI): fast.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from siemcrew.config.settings import CONFIG_DIR
from siemcrew.crew.indicators import IndicatorSet, decoded_command
from siemcrew.crew.knowledge import Knowledge, ProcessFacts

CASES_FILE = Path(__file__).resolve().parent / "data" / "knowledge_cases.yaml"
CASES: dict[str, Any] = yaml.safe_load(CASES_FILE.read_text(encoding="utf-8"))
INDICATOR_CONFIG: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "indicators.yaml").read_text(encoding="utf-8"))
BENIGN_CONFIG: dict[str, Any] = yaml.safe_load((CONFIG_DIR / "benign.yaml").read_text(encoding="utf-8"))
INDICATORS = IndicatorSet(INDICATOR_CONFIG)
KNOWLEDGE = Knowledge(BENIGN_CONFIG)


def _cases(section: str, positive: str, negative: str) -> list[Any]:
    out = []
    for name, spec in (CASES.get(section) or {}).items():
        for kind in (positive, negative):
            for i, case in enumerate((spec or {}).get(kind) or []):
                out.append(pytest.param(name, kind, case, id=f"{name}:{kind}:{i}"))
    return out


def _event(case: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in case.items() if k != "why"}


def _facts(case: dict[str, Any]) -> ProcessFacts:
    return ProcessFacts(identity=dict(case.get("identity") or {}), parent=case.get("parent"),
                        rows=tuple(case.get("rows") or ()), signer=case.get("signer"),
                        system_account=case.get("system_account"))


def _names(hits: list[Any]) -> list[str]:
    return [h.name for h in hits]


# -- the cases -------------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "kind", "case"), _cases("indicators", "hits", "misses"))
def test_indicator_case(name: str, kind: str, case: dict[str, Any]) -> None:
    found = _names(INDICATORS.hits(_event(case)))
    why = case.get("why", "")
    if kind == "hits":
        assert name in found, f"{name} should hit {why}: {_event(case)} (hits: {found})"
    else:
        assert name not in found, f"{name} should not hit {why}: {_event(case)}"


@pytest.mark.parametrize(("name", "kind", "case"), _cases("explanations", "genuine", "spoofs"))
def test_explanation_case(name: str, kind: str, case: dict[str, Any]) -> None:
    explained = [e.name for e in KNOWLEDGE.explain(_facts(case))]
    why = case.get("why", "")
    if kind == "genuine":
        assert name in explained, f"{name} should explain {why}: {case} (explained by: {explained})"
    else:
        assert name not in explained, f"{name} must not explain the spoof {why}: {case}"


# -- every piece of knowledge is sourced and tested ------------------------------------------------
def _configured_indicators() -> dict[str, dict[str, Any]]:
    return {name: spec for group in ("malicious", "benign") for name, spec in (INDICATOR_CONFIG.get(group) or {}).items()}


def test_every_indicator_has_a_source_and_cases_both_ways() -> None:
    configured = _configured_indicators()
    cases = CASES.get("indicators") or {}
    assert configured, "no indicators configured"
    problems = []
    for name, spec in configured.items():
        if not str(spec.get("source") or "").strip():
            problems.append(f"{name}: no source")
        if "\n" in str(spec.get("source") or "").strip():
            problems.append(f"{name}: source is not one line")
        if not (cases.get(name) or {}).get("hits"):
            problems.append(f"{name}: no case that must hit")
        if not (cases.get(name) or {}).get("misses"):
            problems.append(f"{name}: no near-miss that must not hit")
    problems += [f"{name}: cases for an indicator that does not exist" for name in cases if name not in configured]
    assert not problems, "\n".join(problems)


def test_every_explanation_has_a_source_and_cases_both_ways() -> None:
    configured = BENIGN_CONFIG.get("explanations") or {}
    cases = CASES.get("explanations") or {}
    assert configured, "no explanations configured"
    problems = []
    for name, spec in configured.items():
        if not str(spec.get("source") or "").strip() or "\n" in str(spec.get("source")).strip():
            problems.append(f"{name}: no one-line source")
        if not (cases.get(name) or {}).get("genuine"):
            problems.append(f"{name}: no genuine case it must explain")
        if not (cases.get(name) or {}).get("spoofs"):
            problems.append(f"{name}: no spoof it must not explain")
    problems += [f"{name}: cases for an explanation that does not exist" for name in cases if name not in configured]
    assert not problems, "\n".join(problems)


def test_cases_are_well_formed() -> None:
    """A YAML slip (an unquoted comma in a flow mapping) would turn a value into a key with no value."""
    for section, kinds in (("indicators", ("hits", "misses")), ("explanations", ("genuine", "spoofs"))):
        for name, spec in (CASES.get(section) or {}).items():
            assert set(spec) <= set(kinds), f"{section}.{name}: unknown keys {set(spec) - set(kinds)}"
            for kind in kinds:
                for case in spec.get(kind) or []:
                    assert isinstance(case, dict) and case, f"{section}.{name}.{kind}: {case!r}"
                    if section == "indicators":
                        assert all(v not in (None, "") for v in case.values()), f"{name}: empty value in {case}"
                    else:
                        assert set(case) <= {"why", "identity", "parent", "rows", "signer", "system_account"}, case
                        assert case.get("identity"), f"{name}: a case without identity"


def test_every_indicator_and_explanation_has_conditions() -> None:
    """An indicator without conditions must match nothing (not everything); every explanation variant
    must say which process it is."""
    for indicator in INDICATORS.indicators:
        assert indicator.clauses and all(indicator.clauses), f"{indicator.name} has no conditions"
        assert not indicator.matches({}), f"{indicator.name} matches an empty event"
    for exp in KNOWLEDGE.explanations:
        assert exp.variants and all(v.process for v in exp.variants), f"{exp.name}: a variant without process"
    assert not KNOWLEDGE.explain(ProcessFacts(identity={}, parent=None)), "a process the logs say nothing about is explained"


def test_the_shipped_config_is_what_the_cases_ran_against() -> None:
    assert [i.name for i in IndicatorSet.load().indicators] == [i.name for i in INDICATORS.indicators]
    assert [e.name for e in Knowledge.load().explanations] == [e.name for e in KNOWLEDGE.explanations]


# -- decoded -EncodedCommand -----------------------------------------------------------------------
def _encoded(script: str) -> str:
    return base64.b64encode(script.encode("utf-16-le")).decode()


AMSI_BYPASS = ("$a=[Ref].Assembly.GetType('System.Management.Automation.AmsiUtils');"
               "$a.GetField('amsiInitFailed','NonPublic,Static').SetValue($null,$true)")


@pytest.mark.parametrize("template", [
    "powershell.exe -NoP -NonI -W Hidden -enc {b64}",
    "\"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe\" -EncodedCommand \"{b64}\"",
    "pwsh -e {b64}",
])
def test_encoded_command_is_decoded_and_read_as_the_script(template: str) -> None:
    event = {"process.command_line": template.format(b64=_encoded(AMSI_BYPASS))}
    assert "amsi" not in event["process.command_line"].lower()  # only the decoded script says it
    assert decoded_command(event) == AMSI_BYPASS
    names = _names(IndicatorSet(INDICATOR_CONFIG).hits(event))
    assert "amsi_or_logging_bypass" in names and "encoded_powershell" in names


def test_encoded_command_in_a_service_binary_is_decoded_too() -> None:
    event = {"service.executable": f"%COMSPEC% /b /c start /b /min powershell -nop -w hidden -enc {_encoded(AMSI_BYPASS)}"}
    assert "amsi_or_logging_bypass" in _names(INDICATORS.hits(event))


def test_a_harmless_encoded_command_is_only_hidden_not_malicious() -> None:
    script = "Get-Date | Out-File C:\\Reports\\now.txt"
    event = {"process.command_line": f"powershell.exe -enc {_encoded(script)}"}
    assert set(_names(INDICATORS.hits(event))) == {"encoded_powershell"}


def test_garbage_after_enc_decodes_to_nothing_harmful() -> None:
    event = {"process.command_line": "powershell.exe -enc AAAAAAAAAAAAAAAAAAAAAAAA"}
    assert "amsi_or_logging_bypass" not in _names(INDICATORS.hits(event))


# -- interpreter semantics -------------------------------------------------------------------------
def _single(when: dict[str, Any] | None = None, any_: list[dict[str, Any]] | None = None) -> IndicatorSet:
    spec: dict[str, Any] = {"weight": 1, "source": "test"}
    if when is not None:
        spec["when"] = when
    if any_ is not None:
        spec["any"] = any_
    return IndicatorSet({"malicious": {"t": spec}})


@pytest.mark.parametrize(("value", "expected"), [
    ("0x1410", True), ("0x1010", True), ("0x10", True), ("0x1fffff", True), (4112, True), ("16", True),
    ("0x1000", False), ("0x1400", False), (0, False), ("not a mask", False), ("", False), (None, False),
    (["0x1000", "0x1010"], True),
])
def test_bits_any_reads_the_value_as_an_integer_mask(value: Any, expected: bool) -> None:
    ind = _single(when={"access": {"bits_any": 0x10}})
    event = {} if value is None else {"access": value}
    assert bool(ind.hits(event)) is expected


def test_bits_any_with_several_bits_needs_one_of_them() -> None:
    ind = _single(when={"access": {"bits_any": "0x22"}})
    assert ind.hits({"access": "0x20"}) and ind.hits({"access": "0x2"}) and not ind.hits({"access": "0x1410"})


@pytest.mark.parametrize(("event", "expected"), [
    ({"process.executable": "C:\\Users\\Public\\x.exe"}, True),
    ({"process.executable": "C:\\Windows\\System32\\x.exe"}, False),
    ({"process.executable": "c:\\windows\\system32\\X.EXE"}, False),  # case-insensitive
    ({}, True),                                                       # absent counts as not matching
    ({"process.executable": ""}, True),
    ({"process.executable": ["C:\\Users\\Public\\x.exe", "C:\\Windows\\x.exe"]}, False),  # any value matches
])
def test_negated_field_must_not_match_and_absent_counts_as_not_matching(event: dict[str, Any], expected: bool) -> None:
    ind = _single(when={"event.code": "^10$", "!process.executable": "^c:\\\\windows\\\\"})
    assert bool(ind.hits({"event.code": "10", **event})) is expected


def test_when_needs_all_conditions_and_any_needs_one_clause() -> None:
    both = _single(when={"a": "x", "b": "y"})
    assert both.hits({"a": "x", "b": "y"}) and not both.hits({"a": "x"}) and not both.hits({"b": "y"})
    either = _single(any_=[{"a": "x"}, {"b": "y"}])
    assert either.hits({"a": "x"}) and either.hits({"b": "y"}) and not either.hits({"c": "z"})


def test_regex_conditions_search_case_insensitively() -> None:
    ind = _single(when={"cmd": "mimikatz"})
    assert ind.hits({"cmd": "C:\\x\\MIMIKATZ.exe"}) and not ind.hits({"cmd": "mimi katz"})


def test_an_indicator_without_conditions_matches_nothing() -> None:
    assert not _single().hits({"process.command_line": "anything"})
    assert not _single(when={}).hits({"process.command_line": "anything"})
    assert not IndicatorSet({"malicious": {"typo": {"weight": 5, "whn": {"a": "x"}}}}).hits({"a": "x"})


def test_weights_sum_to_malice_and_benign_indicators_do_not_count() -> None:
    ind = IndicatorSet({"malicious": {"m": {"weight": 3, "when": {"a": "x"}}},
                        "benign": {"b": {"weight": 2, "when": {"a": "x"}}}})
    assert ind.malice({"a": "x"}) == 3
    assert ind.relevance({"a": "x"}) == pytest.approx(3.2)


# -- explanation semantics -------------------------------------------------------------------------
def _knowledge(**variant: Any) -> Knowledge:
    return Knowledge({"explanations": {"e": {"source": "test", **variant}}})


SVCHOST = {"process.executable": "C:\\Windows\\System32\\svchost.exe"}


def test_parent_is_checked_only_when_the_logs_name_it() -> None:
    k = _knowledge(process={"process.executable": "svchost"}, parent={"process.executable": "services\\.exe$"})
    assert k.explain(ProcessFacts(identity=SVCHOST, parent=None))
    assert k.explain(ProcessFacts(identity=SVCHOST, parent={"process.executable": None, "process.command_line": None}))
    assert k.explain(ProcessFacts(identity=SVCHOST, parent={"process.executable": "C:\\Windows\\System32\\services.exe"}))
    assert not k.explain(ProcessFacts(identity=SVCHOST, parent={"process.executable": "C:\\Windows\\explorer.exe"}))


def test_account_and_signer_are_checked_only_when_known() -> None:
    k = _knowledge(process={"process.executable": "svchost"}, account="system", signer="^microsoft")
    assert k.explain(ProcessFacts(identity=SVCHOST, parent=None))
    assert k.explain(ProcessFacts(identity=SVCHOST, parent=None, system_account=True, signer="Microsoft Windows"))
    assert not k.explain(ProcessFacts(identity=SVCHOST, parent=None, system_account=False))
    assert not k.explain(ProcessFacts(identity=SVCHOST, parent=None, signer="Contoso Ltd"))
    person = _knowledge(process={"process.executable": "svchost"}, account="person")
    assert person.explain(ProcessFacts(identity=SVCHOST, parent=None, system_account=False))
    assert not person.explain(ProcessFacts(identity=SVCHOST, parent=None, system_account=True))


@pytest.mark.parametrize("activity", [
    {"file.path": "\\\\cabfolder\\\\"},                              # a bare clause
    {"when": {"file.path": "\\\\cabfolder\\\\"}},
    {"any": [{"file.path": "\\\\cabfolder\\\\"}, {"registry.path": "\\\\never$"}]},
])
def test_activity_needs_one_matching_row(activity: dict[str, Any]) -> None:
    k = _knowledge(process={"process.executable": "svchost"}, activity=activity)
    assert k.explain(ProcessFacts(identity=SVCHOST, parent=None, rows=({"file.path": "C:\\x"}, {"file.path": "C:\\t\\CabFolder\\a"})))
    assert not k.explain(ProcessFacts(identity=SVCHOST, parent=None, rows=({"file.path": "C:\\Users\\Public\\a.evtx"},)))
    assert not k.explain(ProcessFacts(identity=SVCHOST, parent=None))
    assert "file.path" in k.fields


def test_any_variants_are_alternatives_and_inherit_the_shared_keys() -> None:
    k = Knowledge({"explanations": {"e": {"source": "test", "account": "system", "covers": "subtree", "any": [
        {"process": {"process.executable": "\\\\a\\.exe$"}},
        {"process": {"process.executable": "\\\\b\\.exe$"}, "account": "person"}]}}})
    assert k.explain(ProcessFacts(identity={"process.executable": "C:\\a.exe"}, parent=None, system_account=True))
    assert not k.explain(ProcessFacts(identity={"process.executable": "C:\\a.exe"}, parent=None, system_account=False))
    assert k.explain(ProcessFacts(identity={"process.executable": "C:\\b.exe"}, parent=None, system_account=False))
    assert k.explanations[0].covers == "subtree"


def test_an_explanation_without_process_conditions_explains_nothing() -> None:
    assert not _knowledge(account="system").explain(ProcessFacts(identity=SVCHOST, parent=None, system_account=True))


# -- genealogy: where the ancestor walk stops ------------------------------------------------------
@pytest.mark.parametrize(("executable", "root"), [
    ("C:\\Windows\\System32\\svchost.exe", True),
    ("c:\\windows\\system32\\SERVICES.EXE", True),
    ("C:\\Windows\\explorer.exe", True),
    ("C:\\Windows\\System32\\wbem\\WmiPrvSE.exe", True),
    ("C:\\Windows\\System32\\wsmprovhost.exe", True),
    ("System", True),
    ("svchost.exe", True),                          # the logs carry only the name
    ("C:\\Windows\\System32\\cmd.exe", False),
    ("C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe", False),
    ("C:\\Users\\Public\\svchost.exe", False),      # a look-alike is no root: the walk goes on
    ("C:\\Windows\\Temp\\explorer.exe", False),
    ("C:\\Users\\Public\\wbem\\WmiPrvSE.exe", False),
    ("", False),
    (None, False),
])
def test_is_root(executable: str | None, root: bool) -> None:
    assert KNOWLEDGE.is_root(executable) is root
    assert Knowledge.load().is_root(executable) is root


@pytest.mark.parametrize(("executable", "descends"), [
    ("C:\\Windows\\System32\\services.exe", False),
    ("C:\\Windows\\System32\\svchost.exe", False),
    ("C:\\Windows\\System32\\lsass.exe", False),
    ("System", False),
    ("C:\\Windows\\explorer.exe", True),             # a root whose children can be one alert's work
    ("C:\\Windows\\System32\\wbem\\WmiPrvSE.exe", True),
    ("C:\\Windows\\System32\\cmd.exe", True),
    ("C:\\Users\\Public\\svchost.exe", True),        # a look-alike's children are traced
    (None, True),
])
def test_descends(executable: str | None, descends: bool) -> None:
    assert KNOWLEDGE.descends(executable) is descends

"""The verdict follows the alert's own causal chain (issue: verdicts that hold on unseen data).

Synthetic telemetry (tests/scenes.py) runs through the whole crew: the raw events are normalised by
the local store, the chain is traced with real queries, and the playbook brains conclude.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from scenes import T0, Scene, alert_for

from siemcrew.config.settings import Settings
from siemcrew.crew.chain import build
from siemcrew.crew.models import ProcessRef
from siemcrew.crew.operations import investigate
from siemcrew.crew.runtime import Runtime

SERVICES = r"C:\Windows\System32\services.exe"
EXPLORER = r"C:\Windows\explorer.exe"
LSASS = r"C:\Windows\System32\lsass.exe"
CMD = r"C:\Windows\System32\cmd.exe"


def _runtime(tmp_path: Path, scene: Scene) -> Runtime:
    events = scene.write(tmp_path / "events.ndjson")
    settings = Settings.load(None, home=str(tmp_path / "home"), local={"events": [str(events)]})
    return Runtime(settings)


def _accounts(case) -> set[str]:  # noqa: ANN001
    return {u.split("\\")[-1].lower() for u in case.affected_users}


def test_benign_alert_on_an_attacked_host_stays_benign_and_names_the_attack_case(tmp_path: Path) -> None:
    scene = Scene()
    explorer = scene.existing("WS-7", EXPLORER, user="CONTOSO\\dana", logon_id="0x5000")
    services = scene.existing("WS-7", SERVICES)
    lsass = scene.existing("WS-7", LSASS)
    payload = scene.spawn(explorer, T0, r"C:\Users\dana\Downloads\invoice.pdf.exe", r'"C:\Users\dana\Downloads\invoice.pdf.exe"')
    shell = scene.spawn(payload, T0 + timedelta(seconds=20), CMD, CMD)
    scene.spawn(shell, T0 + timedelta(seconds=25), r"C:\Windows\System32\whoami.exe", "whoami /groups")
    attack = scene.access(payload, lsass, T0 + timedelta(seconds=40), "0x1410")
    agent = scene.spawn(services, T0 - timedelta(hours=2), r"C:\WindowsAzure\GuestAgent_2.7.1\WaAppAgent.exe",
                        r"C:\WindowsAzure\GuestAgent_2.7.1\WaAppAgent.exe", user="NT AUTHORITY\\SYSTEM")
    collector = scene.spawn(agent, T0 + timedelta(minutes=2), r"C:\WindowsAzure\GuestAgent_2.7.1\CollectGuestLogs.exe",
                            r'"CollectGuestLogs.exe" -Mode:ga -FileName:C:\WindowsAzure\CollectGuestLogs.zip')
    background = scene.access(collector, lsass, T0 + timedelta(minutes=2, seconds=5), "0x1410")
    rt = _runtime(tmp_path, scene)

    attack_case = investigate(rt, alert_for(attack, "LSASS access", "WS-7", payload, ["T1003.001"]))
    assert attack_case.verdict == "malicious", attack_case.summary
    benign_case = investigate(rt, alert_for(background, "LSASS access", "WS-7", collector, ["T1003.001"]))
    assert benign_case.verdict == "benign", benign_case.summary
    assert benign_case.status == "closed"
    assert "WS-7" not in benign_case.affected_hosts and not benign_case.affected_users
    related = [f for f in benign_case.findings if attack_case.id in f.statement]
    assert related and related[0].kind == "context"  # linked, not inherited
    close = next(p for p in benign_case.proposals if p.action == "close_alert")
    assert attack_case.id in close.args["reason"]  # the write-back names the case that holds the attack
    # the attacker's process is context of the benign case, never part of its chain
    chain = build(benign_case)
    assert payload.guid not in {n.key for n in chain.members()}


def _push(scene: Scene, hosts: list[str], start, binary: str, name: str) -> list[dict]:  # noqa: ANN001
    """A service pushed over the network from 10.0.0.9 by svc_patch, one host after another."""
    installs = []
    for index, host in enumerate(hosts):
        at = start + timedelta(seconds=50 * index)
        logon_id = f"0x9{index:03x}{start.day:02d}"
        scene.logon(host, at, "svc_patch", logon_id, "3", source_ip="10.0.0.9")
        installs.append(scene.service_install(host, at + timedelta(seconds=1), name, binary, subject="svc_patch",
                                              subject_logon=logon_id))
        services = scene.existing(host, SERVICES)
        scene.spawn(services, at + timedelta(seconds=2), binary, binary, user="NT AUTHORITY\\SYSTEM")
    return installs


def _service_alert(event: dict, host: str):  # noqa: ANN202
    return alert_for(event, "Remote service installation", host, None, ["T1569.002"],
                     **{"service.name": event["ServiceName"], "service.executable": event["ServiceFileName"]})


def test_a_never_seen_binary_pushed_to_many_hosts_in_minutes_is_spread_not_routine(tmp_path: Path) -> None:
    scene = Scene()
    hosts = [f"WS-{i}" for i in range(1, 9)]
    installs = _push(scene, hosts, T0, r"C:\Windows\PatchSvc\patchsvc.exe", "PatchSvc")
    case = investigate(_runtime(tmp_path, scene), _service_alert(installs[4], "WS-5"))
    assert case.verdict == "malicious", case.summary
    assert "rapid_spread" in case.summary
    assert "svc_patch" in _accounts(case)


def test_the_same_push_is_routine_when_it_has_been_seen_for_days_on_many_hosts(tmp_path: Path) -> None:
    scene = Scene()
    hosts = [f"WS-{i}" for i in range(1, 9)]
    _push(scene, hosts, T0 - timedelta(days=10), r"C:\Windows\PatchSvc\patchsvc.exe", "PatchSvc")
    installs = _push(scene, hosts, T0, r"C:\Windows\PatchSvc\patchsvc.exe", "PatchSvc")
    case = investigate(_runtime(tmp_path, scene), _service_alert(installs[4], "WS-5"))
    assert case.verdict == "benign", case.summary
    assert "established_behaviour" in case.summary


def test_benign_explanations_spoofed_by_name_do_not_close(tmp_path: Path) -> None:
    scene = Scene()
    explorer = scene.existing("WS-2", EXPLORER, user="CONTOSO\\dana", logon_id="0x5000")
    services = scene.existing("WS-2", SERVICES)
    netsh = scene.existing("WS-2", r"C:\Windows\System32\netsh.exe", user="CONTOSO\\dana", logon_id="0x5000",
                           command_line="netsh trace stop")
    spoofs = [
        # a service host in the wrong folder
        scene.spawn(services, T0, r"C:\Users\Public\svchost.exe", r"C:\Users\Public\svchost.exe -k netsvcs",
                    user="NT AUTHORITY\\SYSTEM"),
        # the right path under the wrong parent, run by a person
        scene.spawn(explorer, T0 + timedelta(minutes=1), r"C:\Windows\System32\svchost.exe",
                    r"C:\Windows\System32\svchost.exe -k netsvcs"),
        # the diagnostics script name, from a user folder
        scene.spawn(netsh, T0 + timedelta(minutes=2), r"C:\Windows\System32\cscript.exe",
                    r"C:\Windows\System32\cscript.exe C:\Users\dana\gatherNetworkInfo.vbs"),
        # a cloud agent's name outside the agent's folder
        scene.spawn(services, T0 + timedelta(minutes=3), r"C:\ProgramData\Agent\WaAppAgent.exe",
                    r"C:\ProgramData\Agent\WaAppAgent.exe", user="NT AUTHORITY\\SYSTEM"),
    ]
    rt = _runtime(tmp_path, scene)
    for index, proc in enumerate(spoofs):
        event = next(e for e in scene.events if e.get("ProcessGuid") == proc.guid and e["EventID"] == 1)
        case = investigate(rt, alert_for(event, f"Suspicious process {index}", "WS-2", proc, ["T1036.005"]))
        assert case.verdict != "benign", (proc.image, proc.command_line, case.summary)

    trace = scene.existing("WS-2", r"C:\Windows\System32\netsh.exe", user="CONTOSO\\dana", logon_id="0x5000",
                           command_line="netsh trace stop")
    genuine = scene.spawn(trace, T0 + timedelta(minutes=5), r"C:\Windows\System32\cscript.exe",
                          r"C:\Windows\system32\cscript.exe C:\Windows\system32\gatherNetworkInfo.vbs")
    event = scene.events[-1]
    tmp = tmp_path / "genuine"
    tmp.mkdir()
    case = investigate(_runtime(tmp, scene), alert_for(event, "Script host", "WS-2", genuine, ["T1059.005"]))
    assert case.verdict == "benign", case.summary


def test_the_accounts_of_a_run_as_chain_and_its_explicit_credentials_are_in_scope(tmp_path: Path) -> None:
    scene = Scene()
    explorer = scene.existing("WS-4", EXPLORER, user="CONTOSO\\dana", logon_id="0x5000")
    lsass = scene.existing("WS-4", LSASS)
    runas = scene.spawn(explorer, T0, r"C:\Windows\System32\runas.exe", r"runas /user:CONTOSO\erin cmd")
    scene.explicit_credentials(runas, T0 + timedelta(seconds=1), "dana", "erin", "localhost")
    scene.logon("WS-4", T0 + timedelta(seconds=2), "erin", "0x6000", "2", source_ip="127.0.0.1",
                subject="dana", subject_logon="0x5000")
    # a bystander logs on over the network just before: not part of the chain
    scene.logon("WS-4", T0 - timedelta(seconds=30), "gina", "0x7000", "3", source_ip="10.0.0.50")
    tool = scene.spawn(runas, T0 + timedelta(seconds=3), r"C:\Users\Public\tool.exe", r"C:\Users\Public\tool.exe",
                       user="CONTOSO\\erin", logon_id="0x6000")
    scene.explicit_credentials(tool, T0 + timedelta(seconds=20), "erin", "frank", "SRV-2.contoso.local")
    dump = scene.access(tool, lsass, T0 + timedelta(seconds=30), "0x1010")
    case = investigate(_runtime(tmp_path, scene), alert_for(dump, "LSASS access", "WS-4", tool, ["T1003.001"]))
    assert case.verdict == "malicious", case.summary
    accounts = _accounts(case)
    assert {"erin", "dana", "frank"} <= accounts, accounts
    assert "gina" not in accounts
    chain = build(case)
    relations = {n.executable.split("\\")[-1].lower(): n.relation for n in chain.members()}
    assert relations.get("tool.exe") == "subject" and relations.get("runas.exe") == "ancestor"


def test_a_download_is_judged_by_what_the_downloaded_program_did(tmp_path: Path) -> None:
    scene = Scene()
    browser_parent = scene.existing("WS-3", EXPLORER, user="CONTOSO\\dana", logon_id="0x5000")
    lsass = scene.existing("WS-3", LSASS)
    browser = scene.spawn(browser_parent, T0, r"C:\Program Files (x86)\Microsoft\Edge\Application\msedge.exe",
                          r'"C:\Program Files (x86)\Microsoft\Edge\Application\msedge.exe"')
    digest = "ab" * 32
    path = r"C:\Users\dana\Downloads\update.exe"
    download = scene.file(browser, T0 + timedelta(seconds=10), path, event_id=15,
                          Hash=f"SHA1={'cd' * 20},MD5={'ef' * 16},SHA256={digest.upper()}")
    scene.file(browser, T0 + timedelta(seconds=10), path + ":Zone.Identifier", event_id=15,
               Contents="[ZoneTransfer]  ZoneId=3  HostUrl=http://203.0.113.7/update.exe")
    program = scene.spawn(browser_parent, T0 + timedelta(seconds=40), path, f'"{path}"',
                          Hashes=f"SHA1={'cd' * 20},MD5={'ef' * 16},SHA256={digest.upper()}")
    scene.access(program, lsass, T0 + timedelta(seconds=60), "0x1010")
    # the same browser also downloaded a document that nobody ran
    scene.file(browser, T0 + timedelta(seconds=90), r"C:\Users\dana\Downloads\menu.pdf", event_id=15)
    case = investigate(_runtime(tmp_path, scene), alert_for(download, "Executable downloaded", "WS-3", browser,
                                                            ["T1105"], **{"file.path": path}))
    assert case.verdict == "malicious", case.summary
    assert "lsass_memory_access" in case.summary and "dana" in _accounts(case)
    chain = build(case)
    assert any(n.relation == "descendant" and n.executable == path for n in chain.members())


def test_security_log_only_telemetry_is_linked_by_pid_and_time(tmp_path: Path) -> None:
    from scenes import security_process

    scene = Scene()
    ps = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"
    scene.events.append(security_process("WS-6", T0, 0x1a2c, ps, f"{ps} -nop -w hidden -enc SQBFAFgAIAAoAE4AZQB3AC0ATwBiAGoA",
                                         0x0f10, EXPLORER, "CONTOSO\\dana", "0x5000"))
    scene.events.append(security_process("WS-6", T0 + timedelta(seconds=5), 0x0b44, CMD, "cmd.exe /c whoami /all",
                                         0x1a2c, ps, "CONTOSO\\dana", "0x5000"))
    whoami = security_process("WS-6", T0 + timedelta(seconds=6), 0x0c10, r"C:\Windows\System32\whoami.exe",
                              "whoami /all", 0x0b44, CMD, "CONTOSO\\dana", "0x5000")
    scene.events.append(whoami)
    # an unrelated process with a reused pid, an hour earlier: not an ancestor
    scene.events.append(security_process("WS-6", T0 - timedelta(hours=1), 0x0b44, r"C:\Windows\System32\notepad.exe",
                                         "notepad.exe", 0x0f10, EXPLORER, "CONTOSO\\dana", "0x5000"))
    alert = alert_for(whoami, "Whoami", "WS-6", None, ["T1033"], **{"process.pid": 0x0c10,
                      "process.executable": r"C:\Windows\System32\whoami.exe"})
    alert.process = ProcessRef(executable=r"C:\Windows\System32\whoami.exe", pid=0x0c10)
    case = investigate(_runtime(tmp_path, scene), alert)
    chain = build(case)
    names = {n.executable.split("\\")[-1].lower(): n.relation for n in chain.members()}
    assert names.get("cmd.exe") == "ancestor" and names.get("powershell.exe") == "ancestor", names
    assert "notepad.exe" not in names
    assert case.verdict in ("malicious", "suspicious") and "encoded_powershell" in case.summary


def test_an_alert_whose_own_events_cannot_be_seen_is_escalated_as_a_data_gap(tmp_path: Path) -> None:
    scene = Scene()
    explorer = scene.existing("WS-8", EXPLORER, user="CONTOSO\\dana", logon_id="0x5000")
    tool = scene.spawn(explorer, T0, r"C:\Users\Public\tool.exe", r"C:\Users\Public\tool.exe")
    event = scene.events[-1]
    alert = alert_for(event, "Tool", "WS-8", tool, ["T1204.002"])
    alert.entities.hosts = ["LAPTOP-8"]  # the SIEM names the host differently: the searches see nothing
    case = investigate(_runtime(tmp_path, scene), alert)
    assert case.status == "escalated" and case.verdict != "benign"
    assert case.verification.status == "incomplete"
    assert any("cannot see the alert's own events" in g.detail for g in case.verification.gaps)
    assert "cannot see the alert's own events" in case.summary


def test_an_alert_without_attack_mapping_gets_its_techniques_from_its_own_events(tmp_path: Path) -> None:
    from siemcrew.crew.reasoning import effective_techniques
    from siemcrew.crew.verifier import EvidenceRequirements
    from siemcrew.config.settings import CONFIG_DIR

    scene = Scene()
    explorer = scene.existing("WS-9", EXPLORER, user="CONTOSO\\dana", logon_id="0x5000")
    lsass = scene.existing("WS-9", LSASS)
    tool = scene.spawn(explorer, T0, r"C:\Users\Public\tool.exe", r"C:\Users\Public\tool.exe")
    dump = scene.access(tool, lsass, T0 + timedelta(seconds=5), "0x1010")
    case = investigate(_runtime(tmp_path, scene), alert_for(dump, "Custom search: LSASS", "WS-9", tool, []))
    assert case.alert.techniques == []
    techniques = effective_techniques(case)
    assert "T1003.001" in techniques
    requirements = EvidenceRequirements.load(CONFIG_DIR / "evidence.yaml")
    assert requirements.category(techniques, []) == "credential_access"
    assert case.verdict == "malicious"

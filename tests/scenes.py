"""Synthetic Windows telemetry for reasoning tests: raw Sysmon / Security / System events, written the
way an NXLog or evtx-to-JSON export writes them, so the normaliser and the chain tracer see what they
would see in a customer's export. Names are generic (CONTOSO, WS-n); no dataset's names appear.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from siemcrew.crew.models import Alert, Entities, ProcessRef

SYSMON = "Microsoft-Windows-Sysmon/Operational"
T0 = datetime(2026, 3, 2, 10, 0, 0, tzinfo=timezone.utc)
DOMAIN = "CONTOSO"


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Proc:
    host: str
    guid: str
    pid: int
    image: str
    command_line: str
    user: str
    logon_id: str
    at: datetime


@dataclass
class Scene:
    events: list[dict[str, Any]] = field(default_factory=list)
    counter: int = 0x100

    def _base(self, host: str, channel: str, event_id: int, at: datetime) -> dict[str, Any]:
        return {"@timestamp": iso(at), "Hostname": f"{host}.contoso.local", "Channel": channel, "EventID": event_id}

    def existing(self, host: str, image: str, user: str = "NT AUTHORITY\\SYSTEM", logon_id: str = "0x3e7",
                 command_line: str = "") -> Proc:
        """A process that started before the data (no start event), e.g. services.exe or explorer.exe."""
        self.counter += 1
        return Proc(host, f"{{aaaaaaaa-0000-0000-{self.counter:04x}-000000000000}}", 400 + self.counter, image,
                    command_line or image, user, logon_id, T0 - timedelta(days=2))

    def spawn(self, parent: Proc, at: datetime, image: str, command_line: str, user: str | None = None,
              logon_id: str | None = None, **extra: Any) -> Proc:
        self.counter += 1
        proc = Proc(parent.host, f"{{bbbbbbbb-0000-0000-{self.counter:04x}-000000000000}}", 1000 + self.counter * 4,
                    image, command_line, user or parent.user, logon_id or parent.logon_id, at)
        event = self._base(parent.host, SYSMON, 1, at)
        event.update({"ProcessGuid": proc.guid, "ProcessId": proc.pid, "Image": image, "CommandLine": command_line,
                      "User": proc.user, "LogonId": proc.logon_id, "ParentProcessGuid": parent.guid,
                      "ParentProcessId": parent.pid, "ParentImage": parent.image,
                      "ParentCommandLine": parent.command_line, "IntegrityLevel": "High", **extra})
        self.events.append(event)
        return proc

    def access(self, source: Proc, target: Proc, at: datetime, granted: str) -> dict[str, Any]:
        event = self._base(source.host, SYSMON, 10, at)
        event.update({"SourceProcessGuid": source.guid, "SourceProcessId": source.pid,
                      "SourceImage": source.image, "TargetProcessGuid": target.guid, "TargetProcessId": target.pid,
                      "TargetImage": target.image, "GrantedAccess": granted, "SourceUser": source.user})
        self.events.append(event)
        return event

    def file(self, proc: Proc, at: datetime, path: str, event_id: int = 11, **extra: Any) -> dict[str, Any]:
        event = self._base(proc.host, SYSMON, event_id, at)
        event.update({"ProcessGuid": proc.guid, "ProcessId": proc.pid, "Image": proc.image, "TargetFilename": path,
                      "User": proc.user, **extra})
        self.events.append(event)
        return event

    def connect(self, proc: Proc, at: datetime, source_ip: str, dest_ip: str, port: int) -> dict[str, Any]:
        event = self._base(proc.host, SYSMON, 3, at)
        event.update({"ProcessGuid": proc.guid, "ProcessId": proc.pid, "Image": proc.image, "User": proc.user,
                      "Initiated": "true", "SourceIp": source_ip, "SourcePort": 50000 + self.counter,
                      "DestinationIp": dest_ip, "DestinationPort": port, "Protocol": "tcp"})
        self.counter += 1
        self.events.append(event)
        return event

    def logon(self, host: str, at: datetime, user: str, logon_id: str, logon_type: str, source_ip: str = "-",
              subject: str = "-", subject_logon: str = "0x3e7") -> dict[str, Any]:
        event = self._base(host, "Security", 4624, at)
        event.update({"TargetUserName": user, "TargetDomainName": DOMAIN, "TargetLogonId": logon_id,
                      "LogonType": logon_type, "IpAddress": source_ip, "IpPort": "0", "SubjectUserName": subject,
                      "SubjectDomainName": DOMAIN if subject != "-" else "-", "SubjectLogonId": subject_logon,
                      "LogonProcessName": "Advapi", "AuthenticationPackageName": "Negotiate"})
        self.events.append(event)
        return event

    def explicit_credentials(self, proc: Proc, at: datetime, subject: str, target_user: str,
                             target_server: str) -> dict[str, Any]:
        event = self._base(proc.host, "Security", 4648, at)
        event.update({"SubjectUserName": subject, "SubjectDomainName": DOMAIN, "SubjectLogonId": proc.logon_id,
                      "TargetUserName": target_user, "TargetDomainName": DOMAIN, "TargetServerName": target_server,
                      "ProcessId": hex(proc.pid), "ProcessName": proc.image, "IpAddress": "-"})
        self.events.append(event)
        return event

    def service_install(self, host: str, at: datetime, name: str, image_path: str, account: str = "LocalSystem",
                        subject: str = "-", subject_logon: str = "0x3e7") -> dict[str, Any]:
        event = self._base(host, "Security", 4697, at)
        event.update({"ServiceName": name, "ServiceFileName": image_path, "ServiceType": "0x10",
                      "ServiceStartType": "3", "ServiceAccount": account, "SubjectUserName": subject,
                      "SubjectDomainName": DOMAIN, "SubjectLogonId": subject_logon})
        self.events.append(event)
        return event

    def write(self, path: Path) -> Path:
        path.write_text("\n".join(json.dumps(e) for e in self.events) + "\n", encoding="utf-8")
        return path


def alert_for(event: dict[str, Any], rule: str, host: str, proc: Proc | None = None,
              techniques: list[str] | None = None, alert_id: str | None = None, **extra: Any) -> Alert:
    """The alert a SIEM would raise on one event (flat ECS event as the connector would give it)."""
    at = datetime.strptime(event["@timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    flat = {"event.code": str(event["EventID"]), "host.hostname": host}
    ref = None
    if proc is not None:
        ref = ProcessRef(executable=proc.image, command_line=proc.command_line, pid=proc.pid, entity_id=proc.guid)
        flat.update({"process.executable": proc.image, "process.pid": proc.pid, "process.entity_id": proc.guid})
    users = [proc.user] if proc is not None and "\\" in proc.user and "NT AUTHORITY" not in proc.user else []
    return Alert(id=alert_id or f"{rule}-{host}-{event['@timestamp']}", rule_name=rule, timestamp=at, first_seen=at,
                 last_seen=at, techniques=techniques or [], entities=Entities(hosts=[host], users=users),
                 process=ref, event={**flat, **extra})


def security_process(host: str, at: datetime, pid: int, image: str, command_line: str, parent_pid: int,
                     parent_image: str, user: str, logon_id: str) -> dict[str, Any]:
    """A Security 4688 event as Windows writes it: pids in hex, no entity ids."""
    name = user.split("\\")[-1]
    return {"@timestamp": iso(at), "Hostname": f"{host}.contoso.local", "Channel": "Security", "EventID": 4688,
            "NewProcessId": hex(pid), "NewProcessName": image, "CommandLine": command_line, "ProcessId": hex(parent_pid),
            "ParentProcessName": parent_image, "SubjectUserName": name, "SubjectDomainName": DOMAIN,
            "SubjectLogonId": logon_id, "TargetUserName": "-", "TargetLogonId": "0x0"}

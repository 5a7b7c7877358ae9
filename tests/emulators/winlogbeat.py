"""Raw Windows events (OTRF / NXLog JSON) as Winlogbeat 8 and the Elastic Agent index them.

Written from the vendors' definitions, independently of siemcrew's own mappings, so that the two
cannot share a mistake:
  * the beat's record (Winlogbeat `winlog` fields: channel, computer_name, event_id, event_data,
    provider, record_id, user, process; event.code, log.level, message; host.name = the agent's
    lower-case host name; XML line ends are `\\n`);
  * the ingest pipelines that then run on it: elastic/integrations
    packages/windows/data_stream/sysmon_operational/elasticsearch/ingest_pipeline/default.yml,
    packages/system/data_stream/security/elasticsearch/ingest_pipeline/{default,standard}.yml,
    elastic/beats x-pack/winlogbeat/module/powershell/ingest/powershell_operational.yml
    (System, Application, Windows PowerShell and other channels: no renames);
  * the data streams the Agent integrations write to (logs-<dataset>-default) and their mappings
    (typed ECS fields, `winlog.event_data.*` as keyword, no `.caseless` multi-fields).

Only what the pipelines do to fields an investigation reads is reproduced (renames, copies,
conversions, removals); enrichments nobody reads here (geoip, community_id, args splitting
details, ...) are left out.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any, Callable

# NXLog im_msvistalog fields that describe the record, not its EventData (plus what OTRF's
# Logstash added). A field named like one of these but holding event data is kept by NXLog as
# the field and its own value moved to `EventTypeOrignal` (Sysmon registry events). AccountName,
# Domain and AccountType are NXLog's resolution of the record's UserID: without a UserID (Security
# records have none) they are the event's own data (4778/4779 sessions).
NXLOG_METADATA = frozenset(
    "EventTime EventTimeWritten Hostname Keywords EventType SeverityValue Severity EventID SourceName ProviderGuid "
    "Version Task OpcodeValue RecordNumber ActivityID RelatedActivityID ExecutionProcessID ThreadID Channel "
    "Category Opcode Domain AccountName UserID AccountType Message EventReceivedTime SourceModuleName "
    "SourceModuleType ERROR_EVT_UNRESOLVED EventTypeOrignal Level TimeCreated EventRecordID Computer "
    "@timestamp @version host port tags _source_file".split()
)
DATASETS = {
    "microsoft-windows-sysmon/operational": "windows.sysmon_operational",
    "security": "system.security",
    "system": "system.system",
    "application": "system.application",
    "microsoft-windows-powershell/operational": "windows.powershell_operational",
    "windows powershell": "windows.powershell",
    "forwardedevents": "windows.forwarded",
}
CUSTOM_DATASET = "winlog.winlog"  # the "Custom Windows Event Logs" integration
LEVELS = {"INFO": "information", "WARNING": "warning", "ERROR": "error", "CRITICAL": "critical",
          "VERBOSE": "verbose", "DEBUG": "verbose", "AUDIT_SUCCESS": "information", "AUDIT_FAILURE": "information"}

# -- mappings (the integrations' field definitions: typed ECS fields, keyword elsewhere) ------------
_TYPED = {
    "long": ["process.pid", "process.parent.pid", "process.thread.id", "source.port", "destination.port",
             "winlog.process.pid", "winlog.process.thread.id", "winlog.version", "powershell.sequence",
             "powershell.total", "event.sequence", "process.args_count", "process.parent.args_count"],
    "ip": ["source.ip", "destination.ip", "related.ip", "host.ip", "dns.resolved_ip"],
    "date": ["@timestamp", "event.created", "event.ingested"],
    "match_only_text": ["message", "powershell.file.script_block_text"],
    "boolean": ["sysmon.file.archived", "sysmon.file.is_executable", "file.code_signature.valid",
                "file.code_signature.signed"],
}


def index_mappings() -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for kind, fields in _TYPED.items():
        for name in fields:
            node = properties
            parts = name.split(".")
            for part in parts[:-1]:
                node = node.setdefault(part, {"properties": {}})["properties"]
            node[parts[-1]] = {"type": kind}
    return {
        "date_detection": False,
        "dynamic_templates": [
            {"winlog_event_data": {"path_match": "winlog.event_data.*", "mapping": {"type": "keyword"}}},
            {"strings_as_keyword": {"match_mapping_type": "string", "mapping": {"type": "keyword", "ignore_above": 1024}}},
        ],
        "properties": properties,
    }


# -- small helpers ------------------------------------------------------------------------------------
def _moment(value: Any) -> datetime | None:
    if value in (None, ""):
        return None
    text = str(value).strip().replace(" ", "T")
    if not re.search(r"(Z|[+-]\d\d:?\d\d)$", text):
        text += "Z"
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(timezone.utc)
    except ValueError:
        return None


def _timestamp(value: Any, shift_s: float = 0.0) -> str | None:
    moment = _moment(value)
    if moment is None:
        return None
    return (moment + timedelta(seconds=shift_s)).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _lf(value: Any) -> Any:
    """XML line-end normalisation: the beat reads event data from XML, where CR LF becomes LF."""
    return value.replace("\r\n", "\n") if isinstance(value, str) else value


def _put(doc: dict[str, Any], path: str, value: Any) -> None:
    node = doc
    parts = path.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _get(doc: dict[str, Any], path: str) -> Any:
    node: Any = doc
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _basename(path: Any) -> str | None:
    text = str(path or "")
    return text.rsplit("\\", 1)[1] if "\\" in text else None


def _long(value: Any) -> int | None:
    try:
        text = str(value).strip()
        return int(text, 16) if text.lower().startswith("0x") else int(text)
    except (TypeError, ValueError):
        return None


def _audit(event_type: Any, keywords: Any) -> str | None:
    """The beat's `winlog.keywords` audit entry: from the record's keyword bits (NXLog: EventType)."""
    if event_type in ("AUDIT_SUCCESS", "AUDIT_FAILURE"):
        return "Audit Success" if event_type == "AUDIT_SUCCESS" else "Audit Failure"
    bits = _long(keywords)
    if bits is None:
        return None
    bits &= 0xFFFFFFFFFFFFFFFF
    if bits & 0x0010000000000000:
        return "Audit Failure"
    if bits & 0x0020000000000000:
        return "Audit Success"
    return None


class _Event:
    """One document under construction, with the processor verbs the pipelines use."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc

    @property
    def data(self) -> dict[str, Any]:
        return self.doc["winlog"].setdefault("event_data", {})

    @property
    def code(self) -> str:
        return str(self.doc["event"]["code"])

    def rename(self, raw: str, target: str, convert: Callable[[Any], Any] | None = None) -> None:
        value = self.data.get(raw)
        if value in (None, ""):
            return
        self.data.pop(raw)
        value = convert(value) if convert else value
        if value is not None:
            _put(self.doc, target, value)

    def copy(self, raw: str, target: str, convert: Callable[[Any], Any] | None = None) -> None:
        value = self.data.get(raw)
        if value in (None, ""):
            return
        value = convert(value) if convert else value
        if value is not None:
            _put(self.doc, target, value)

    def remove(self, *raws: str) -> None:
        for raw in raws:
            self.data.pop(raw, None)

    def names(self) -> None:
        for prefix in ("process", "process.parent"):
            executable = _get(self.doc, prefix + ".executable")
            if executable and _get(self.doc, prefix + ".name") is None and _basename(executable):
                _put(self.doc, prefix + ".name", _basename(executable))


# -- the beat ------------------------------------------------------------------------------------
def beat_record(raw: dict[str, Any], clock_error_s: float = 0.0) -> dict[str, Any]:
    """What the Winlogbeat / Agent `winlog` input emits for one raw event, before any pipeline.

    `@timestamp` is the record's SystemTime: the export's TimeCreated (or @timestamp) plus
    `clock_error_s`, how far the export's time stamps are off the Windows clock (see
    `otrf_elastic.clock_errors`).
    """
    metadata_event_type = "EventTypeOrignal" in raw
    resolved_user = bool(raw.get("UserID"))
    event_data = {
        key: _lf(str(value)) for key, value in raw.items()
        if value is not None and (
            key not in NXLOG_METADATA or (key == "EventType" and metadata_event_type)
            or (key in ("AccountName", "Domain", "AccountType") and not resolved_user)
        )
    }
    event_id = raw.get("EventID")
    computer = raw.get("Hostname") or raw.get("Computer") or ""
    severity = raw.get("EventTypeOrignal") if metadata_event_type else raw.get("EventType")
    winlog: dict[str, Any] = {
        "api": "wineventlog",
        "channel": raw.get("Channel"),
        "computer_name": computer,
        "event_id": str(event_id),
        "provider_name": raw.get("SourceName"),
        "record_id": str(raw.get("RecordNumber") or raw.get("EventRecordID") or ""),
        "event_data": event_data,
    }
    if raw.get("ProviderGuid"):
        winlog["provider_guid"] = str(raw["ProviderGuid"]).lower()
    if raw.get("ExecutionProcessID") not in (None, ""):
        winlog["process"] = {"pid": _long(raw["ExecutionProcessID"]), "thread": {"id": _long(raw.get("ThreadID"))}}
    if raw.get("Category"):
        winlog["task"] = raw["Category"]
    if raw.get("Opcode"):
        winlog["opcode"] = raw["Opcode"]
    if raw.get("Version") not in (None, ""):
        winlog["version"] = _long(raw["Version"])
    if raw.get("UserID"):
        winlog["user"] = {k: v for k, v in {"identifier": raw.get("UserID"), "name": raw.get("AccountName"),
                                            "domain": raw.get("Domain"), "type": raw.get("AccountType")}.items() if v}
    event: dict[str, Any] = {"code": str(event_id), "kind": "event", "provider": raw.get("SourceName")}
    audit = _audit(severity, raw.get("Keywords"))
    if audit:
        event["outcome"] = "success" if audit == "Audit Success" else "failure"
        winlog["keywords"] = [audit]
    doc: dict[str, Any] = {
        "@timestamp": _timestamp(raw.get("TimeCreated"), clock_error_s) or _timestamp(raw.get("@timestamp"), clock_error_s),
        "event": event,
        "host": {"name": str(computer).split(".", 1)[0].lower()},
        "log": {"level": LEVELS.get(str(raw.get("Severity") or severity or "INFO").upper(), "information")},
        "winlog": winlog,
        "ecs": {"version": "8.11.0"},
    }
    if raw.get("Message"):
        doc["message"] = _lf(raw["Message"])
    return doc


# -- packages/windows sysmon_operational default.yml -----------------------------------------------
SYSMON_EVENTS = {
    "1": (["process"], ["start"], "Process creation"), "2": (["file"], ["change"], "A process changed a file creation time"),
    "3": (["network"], ["start", "connection", "protocol"], "Network connection"),
    "4": (["process"], ["change"], "Sysmon service state changed"), "5": (["process"], ["end"], "Process terminated"),
    "6": (["driver"], ["start"], "Driver loaded"), "7": (["process"], ["change"], "Image loaded"),
    "8": (["process"], ["change"], "CreateRemoteThread"), "9": (["process"], ["access"], "RawAccessRead"),
    "10": (["process"], ["access"], "ProcessAccess"), "11": (["file"], ["creation"], "FileCreate"),
    "12": (["configuration", "registry"], ["change"], "RegistryEvent (Object create and delete)"),
    "13": (["configuration", "registry"], ["change"], "RegistryEvent (Value Set)"),
    "14": (["configuration", "registry"], ["change"], "RegistryEvent (Key and Value Rename)"),
    "15": (["file"], ["access"], "FileCreateStreamHash"), "16": (["configuration"], ["change"], "ServiceConfigurationChange"),
    "17": (["file"], ["creation"], "PipeEvent (Pipe Created)"), "18": (["file"], ["access"], "PipeEvent (Pipe Connected)"),
    "19": (["process"], ["info"], "WmiEvent (WmiEventFilter activity detected)"),
    "20": (["process"], ["change"], "WmiEvent (WmiEventConsumer activity detected)"),
    "21": (["process"], ["access"], "WmiEvent (WmiEventConsumerToFilter activity detected)"),
    "22": (["network"], ["connection", "protocol", "info"], "DNSEvent (DNS query)"),
    "23": (["file"], ["deletion"], "FileDelete (File Delete archived)"), "25": (["process"], ["change"], "ProcessTampering (Process image change)"),
    "26": (["file"], ["deletion"], "FileDeleteDetected (File Delete logged)"),
}
_HIVES = {"HKEY_CLASSES_ROOT": "HKCR", "HKCR": "HKCR", "HKEY_CURRENT_CONFIG": "HKCC", "HKCC": "HKCC", "HKEY_CURRENT_USER": "HKCU",
          "HKCU": "HKCU", "HKEY_LOCAL_MACHINE": "HKLM", "HKLM": "HKLM", "HKEY_USERS": "HKU", "HKU": "HKU"}


def _hashes(text: Any) -> dict[str, str]:
    out = {}
    for part in str(text).split(","):
        key, sep, value = part.partition("=")
        if sep and value.strip() and not re.fullmatch(r"0*", value.strip()):
            out[key.strip().lower()] = value.strip().lower()
    return out


def _registry(e: _Event) -> None:
    path = e.data.get("TargetObject")
    if not path or e.code not in ("12", "13", "14"):
        return
    registry: dict[str, Any] = {"path": path}
    tokens = path.split("\\")
    if tokens[0] in _HIVES:
        registry["hive"] = _HIVES[tokens[0]]
        if len(tokens) > 1:
            registry["key"] = "\\".join(tokens[1:])
    registry["value"] = tokens[-1]
    details = e.data.get("Details")
    if details:
        dword = re.fullmatch(r"(?i)DWORD \((0x[0-9A-F]{8})\)", details)
        qword = re.fullmatch(r"(?i)QWORD \(((0x[0-9A-F]{8})-(0x[0-9A-F]{8}))\)", details)
        if qword:
            registry["data"] = {"strings": [str((int(qword.group(2), 16) << 8) + int(qword.group(3), 16))], "type": "SZ_QWORD"}
        elif dword:
            registry["data"] = {"strings": [str(int(dword.group(1), 16))], "type": "SZ_DWORD"}
        elif details == "Binary Data":
            registry["data"] = {"strings": [details], "type": "REG_BINARY"}
        else:
            registry["data"] = {"strings": [details], "type": "REG_SZ"}
    e.doc["registry"] = registry


def sysmon_pipeline(e: _Event) -> None:
    for key in [k for k, v in e.data.items() if v in ("", "-", "{00000000-0000-0000-0000-000000000000}")]:
        e.data.pop(key)
    stamp = _timestamp(e.data.get("UtcTime"))
    if stamp:
        e.doc["@timestamp"] = stamp
    category = SYSMON_EVENTS.get(e.code)
    if category:
        e.doc["event"].update(category=category[0], type=category[1], action=category[2])
    e.rename("RuleName", "rule.name")
    if "Hash" in e.data and "Hashes" not in e.data:
        e.data["Hashes"] = e.data.pop("Hash")
    hashes = _hashes(e.data["Hashes"]) if e.data.get("Hashes") else {}
    if hashes:
        e.doc["related"] = {"hash": list(hashes.values())}
    if hashes and e.code in ("1", "23", "24", "25"):
        imphash = hashes.pop("imphash", None)
        e.doc.setdefault("process", {})["hash"] = hashes
        if imphash:
            _put(e.doc, "process.pe.imphash", imphash)
    e.rename("ProcessGuid", "process.entity_id")
    e.copy("ProcessId", "process.pid", _long)
    e.rename("Image", "process.executable")
    e.rename("SourceProcessGuid", "process.entity_id")
    e.rename("SourceProcessGUID", "process.entity_id")
    e.copy("SourceProcessId", "process.pid", _long)
    e.copy("SourceThreadId", "process.thread.id", _long)
    e.rename("SourceImage", "process.executable")
    e.rename("Destination", "process.executable")
    e.rename("CommandLine", "process.command_line")
    e.rename("CurrentDirectory", "process.working_directory")
    e.rename("ParentProcessGuid", "process.parent.entity_id")
    e.copy("ParentProcessId", "process.parent.pid", _long)
    e.rename("ParentImage", "process.parent.executable")
    e.rename("ParentCommandLine", "process.parent.command_line")
    pe = "file.pe" if e.code == "7" else "process.pe"
    e.rename("OriginalFileName", pe + ".original_file_name")
    for raw, target in (("Company", "company"), ("Description", "description"), ("FileVersion", "file_version"), ("Product", "product")):
        e.copy(raw, f"{pe}.{target}")
    e.names()
    if hashes and e.code in ("6", "7", "15", "26", "29"):
        imphash = hashes.pop("imphash", None)
        e.doc.setdefault("file", {})["hash"] = hashes
        if imphash:
            _put(e.doc, "file.pe.imphash", imphash)
    for raw in ("TargetFilename", "Device"):
        e.rename(raw, "file.path")
    e.rename("PipeName", "file.name")
    e.rename("ImageLoaded", "file.path")
    e.copy("Signature", "file.code_signature.subject_name")
    e.copy("SignatureStatus", "file.code_signature.status")
    if e.data.get("SignatureStatus") == "Valid":
        _put(e.doc, "file.code_signature.valid", True)
    path = _get(e.doc, "file.path")
    if path and "\\" in path:
        _put(e.doc, "file.name", path.rsplit("\\", 1)[1])
        _put(e.doc, "file.directory", path.rsplit("\\", 1)[0])
    e.rename("Protocol", "network.transport")
    if e.code != "22":
        e.rename("DestinationPortName", "network.protocol")
        e.rename("SourcePortName", "network.protocol")
    else:
        _put(e.doc, "network.protocol", "dns")
    e.copy("SourceIp", "source.ip")
    e.rename("SourceHostname", "source.domain")
    e.copy("SourcePort", "source.port", _long)
    e.copy("DestinationIp", "destination.ip")
    e.rename("DestinationHostname", "destination.domain")
    e.copy("DestinationPort", "destination.port", _long)
    e.rename("QueryName", "dns.question.name")
    initiated = e.data.get("Initiated")
    if initiated in ("true", "false"):
        _put(e.doc, "network.direction", "egress" if initiated == "true" else "ingress")
    if e.data.get("SourceIsIpv6") in ("true", "false"):
        _put(e.doc, "network.type", "ipv6" if e.data["SourceIsIpv6"] == "true" else "ipv4")
    identifier = _get(e.doc, "winlog.user.identifier")
    if identifier:
        _put(e.doc, "user.id", identifier)
    parts = str(e.data.get("User") or "").split("\\")
    if len(parts) == 2:
        _put(e.doc, "user.domain", parts[0])
        _put(e.doc, "user.name", parts[1])
    e.rename("QueryStatus", "sysmon.dns.status")
    e.rename("Archived", "sysmon.file.archived", lambda v: str(v).lower() == "true")
    e.rename("IsExecutable", "sysmon.file.is_executable", lambda v: str(v).lower() == "true")
    _registry(e)
    if "TargetProcessGuid" in e.data:
        e.data["TargetProcessGUID"] = e.data.pop("TargetProcessGuid")
    e.remove("ProcessId", "ParentProcessId", "SourceProcessId", "SourceThreadId", "SourceIp", "SourcePort", "SourcePortName",
             "DestinationIp", "DestinationPort", "DestinationPortName", "RuleName", "User", "Initiated", "SourceIsIpv6",
             "DestinationIsIpv6", "QueryStatus", "Archived", "IsExecutable", "QueryResults", "UtcTime", "Hash", "Hashes",
             "TargetObject")


# -- packages/system security standard.yml + default.yml -----------------------------------------------
SECURITY_EVENTS = {
    "1102": (["iam"], "audit-log-cleared"), "4624": (["authentication"], "logged-in"), "4625": (["authentication"], "logon-failed"),
    "4634": (["authentication"], "logged-out"), "4647": (["authentication"], "logged-out"),
    "4648": (["authentication"], "logged-in-explicit"), "4657": (["registry", "configuration"], "registry-value-modified"),
    "4670": (["iam", "configuration"], "permissions-changed"), "4672": (["iam"], "logged-in-special"),
    "4673": (["iam"], "privileged-service-called"), "4674": (["iam"], "privileged-operation"),
    "4688": (["process"], "created-process"), "4689": (["process"], "exited-process"),
    "4697": (["iam", "configuration"], "service-installed"), "4698": (["iam", "configuration"], "scheduled-task-created"),
    "4699": (["iam", "configuration"], "scheduled-task-deleted"), "4700": (["iam", "configuration"], "scheduled-task-enabled"),
    "4701": (["iam", "configuration"], "scheduled-task-disabled"), "4702": (["iam", "configuration"], "scheduled-task-updated"),
    "4720": (["iam"], "added-user-account"), "4722": (["iam"], "enabled-user-account"), "4724": (["iam"], "reset-password"),
    "4728": (["iam"], "added-member-to-group"), "4732": (["iam"], "added-member-to-group"),
    "4768": (["authentication"], "kerberos-authentication-ticket-requested"),
    "4769": (["authentication"], "kerberos-service-ticket-requested"), "4770": (["authentication"], "kerberos-service-ticket-renewed"),
    "4771": (["authentication"], "kerberos-preauth-failed"), "4776": (["authentication"], "credential-validated"),
    "4778": (["authentication", "session"], "session-reconnected"), "4779": (["authentication", "session"], "session-disconnected"),
    "4798": (["iam"], "group-membership-enumerated"), "4799": (["iam"], "user-member-enumerated"),
    "5140": (["network", "file"], "network-share-object-accessed"), "5145": (["network", "file"], "network-share-object-access-checked"),
}
LOGON_TYPES = {"2": "Interactive", "3": "Network", "4": "Batch", "5": "Service", "7": "Unlock", "8": "NetworkCleartext",
               "9": "NewCredentials", "10": "RemoteInteractive", "11": "CachedInteractive"}
COPY_TARGET_USER = {"4624", "4625", "4634", "4647", "4648", "4768", "4769", "4770", "4771", "4776", "4964"}
COPY_SUBJECT_USER = set(
    "4657 4670 4672 4673 4674 4688 4689 4697 4698 4699 4700 4701 4702 4706 4707 4713 4716 4717 4718 4719 4720 4722 4723 "
    "4724 4725 4726 4727 4728 4729 4730 4731 4732 4733 4734 4735 4737 4738 4739 4740 4741 4742 4743 4744 4745 4746 4747 "
    "4748 4749 4750 4751 4752 4753 4754 4755 4756 4757 4758 4759 4760 4761 4762 4763 4764 4767 4781 4798 4799 4817 4904 "
    "4905 4907 4912 4648 5140 5145".split()
)
RENAME_COMMON_AUTH = set(
    "1100 1102 1104 1105 1108 4624 4648 4625 4670 4673 4674 4689 4697 4719 4720 4722 4723 4724 4725 4726 4727 4728 4729 "
    "4730 4731 4732 4733 4734 4735 4737 4738 4740 4741 4742 4743 4744 4745 4746 4747 4748 4749 4750 4751 4752 4753 4754 "
    "4755 4756 4757 4758 4759 4760 4761 4762 4763 4764 4767 4768 4769 4770 4771 4798 4799 4817 4904 4905 4907 4912 5140 "
    "5145".split()
)


def security_pipeline(e: _Event) -> None:
    category = SECURITY_EVENTS.get(e.code)
    if category:
        e.doc["event"].update(category=category[0], action=category[1])
    logon_type = LOGON_TYPES.get(str(e.data.get("LogonType")))
    if logon_type:
        _put(e.doc, "winlog.logon.type", logon_type)
    if e.data.get("ServiceName"):
        _put(e.doc, "service.name", e.data["ServiceName"])
    if e.code in ("4778", "4779"):
        e.copy("AccountName", "user.name")
        e.copy("AccountDomain", "user.domain")
        if e.data.get("ClientAddress") not in (None, "-"):
            e.copy("ClientAddress", "source.ip")
        e.copy("ClientName", "source.domain")
        e.copy("LogonID", "winlog.logon.id")
    if e.code in COPY_TARGET_USER:
        sid = e.data.get("TargetUserSid") or e.data.get("TargetSid")
        user = e.doc.setdefault("user", {})
        if sid:
            user.setdefault("id", sid) if "id" not in user else user.setdefault("target", {}).update(id=sid)
        if e.data.get("TargetUserName") is not None:
            name = e.data["TargetUserName"].split("@")[0]
            user.setdefault("name", name) if "name" not in user else user.setdefault("target", {}).update(name=name)
        if e.data.get("TargetDomainName") is not None:
            domain = e.data["TargetDomainName"]
            user.setdefault("domain", domain) if "domain" not in user else user.setdefault("target", {}).update(domain=domain)
    if e.code in ("4634", "4647", "4964"):
        e.copy("TargetLogonId", "winlog.logon.id")
    if e.code in COPY_SUBJECT_USER:
        e.copy("SubjectUserSid", "user.id")
        e.copy("SubjectUserName", "user.name")
        e.copy("SubjectDomainName", "user.domain")
    if e.code in ("4648", "4688"):
        for raw, target in (("TargetUserSid", "id"), ("TargetUserName", "name"), ("TargetDomainName", "domain")):
            value = e.data.get(raw)
            if value not in (None, "", "-"):
                _put(e.doc, f"user.effective.{target}", value.split("@")[0] if target == "name" else value)
    e.copy("SubjectLogonId", "winlog.logon.id")
    if e.code in RENAME_COMMON_AUTH:
        e.rename("ProcessId", "process.pid", _long)
        e.rename("ProcessName", "process.executable")
        if e.data.get("IpAddress") != "-":
            e.rename("IpAddress", "source.ip")
        if e.data.get("IpPort") != "-":
            e.rename("IpPort", "source.port", _long)
        e.rename("WorkstationName", "source.domain")
        if e.data.get("ClientAddress") not in (None, "-"):
            e.rename("ClientAddress", "related.ip")
        e.names()
    if e.code == "4688":
        e.rename("NewProcessId", "process.pid", _long)
        e.rename("NewProcessName", "process.executable")
        e.rename("ParentProcessName", "process.parent.executable")
        e.names()
        e.copy("ProcessId", "process.parent.pid", _long)
        e.copy("CommandLine", "process.command_line")
    if e.code in ("5140", "5145") and e.data.get("RelativeTargetName"):
        _put(e.doc, "file.name", e.data["RelativeTargetName"])
    source_ip = _get(e.doc, "source.ip")
    if isinstance(source_ip, str) and source_ip.lower().startswith("::ffff:"):
        _put(e.doc, "source.ip", source_ip[7:])


# -- beats x-pack/winlogbeat/module/powershell/ingest/powershell_operational.yml ----------------------
_INVOCATION = re.compile(r"^(.+)\((.+)\):\s*(.+)?$")
_BINDING = re.compile(r"name=(.+);\s*value=(.+)$")


def _invocation_detail(line: str) -> dict[str, str]:
    match = _INVOCATION.match(line)
    if not match:
        return {"value": line}
    kind, command, value = match.group(1), match.group(2), match.group(3)
    if kind != "ParameterBinding":
        return {k: v for k, v in {"type": kind, "related_command": command, "value": value}.items() if v is not None}
    binding = _BINDING.match(value or "")
    if not binding:
        return {"value": value or ""}
    return {"type": kind, "related_command": command, "name": binding.group(1), "value": binding.group(2)}


def powershell_operational_pipeline(e: _Event) -> None:
    if e.doc["winlog"]["event_id"] == "4103" and e.data.get("ContextInfo"):
        for line in e.data["ContextInfo"].split("\n"):
            key, sep, value = line.partition("=")
            if sep:
                e.data[key.strip(" \n\t")] = value.strip(" \n\t")
    e.doc["winlog"]["event_data"] = {re.sub(r"\s", "", k): v for k, v in e.data.items()}
    e.doc["event"].update(category="process", type="info")
    e.copy("SequenceNumber", "event.sequence", _long)
    e.rename("HostID", "process.entity_id")
    e.rename("HostApplication", "process.command_line")
    e.rename("HostName", "process.title")
    identifier = _get(e.doc, "winlog.user.identifier")
    if identifier:
        _put(e.doc, "user.id", identifier)
    parts = str(e.data.get("User") or "").split("\\")
    if len(parts) == 2:
        _put(e.doc, "user.domain", parts[0])
        _put(e.doc, "user.name", parts[1])
    connected = str(e.data.get("ConnectedUser") or "").split("\\")
    if len(connected) == 2:
        _put(e.doc, "source.user.domain", connected[0])
        _put(e.doc, "source.user.name", connected[1])
    e.copy("MessageNumber", "powershell.sequence", _long)
    e.copy("MessageTotal", "powershell.total", _long)
    for raw, target in (("ShellID", "powershell.id"), ("EngineVersion", "powershell.engine.version"),
                        ("PipelineID", "powershell.pipeline_id"), ("RunspaceID", "powershell.runspace_id"),
                        ("RunspaceId", "powershell.runspace_id"), ("HostVersion", "powershell.process.executable_version"),
                        ("CommandLine", "powershell.command.value"), ("CommandPath", "powershell.command.path"),
                        ("CommandName", "powershell.command.name"), ("CommandType", "powershell.command.type"),
                        ("ScriptBlockId", "powershell.file.script_block_id"),
                        ("ScriptBlockText", "powershell.file.script_block_text")):
        e.rename(raw, target)
    if e.code == "4103" and e.data.get("Payload"):
        details = [_invocation_detail(line) for line in e.data["Payload"].split("\n")]
        if details:
            _put(e.doc, "powershell.command.invocation_details", details)
    if e.data.get("Path"):
        e.data["ScriptName"] = e.data.pop("Path")
    script = e.data.get("ScriptName")
    if script and "\\" in script:
        _put(e.doc, "file.name", script.rsplit("\\", 1)[1])
        _put(e.doc, "file.directory", script.rsplit("\\", 1)[0])
    e.rename("ScriptName", "file.path")
    e.remove("SequenceNumber", "User", "ConnectedUser", "ContextInfo", "Severity", "MessageTotal", "MessageNumber", "Payload")
    for key in [k for k, v in e.data.items() if v in (None, "")]:
        e.data.pop(key)


PIPELINES: dict[str, Callable[[_Event], None]] = {
    "windows.sysmon_operational": sysmon_pipeline,
    "system.security": security_pipeline,
    "windows.powershell_operational": powershell_operational_pipeline,
}


def dataset_of(channel: Any) -> str:
    return DATASETS.get(str(channel or "").strip().lower(), CUSTOM_DATASET)


def winlogbeat_document(raw: dict[str, Any], namespace: str = "default", clock_error_s: float = 0.0) -> tuple[str, dict[str, Any]]:
    """(data stream, document) for one raw NXLog-style Windows event, as the Agent would index it."""
    dataset = dataset_of(raw.get("Channel"))
    event = _Event(beat_record(raw, clock_error_s))
    pipeline = PIPELINES.get(dataset)
    if pipeline is not None:
        pipeline(event)
    doc = event.doc
    if not doc["winlog"].get("event_data"):
        doc["winlog"].pop("event_data", None)
    doc["data_stream"] = {"type": "logs", "dataset": dataset, "namespace": namespace}
    doc["event"]["dataset"] = dataset
    doc["agent"] = {"type": "filebeat", "version": "8.17.0"}
    return f"logs-{dataset}-{namespace}", doc

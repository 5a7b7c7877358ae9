"""Windows events as Splunk customers index them, and ES notables on them, for the splunkd emulator.

`ta_event` turns one raw Windows event as the OTRF recordings and the demo files hold it (NXLog
im_msvistalog JSON: EventData fields at the top level beside NXLog's own) into the event the Splunk
Add-on for Microsoft Windows / for Sysmon would index from the same Windows event with XML
rendering: sourcetype XmlWinEventLog, source XmlWinEventLog:<channel>, host the endpoint, an XML
`_raw`, every <EventData> field and the <System> fields under their XML names, and the add-ons'
CIM fields. The data (`splunk_ta.yaml`) is written from the vendors' definitions, never from
siemcrew's own mappings, so the connector is tested against data it did not shape.

`es_notable` builds the ES notable a correlation search writes for a labelled alert row: the
triggering event's fields (a correlation search's result row) plus ES's own fields.
`recording_splunkd` starts an emulator holding one OTRF recording and a notable per labelled row.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any
from xml.sax.saxutils import escape, quoteattr

import yaml

from siemcrew.connectors.local.loader import iter_units
from siemcrew.crew.timeutil import parse_time

if TYPE_CHECKING:
    from emulators.splunkd import SplunkdEmulator

DATA_FILE = Path(__file__).with_name("splunk_ta.yaml")
NOTABLE_DELAY_S = 60.0  # a correlation search writes its notable a little after the event
CTIME = "%Y-%m-%dT%H:%M:%S"  # `security_content_ctime`: convert timeformat="%Y-%m-%dT%H:%M:%S" ctime(field)
_URGENCY = {"critical": "critical", "high": "high", "medium": "medium", "low": "low", "informational": "informational"}


@lru_cache(maxsize=1)
def ta_data() -> dict[str, Any]:
    return yaml.safe_load(DATA_FILE.read_text(encoding="utf-8"))


# -- one event ------------------------------------------------------------------------------------
def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _keywords(value: Any) -> str:
    """NXLog writes Keywords as a signed 64-bit integer; the XML as unsigned hex (0x8020000000000000)."""
    try:
        return f"0x{int(str(value)) & 0xFFFFFFFFFFFFFFFF:016x}"
    except ValueError:
        return _text(value)


def _event_time(raw: Mapping[str, Any]) -> float:
    moment = parse_time(raw.get("@timestamp")) or parse_time(raw.get("UtcTime")) or parse_time(raw.get("TimeCreated"))
    if moment is None:
        raise ValueError(f"event without a usable time: {dict(raw)!r:.200}")
    return moment.timestamp()


def _short(host: str) -> str:
    return host.split(".", 1)[0]


def split_collector(raw: Mapping[str, Any]) -> tuple[dict[str, str], dict[str, str]]:
    """(<System> fields under the add-ons' names, <EventData> fields) of an NXLog-exported event."""
    collector = ta_data()["collector"]
    rename, drop = collector["rename"], set(collector["drop"])
    own_event_type = collector["event_type_kept_as"] in raw
    system: dict[str, str] = {}
    data: dict[str, str] = {}
    for key, value in raw.items():
        if value is None:
            continue
        if key in rename:
            system[rename[key]] = _keywords(value) if key == "Keywords" else _text(value)
        elif key in drop or (key == "EventType" and not own_event_type):
            continue
        else:
            data[key] = _text(value)
    return system, data


def _aliases(channel: str, code: str, event: Mapping[str, str]) -> dict[str, Any]:
    table = ta_data()["aliases"]
    layers = [table.get("*", {}).get("*", {})]
    for key, section in table.items():
        if key != "*" and key.lower() == channel.lower():
            layers += [section.get("*", {}), section.get(int(code)) if code.isdigit() else None]
    out: dict[str, Any] = {}
    for layer in layers:
        for name, expression in (layer or {}).items():
            value = _evaluate(expression, event)
            if value not in (None, "", []):
                out[name] = value
            else:
                out.pop(name, None)
    return out


def _evaluate(expression: Any, event: Mapping[str, str]) -> Any:
    if isinstance(expression, list):
        return list(expression)
    text = str(expression)
    if "(" in text and text.endswith(")"):
        func, _, args = text[:-1].partition("(")
        names = [a.strip() for a in args.split(",")]
        values = [event.get(n) for n in names if event.get(n) not in (None, "", "-")]
        if func == "first":
            return values[0] if values else None
        if not values:
            return None
        if func == "basename":
            return values[0].replace("/", "\\").rstrip("\\").rsplit("\\", 1)[-1]
        if func == "direction":
            lowered = values[0].lower()
            return {"true": "outbound", "%%14593": "outbound", "false": "inbound", "%%14592": "inbound"}.get(lowered)
        raise ValueError(f"splunk_ta.yaml: unknown function {func!r}")
    if len(text) >= 2 and text[0] == text[-1] == "'":
        return text[1:-1]
    value = event.get(text)
    return None if value in (None, "", "-") else value


def _xml(system: Mapping[str, str], data: Mapping[str, str], time_text: str) -> str:
    parts = ["<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System>"]
    provider = " ".join(f"{k}={quoteattr(system[a])}" for k, a in (("Name", "Name"), ("Guid", "Guid")) if a in system)
    parts.append(f"<Provider {provider}/>")
    for name in ("EventID", "Version", "Level", "Task", "Opcode", "Keywords"):
        if name in system:
            parts.append(f"<{name}>{escape(system[name])}</{name}>")
    parts.append(f"<TimeCreated SystemTime='{time_text}'/>")
    if "EventRecordID" in system:
        parts.append(f"<EventRecordID>{escape(system['EventRecordID'])}</EventRecordID>")
    parts.append(f"<Correlation ActivityID={quoteattr(system['ActivityID'])}/>" if "ActivityID" in system else "<Correlation/>")
    execution = " ".join(f"{k}={quoteattr(system[k])}" for k in ("ProcessID", "ThreadID") if k in system)
    parts.append(f"<Execution {execution}/>")
    for name in ("Channel", "Computer"):
        parts.append(f"<{name}>{escape(system.get(name, ''))}</{name}>")
    parts.append(f"<Security UserID={quoteattr(system['UserID'])}/>" if "UserID" in system else "<Security/>")
    parts.append("</System><EventData>")
    parts.extend(f"<Data Name={quoteattr(k)}>{escape(v)}</Data>" for k, v in data.items())
    parts.append("</EventData></Event>")
    return "".join(parts)


def ta_event(raw: Mapping[str, Any], index: str | None = None) -> dict[str, Any]:
    """One raw (NXLog-exported) Windows event as the Splunk add-ons index it."""
    data_file = ta_data()
    system, data = split_collector(raw)
    channel = system.get("Channel", "")
    code = system.get("EventID", "")
    when = _event_time(raw)
    time_text = parse_time(when).strftime("%Y-%m-%dT%H:%M:%S.%f") + "0Z"  # type: ignore[union-attr]
    system["SystemTime"] = time_text
    fields = {**system, **data}  # an <EventData> name that is also a <System> one: the data wins
    fields["EventCode"] = code
    indexes = data_file["index"]
    event: dict[str, Any] = {
        "_time": when,
        "_raw": _xml(system, data, time_text),
        "host": _short(system.get("Computer", "")) or "unknown",
        "source": f"{data_file['source_prefix']}{channel}",
        "sourcetype": data_file["sourcetype"],
        "index": index or indexes.get(channel) or indexes["*"],
        **fields,
    }
    event.update(_aliases(channel, code, fields))
    return event


# -- recordings and notables ----------------------------------------------------------------------
def raw_events(path: Path) -> list[dict[str, Any]]:
    """Every JSON event object under `path` (a recording folder, zip or NDJSON file)."""
    events: list[dict[str, Any]] = []
    for unit in iter_units(Path(path)):
        events.extend(obj for _, obj in unit.objects if isinstance(obj, dict) and obj.get("EventID") is not None)
    return events


def ta_events(path: Path) -> list[dict[str, Any]]:
    return [ta_event(raw) for raw in raw_events(path)]


_EVENT_FIELDS_LEFT_OUT = ("_raw", "_time", "index", "source", "sourcetype", "host", "splunk_server", "linecount")


def notable_id(*key: str) -> str:
    """`<GUID>@@notable@@<md5>` as ES writes event_id, derived from `key` so a row always gets the same id."""
    text = "|".join(key)
    return f"{str(uuid.uuid5(uuid.NAMESPACE_URL, text)).upper()}@@notable@@{hashlib.md5(text.encode()).hexdigest()}"


PROCESS_IMAGES = ("Image", "SourceImage", "NewProcessName", "ProcessName", "Application")


def triggering_event(row: Mapping[str, str], events: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The indexed event a labelled alert row names: its host, channel/event id, first time and image."""
    channel, _, code = str(row.get("sample_event", "")).rpartition("/")
    first = parse_time(row.get("first"))
    host = str(row.get("host", "")).lower()
    image = str(row.get("sample_image", "")).lower()
    candidates = [e for e in events if str(e.get("host", "")).lower() == host
                  and str(e.get("Channel", "")).lower() == channel.lower() and str(e.get("EventCode")) == code]
    if not candidates:
        return None

    def distance(event: Mapping[str, Any]) -> tuple[int, float]:
        # the row's image is the acting process's (Sysmon 8/10: the source, not the target)
        names_image = image and any(str(event.get(name, "")).lower() == image for name in PROCESS_IMAGES)
        return (0 if names_image else 1, abs(float(event["_time"]) - first.timestamp()) if first else 0.0)

    return min(candidates, key=distance)


def es_notable(row: Mapping[str, str], events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ES notable for one labelled alert row (columns: dataset, rule_title, rule_id, level,
    attack_tags, host, first, last, sample_event, sample_image), as the `notable` macro returns it."""
    event = triggering_event(row, events) or {}
    first = parse_time(row.get("first"))
    last = parse_time(row.get("last")) or first
    if first is None or last is None:
        raise ValueError(f"labelled row without a time: {dict(row)!r:.200}")
    event_id = notable_id(row.get("dataset", ""), row.get("rule_id", ""), row.get("host", ""), row.get("first", ""))
    level = str(row.get("level") or "medium").lower()
    techniques = [t.split(".", 1)[1].upper() for t in str(row.get("attack_tags", "")).split(",")
                  if t.strip().lower().startswith("attack.t")]
    notable = {k: v for k, v in event.items() if k not in _EVENT_FIELDS_LEFT_OUT}
    notable.update({
        "_time": last.timestamp() + NOTABLE_DELAY_S,
        "event_id": event_id,
        "rule_id": event_id,
        "rule_name": row.get("rule_title", ""),
        "rule_title": row.get("rule_title", ""),
        "search_name": f"Threat - {row.get('rule_title', '')} - Rule",
        "rule_description": f"Sigma rule {row.get('rule_id', '')}",
        "security_domain": "endpoint",
        "severity": level,
        "urgency": _URGENCY.get(level, "medium"),
        "status": "1",
        "owner": "unassigned",
        "orig_time": f"{first.timestamp():.3f}",
        "orig_host": event.get("host") or row.get("host", ""),
        "orig_sid": f"scheduler__admin__SplunkEnterpriseSecuritySuite__RMD5{hashlib.md5(event_id.encode()).hexdigest()[:16]}",
        "info_min_time": f"{first.timestamp() - 300:.3f}",
        "info_max_time": f"{last.timestamp() + 1:.3f}",
        "drilldown_search": f'index=* host="{row.get("host", "")}" EventCode={str(row.get("sample_event", "")).rpartition("/")[2]}',
        "annotations.mitre_attack": techniques,
    })
    if last > first:  # an aggregating correlation search names its span, as security_content's do
        notable.update({"firstTime": first.strftime(CTIME), "lastTime": last.strftime(CTIME)})
    if not event:
        notable.update({"dest": row.get("host", ""), "process_path": row.get("sample_image", "")})
    return {k: v for k, v in notable.items() if v not in (None, "", [])}


@contextmanager
def recording_splunkd(recording: Path, rows: Sequence[Mapping[str, str]], *, now: float | None = None,
                      **emulator_options: Any) -> Iterator["SplunkdEmulator"]:
    """A started splunkd emulator holding `recording` (an OTRF recording folder) as the Windows
    add-ons index it and one ES notable per labelled row; stopped on exit. `now` defaults to an
    hour after the last notable; other keywords go to `SplunkdEmulator` (tls, tls_dir, version...)."""
    from emulators.splunkd import SplunkdEmulator

    events = ta_events(recording)
    notables = [es_notable(row, events) for row in rows]
    if now is None:
        latest = max([float(n["_time"]) for n in notables] + [float(e["_time"]) for e in events] or [0.0])
        now = latest + 3600
    with SplunkdEmulator(events, notables, now=now, **emulator_options) as emulator:
        yield emulator

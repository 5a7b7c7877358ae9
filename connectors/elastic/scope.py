"""Which indices hold events: the configured patterns, never alerts and never siemcrew's own cases.

Alert documents copy their source event's fields, so a hunt that also read the alerts index would
count every detected event twice (and an investigation could find its own alert as evidence);
siemcrew's case documents name hosts and users too. The events expression therefore excludes them
(`-.alerts-*,-.internal.alerts-*,-.siem-signals-*,-<cases_index>`). Elasticsearch applies a `-`
exclusion only after a wildcard pattern, so exclusions are added when one is present; a concrete
name of an alert or cases index is refused outright.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from siemcrew.connectors.base import ConnectorError

ALERT_INDICES = (".alerts-*", ".internal.alerts-*", ".siem-signals-*")


def excluded(cases_index: str) -> tuple[str, ...]:
    return (*ALERT_INDICES, cases_index)


def events_expression(patterns: str, cases_index: str) -> str:
    """`patterns` (comma-separated) with the alert and cases indices excluded."""
    parts = [p.strip() for p in str(patterns).split(",") if p.strip()]
    if not parts:
        raise ConnectorError("the events index pattern is empty (elastic.events_index)")
    never = excluded(cases_index)
    for part in parts:
        wildcard = any(ch in part for ch in "*?")
        if not part.startswith("-") and not wildcard and any(fnmatchcase(part, x) for x in never):
            raise ConnectorError(
                f"the events index pattern names {part!r}, which holds alerts or siemcrew's own cases; "
                "hunts never search those (elastic.events_index)"
            )
    if any(any(ch in p for ch in "*?") for p in parts if not p.startswith("-")):
        parts += [f"-{x}" for x in never if f"-{x}" not in parts]
    return ",".join(parts)

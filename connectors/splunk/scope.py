"""Which events siemcrew searches: the configured scope, never alerts and never siemcrew's own output.

`index=*` alone would also search ES notables (`index=notable`), risk events (`index=risk`),
summary indexes (`summary*`, results of scheduled searches) and the cases siemcrew writes through
HEC: evidence would then find the alert itself, or last week's verdict, as "activity". The
exclusions come from `splunk.search.exclude` (default: notable, risk, summary*), and the HEC index
and case sourcetype are always excluded.
"""

from __future__ import annotations

from siemcrew.config.splunk import SplunkSettings


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def own_output(settings: SplunkSettings) -> list[str]:
    """Terms matching what siemcrew itself writes to Splunk (cases through HEC or receivers/simple)."""
    terms = []
    if settings.hec.index:
        terms.append(f"index={_quoted(settings.hec.index)}")
    terms.append(f"sourcetype={_quoted(settings.hec.sourcetype)}")
    return terms


def event_scope(settings: SplunkSettings) -> str:
    """The prefix of every event search: `scope`, then `NOT` each exclusion and siemcrew's own output."""
    parts = [settings.search.scope.strip()]
    parts += [f"NOT {term.strip()}" for term in settings.search.exclude if term.strip()]
    parts += [f"NOT {term}" for term in own_output(settings)]
    return " ".join(part for part in parts if part)

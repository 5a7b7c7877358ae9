""""Open in Splunk / Kibana": links that re-run an evidence item's exact query in the SIEM's own search UI.

Built from settings only (Splunk Web base URL + app; Kibana base URL + space) and the recorded query and
time range, every part URL-encoded, so an analyst can check any statement in their own tool. Evidence
from the embedded local store, lookups and EDR API calls has no SIEM to open; `SiemLink.note` says so.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote, urlencode

from siemcrew.crew.models import Evidence, TimeRange
from siemcrew.crew.timeutil import iso
from siemcrew.web import rison

_ESQL = re.compile(r"^\s*(from|row|show|metrics|ts)\b", re.IGNORECASE)
# characters Kibana leaves unescaped in its rison URL state; everything else is percent-encoded
_RISON_SAFE = "!'(),:*~-._/@$"


@dataclass(frozen=True)
class SiemLink:
    """One link (label and URL) to the SIEM's search UI, or a note saying why there is none."""

    label: str
    url: str | None = None
    note: str = ""


@dataclass(frozen=True)
class LinkTargets:
    """Where the SIEM's search UIs are: read once from settings, used for every evidence item."""

    splunk_web: str | None = None
    splunk_app: str = "search"
    kibana: str | None = None
    kibana_space: str = "default"

    @classmethod
    def from_settings(cls, settings: Any) -> "LinkTargets":
        if settings is None:
            return cls()
        splunk = getattr(settings, "splunk", None) or {}
        elastic = getattr(settings, "elastic", None) or {}
        targets: dict[str, Any] = {}
        if splunk.get("web_url"):
            from siemcrew.config.splunk import SplunkSettings

            parsed = SplunkSettings.model_validate(splunk)
            targets.update(splunk_web=parsed.web_url, splunk_app=parsed.web_app or parsed.app)
        if elastic.get("kibana_url"):
            from siemcrew.config.elastic import ElasticSettings

            parsed_e = ElasticSettings.model_validate(elastic)
            targets.update(kibana=parsed_e.kibana_url, kibana_space=parsed_e.space)
        return cls(**targets)


def _epoch(moment: datetime) -> str:
    return f"{moment.timestamp():.3f}".rstrip("0").rstrip(".")


def splunk_search_url(base: str, app: str, spl: str, time_range: TimeRange | None) -> str:
    """Splunk Web's search page running `spl` over the same window (epoch seconds)."""
    params = {"q": spl if spl.lstrip().startswith("|") or spl.lstrip().lower().startswith("search ")
              else f"search {spl}"}
    if time_range is not None:
        params.update(earliest=_epoch(time_range.start), latest=_epoch(time_range.end))
    else:
        params.update(earliest="0", latest="now")
    return f"{base}/app/{quote(app, safe='')}/search?{urlencode(params, quote_via=quote)}"


def _kibana_base(base: str, space: str) -> str:
    return base if space == "default" else f"{base}/s/{quote(space, safe='')}"


def kibana_discover_url(base: str, space: str, app_state: dict[str, Any], time_range: TimeRange | None) -> str:
    """Kibana Discover with the given app state (`_a`) over the same window (`_g`), rison in the hash."""
    time = ({"from": iso(time_range.start), "to": iso(time_range.end)} if time_range is not None
            else {"from": "now-15y", "to": "now"})
    state = f"_g={quote(rison.dumps({'time': time}), safe=_RISON_SAFE)}&_a={quote(rison.dumps(app_state), safe=_RISON_SAFE)}"
    return f"{_kibana_base(base, space)}/app/discover#/?{state}"


def _dsl_state(text: str) -> dict[str, Any] | None:
    """A recorded DSL body -> Discover state: its `query` as a custom filter (the time range is `_g`)."""
    try:
        body = json.loads(text)
    except ValueError:
        return None
    query = body.get("query") if isinstance(body, dict) else None
    if not isinstance(query, dict):
        return None
    meta = {"alias": "siemcrew evidence", "disabled": False, "negate": False, "type": "custom",
            "key": "query", "value": json.dumps(query, sort_keys=True)}
    return {"filters": [{"meta": meta, "query": query}], "query": {"language": "kuery", "query": ""}}


def _splunk_searches(query: str) -> list[str]:
    """A Sigma rule may run as several searches (one per line, each `search …` or `| …`)."""
    lines = [line.strip() for line in query.splitlines() if line.strip()]
    if len(lines) > 1 and all(line.lower().startswith("search ") or line.startswith("|") for line in lines):
        return lines
    return [query.strip()]


def links_for(item: Evidence, targets: LinkTargets) -> list[SiemLink]:
    """The links that re-run `item` in its SIEM (empty list never: a note explains a missing link)."""
    if item.connector == "splunk":
        if not targets.splunk_web:
            return [SiemLink("Open in Splunk", note="set splunk.web_url to link to Splunk Web")]
        searches = _splunk_searches(item.query)
        return [SiemLink("Open in Splunk" + (f" ({n + 1}/{len(searches)})" if len(searches) > 1 else ""),
                         splunk_search_url(targets.splunk_web, targets.splunk_app, spl, item.time_range))
                for n, spl in enumerate(searches)]
    if item.connector == "elastic":
        if not targets.kibana:
            return [SiemLink("Open in Kibana", note="set elastic.kibana_url to link to Kibana Discover")]
        text = item.query.strip()
        if _ESQL.match(text):
            state: dict[str, Any] | None = {"dataSource": {"type": "esql"}, "query": {"esql": text}}
        elif text.startswith("{"):
            state = _dsl_state(text)
        else:
            return [SiemLink("Open in Kibana", note="EQL runs in Security > Timelines (Correlation), not Discover: "
                                                    "copy the query above")]
        if state is None:
            return [SiemLink("Open in Kibana", note="this request has no query Discover can show: copy it above")]
        return [SiemLink("Open in Kibana", kibana_discover_url(targets.kibana, targets.kibana_space, state,
                                                               item.time_range))]
    if item.connector == "local":
        return [SiemLink("", note="embedded local store: no SIEM to open; the query above ran on the local events")]
    return [SiemLink("", note=f"from {item.connector} ({item.language}): not a SIEM search")]

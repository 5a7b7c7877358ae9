"""What the Splunk alert action hands to `siemcrew serve`, and the alerts made from it.

The body is built by the app's `bin/siemcrew_investigate.py` (stdlib only, runs inside splunkd).
It never carries Splunk's `session_key`: unknown keys are rejected, so a script that tried to
forward it would get a 422 rather than leak a session. Alert ids derive from the search `sid`,
so a retried alert action maps onto the same alerts.
"""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from siemcrew.connectors.splunk.alerts import alert_from_row
from siemcrew.crew.models import Alert

MAX_ROWS = 10_000

RowValue = Union[str, list[str], None]


class SplunkActionHandoff(BaseModel):
    """`POST /v1/alerts/splunk` body: the triggering search and its result rows."""

    model_config = ConfigDict(extra="forbid")

    # Splunk search ids are printable ASCII without spaces ("scheduler__nobody__search__RMD5…_at_1700000000_12",
    # "1700000000.1"); anything else is not a sid (and the schema says so)
    sid: str = Field(min_length=1, max_length=512, pattern=r"^[!-~]+$")
    search_name: str = Field(min_length=1, max_length=1024)
    app: str = ""
    owner: str = ""
    results_link: str = ""
    server_uri: str = ""
    # the alert action's settings; a key naming a secret is refused (the serve token travels in the header)
    configuration: dict[str, str] = Field(default_factory=dict, json_schema_extra={
        "propertyNames": {"not": {"pattern": "(?i)(token|password|secret|session_key)"}}})
    rows: list[dict[str, RowValue]] = Field(default_factory=list, max_length=MAX_ROWS)

    @field_validator("configuration")
    @classmethod
    def _no_secrets(cls, value: dict[str, str]) -> dict[str, str]:
        leaked = [key for key in value if any(word in key.lower() for word in ("token", "password", "secret", "session_key"))]
        if leaked:
            raise ValueError(f"configuration must not carry secrets (keys: {', '.join(sorted(leaked))})")
        return value


def alert_id(sid: str, index: int) -> str:
    return f"splunk:{sid}:{index}"


def alerts_from_handoff(body: SplunkActionHandoff) -> list[Alert]:
    """One Alert per row, `splunk:{sid}:{index}`, named after the saved search that fired."""
    alerts: list[Alert] = []
    for index, row in enumerate(body.rows):
        alert = alert_from_row(
            {key: value for key, value in row.items() if value is not None},
            alert_id=alert_id(body.sid, index),
            rule_name=body.search_name,
            link=body.results_link or None,
        )
        alerts.append(alert)
    return alerts

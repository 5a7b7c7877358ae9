"""Jinja2 rendering of the pages and of the self-contained HTML report (autoescape everywhere).

The served pages load one stylesheet and, on the queue only, one small script from /static; the report
inlines the same stylesheet and carries a Content-Security-Policy that lets it load nothing at all.
"""

from __future__ import annotations

from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape

from siemcrew.crew.models import Case
from siemcrew.crew.timeutil import iso, utcnow
from siemcrew.web.casepage import build_view
from siemcrew.web.deeplinks import LinkTargets

WEB_DIR = Path(__file__).resolve().parent
STATIC_DIR = WEB_DIR / "static"
REPORT_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'; base-uri 'none'"


def age(moment: datetime | None, now: datetime | None = None) -> str:
    """How long ago, the way a queue reads it: 45 s, 12 min, 3 h, 2 d."""
    if moment is None:
        return "-"
    seconds = max(((now or utcnow()) - moment).total_seconds(), 0)
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


@lru_cache(maxsize=1)
def environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(WEB_DIR / "templates")),
                      autoescape=select_autoescape(default=True, default_for_string=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["iso"] = lambda value: iso(value) if isinstance(value, datetime) else (value or "-")
    env.filters["age"] = age
    env.globals["slug"] = lambda text: "".join(c if c.isalnum() else "-" for c in str(text)).strip("-").lower()
    return env


@lru_cache(maxsize=1)
def stylesheet() -> str:
    return (STATIC_DIR / "siemcrew.css").read_text(encoding="utf-8")


def render(template: str, **context: Any) -> str:
    return environment().get_template(template).render(**context)


def case_page(case: Case, pending: list[Any], audit: list[Any], targets: LinkTargets, person: Any = None,
              csrf: str = "", standalone: bool = False, message: str = "", error: str = "",
              decisions: list[Any] | None = None) -> str:
    """The case page: served (with Approve / Deny for an approver) or standalone (the HTML report)."""
    view = build_view(case, pending, audit, targets, utcnow(), decisions)
    return render("case.html", view=view, case=case, person=person, csrf=csrf, standalone=standalone,
                  css=stylesheet() if standalone else "", report_csp=REPORT_CSP, message=message, error=error)


def report_html(case: Case, settings: Any = None, audit: list[Any] | None = None, pending: list[Any] | None = None
                ) -> str:
    """One self-contained file for a ticket: the case page with inline CSS and SVG, no requests at all."""
    return case_page(case, pending or [], audit or [], LinkTargets.from_settings(settings), standalone=True)

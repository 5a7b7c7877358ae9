"""Case reports in markdown, JSON and HTML. Log-derived text is escaped: it is untrusted input."""

from __future__ import annotations

from siemcrew.crew.models import Case
from siemcrew.crew.timeutil import iso


def _md_escape(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("`", "'")[:400]


def render_json(case: Case) -> str:
    return case.model_dump_json(indent=2)


def render_markdown(case: Case) -> str:
    alert = case.alert
    lines = [
        f"# Case {case.id}: {_md_escape(alert.rule_name)}",
        "",
        f"- **Status:** {case.status}  **Verdict:** {case.verdict} ({case.confidence})",
        f"- **Alert:** `{_md_escape(alert.id)}` from {alert.source}, severity {alert.severity}, at {iso(alert.timestamp)}",
        *([f"- **Duplicates grouped:** {len(case.alerts) - 1 + case.alerts_beyond} more alerts of this detection"]
          if len(case.alerts) > 1 or case.alerts_beyond else []),
        f"- **Techniques:** {', '.join(alert.techniques) or '-'}",
        f"- **Affected hosts:** {', '.join(case.affected_hosts) or '-'}",
        f"- **Affected accounts:** {', '.join(case.affected_users) or '-'}",
        f"- **Rounds:** {case.round + 1}  **Queries:** {case.queries}  **Brain calls:** {case.brain_calls}  "
        f"**Model requests:** {case.llm_calls}  **Model tokens:** {case.llm_tokens}",
        *([f"- **Needs human:** {case.halt.reason.replace('_', ' ')} in the {case.halt.stage} stage "
           f"(`siemcrew rerun {case.id}` continues it)"] if case.halt else []),
        "",
        "## Summary",
        "",
        _md_escape(case.summary) if case.summary else "-",
        "",
        "## Findings",
        "",
        "| kind | confidence | statement | evidence |",
        "|---|---|---|---|",
    ]
    for f in case.findings:
        lines.append(f"| {f.kind} | {f.confidence} | {_md_escape(f.statement)} | {', '.join(f.evidence_ids)} |")
    lines += ["", "## Verification", ""]
    for report in case.verifications:
        lines.append(f"- round {report.round}: **{report.status}**; passed {', '.join(report.passed) or '-'}")
        for gap in report.gaps:
            lines.append(f"  - gap `{gap.check}`: {_md_escape(gap.detail)}")
        for concern in report.concerns:
            lines.append(f"  - concern: {_md_escape(concern)}")
    lines += ["", "## Actions", "", "| action | target | policy | result |", "|---|---|---|---|"]
    decisions = {(d.action, d.target): d for d in case.decisions}
    results = {(r.action, r.target): r for r in case.results}
    for p in case.proposals:
        d = decisions.get((p.action, p.target))
        r = results.get((p.action, p.target))
        lines.append(f"| {p.action} | {_md_escape(p.target)} | {d.outcome if d else '-'} | "
                     f"{(r.state + ': ' + _md_escape(r.detail)) if r else 'not executed'} |")
    for a in case.approvals:
        lines.append(f"\n- {a.decision} of {a.action} {a.target} by {a.by} at {iso(a.at)}: {_md_escape(a.reason)} "
                     f"(args sha256 {a.args_sha256[:12]}…, expires {iso(a.expires_at)})")
    lines += ["", "## Evidence index", "", "| id | kind | entity | status | count | query |", "|---|---|---|---|---|---|"]
    for e in case.evidence:
        lines.append(f"| {e.id} | {e.kind} | {_md_escape(e.entity or '-')} | {e.status} | {e.count} | "
                     f"`{_md_escape(e.query)[:160]}` |")
    lines += ["", "## Timeline", ""]
    for t in case.timeline:
        lines.append(f"- {iso(t.at)} {t.actor}: {t.event} {_md_escape(t.detail)}")
    if alert.rule_path:
        lines += ["", f"_Detection rule: {_md_escape(alert.rule_path)} (Sigma rule authors credited under DRL 1.1)._"]
    return "\n".join(lines) + "\n"


def render_html(case: Case) -> str:
    """The case page as one self-contained file (web/render.py); `report --format html` adds the audit
    trail and the SIEM links from the configuration."""
    from siemcrew.web.render import report_html

    return report_html(case)


RENDERERS = {"md": render_markdown, "json": render_json, "html": render_html}

"""The `siemcrew` command line: a thin layer over `siemcrew.crew.operations`.

crewAI is imported only by commands that investigate, so `siemcrew --help`, `audit verify`,
`cases` and `approvals` stay fast.

Exit codes: 0 ok; 1 error (configuration, input, connector); 2 usage; 3 another `run` holds the
lock; 4 needs attention: some alerts failed (the others were processed; the checkpoint did not advance),
an alert input could not be read, or a write-back to the SIEM is still pending (kept and retried);
5 the audit log failed verification; 6 approval refused (nothing pending, already decided, expired);
7 `eval --require` quality bar not met.
"""

from __future__ import annotations

import json
import sys
from collections import deque
from pathlib import Path
from typing import Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_LOCKED, EXIT_PARTIAL, EXIT_AUDIT, EXIT_APPROVAL, EXIT_QUALITY = range(8)

app = typer.Typer(add_completion=False, no_args_is_help=True, help="siemcrew: multi-agent SIEM investigations "
                  "with recorded evidence, deterministic gates and bound approvals.")
cases_app = typer.Typer(no_args_is_help=True, help="List and show cases.")
audit_app = typer.Typer(no_args_is_help=True, help="The tamper-evident audit log.")
splunk_app = typer.Typer(no_args_is_help=True, help="The Splunk app (custom alert action).")
app.add_typer(cases_app, name="cases")
app.add_typer(audit_app, name="audit")
app.add_typer(splunk_app, name="splunk-app")

console = Console(stderr=True)
_STDOUT = [sys.stdout]  # where results go; library chatter (crewAI prints) is sent to stderr


def _out() -> Any:
    return _STDOUT[0]
ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: $SIEMCREW_CONFIG or built-in local).")
JsonOpt = typer.Option(False, "--json", help="Machine-readable JSON on stdout.")
ShaOpt = typer.Option(None, "--sha", help="The full sha256 (64 hex) of the arguments you reviewed, as `approvals` "
                      "shows it; refused if they changed.")


def _settings(config: Optional[Path], **overrides: Any) -> Any:
    from siemcrew.config.settings import Settings, SettingsError

    try:
        return Settings.load(config, **overrides)
    except SettingsError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(EXIT_ERROR) from None


def _runtime(config: Optional[Path], **overrides: Any) -> Any:
    from siemcrew.crew.runtime import Runtime

    settings = _settings(config, **overrides)
    try:
        return Runtime(settings)
    except Exception as exc:  # noqa: BLE001 - report any start-up failure as a clear error
        from siemcrew.config.settings import describe_error

        console.print("[red]cannot start:[/red]", escape(f"{type(exc).__name__}: {describe_error(exc)}"))
        raise typer.Exit(EXIT_ERROR) from None


def _storage(config: Optional[Path]) -> Any:
    """Where the configured state lives (crew/storage.py): the home's SQLite files or the database."""
    from siemcrew.crew.storage import Storage

    return Storage.from_settings(_settings(config))


def _emit(data: Any, as_json: bool, human: Callable[[], None]) -> None:
    if as_json:
        _out().write(json.dumps(data, indent=2, default=str) + "\n")
    else:
        human()


def _case_row(case: Any) -> dict[str, Any]:
    return {"id": case.id, "status": case.status, "verdict": case.verdict, "confidence": case.confidence,
            "alert": case.alert.id, "rule": case.alert.rule_name, "host": case.alert.primary_host,
            "affected_hosts": case.affected_hosts, "affected_users": case.affected_users, "rounds": case.round + 1,
            "queries": case.queries, "brain_calls": case.brain_calls, "llm_calls": case.llm_calls,
            "llm_tokens": case.llm_tokens, "halt": case.halt.reason if case.halt else None,
            "dead_letter": (f"{case.dead_letter.task}: {case.dead_letter.reason}" if case.dead_letter else None),
            "actions": [f"{r.action}:{r.target}:{r.state}" for r in case.results]}


def _cases_table(cases: list[Any], title: str = "cases") -> None:
    """Cases, or their rows (`_case_row`), as a table."""
    table = Table(title=title)
    for col in ("case", "status", "verdict", "rule", "host", "scope", "actions"):
        table.add_column(col)
    for case in cases:
        row = case if isinstance(case, dict) else _case_row(case)
        status = row["status"] + (f"\n{escape(row['dead_letter'][:80])}" if row.get("dead_letter") else "")
        table.add_row(row["id"], status, f"{row['verdict']} ({row['confidence']})", row["rule"][:40],
                      str(row["host"]), ", ".join(row["affected_hosts"]), "\n".join(row["actions"]))
    Console(file=_out()).print(table)


def _pending_table(pending: list[Any]) -> None:
    table = Table(title="approvals awaiting a decision")
    for col in ("case", "action", "target", "arguments", "args sha256", "requested", "why"):
        table.add_column(col)
    for p in pending:
        table.add_row(p.case_id, p.action, p.target, escape(json.dumps(p.args, sort_keys=True)), p.args_sha256,
                      str(p.requested_at)[:19], escape(p.reason[:60]))
    Console(file=_out()).print(table)


@app.command()
def demo(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
         home: Path = typer.Option(Path(".siemcrew-demo"), help="Where the demo keeps its state.")) -> None:
    """Investigate the bundled sample alerts offline (embedded store, playbook brains)."""
    from siemcrew.config.settings import EXAMPLES_DIR

    config = config or EXAMPLES_DIR / "demo.yaml"
    rt = _runtime(config, home=str(home.resolve()))
    summary = _run_with_progress(rt, as_json)
    cases = [rt.cases.get(cid) for cid in summary.cases]
    pending = rt.approvals.pending()

    def human() -> None:
        _cases_table(cases, "siemcrew demo")
        if pending:
            _pending_table(pending)
            first = pending[0]
            console.print(f"Decide in the browser: SIEMCREW_HOME={home.resolve()} siemcrew serve --config {config} "
                          "(with an approver's token in its env var, see README \"Browser\"), or with: "
                          f"SIEMCREW_HOME={home.resolve()} siemcrew approve {first.case_id} "
                          f"{first.action} --target {first.target} --by you --reason '...' --config {config}")
    _emit({"summary": summary.as_dict(), "cases": [_case_row(c) for c in cases],
           "pending": [p.model_dump(mode="json") for p in pending]}, as_json, human)
    raise typer.Exit(EXIT_PARTIAL if summary.incomplete else EXIT_OK)


def _run_with_progress(rt: Any, as_json: bool, limit: int = 100) -> Any:
    from rich.progress import Progress

    from siemcrew.crew.operations import LockBusy, run

    try:
        with Progress(console=console, transient=True, disable=as_json) as progress:
            task = progress.add_task("investigating", total=None)
            summary = run(rt, limit=limit, progress=lambda alert: progress.update(task, advance=1,
                                                                                  description=f"{alert.rule_name[:40]}"))
    except LockBusy as exc:
        console.print(f"[yellow]{exc}[/yellow]")
        raise typer.Exit(EXIT_LOCKED) from None
    except Exception as exc:  # noqa: BLE001 - e.g. the SIEM is down: say so, in the summary too
        from siemcrew.config.settings import describe_error

        detail = f"{type(exc).__name__}: {describe_error(exc)}"[:1000]
        console.print("[red]run failed:[/red]", escape(detail))
        if as_json:
            _out().write(json.dumps({"error": detail, "fetched": 0, "investigated": 0}) + "\n")
        raise typer.Exit(EXIT_ERROR) from None
    return summary


@app.command()
def run(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
        limit: int = typer.Option(100, help="At most this many new alerts per run.")) -> None:
    """Cron mode: fetch alerts since the checkpoint, investigate, write verdicts back, summarize."""
    rt = _runtime(config)
    summary = _run_with_progress(rt, as_json, limit)
    _emit(summary.as_dict(), True if as_json else False, lambda: _out().write(json.dumps(summary.as_dict()) + "\n"))
    for line in [*summary.rejected_inputs, *summary.writeback_pending, *summary.containment_unconfirmed]:
        console.print(f"[yellow]needs attention:[/yellow] {escape(line)}")
    raise typer.Exit(EXIT_PARTIAL if summary.incomplete else EXIT_OK)


@app.command()
def investigate(alert: str = typer.Option(..., "--alert", "-a", help="Alert JSON file, or - for stdin."),
                config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Investigate one alert (or a JSON list of alerts) now."""
    from pydantic import ValidationError

    from siemcrew.crew.models import Alert
    from siemcrew.crew.operations import investigate as investigate_alert

    try:
        text = sys.stdin.read() if alert == "-" else Path(alert).read_text(encoding="utf-8")
        data = json.loads(text)
        items = deque(data if isinstance(data, list) else [data])
        del text, data
        for item in items:  # every alert is checked before any is investigated; models are made one at a time
            Alert.model_validate(item)
    except (OSError, ValueError, ValidationError) as exc:
        console.print(f"[red]bad alert input:[/red] {str(exc)[:800]}")
        raise typer.Exit(EXIT_ERROR) from None
    rt = _runtime(config)
    rows = []  # one summary row per case, not the cases: a long list keeps memory flat
    while items:
        item = Alert.model_validate(items.popleft())  # dropped from the list as it is taken
        try:
            rows.append(_case_row(investigate_alert(rt, item)))
        except Exception as exc:  # noqa: BLE001 - the case is marked failed and audited; say why, briefly
            console.print(f"[red]investigation of {item.id} failed:[/red] {type(exc).__name__}: {str(exc)[:500]}")
            raise typer.Exit(EXIT_ERROR) from None
    _emit(rows, as_json, lambda: _cases_table(rows))


def _case_op(case_id: str, call: Callable[[], Any], refused: type[Exception], verb: str) -> Any:
    """Run an operation on one case; exit 1 saying why when the case is unknown or the operation is refused."""
    try:
        return call()
    except KeyError:
        console.print(f"[red]no such case:[/red] {escape(case_id)}")
        raise typer.Exit(EXIT_ERROR) from None
    except refused as exc:
        console.print(f"[red]cannot {verb}:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None


@app.command()
def rerun(case_id: str, config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
          by: str = typer.Option("cli", help="Who asks for the rerun (audited).")) -> None:
    """Continue a case escalated because its model failed or its LLM budget ran out (raise the budget
    first if it ran out); its evidence and finished stages are kept."""
    from siemcrew.crew.operations import RerunError
    from siemcrew.crew.operations import rerun as rerun_case

    rt = _runtime(config)
    try:
        case = _case_op(case_id, lambda: rerun_case(rt, case_id, by=by), RerunError, "rerun")
    except typer.Exit:
        raise
    except Exception as exc:  # noqa: BLE001 - the case is marked failed and audited; say why, briefly
        console.print(f"[red]rerun of {case_id} failed:[/red] {type(exc).__name__}: {str(exc)[:500]}")
        raise typer.Exit(EXIT_ERROR) from None
    _emit([_case_row(case)], as_json, lambda: _cases_table([case]))


@cases_app.command("list")
def cases_list(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
               status: Optional[str] = typer.Option(None, help="Only cases in this status; writeback_pending: "
                                                              "cases with a write-back not yet in the SIEM; "
                                                              "needs_human: cases the task queue gave up on.")) -> None:
    """List cases, newest alert first."""
    storage = _storage(config)
    store = storage.cases()
    if status == "writeback_pending":
        waiting = {item.case_id for item in storage.outbox().pending()}
        cases = [c for c in store.list() if c.id in waiting]
    else:
        cases = store.list(status=status)
    _emit([_case_row(c) for c in cases], as_json, lambda: _cases_table(cases))


@cases_app.command("show")
def cases_show(case_id: str, config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Show one case (the markdown report; --json for the full case)."""
    case = _load_case(config, case_id)
    from siemcrew.crew.report import render_markdown

    _emit(case.model_dump(mode="json"), as_json, lambda: _out().write(render_markdown(case)))


def _load_case(config: Optional[Path], case_id: str) -> Any:
    try:
        return _storage(config).cases().get(case_id)
    except KeyError:
        console.print(f"[red]no such case:[/red] {case_id}")
        raise typer.Exit(EXIT_ERROR) from None


@app.command()
def report(case_id: str, config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
           fmt: str = typer.Option("md", "--format", "-f", help="md | json | html"),
           out: Optional[Path] = typer.Option(None, help="Write to this file instead of stdout.")) -> None:
    """Render a case report."""
    from siemcrew.crew.report import RENDERERS

    if as_json:
        fmt = "json"
    if fmt not in RENDERERS:
        console.print(f"[red]unknown format {fmt!r}[/red]; use md, json or html")
        raise typer.Exit(EXIT_USAGE)
    case = _load_case(config, case_id)
    if fmt == "html":  # the case page as one self-contained file: audit trail and SIEM links included
        from siemcrew.crew.audit import read as read_audit
        from siemcrew.web.render import report_html

        from siemcrew.crew.approvals import ApprovalStore

        settings = _settings(config)
        text = report_html(case, settings, list(read_audit(settings.home_path / "audit.jsonl", case_id=case.id)),
                           ApprovalStore(settings.home_path / "approvals.db").pending(case.id))
    else:
        text = RENDERERS[fmt](case)
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        _out().write(text)


@app.command()
def approvals(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """List actions awaiting a human decision."""
    pending = _storage(config).approvals().pending()
    _emit([p.model_dump(mode="json") for p in pending], as_json, lambda: _pending_table(pending))


def _decide(decision: str, case_id: str, action: str, by: str, reason: str, target: Optional[str],
            config: Optional[Path], as_json: bool, sha: Optional[str] = None) -> None:
    from siemcrew.crew.approvals import ApprovalError
    from siemcrew.crew.operations import decide

    rt = _runtime(config)
    try:
        approval, case = decide(rt, case_id, action, decision, by=by, reason=reason, target=target, sha256=sha)
    except (ApprovalError, KeyError) as exc:
        console.print(f"[red]{decision} refused:[/red] {exc}")
        raise typer.Exit(EXIT_APPROVAL) from None
    _emit({"approval": approval.model_dump(mode="json"), "case": _case_row(case)}, as_json,
          lambda: _cases_table([case], f"{decision}d {action} {approval.target}"))


@app.command()
def approve(case_id: str, action: str, by: str = typer.Option(..., help="Who approves."),
            reason: str = typer.Option(..., help="Why."), target: Optional[str] = typer.Option(None),
            sha: Optional[str] = ShaOpt, config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Approve a pending action; binds to its exact arguments; resumes the case when none is left."""
    _decide("approve", case_id, action, by, reason, target, config, as_json, sha)


@app.command()
def deny(case_id: str, action: str, by: str = typer.Option(..., help="Who denies."),
         reason: str = typer.Option(..., help="Why."), target: Optional[str] = typer.Option(None),
         sha: Optional[str] = ShaOpt, config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Deny a pending action; the case resumes without it when no decision is left."""
    _decide("deny", case_id, action, by, reason, target, config, as_json, sha)


@app.command()
def propose(case_id: str, action: str, target: str = typer.Option(..., help="Host, user, indicator… it acts on."),
            by: str = typer.Option(..., help="Who proposes."), reason: str = typer.Option(..., help="Why."),
            arg: list[str] = typer.Option([], help="Extra argument key=value (repeatable)."),
            config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Propose a further action on a case (e.g. release_host after clean-up); it passes the policy gate."""
    from siemcrew.crew.approvals import ApprovalError
    from siemcrew.crew.operations import propose as propose_action

    extra = dict(item.split("=", 1) for item in arg if "=" in item)
    rt = _runtime(config)
    try:
        case = propose_action(rt, case_id, action, target, by=by, reason=reason, args=extra or None)
    except (ApprovalError, KeyError) as exc:
        console.print(f"[red]proposal refused:[/red] {exc}")
        raise typer.Exit(EXIT_APPROVAL) from None
    decision = next((d for d in case.decisions if d.action == action and d.target == target), None)
    _emit({"case": _case_row(case), "decision": decision.model_dump(mode="json") if decision else None}, as_json,
          lambda: console.print(f"{action} {target}: {decision.outcome if decision else '?'}"))


@audit_app.command("verify")
def audit_verify(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
                 path: Optional[Path] = typer.Option(None, help="Audit log file (default: <home>/audit.jsonl, or the "
                                                     "audit_log table when `database:` is set; a copy given here is "
                                                     "checked on its own, without the approvals and the ledger).")) -> None:
    """Prove the audit log intact and every executed action accounted for (a policy decision or an
    approval in the log, agreeing with the approval store and the ledger); names the first bad record otherwise."""
    from siemcrew.config.settings import SettingsError
    from siemcrew.crew.auditcheck import verify_accounted
    from siemcrew.crew.storage import Storage

    settings = _settings(config)
    try:
        key = settings.audit_key()
    except SettingsError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(EXIT_ERROR) from None
    storage = Storage.from_settings(settings)
    result = verify_accounted(path, key=key) if path else verify_accounted(storage.audit_source(), key=key,
                                                                          stores=storage)

    def human() -> None:
        if result.ok:
            console.print(f"[green]audit log intact[/green]: {result.records} record(s), every action accounted for")
        else:
            console.print(f"[red]audit log FAILED[/red] at record {result.first_bad}: {escape(result.reason)}")
        for line in result.mismatches[1:]:
            console.print(f"  [red]mismatch:[/red] {escape(line)}")
        for line in result.notes:
            console.print(f"  [yellow]note:[/yellow] {escape(line)}")
    _emit(result.model_dump(mode="json"), as_json, human)
    raise typer.Exit(EXIT_OK if result.ok else EXIT_AUDIT)


@app.command()
def doctor(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
           days: int = typer.Option(7, "--days", min=1, help="How far back to sample the SIEM's events."),
           data: bool = typer.Option(True, "--data/--no-data", help="Sample the event scope per evidence kind.")) -> None:
    """Check configuration, stores, connector health, the data's fields and offline switches."""
    from siemcrew.crew.doctor import checks

    settings = _settings(config)
    results = checks(settings, data_days=days if data else None)
    ok = all(r["ok"] for r in results)

    def human() -> None:
        table = Table(title="siemcrew doctor")
        for col in ("check", "ok", "detail"):
            table.add_column(col)
        for r in results:
            table.add_row(r["check"], "yes" if r["ok"] else "NO", r["detail"][:400])
        Console(file=_out()).print(table)
    _emit({"ok": ok, "checks": results}, as_json, human)
    raise typer.Exit(EXIT_OK if ok else EXIT_ERROR)


@app.command()
def serve(config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
          host: Optional[str] = typer.Option(None), port: Optional[int] = typer.Option(None)) -> None:
    """Run the HTTP service (alert hand-offs from Splunk/Kibana, cases, approvals)."""
    import uvicorn

    from siemcrew.service import create_app

    from siemcrew.config.settings import SettingsError

    from siemcrew.web.session import People
    from siemcrew.web.urls import queue_url

    settings = _settings(config)
    settings.serve.host, settings.serve.port = host or settings.serve.host, port or settings.serve.port
    try:
        application = create_app(settings)
    except SettingsError as exc:
        console.print(f"[red]configuration error:[/red] {exc}")
        raise typer.Exit(EXIT_ERROR) from None
    who = People(settings.serve).configured()
    console.print(f"siemcrew: the queue is at {queue_url(settings)}")
    console.print("  sign in as " + "; ".join(who) if who else "  [yellow]nobody can sign in yet[/yellow]: set the env "
                  f"var of an approver (serve.approvers) or the viewer token (${settings.serve.viewer_token_env})")
    uvicorn.run(application, host=settings.serve.host, port=settings.serve.port,
                log_level="warning" if as_json else "info")


def _queue_settings(config: Optional[Path]) -> Any:
    """The settings, when they configure a task queue; a clear exit 1 when they do not."""
    settings = _settings(config)
    try:
        queue = settings.queue_settings()
    except Exception as exc:  # noqa: BLE001 - SettingsError: say which key
        console.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None
    if queue is None:
        console.print("[red]no task queue is configured:[/red] add a `queue:` section with the Redis broker "
                      "(README, Task queue); without one, `serve` and `run` do the work themselves")
        raise typer.Exit(EXIT_ERROR)
    return settings


@app.command()
def worker(config: Optional[Path] = ConfigOpt,
           concurrency: int = typer.Option(0, "--concurrency", "-c", min=0, help="Tasks at once (processes or "
                                           "threads); 0: one per CPU."),
           queues: list[str] = typer.Option([], "--queues", "-Q", help="Queues to take tasks from (repeatable or "
                                            "comma-separated; default: the case queue and its periodic queue)."),
           pool: str = typer.Option("prefork", help="prefork (a process per task, the default), threads or solo."),
           name: Optional[str] = typer.Option(None, "--name", "-n", help="Worker name (default siemcrew-PID@host)."),
           beat: bool = typer.Option(False, "--beat", help="Also run celery beat in this worker (small set-ups "
                                     "only: one beat per deployment)."),
           loglevel: str = typer.Option("INFO", help="Celery log level."),
           max_tasks_per_child: Optional[int] = typer.Option(None, min=1, help="Replace a pool process after "
                                                             "this many tasks.")) -> None:
    """Start a Celery worker that investigates, resumes and acts on queued cases (needs `queue:`)."""
    from siemcrew.config.settings import SettingsError
    from siemcrew.crew.queue.worker import run_worker

    if pool not in ("prefork", "threads", "solo"):
        console.print(f"[red]unknown pool {pool!r}[/red]: use prefork, threads or solo")
        raise typer.Exit(EXIT_USAGE)
    settings = _queue_settings(config)
    import os

    names = [q.strip() for item in queues for q in item.split(",") if q.strip()]
    try:
        run_worker(settings, concurrency or os.cpu_count() or 1, pool=pool, queues=names or None,  # type: ignore[arg-type]
                   name=name, beat=beat, loglevel=loglevel, max_tasks_per_child=max_tasks_per_child)
    except SettingsError as exc:
        console.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None


@app.command("beat")
def beat_command(config: Optional[Path] = ConfigOpt, loglevel: str = typer.Option("INFO", help="Celery log level.")
                 ) -> None:
    """Start celery beat: the periodic tasks (outbox, sweep, and polling the SIEM when queue.poll_every_s is set).
    Run exactly one per deployment."""
    from siemcrew.config.settings import SettingsError
    from siemcrew.crew.queue.worker import run_beat

    settings = _queue_settings(config)
    try:
        run_beat(settings, loglevel=loglevel)
    except SettingsError as exc:
        console.print(f"[red]configuration error:[/red] {escape(str(exc))}")
        raise typer.Exit(EXIT_ERROR) from None


@cases_app.command("requeue")
def cases_requeue(case_id: str, by: str = typer.Option(..., help="Who puts it back (audited)."),
                  reason: str = typer.Option(..., help="What was fixed."), config: Optional[Path] = ConfigOpt,
                  as_json: bool = JsonOpt) -> None:
    """Put a dead-lettered case (status needs_human) back on the task queue once its cause is fixed."""
    from siemcrew.crew.queue.deadletter import RequeueError, requeue

    rt = _runtime(config)
    case = _case_op(case_id, lambda: requeue(rt, case_id, by=by, reason=reason), RequeueError, "requeue")
    _emit([_case_row(case)], as_json, lambda: _cases_table([case], f"requeued {case_id}"))


@app.command("eval")
def evaluate(dataset: list[Path] = typer.Option(..., "--dataset", help="Folder laid out like datasets/otrf "
                                                "(repeatable: several datasets are scored in one run)."),
             rules: Optional[Path] = typer.Option(None, help="Sigma rules folder (default: first "
                                                             "DIR/../detection-content/sigma)."),
             out: Optional[Path] = typer.Option(None, help="Write the markdown report here."),
             config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt,
             split: Optional[str] = typer.Option(None, help="Only alerts of this split (e.g. dev)."),
             jobs: Optional[int] = typer.Option(None, "--jobs", "-j", min=1, help="Recordings evaluated in this many "
                                                "worker processes (default: min(2, CPUs); 1 runs in this process)."),
             require: list[str] = typer.Option([], help="A quality bar such as 'tp_recall>=0.95' (repeatable); "
                                                        "exit 7 when any is not met.")) -> None:
    """Score the crew on labelled alerts over real recordings."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from siemcrew.evaluation import EvalError, check_requirements, default_jobs, evaluate as run_eval, render_markdown

    try:
        bars = check_requirements({}, require, parse_only=True)
        # the bar is drawn on stderr (and not at all when stderr is not a terminal): stdout stays pure JSON
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("evaluating", total=None)

            def advance(row: Optional[dict[str, Any]], total: int) -> None:
                if row is None:
                    progress.update(task, total=total)
                else:
                    progress.update(task, advance=1, description=f"{row['split']}: {row['rule'][:40]}")

            result = run_eval(dataset, rules=rules, config=config, split=split, quiet=as_json,
                              jobs=jobs or default_jobs(), progress=advance)
    except EvalError as exc:
        console.print(f"[red]eval failed:[/red] {exc}")
        raise typer.Exit(EXIT_ERROR) from None
    if out:
        out.write_text(render_markdown(result), encoding="utf-8")
    metrics = {k: v for k, v in result.items() if k != "per_alert"}
    _emit(result, as_json, lambda: Console(file=_out()).print_json(json.dumps(metrics, default=str)))
    failed = check_requirements(metrics, require) if bars else []
    for line in failed:
        console.print(f"[red]quality bar not met:[/red] {line}")
    raise typer.Exit(EXIT_QUALITY if failed else EXIT_OK)


@splunk_app.command("build")
def splunk_app_build(out: Path = typer.Option(Path("dist"), help="Output folder."),
                     config: Optional[Path] = ConfigOpt, as_json: bool = JsonOpt) -> None:
    """Package the Splunk app (custom alert action) as a .tgz."""
    from siemcrew.connectors.splunk.app_builder import build_app

    path = build_app(out)
    _emit({"package": str(path)}, as_json, lambda: console.print(f"built {path}"))


def main() -> None:
    import contextlib

    _STDOUT[0] = sys.stdout
    with contextlib.redirect_stdout(sys.stderr):
        try:
            app()
        except Exception as exc:
            from siemcrew.crew.database import StoreError

            if not isinstance(exc, StoreError):
                raise
            console.print("[red]state database:[/red]", escape(str(exc)))  # names the URL without its password
            sys.exit(EXIT_ERROR)


if __name__ == "__main__":
    main()

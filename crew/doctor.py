"""`siemcrew doctor`: is this installation ready? Configuration, stores, gates, connectors, switches.

Nothing it prints holds a secret: a `*_env` setting is named by its path (`serve.token_env`), never by
its value, since a token pasted there by mistake is a value, and any secret those settings point at is
cut out of every row, whatever check (or connector error) put it there.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any, Callable

from siemcrew.config.settings import Settings, describe_error, secret, serve_token_clashes
from siemcrew.crew.offline import SWITCHES

REDACTED = "[redacted]"
MIN_SCRUBBED = 4  # shorter values are too common to cut out of text (and too short to be secrets)


def _check(name: str, fn: Callable[[], str]) -> dict[str, Any]:
    try:
        return {"check": name, "ok": True, "detail": fn()}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a readable row
        # a check's own finding (RuntimeError) reads as it is; anything else names what went wrong
        kind = "" if type(exc) is RuntimeError else f"{type(exc).__name__}: "
        return {"check": name, "ok": False, "detail": f"{kind}{describe_error(exc)}"[:500]}


def data_checks(settings: Settings, days: int) -> list[dict[str, Any]]:
    """One row per evidence kind: are its events in scope, and do they carry the fields the tools read?
    The embedded store is sampled whole (it holds exported files, not a live feed)."""
    from siemcrew.crew.datacheck import check_data
    from siemcrew.crew.runtime import build_siem

    try:
        siem = build_siem(settings)
        reports = check_data(siem, days=days, whole=settings.source == "local")
    except Exception as exc:  # noqa: BLE001 - a connector that cannot even be built is one readable row
        return [{"check": "data", "ok": False, "detail": f"{type(exc).__name__}: {describe_error(exc)}"[:500]}]
    return [{"check": f"data: {r.name}", "ok": r.ok, "detail": r.summary()[:1500]} for r in reports]


def _env_settings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """(setting path, configured value) of every setting that names where a secret is: `*_env` keys
    at any depth (connector sections included) and the approvers' token variables."""
    if isinstance(value, dict):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if isinstance(item, str) and (str(key).endswith("_env") or path == "serve.approvers"):
                yield here, item
            else:
                yield from _env_settings(item, here)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _env_settings(item, f"{path}[{index}]")


def scrub(results: list[dict[str, Any]], settings: Settings) -> list[dict[str, Any]]:
    """Every row with the configured `*_env` values replaced by their setting paths and the secrets
    they point at replaced by [redacted] (longest first, so no part of one survives another)."""
    names = dict(_env_settings(settings.model_dump(mode="json")))
    values = {value: f"<{label}>" for label, value in names.items() if len(value) >= MIN_SCRUBBED}
    held_values = {held: REDACTED for env in names.values() if (held := secret(env)) and len(held) >= MIN_SCRUBBED}
    replacements = sorted({**values, **held_values}.items(), key=lambda item: -len(item[0]))
    if not replacements:
        return results
    pattern = re.compile("|".join(re.escape(old) for old, _ in replacements))
    table = dict(replacements)
    return [{**row, "detail": pattern.sub(lambda m: table[m.group(0)], str(row["detail"]))} for row in results]


def checks(settings: Settings, data_days: int | None = 7) -> list[dict[str, Any]]:
    return scrub(_checks(settings, data_days), settings)


def _checks(settings: Settings, data_days: int | None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = []
    home = settings.home_path

    def writable() -> str:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".doctor"
        probe.write_text("ok", encoding="utf-8")
        probe.unlink()
        return str(home)

    results.append(_check("home writable", writable))

    def gates() -> str:
        from siemcrew.crew.assets import AssetInventory
        from siemcrew.crew.policy import ResponsePolicy
        from siemcrew.crew.verifier import EvidenceRequirements

        inventory = AssetInventory.load(settings.config_file("assets"))
        policy = ResponsePolicy.load(settings.config_file("policy"), inventory)
        EvidenceRequirements.load(settings.config_file("evidence"))
        return f"{len(policy.config.actions)} policy actions, evidence requirements and assets valid"

    results.append(_check("policy / evidence / assets", gates))

    from siemcrew.crew.storage import Storage

    storage = Storage.from_settings(settings)
    results.append(_check("state database", storage.check))

    def audit() -> str:
        from siemcrew.crew.auditcheck import verify_accounted

        key = settings.audit_key()
        keyed = "keyed (HMAC)" if key else "plain sha256 (no audit key)"
        if not storage.exists("audit"):
            return f"no audit log yet; {keyed}"
        result = verify_accounted(storage.audit_source(), key=key, stores=storage)
        if not result.ok:
            raise RuntimeError(f"audit log broken at record {result.first_bad}: {result.reason}")
        return f"{result.records} record(s) intact, every action accounted for; {keyed}"

    results.append(_check("audit log", audit))

    def outbox() -> str:
        pending = storage.outbox().pending() if storage.exists("outbox") else []
        if pending:
            raise RuntimeError(f"{len(pending)} write-back(s) not yet in the SIEM (retried by run and serve): "
                               + "; ".join(item.line() for item in pending[:3]))
        return "every write-back reached the SIEM"

    results.append(_check("write-backs", outbox))

    def quarantine() -> str:
        bad = storage.cases().quarantined() if storage.exists("cases") else []
        if bad:
            raise RuntimeError(f"{len(bad)} stored case(s) could not be read and were set aside: "
                               + "; ".join(f"{b['case']} ({b['error'][:120]})" for b in bad[:3]))
        return "every stored case reads"

    results.append(_check("case store", quarantine))

    def dead_letters() -> str:
        from siemcrew.crew.casestore import CaseStore

        path = home / "cases.db"
        stuck = CaseStore(path).list(status="needs_human") if path.exists() else []
        if stuck:
            raise RuntimeError(f"{len(stuck)} case(s) the task queue gave up on (siemcrew cases requeue once fixed): "
                               + "; ".join(f"{c.id} ({c.dead_letter.task}: {c.dead_letter.reason[:120]})"
                                           for c in stuck[:3] if c.dead_letter))
        return "no case waits for a human because of the task queue"

    results.append(_check("dead letters", dead_letters))

    if settings.queue is not None:
        def task_queue() -> str:
            from siemcrew.crew.queue.broker import redis_client

            queue = settings.queue_settings()
            client = redis_client(queue)
            try:
                client.ping()
                waiting = {name: int(client.llen(name)) for name in (queue.name, queue.periodic_queue)}
                unacked = int(client.hlen("unacked"))
            finally:
                client.close()
            return (f"broker reachable; waiting: " + ", ".join(f"{n} {c}" for n, c in waiting.items())
                    + f"; delivered, not yet acknowledged: {unacked}")

        results.append(_check("task queue", task_queue))

    def connector() -> str:
        from siemcrew.crew.runtime import build_siem

        report = build_siem(settings).health()
        if not report.ok:
            raise RuntimeError(report.detail)
        return f"{report.connector}: {report.detail}"[:300]

    results.append(_check(f"siem connector ({settings.source})", connector))

    if settings.source == "splunk" and (settings.splunk or {}).get("hec", {}).get("url"):
        def hec() -> str:
            from siemcrew.config.splunk import SplunkSettings
            from siemcrew.connectors.splunk.hec import HecClient

            client = HecClient(SplunkSettings.model_validate(settings.splunk))
            try:
                return client.health()
            finally:
                client.close()

        results.append(_check("splunk HEC (case records)", hec))
    if data_days is not None:
        results += data_checks(settings, data_days)

    if settings.edr:
        def edr() -> str:
            from siemcrew.config.edr import EdrSettings
            from siemcrew.connectors.edr.registry import build_edr

            connectors = build_edr(EdrSettings.model_validate(settings.edr))
            bad = {n: c.health() for n, c in connectors.items()}
            failed = [f"{n}: {h.detail}" for n, h in bad.items() if not h.ok]
            if failed:
                raise RuntimeError("; ".join(failed))
            return ", ".join(bad) or "none configured"

        results.append(_check("edr connectors", edr))

    def brains() -> str:
        if settings.llm is None:
            return "playbook brains (offline, deterministic)"
        if settings.llm.api_key_env and not secret(settings.llm.api_key_env):
            raise RuntimeError("the environment variable named by llm.api_key_env is not set")
        return f"LLM {settings.llm.model} for {', '.join(settings.llm.roles)}"

    results.append(_check("brains", brains))

    def offline() -> str:
        wrong = [k for k, v in SWITCHES.items() if os.environ.get(k, v) != v]
        if wrong:
            raise RuntimeError(f"crewAI switches overridden: {wrong}")
        return "crewAI telemetry, tracing and version checks off"

    results.append(_check("offline switches", offline))

    def serve_secrets() -> str:
        serve = settings.serve
        clashes = serve_token_clashes(serve)
        if clashes:
            raise RuntimeError("; ".join(clashes) + ": every approver needs a token of their own, shared with "
                               "no intake credential (serve refuses to start)")
        unset = [label for label, env in (("serve.token_env", serve.token_env),
                                          ("serve.webhook_secret_env", serve.webhook_secret_env),
                                          *((f"serve.approvers.{n}", e) for n, e in serve.approvers.items()))
                 if not secret(env)]
        return (f"{len(serve.approvers)} approver(s), tokens distinct; "
                + ("all set" if not unset else "not set: " + ", ".join(unset) + " (needed only by serve)"))

    results.append(_check("serve secrets", serve_secrets))
    return results

"""`siemcrew doctor`: is this installation ready? Configuration, stores, gates, connectors, switches."""

from __future__ import annotations

import os
from typing import Any, Callable

from siemcrew.config.settings import Settings, describe_error, secret
from siemcrew.crew.offline import SWITCHES


def _check(name: str, fn: Callable[[], str]) -> dict[str, Any]:
    try:
        return {"check": name, "ok": True, "detail": fn()}
    except Exception as exc:  # noqa: BLE001 - every failure becomes a readable row
        return {"check": name, "ok": False, "detail": f"{type(exc).__name__}: {describe_error(exc)}"[:500]}


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


def checks(settings: Settings, data_days: int | None = 7) -> list[dict[str, Any]]:
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

    def audit() -> str:
        from siemcrew.crew.auditcheck import verify_accounted

        key = settings.audit_key()
        keyed = "keyed (HMAC)" if key else "plain sha256 (no audit key)"
        path = home / "audit.jsonl"
        if not path.exists():
            return f"no audit log yet; {keyed}"
        result = verify_accounted(path, key=key, stores=home)
        if not result.ok:
            raise RuntimeError(f"audit log broken at record {result.first_bad}: {result.reason}")
        return f"{result.records} record(s) intact, every action accounted for; {keyed}"

    results.append(_check("audit log", audit))

    def connector() -> str:
        from siemcrew.crew.runtime import build_siem

        report = build_siem(settings).health()
        if not report.ok:
            raise RuntimeError(report.detail)
        return f"{report.connector}: {report.detail}"[:300]

    results.append(_check(f"siem connector ({settings.source})", connector))
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
            raise RuntimeError(f"{settings.llm.api_key_env} is not set")
        return f"LLM {settings.llm.model} for {', '.join(settings.llm.roles)}"

    results.append(_check("brains", brains))

    def offline() -> str:
        wrong = [k for k, v in SWITCHES.items() if os.environ.get(k, v) != v]
        if wrong:
            raise RuntimeError(f"crewAI switches overridden: {wrong}")
        return "crewAI telemetry, tracing and version checks off"

    results.append(_check("offline switches", offline))

    def serve_secrets() -> str:
        missing = [n for n in (settings.serve.token_env, settings.serve.webhook_secret_env) if not secret(n)]
        return f"set: {'none missing' if not missing else 'missing ' + ', '.join(missing) + ' (needed only by serve)'}"

    results.append(_check("serve secrets", serve_secrets))
    return results

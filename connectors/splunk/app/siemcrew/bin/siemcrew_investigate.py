"""Custom alert action "Investigate with siemcrew": hand the triggered results to siemcrew serve.

Splunk runs `python3 siemcrew_investigate.py --execute` with the alert payload (JSON) on stdin.
This script only HANDS OFF: it reads the gzipped results file, decodes multivalue columns, and
POSTs the rows to `<serve_url>/v1/alerts/splunk`, keyed on the search `sid` so a retried alert is
not investigated twice. The crew runs in siemcrew serve, never inside splunkd. Splunk's
`session_key` is used only to read the serve token from Splunk's credential store and is never
forwarded. Standard library only: it runs in Splunk's own Python.

Exit codes: 0 handed off (or already handed off), 1 wrong mode, 2 action failed, 3 unexpected.
"""

import csv
import gzip
import json
import os
import ssl
import sys
import time
from urllib import error, parse, request

APP = "siemcrew"
TOKEN_REALM = "siemcrew"
TOKEN_USER = "serve_token"
TOKEN_ENV = "SIEMCREW_SERVE_TOKEN"
SECRET_WORDS = ("token", "password", "secret", "session_key")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class ActionError(Exception):
    """The hand-off failed in a way the alert's owner must fix or retry."""


def log(level, message):
    """splunkd files stderr lines under sendmodalert by their leading level."""
    sys.stderr.write("%s %s\n" % (level, message))
    sys.stderr.flush()


def int_param(config, name, default):
    try:
        return int(str(config.get(name) or default).strip())
    except ValueError:
        raise ActionError("parameter %s must be an integer, got %r" % (name, config.get(name)))


# -- results ------------------------------------------------------------------------------------
def decode_mv(text):
    """Splunk's multivalue encoding `$a$;$b$` (a literal $ is written $$) into a list."""
    values = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            raise ValueError("bad multivalue encoding: %r" % text[:80])
        i += 1
        chars = []
        while i < len(text):
            if text[i] == "$":
                if i + 1 < len(text) and text[i + 1] == "$":
                    chars.append("$")
                    i += 2
                    continue
                break
            chars.append(text[i])
            i += 1
        values.append("".join(chars))
        i += 1
        if i < len(text) and text[i] == ";":
            i += 1
    return values


def read_rows(path, max_rows):
    """Rows of the gzipped CSV results file; `__mv_<field>` columns become list values."""
    csv.field_size_limit(2 ** 31 - 1)
    rows = []
    total = 0
    with gzip.open(path, "rt", encoding="utf-8", errors="replace", newline="") as handle:
        for record in csv.DictReader(handle):
            total += 1
            if len(rows) >= max_rows:
                continue
            row = {}
            for key, value in record.items():
                if key is None or key.startswith("__mv_") or value in (None, ""):
                    continue
                encoded = record.get("__mv_" + key)
                row[key] = decode_mv(encoded) if encoded else value
            rows.append(row)
    if total > len(rows):
        log("WARN", "%d result rows; handing off the first %d (param max_rows)" % (total, len(rows)))
    return rows


# -- token --------------------------------------------------------------------------------------
def splunkd_context(server_uri):
    """Verify splunkd's certificate with Splunk's own CA; its default cert names no loopback host."""
    cafile = os.path.join(os.environ.get("SPLUNK_HOME", ""), "etc", "auth", "cacert.pem")
    context = ssl.create_default_context(cafile=cafile if os.path.isfile(cafile) else None)
    if parse.urlsplit(server_uri).hostname in LOOPBACK:
        context.check_hostname = False
    return context


def token_from_store(payload):
    server_uri = payload.get("server_uri") or ""
    session_key = payload.get("session_key") or ""
    if not server_uri or not session_key:
        return None
    name = parse.quote("%s:%s:" % (TOKEN_REALM, TOKEN_USER), safe="")
    url = "%s/servicesNS/nobody/%s/storage/passwords/%s?output_mode=json" % (server_uri.rstrip("/"), APP, name)
    req = request.Request(url, headers={"Authorization": "Splunk " + session_key})
    context = splunkd_context(server_uri) if url.startswith("https") else None
    try:
        with request.urlopen(req, timeout=5, context=context) as response:
            entries = json.loads(response.read().decode("utf-8")).get("entry") or []
    except (error.URLError, OSError, ValueError) as exc:
        log("WARN", "credential store lookup failed (%s); trying %s" % (getattr(exc, "code", type(exc).__name__), TOKEN_ENV))
        return None
    for entry in entries:
        secret = (entry.get("content") or {}).get("clear_password")
        if secret:
            return secret
    return None


def find_token(payload):
    token = token_from_store(payload) or os.environ.get(TOKEN_ENV)
    if not token:
        raise ActionError(
            "no siemcrew serve token: store it in Splunk's credential store (app %s, realm %s, user %s) "
            "or set %s for splunkd" % (APP, TOKEN_REALM, TOKEN_USER, TOKEN_ENV)
        )
    return token


# -- hand-off -----------------------------------------------------------------------------------
def build_body(payload, rows):
    config = payload.get("configuration") or {}
    return {
        "sid": payload.get("sid") or "",
        "search_name": payload.get("search_name") or "",
        "app": payload.get("app") or "",
        "owner": payload.get("owner") or "",
        "results_link": payload.get("results_link") or "",
        "server_uri": payload.get("server_uri") or "",
        "configuration": {
            str(k): str(v) for k, v in config.items() if not any(word in str(k).lower() for word in SECRET_WORDS)
        },
        "rows": rows,
    }


def post(url, body, token, config):
    """POST once; returns (status, parsed answer). Raises URLError/OSError on transport failures."""
    data = json.dumps(body).encode("utf-8")
    headers = {"Authorization": "Bearer " + token, "Content-Type": "application/json", "User-Agent": "siemcrew-splunk-action"}
    context = ssl.create_default_context(cafile=config.get("ca_file") or None) if url.startswith("https") else None
    req = request.Request(url, data=data, headers=headers, method="POST")
    try:
        with request.urlopen(req, timeout=int_param(config, "timeout", 5), context=context) as response:
            return response.status, _answer(response.read())
    except error.HTTPError as exc:
        return exc.code, _answer(exc.read())


def _answer(raw):
    try:
        parsed = json.loads(raw.decode("utf-8") or "{}")
    except ValueError:
        return {"detail": raw[:200].decode("utf-8", "replace")}
    return parsed if isinstance(parsed, dict) else {"detail": parsed}


def handoff(payload):
    config = payload.get("configuration") or {}
    serve_url = (config.get("serve_url") or "").strip().rstrip("/")
    if not serve_url.startswith(("http://", "https://")):
        raise ActionError("parameter serve_url must be the http(s) URL of siemcrew serve, got %r" % serve_url)
    if not payload.get("sid"):
        raise ActionError("payload has no sid")
    max_rows = int_param(config, "max_rows", 1000)
    results_file = payload.get("results_file") or ""
    if results_file and os.path.isfile(results_file):
        rows = read_rows(results_file, max_rows)
    elif isinstance(payload.get("result"), dict):
        log("WARN", "results file %r not readable; handing off the first result only" % results_file)
        rows = [payload["result"]]
    else:
        raise ActionError("results file %r not readable and the payload has no result" % results_file)
    body = build_body(payload, rows)
    token = find_token(payload)
    url = serve_url + "/v1/alerts/splunk"
    attempts = 1 + max(int_param(config, "retries", 3), 0)
    for attempt in range(1, attempts + 1):
        try:
            status, answer = post(url, body, token, config)
        except (error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise ActionError("TLS certificate of %s not trusted (%s); set param ca_file" % (serve_url, reason.verify_message))
            status, answer = None, {"detail": str(reason)}
        if status == 202 or (status == 200 and answer.get("duplicate")):
            what = "already handed off" if answer.get("duplicate") else "accepted"
            log("INFO", "sid=%s %s by siemcrew serve: %s row(s), cases %s" % (
                body["sid"], what, answer.get("accepted", len(rows)), ", ".join(answer.get("case_ids") or []) or "-"))
            return 0
        if status in (401, 403):
            raise ActionError("siemcrew serve rejected the token (HTTP %s)" % status)
        if status is not None and status < 500 and status != 429:
            raise ActionError("siemcrew serve refused the hand-off (HTTP %s): %s" % (status, answer.get("detail", answer)))
        if attempt < attempts:
            delay = min(0.5 * 2 ** (attempt - 1), 4.0)
            log("WARN", "hand-off attempt %d failed (%s); retrying in %.1fs" % (attempt, status or answer.get("detail"), delay))
            time.sleep(delay)
    raise ActionError("siemcrew serve unreachable after %d attempts (last: %s)" % (attempts, status or answer.get("detail")))


def main(argv, stdin):
    if len(argv) < 2 or argv[1] != "--execute":
        log("FATAL", "Unsupported execution mode (expected --execute)")
        return 1
    try:
        payload = json.loads(stdin.read())
        if not isinstance(payload, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        log("ERROR", "invalid alert payload on stdin: %s" % exc)
        return 2
    try:
        return handoff(payload)
    except ActionError as exc:
        log("ERROR", "sid=%s %s" % (payload.get("sid"), exc))
        return 2
    except Exception as exc:  # never a stack trace in splunkd.log
        log("ERROR", "sid=%s unexpected %s: %s" % (payload.get("sid"), type(exc).__name__, exc))
        return 3


if __name__ == "__main__":
    sys.exit(main(sys.argv, sys.stdin))

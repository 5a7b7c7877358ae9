"""The Kibana half of the emulator: auth, `kbn-xsrf`, spaces, alert status and cases.

Errors use Kibana's Boom envelope `{"statusCode", "error", "message"}`. Alert status updates change
the alert documents in the emulated Elasticsearch (`kibana.alert.workflow_status`), like Kibana's
update_by_query does. Cases keep their comments; attaching the same alert twice is stored twice,
so a client that does not check first shows up in the test.
"""

from __future__ import annotations

import base64
import json
import re
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from emulators.elastic_store import EsError, matches

if TYPE_CHECKING:
    from emulators.elastic import ElasticEmulator, Response

API_VERSION = "2023-10-31"
STATUSES = {"open", "closed", "acknowledged", "in-progress"}
REASONS = {"false_positive", "duplicate", "true_positive", "benign_positive", "automated_closure", "other"}
OWNERS = {"securitySolution", "observability", "cases"}
SEVERITIES = {"low", "medium", "high", "critical"}
MAX_ALERTS_PER_CASE = 1000


class Boom(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> dict[str, Any]:
        error = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 409: "Conflict"}.get(self.status, "Error")
        return {"statusCode": self.status, "error": error, "message": self.message}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


class KibanaApi:
    def __init__(self, emulator: "ElasticEmulator") -> None:
        self.emulator = emulator
        self.status_updates: list[dict[str, Any]] = []
        self.cases: dict[str, dict[str, Any]] = {}
        self.supports_reason = True

    def _response(self, status: int, body: Any) -> "Response":
        from emulators.elastic import Response

        return Response(status, body, {}, "application/json; charset=utf-8")

    def _user(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if auth == f"ApiKey {self.emulator.api_key}":
            return "siemcrew-api-key"
        expected = base64.b64encode(f"{self.emulator.username}:{self.emulator.password}".encode()).decode()
        return self.emulator.username if auth == f"Basic {expected}" else None

    def handle(
        self, method: str, path: str, params: dict[str, str], multi: list[tuple[str, str]], headers: dict[str, str], raw: bytes
    ) -> "Response":
        try:
            user = self._user(headers)
            if user is None:
                reason = "unable to authenticate with provided credentials and anonymous access is not allowed for this request"
                raise Boom(401, f"[security_exception\n\tRoot causes:\n\t\tsecurity_exception: {reason}]: {reason}")
            if method not in ("GET", "HEAD") and "kbn-xsrf" not in headers:
                raise Boom(400, "Request must contain a kbn-xsrf header.")
            version = headers.get("elastic-api-version")
            if version is not None and version != API_VERSION:
                raise Boom(400, f'Invalid version. Received "{version}", expected "{API_VERSION}".')
            space = "default"
            match = re.match(r"^/s/([a-z0-9_\-]+)(/.*)$", path)
            if match:
                space, path = match.group(1), match.group(2)
            body: Any = None
            if raw:
                try:
                    body = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError):
                    raise Boom(400, "Invalid request payload JSON format") from None
            return self._route(method, path, space, params, multi, body, user)
        except Boom as exc:
            return self._response(exc.status, exc.body())

    def _route(
        self, method: str, path: str, space: str, params: dict[str, str], multi: list[tuple[str, str]], body: Any, user: str
    ) -> "Response":
        if method == "GET" and path == "/api/status":
            return self._response(200, {
                "name": "kibana-emulator", "version": {"number": "9.1.0", "build_flavor": "traditional"},
                "status": {"overall": {"level": "available", "summary": "All services and plugins are available"}},
            })
        if method == "POST" and path == "/api/detection_engine/signals/status":
            return self._response(200, self._signals_status(space, body))
        if method == "POST" and path == "/api/cases":
            return self._response(200, self._create_case(space, body, user))
        if method == "GET" and path == "/api/cases/_find":
            return self._response(200, self._find_cases(space, params, multi))
        match = re.match(r"^/api/cases/([^/]+)(/comments(/_find)?)?$", path)
        if match:
            case = self.cases.get(match.group(1))
            if case is None or case["_space"] != space:
                raise Boom(404, f"Saved object [cases/{match.group(1)}] not found")
            if method == "GET" and not match.group(2):
                return self._response(200, self._public(case, with_comments=True))
            if method == "POST" and match.group(2) and not match.group(3):
                return self._response(200, self._add_comment(case, body, user))
            if method == "GET" and match.group(3):
                page, per_page = int(params.get("page", 1)), int(params.get("perPage", 20))
                comments = case["comments"]
                return self._response(200, {
                    "page": page, "per_page": per_page, "total": len(comments),
                    "comments": comments[(page - 1) * per_page : page * per_page],
                })
        raise Boom(404, "Not Found")

    # -- alerts ---------------------------------------------------------------------------------
    def _signals_status(self, space: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Boom(400, "[request body]: expected a plain object value, but found [null] instead.")
        status = body.get("status")
        if status not in STATUSES:
            raise Boom(400, f'[request body]: Invalid value "{status}" supplied to "status"')
        if "reason" in body:
            if not self.supports_reason:
                raise Boom(400, "[request body]: reason: definition for this key is missing")
            if body["reason"] not in REASONS:
                raise Boom(400, f'[request body]: Invalid value "{body["reason"]}" supplied to "reason"')
        ids, query = body.get("signal_ids"), body.get("query")
        if (ids is None) == (query is None):
            raise Boom(400, "[request body]: Status update must include either signal_ids or query, but not both")
        store = self.emulator.store
        alias = f".alerts-security.alerts-{space}"
        updated = 0
        with store.lock:
            try:
                indices = store.resolve(alias)
            except EsError:
                indices = []
            for index in indices:
                for doc in list(index.docs.values()):
                    hit = doc.id in ids if ids is not None else _matches(query, doc)
                    if not hit:
                        continue
                    source = dict(doc.source)
                    source["kibana.alert.workflow_status"] = "acknowledged" if status == "in-progress" else status
                    source["kibana.alert.workflow_status_updated_at"] = _now()
                    if body.get("reason"):
                        source["kibana.alert.workflow_reason"] = body["reason"]
                    index.put(doc.id, source)
                    updated += 1
        self.status_updates.append({"space": space, **body})
        return {
            "took": 5, "timed_out": False, "total": updated, "updated": updated, "deleted": 0, "batches": 1,
            "version_conflicts": 0, "noops": 0, "retries": {"bulk": 0, "search": 0}, "throttled_millis": 0,
            "requests_per_second": -1, "throttled_until_millis": 0, "failures": [],
        }

    # -- cases ----------------------------------------------------------------------------------
    def _create_case(self, space: str, body: Any, user: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise Boom(400, "[request body]: expected a plain object value")
        for key, kind in (("title", str), ("description", str), ("tags", list), ("owner", str), ("connector", dict), ("settings", dict)):
            if not isinstance(body.get(key), kind):
                raise Boom(400, f'Invalid value "{body.get(key, "undefined")}" supplied to "{key}"')
        if not body["title"].strip() or len(body["title"]) > 160:
            raise Boom(400, "The length of the title is too long. The maximum length is 160." if body["title"].strip() else "The title field cannot be an empty string.")
        if body["owner"] not in OWNERS:
            raise Boom(400, f'Invalid value "{body["owner"]}" supplied to "owner"')
        if body.get("severity", "low") not in SEVERITIES:
            raise Boom(400, f'Invalid value "{body["severity"]}" supplied to "severity"')
        if any(not isinstance(tag, str) or len(tag) > 256 for tag in body["tags"]) or len(body["tags"]) > 200:
            raise Boom(400, "The length of the field tags is too long. The maximum length is 200.")
        extra = set(body) - {"title", "description", "tags", "owner", "connector", "settings", "severity", "assignees", "category", "customFields"}
        if extra:
            raise Boom(400, f"invalid keys \"{', '.join(sorted(extra))}\"")
        case_id = str(uuid.uuid4())
        case = {
            "id": case_id, "version": "WzEsMV0=", "title": body["title"], "description": body["description"],
            "tags": list(body["tags"]), "owner": body["owner"], "status": "open", "severity": body.get("severity", "low"),
            "assignees": body.get("assignees") or [], "settings": body["settings"], "customFields": [],
            "connector": body["connector"], "external_service": None, "comments": [], "totalComment": 0, "totalAlerts": 0,
            "duration": None, "closed_at": None, "closed_by": None, "created_at": _now(),
            "created_by": {"username": user, "full_name": None, "email": None}, "updated_at": None, "updated_by": None,
            "_space": space,
        }
        self.cases[case_id] = case
        return self._public(case, with_comments=True)

    def _public(self, case: dict[str, Any], with_comments: bool) -> dict[str, Any]:
        out = {k: v for k, v in case.items() if not k.startswith("_")}
        out["comments"] = list(case["comments"]) if with_comments else []
        return out

    def _find_cases(self, space: str, params: dict[str, str], multi: list[tuple[str, str]]) -> dict[str, Any]:
        tags = [v for k, v in multi if k in ("tags", "tags[]")]
        owners = [v for k, v in multi if k == "owner"]
        found = [
            c for c in self.cases.values()
            if c["_space"] == space and (not tags or set(tags) & set(c["tags"])) and (not owners or c["owner"] in owners)
        ]
        found.sort(key=lambda c: c["created_at"], reverse=params.get("sortOrder", "desc") == "desc")
        page, per_page = int(params.get("page", 1)), int(params.get("perPage", 20))
        chosen = found[(page - 1) * per_page : page * per_page]
        return {
            "cases": [self._public(c, with_comments=False) for c in chosen], "page": page, "per_page": per_page,
            "total": len(found), "count_open_cases": sum(1 for c in found if c["status"] == "open"),
            "count_in_progress_cases": 0, "count_closed_cases": sum(1 for c in found if c["status"] == "closed"),
        }

    def _add_comment(self, case: dict[str, Any], body: Any, user: str) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("type") not in ("user", "alert"):
            raise Boom(400, f'Invalid value "{(body or {}).get("type", "undefined") if isinstance(body, dict) else body}" supplied to "type"')
        if body.get("owner") != case["owner"]:
            raise Boom(400, f'Expected owner "{case["owner"]}" but found "{body.get("owner")}"')
        comment: dict[str, Any] = {"id": str(uuid.uuid4()), "version": "WzIsMV0=", "type": body["type"], "owner": body["owner"],
                                   "created_at": _now(), "created_by": {"username": user}, "pushed_at": None, "updated_at": None}
        if body["type"] == "user":
            text = body.get("comment")
            if not isinstance(text, str) or not text.strip():
                raise Boom(400, "The comment field cannot be an empty string.")
            if len(text) > 30000:
                raise Boom(400, "The length of the comment is too long. The maximum length is 30000.")
            comment["comment"] = text
            case["totalComment"] += 1
        else:
            alert_ids, indices = body.get("alertId"), body.get("index")
            ids = alert_ids if isinstance(alert_ids, list) else [alert_ids]
            idx = indices if isinstance(indices, list) else [indices]
            if not all(isinstance(v, str) and v for v in ids + idx) or len(ids) != len(idx):
                raise Boom(400, "Both alertId and index must be strings or arrays of the same length")
            rule = body.get("rule")
            if not isinstance(rule, dict) or "id" not in rule or "name" not in rule:
                raise Boom(400, 'Invalid value "undefined" supplied to "rule"')
            if case["totalAlerts"] + len(ids) > MAX_ALERTS_PER_CASE:
                raise Boom(400, f"The case with id {case['id']} has reached the limit of {MAX_ALERTS_PER_CASE} alerts.")
            comment.update(alertId=alert_ids, index=indices, rule=rule)
            case["totalAlerts"] += len(ids)
        case["comments"].append(comment)
        case["updated_at"] = _now()
        case["version"] = base64.b64encode(f"[{len(case['comments']) + 1},1]".encode()).decode()
        return self._public(case, with_comments=True)


def _matches(query: Any, doc: Any) -> bool:
    try:
        return matches(query, doc)
    except EsError as exc:
        raise Boom(400, exc.reason) from None

"""What every resource module shares: the route table entry, JSON errors, body and query parsing, cursors.

Error vocabulary (``{"error": {"code", "message"}}``):
400 ``bad_request`` / ``bad_json`` (unparseable input), 401 ``unauthorized``, 403 ``forbidden``,
404 ``not_found``, 405 ``method_not_allowed``, 409 ``conflict`` (the action does not apply to the current
state), 413 ``too_large``, 422 ``invalid`` (well-formed but wrong values), 500 ``internal`` (a bug, never
caused by input).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Iterable, Sequence

from aiohttp import web

from admin_api.bulk import BulkJobs
from admin_api.config import AdminConfig

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
APP_KEY = web.AppKey("relaybox", object)
CONFIG_KEY = web.AppKey("admin_config", AdminConfig)
TAIL_KEY = web.AppKey("event_tail", object)
JOBS_KEY = web.AppKey("bulk_jobs", BulkJobs)
TOKEN_NAME: Any = web.RequestKey("token_name", str) if hasattr(web, "RequestKey") else "token_name"


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", what)


def conflict(message: str) -> ApiError:
    return ApiError(409, "conflict", message)


def invalid(message: str) -> ApiError:
    return ApiError(422, "invalid", message)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def error_response(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def ok(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda o: json.dumps(o, default=str))


@dataclass
class Param:
    name: str
    type: str = "string"           # string | integer | boolean | number
    description: str = ""
    where: str = "query"           # query | path
    enum: list[str] | None = None
    required: bool = False
    minimum: int | None = None
    maximum: int | None = None
    min_length: int | None = None


@dataclass
class Route:
    """One endpoint: registered on the aiohttp router and described in the OpenAPI document."""

    method: str
    path: str
    handler: Handler
    summary: str
    tag: str
    params: list[Param] = field(default_factory=list)
    body: dict | None = None       # JSON schema of the request body
    response: dict | None = None   # JSON schema of a 2xx response body
    status: int = 200
    errors: tuple[int, ...] = ()   # documented error statuses besides 400/401/403/413
    auth: bool = True
    content_type: str = "application/json"


# ---- request helpers -------------------------------------------------------------------------------
def relaybox(request: web.Request) -> Any:
    return request.app[APP_KEY]


async def read_json(request: web.Request, *, required: bool = True) -> dict:
    """The body as a JSON object. 413 beyond the size limit, 400 for bad JSON or a non-object."""
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ApiError(413, "too_large", f"request body larger than {request.app[CONFIG_KEY].max_body_size}"
                       " bytes") from None
    if not raw.strip():
        if required:
            raise ApiError(400, "bad_json", "a JSON object body is required")
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "bad_json", f"body nested deeper than {MAX_JSON_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "bad_json", f"body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise ApiError(400, "bad_json", "body must be a JSON object")
    problem = json_problem(data)
    if problem:
        raise ApiError(400, "bad_json", problem)
    return data


MAX_JSON_DEPTH = 32


def json_problem(data: Any, max_depth: int = MAX_JSON_DEPTH) -> str | None:
    """What makes a parsed body unsafe to hand on, or None: nesting beyond ``max_depth`` (no handler or
    serializer may recurse on it) or a string (value or key) that is not valid Unicode (``"\\ud800"``:
    a lone surrogate the database driver and every encoder would choke on). Iterative: never recurses."""
    stack: list[tuple[Any, int]] = [(data, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            try:
                node.encode("utf-8")
            except UnicodeEncodeError:
                return "body holds a string that is not valid Unicode (a lone surrogate escape)"
            continue
        if not isinstance(node, (dict, list)):
            continue
        if depth > max_depth:
            return f"body nested deeper than {max_depth} levels"
        items = [*node.keys(), *node.values()] if isinstance(node, dict) else node
        stack.extend((v, depth + 1) for v in items)
    return None


def body_str(body: dict, key: str, *, required: bool = True, max_len: int = 1000) -> str | None:
    v = body.get(key)
    if v is None:
        if required:
            raise invalid(f"{key}: required")
        return None
    if not isinstance(v, str):
        raise invalid(f"{key}: expected a string")
    if len(v) > max_len:
        raise invalid(f"{key}: longer than {max_len} characters")
    return v


def body_bool(body: dict, key: str, default: bool = False) -> bool:
    v = body.get(key, default)
    if not isinstance(v, bool):
        raise invalid(f"{key}: expected true or false")
    return v


def query_int(request: web.Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise bad_request(f"{name}: expected an integer, got {raw[:40]!r}") from None
    if not lo <= v <= hi:
        raise bad_request(f"{name}: expected {lo}..{hi}")
    return v


def query_bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return None
    if raw.lower() in ("1", "true", "yes"):
        return True
    if raw.lower() in ("0", "false", "no"):
        return False
    raise bad_request(f"{name}: expected true or false")


def parse_time(value: Any, name: str) -> float:
    """Epoch seconds or ISO 8601 (naive = UTC)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
        try:
            t = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise bad_request(f"{name}: expected epoch seconds or ISO 8601, got {value[:40]!r}") from None
        if t.tzinfo is None:
            t = t.replace(tzinfo=dt.timezone.utc)
        return t.timestamp()
    raise bad_request(f"{name}: expected epoch seconds or ISO 8601")


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def encode_cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def decode_cursor(raw: str | None) -> Any:
    if not raw:
        return None
    try:
        return json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, UnicodeDecodeError):
        raise bad_request("cursor: not a cursor returned by this API") from None


def actor(request: web.Request) -> str:
    return f"admin:{request.get(TOKEN_NAME, 'unknown')}"


def page(items: list, next_cursor: str | None) -> dict:
    return {"items": items, "next_cursor": next_cursor}


PAGE_PARAMS = [
    Param("limit", "integer", "page size (1..1000)", minimum=1, maximum=1000),
    Param("cursor", "string", "opaque cursor from the previous page's next_cursor"),
]

ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"],
                             "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
}


def page_schema(item: dict) -> dict:
    return {"type": "object", "required": ["items", "next_cursor"],
            "properties": {"items": {"type": "array", "items": item},
                           "next_cursor": {"type": "string", "nullable": True}}}


@dataclass(frozen=True)
class TimePage:
    """The query of a newest-first list with exact-match filters, a time window and a ``before`` cursor
    (bounces, rejections): what the store's ``list(filters, since=, until=, before=, limit=)`` takes."""

    filters: dict[str, str]
    since: float | None
    until: float | None
    before: int | None
    limit: int

    def next_cursor(self, rows: Sequence[Any]) -> str | None:
        """The cursor after a page fetched with ``limit + 1`` rows (None when there is no more)."""
        return encode_cursor({"before": rows[self.limit - 1].id}) if len(rows) > self.limit else None


def time_page(request: web.Request, filters: Iterable[str]) -> TimePage:
    """``filters``, ``since``, ``until``, ``limit`` and ``cursor`` of a newest-first list; 400 if bad."""
    q = request.query
    cur = decode_cursor(q.get("cursor"))
    if cur is not None and not (isinstance(cur, dict) and isinstance(cur.get("before"), int)):
        raise bad_request("cursor: not a cursor returned by this API")
    return TimePage({k: q[k] for k in filters if q.get(k)},
                    parse_time(q["since"], "since") if q.get("since") else None,
                    parse_time(q["until"], "until") if q.get("until") else None,
                    cur["before"] if cur else None, query_int(request, "limit", 50, 1, 1000))


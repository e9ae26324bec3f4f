"""Console pages of the inbound side: campaigns (list, add, edit, delete), the poller's quarantine (list,
inspect, download, retry, drop) and a channel's ordered filters (add, remove, move up / down).

Each write goes through the API's own steps (``routes_campaigns.create/update/delete``,
``routes_quarantine.retry_one`` and ``store.inbound.drop_quarantined``, ``routes_channels.replace_filters``);
reads through the same ``poller.channels`` / ``store.inbound`` calls as the API's lists. No SQL here."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

from aiohttp import web

from admin_api import routes_campaigns, routes_channels, routes_quarantine
from admin_api.common import ApiError, invalid
from admin_api.ui.preview import text_preview
from admin_api.ui.views import SESSION, Handler, back, param, rb, render, signed_in, writes
from poller import channels
from poller.config import CampaignConfig, FilterConfig
from store.inbound import QuarantineItem

KINDS = ("maildir", "webhook", "smtp")
ATTACHMENTS = ("base64", "none")
CAMPAIGN_HELP = {
    "name": "identifier: letter or digit, then letters, digits, _ . - (at most 64); cannot be changed",
    "kind": "maildir: files in a directory; webhook: signed HTTP POST; smtp: forwarded through the queue",
    "path": "maildir: the directory (empty: the poller's maildir_root/<name>)",
    "url": "webhook: the endpoint receiving the JSON POST",
    "secret": "webhook: HMAC-SHA256 key of X-Relaybox-Signature (write-only)",
    "timeout": 'webhook: per request, seconds or a duration like "15s"',
    "attachments": "webhook: base64 (attachments included) or none (metadata only)",
    "forward_to": "smtp: the address that receives the message",
    "sender": "smtp: envelope sender (empty: the channel's address)",
}
FILTER_FIELDS = ("sender", "subject", "body", "to", "header")
FILTER_OPS = ("contains", "equals", "regex")
QUARANTINE_LIMIT = 200


def _readonly_refused(request: web.Request) -> None:
    s = request[SESSION]
    if s.readonly:
        raise ApiError(403, "forbidden", f"token {s.name!r} is read-only")


# ---- campaigns -----------------------------------------------------------------------------------------
@signed_in
async def campaign_list(request: web.Request) -> web.StreamResponse:
    items = await channels.list_campaigns(rb(request).store.inbound)
    used: dict[str, list[str]] = {}
    for ch in await channels.list_channels(rb(request).store.inbound):
        names = {ch.get("default_campaign") or ""} | {f["campaign"] for f in ch.get("filters", ())}
        for n in names - {""}:
            used.setdefault(n, []).append(ch["name"])
    return render(request, "campaigns.html", {"page": "campaigns", "items": items, "used": used})


def _campaign_fields(values: dict[str, Any], editing: bool) -> list[dict[str, Any]]:
    out = []
    for f in dataclasses.fields(CampaignConfig):
        kind = {"kind": "enum", "attachments": "enum", "secret": "secret"}.get(f.name, "text")
        default = f.default if f.default is not dataclasses.MISSING else ""
        value = values.get(f.name, default)
        out.append({"name": f.name, "kind": kind, "value": "" if kind == "secret" else value,
                    "choices": KINDS if f.name == "kind" else ATTACHMENTS,
                    "readonly": editing and f.name == "name", "required": f.name == "name",
                    "help": CAMPAIGN_HELP.get(f.name, "")})
    return out


def _campaign_body(form: Any, editing: bool) -> dict[str, Any]:
    """The API's JSON body from the posted form; on an edit an empty secret keeps the stored one."""
    body: dict[str, Any] = {}
    for f in dataclasses.fields(CampaignConfig):
        raw = form.get(f.name)
        value = str(raw) if isinstance(raw, str) else ""
        if f.name == "secret":
            if editing and value == "":
                body[f.name] = routes_campaigns.MASK
            else:
                body[f.name] = value
            continue
        value = value.strip()
        if f.name == "timeout":
            if value:
                body[f.name] = value
            continue
        body[f.name] = value
    if editing:
        body.pop("name", None)
    return body


@signed_in
async def campaign_form(request: web.Request) -> web.StreamResponse:
    _readonly_refused(request)
    name = param(request, "name")
    values: dict[str, Any] = {}
    if name:
        c = await channels.get_campaign(rb(request).store.inbound, name)
        if c is None:
            raise ApiError(404, "not_found", f"no campaign {name}")
        values = {k: v for k, v in dataclasses.asdict(c).items() if k != "secret"}
        values["timeout"] = f"{float(c.timeout):g}s"
    return render(request, "campaign_form.html", {"page": "campaigns", "name": name, "error": "",
                                                  "fields": _campaign_fields(values, bool(name))})


@writes
async def campaign_save(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    form = await request.post()
    shown = {k: v for k, v in form.items() if isinstance(v, str) and k not in ("csrf", "secret")}
    inbound = rb(request).store.inbound
    try:
        body = _campaign_body(form, bool(name))
        if name:
            await routes_campaigns.update(inbound, name, body)
        else:
            name = await routes_campaigns.create(inbound, body)
    except ApiError as exc:
        if exc.status == 404:
            raise
        editing = bool(param(request, "name"))
        return render(request, "campaign_form.html", {
            "page": "campaigns", "name": param(request, "name"), "error": exc.message,
            "fields": _campaign_fields(shown, editing)}, status=exc.status)
    request[SESSION].flash("ok", f"campaign {name}: saved")
    raise back("/ui/campaigns")


@writes
async def campaign_delete(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    try:
        await routes_campaigns.delete(rb(request).store.inbound, name)
    except ApiError as exc:
        if exc.status == 404:
            raise
        request[SESSION].flash("error", f"campaign {name}: {exc.message}")
    else:
        request[SESSION].flash("ok", f"campaign {name}: deleted")
    raise back("/ui/campaigns")


# ---- quarantine ----------------------------------------------------------------------------------------
async def _quarantined(request: web.Request) -> QuarantineItem:
    raw = param(request, "id")
    if not raw.isdigit() or len(raw) > 18:
        raise ApiError(404, "not_found", f"no quarantined message {raw[:40]}")
    q = await rb(request).store.inbound.quarantined(int(raw))
    if q is None:
        raise ApiError(404, "not_found", f"no quarantined message {raw}")
    return q


@signed_in
async def quarantine_list(request: web.Request) -> web.StreamResponse:
    channel = request.query.get("channel", "").strip()[:200]
    items = await rb(request).store.inbound.quarantine(limit=QUARANTINE_LIMIT, channel=channel or None)
    names = [c["name"] for c in await channels.list_channels(rb(request).store.inbound)]
    return render(request, "quarantine.html", {"page": "quarantine", "items": [q.as_dict() for q in items],
                                               "channel": channel, "channels": names,
                                               "limit": QUARANTINE_LIMIT})


@signed_in
async def quarantine_item(request: web.Request) -> web.StreamResponse:
    q = await _quarantined(request)
    raw = await rb(request).store.inbound.raw(q.id)
    return render(request, "quarantine_item.html", {
        "page": "quarantine", "q": q.as_dict(), "headers": routes_quarantine.header_fields(raw),
        "preview": text_preview(raw) if raw is not None else None})


@signed_in
async def quarantine_raw(request: web.Request) -> web.StreamResponse:
    q = await _quarantined(request)
    data = await rb(request).store.inbound.raw(q.id)
    if data is None:
        raise ApiError(404, "not_found", f"message {q.id} was quarantined before it was fetched: no content")
    return web.Response(body=data, content_type="message/rfc822",
                        headers={"Content-Disposition": f'attachment; filename="inbound-{q.id}.eml"'})


@writes
async def quarantine_action(request: web.Request) -> web.StreamResponse:
    q = await _quarantined(request)
    action, s = param(request, "action"), request[SESSION]
    inbound = rb(request).store.inbound
    if action == "retry":
        try:
            await routes_quarantine.retry_one(inbound, q)
        except ApiError as exc:
            s.flash("error", f"message {q.id}: {exc.message}")
            raise back(f"/ui/quarantine/{q.id}") from None
        s.flash("ok", f"message {q.id}: back to its channel's delivery (status received)")
    elif action == "drop":
        await inbound.drop_quarantined(q.id)
        s.flash("ok", f"message {q.id}: dropped")
    else:
        raise ApiError(404, "not_found", f"no action {action[:40]}")
    raise back("/ui/quarantine")


# ---- a channel's ordered filters -----------------------------------------------------------------------
def _version(filters: list[FilterConfig]) -> str:
    """A fingerprint of the stored order: a change posted against an older page is refused."""
    raw = json.dumps([dataclasses.asdict(f) for f in filters], sort_keys=True).encode()
    return hashlib.sha256(raw).hexdigest()[:16]


@signed_in
async def filters_page(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    ch = await routes_channels.stored(request, name)
    campaigns = [c["name"] for c in await channels.list_campaigns(rb(request).store.inbound)]
    return render(request, "channel_filters.html", {
        "page": "channels", "name": name, "filters": [dataclasses.asdict(f) for f in ch.filters],
        "version": _version(list(ch.filters)), "campaigns": campaigns, "default": ch.default_campaign,
        "fields": FILTER_FIELDS, "ops": FILTER_OPS})


def _new_rule(form: Any) -> dict[str, str]:
    field = str(form.get("field", ""))
    if field == "header":
        header = str(form.get("header", "")).strip()
        if not header or any(c.isspace() or c == ":" for c in header) or len(header) > 100:
            raise invalid("header: the name of a header field, like List-Id")
        field = f"header:{header}"
    return {"field": field, "op": str(form.get("op", "contains")), "value": str(form.get("value", "")),
            "campaign": str(form.get("campaign", ""))}


def _edited(items: list[dict[str, Any]], form: Any) -> tuple[list[dict[str, Any]], str]:
    """The list after one edit (add | remove | up | down), and the words for the flash."""
    op = str(form.get("op_kind", ""))
    if op == "add":
        rule = _new_rule(form)
        raw_at = str(form.get("position", ""))
        at = int(raw_at) - 1 if raw_at.isdigit() and 0 < int(raw_at) <= len(items) else len(items)
        return [*items[:at], rule, *items[at:]], f"rule {at + 1} added"
    raw = str(form.get("index", ""))
    i = int(raw) if raw.isdigit() else -1
    if not 0 <= i < len(items):
        raise invalid("no such rule (reload the page)")
    if op == "remove":
        return items[:i] + items[i + 1:], f"rule {i + 1} removed"
    j = i - 1 if op == "up" else i + 1 if op == "down" else -1
    if not 0 <= j < len(items):
        raise invalid(f"rule {i + 1} cannot move {op or 'there'}")
    items = list(items)
    items[i], items[j] = items[j], items[i]
    return items, f"rule {i + 1} moved {op} (now rule {j + 1})"


@writes
async def filters_save(request: web.Request) -> web.StreamResponse:
    name = param(request, "name")
    s, form = request[SESSION], await request.post()
    ch = await routes_channels.stored(request, name)
    to = f"/ui/channels/{name}/filters"
    if form.get("version") != _version(list(ch.filters)):
        s.flash("error", "the filters changed since this page was loaded: nothing saved, here they are now")
        raise back(to)
    try:
        items, words = _edited([dataclasses.asdict(f) for f in ch.filters], form)
        await routes_channels.replace_filters(request, name, items)
    except ApiError as exc:
        if exc.status == 404:
            raise
        s.flash("error", f"{name}: {exc.message}")
    else:
        s.flash("ok", f"{name}: {words}")
    raise back(to)


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/ui/campaigns", campaign_list),
    ("GET", "/ui/campaigns/new", campaign_form), ("POST", "/ui/campaigns/new", campaign_save),
    ("GET", "/ui/campaigns/{name}/edit", campaign_form), ("POST", "/ui/campaigns/{name}/edit", campaign_save),
    ("POST", "/ui/campaigns/{name}/delete", campaign_delete),
    ("GET", "/ui/quarantine", quarantine_list),
    ("GET", "/ui/quarantine/{id}", quarantine_item), ("GET", "/ui/quarantine/{id}/eml", quarantine_raw),
    ("POST", "/ui/quarantine/{id}/{action}", quarantine_action),
    ("GET", "/ui/channels/{name}/filters", filters_page),
    ("POST", "/ui/channels/{name}/filters", filters_save),
]

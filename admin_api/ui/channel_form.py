"""The channel add/edit form: every field of ``poller.config.ChannelConfig`` (but the filters, which the
form keeps as they are), turned into the same JSON body the API takes and saved through the API's own
steps (``routes_channels``: build, merge with the stored channel, validate against the server, save)."""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from admin_api import routes_channels
from admin_api.common import invalid
from poller import channels
from poller.config import ChannelConfig

SKIP = ("filters",)
FIELDS = [f for f in dataclasses.fields(ChannelConfig) if f.name not in SKIP]


def kind_of(f: dataclasses.Field) -> str:
    t = str(f.type)
    if f.name in channels.SECRET_FIELDS:
        return "secret"
    if f.name in routes_channels.ENUMS:
        return "enum"
    return {"bool": "bool", "int": "int"}.get(t, "text")


def form_fields(values: dict[str, Any], editing: bool) -> list[dict[str, Any]]:
    """What the template draws: name, kind, value (never a secret's), choices, help text."""
    out = []
    for f in FIELDS:
        k = kind_of(f)
        default = f.default if f.default is not dataclasses.MISSING else ""
        v = values.get(f.name, default)
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        out.append({"name": f.name, "kind": k, "value": "" if k == "secret" else v,
                    "choices": routes_channels.ENUMS.get(f.name, []),
                    "readonly": editing and f.name == "name",
                    "help": routes_channels.DESCRIPTIONS.get(f.name, ""), "required": required})
    return out


def body_from(form: Any, editing: bool) -> dict[str, Any]:
    """The API's JSON body from the posted form (422 on a number that is not one). On an edit an empty
    secret keeps the stored one (the API's ``***``)."""
    body: dict[str, Any] = {}
    for f in FIELDS:
        k, raw = kind_of(f), form.get(f.name)
        if k == "bool":
            body[f.name] = raw == "true"
            continue
        raw = str(raw or "").strip() if k != "secret" else str(raw or "")
        if k == "secret" and editing and raw == "":
            body[f.name] = routes_channels.MASK
        elif k == "int":
            try:
                body[f.name] = int(raw or 0)
            except ValueError:
                raise invalid(f"{f.name}: expected a whole number") from None
        elif f.name == "poll_interval":
            body[f.name] = int(raw) if raw.isdigit() else (raw or 60)
        else:
            body[f.name] = raw
    return body


async def create(request: web.Request, body: dict[str, Any]) -> tuple[str, Any]:
    """``POST /api/v1/channels``'s steps: the saved name and the validation (or None)."""
    return await routes_channels.create(request, body)


async def update(request: web.Request, name: str, body: dict[str, Any]) -> Any:
    """``PUT /api/v1/channels/{name}``'s steps (the filters stay as stored)."""
    return await routes_channels.update(request, name, {k: v for k, v in body.items() if k != "name"})

"""The OpenAPI 3.0 document, generated from the same ``Route`` table that feeds the router.

Path templates drop aiohttp's regex part (``{cidr:.+}`` -> ``{cidr}``). Every authenticated operation
declares the bearer scheme and the 401/403/413 answers; each route lists its own other error statuses.
"""

from __future__ import annotations

import re

from aiohttp import web

from admin_api.common import ERROR_SCHEMA, WRITE_METHODS, Route, ok

_DESCRIPTIONS = {400: "Malformed request (bad JSON, bad query parameter)", 401: "Missing or unknown token",
                 403: "Read-only token used for a write", 404: "No such resource",
                 409: "The action does not apply in the current state", 413: "Request body too large",
                 422: "Invalid values", 503: "Not ready"}


def openapi_path(path: str) -> str:
    return re.sub(r"\{(\w+):[^}]*\}", r"{\1}", path)


def _param_schema(p) -> dict:
    schema: dict = {"type": p.type}
    for key, value in (("enum", p.enum), ("minimum", p.minimum), ("maximum", p.maximum),
                       ("minLength", p.min_length)):
        if value is not None:
            schema[key] = value
    if p.where == "path" and p.min_length is None and p.type == "string":
        schema["minLength"] = 1
    return schema


def _operation(r: Route) -> dict:
    slug = re.sub(r"[^a-zA-Z0-9]+", "_", openapi_path(r.path)).strip("_")
    op: dict = {"summary": r.summary, "tags": [r.tag], "operationId": f"{r.method.lower()}_{slug}"}
    if r.params:
        op["parameters"] = [{
            "name": p.name, "in": p.where, "required": p.required or p.where == "path",
            "description": p.description,
            "schema": _param_schema(p)} for p in r.params]
    if r.body is not None:
        op["requestBody"] = {"required": r.method == "POST" and "required" in r.body,
                             "content": {"application/json": {"schema": r.body}}}
    content = {r.content_type: {"schema": r.response if r.response else {}}}
    if r.content_type != "application/json":
        content = {r.content_type: {"schema": {"type": "string"}}}
    responses: dict = {str(r.status): {"description": "Success", "content": content}}
    codes = set(r.errors) | {400}
    if r.auth:
        codes |= {401}
        if r.method in WRITE_METHODS:
            codes |= {403, 413}
        op["security"] = [{"bearer": []}]
    else:
        op["security"] = []
    for c in sorted(codes):
        body = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}} if c != 503 else \
            {"application/json": {"schema": {"type": "object"}}}
        responses[str(c)] = {"description": _DESCRIPTIONS.get(c, "Error"), "content": body}
    op["responses"] = responses
    return op


def build(routes: list[Route]) -> dict:
    paths: dict = {}
    for r in routes:
        paths.setdefault(openapi_path(r.path), {})[r.method.lower()] = _operation(r)
    return {
        "openapi": "3.0.3",
        "info": {"title": "relaybox admin API", "version": "1",
                 "description": "Queue, policy, bounces and channels of a relaybox instance. Send"
                                " `Authorization: Bearer <token>`. Errors are"
                                " `{\"error\": {\"code\", \"message\"}}`."},
        "servers": [{"url": "/"}],
        "paths": paths,
        "components": {"schemas": {"Error": ERROR_SCHEMA},
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


async def serve(request: web.Request) -> web.Response:
    from admin_api.app import ROUTES_KEY

    return ok(build(request.app[ROUTES_KEY]))


ROUTES = [
    Route("GET", "/api/v1/openapi.json", serve, "This document", "meta", response={"type": "object"}),
]

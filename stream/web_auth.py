"""The bearer-token check of a worker's HTTP pages, as an aiohttp middleware (Faust's web
server is aiohttp): with a token configured, every page, Faust's own /router and /table
included, answers 401 without it. The stream worker's /members/<id>/ forwards a request to the
member's owner with its headers, so all workers of a kind share one token."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from limaml.bearer import CHALLENGE, refusal


def web_application_options(token: str | None) -> dict[str, Any]:
    """Faust's `web_application_options` (the aiohttp Application's arguments) for `token`."""
    if token is None:
        return {}

    @web.middleware
    async def require_bearer_token(request: web.Request, handler: Any) -> web.StreamResponse:
        detail = refusal(request.headers.get("Authorization"), token)
        if detail is not None:
            return web.json_response({"detail": detail}, status=401, headers=CHALLENGE)
        return await handler(request)

    return {"middlewares": [require_bearer_token]}

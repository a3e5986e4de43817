"""The scoring service's bearer-token check, an ASGI middleware: a request without the token
is answered 401 before the app reads its body or routes it, whatever the path (the API
description included); only /healthz, a load balancer's probe, stays open."""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from limaml.bearer import CHALLENGE, refusal

OPEN_PATHS = frozenset({"/healthz"})


class BearerAuth:
    def __init__(self, app: ASGIApp, token: str, open_paths: frozenset[str] = OPEN_PATHS) -> None:
        self.app = app
        self.token = token
        self.open_paths = open_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in self.open_paths:
            detail = refusal(Headers(scope=scope).get("authorization"), self.token)
            if detail is not None:
                await JSONResponse({"detail": detail}, status_code=401, headers=CHALLENGE)(scope, receive, send)
                return
        await self.app(scope, receive, send)

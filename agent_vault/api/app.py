"""FastAPI app factory: routers, the SPEC §6 error shape, 422 without input values, Host and CSRF guards."""

from __future__ import annotations

import importlib
import logging
import uuid
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.body_limit import RequestBodyLimitMiddleware

from agent_vault import __version__, validation
from agent_vault.api import admin, agent, csrf, identity, instance, ratelimit
from agent_vault.api.deps import agent_caller
from agent_vault.errors import AgentVaultError, InvalidRequest, NotFound

log = logging.getLogger("agent_vault.api")
MAX_BODY = 1 << 20
OPTIONAL_ROUTERS = ("proposals", "observability", "ui", "console", "holds")


#: An agent's own proposal (GET /v1/proposals/{id}), not found: an agent lists them over HTTP.
AGENT_PROPOSAL_NOT_FOUND_HINT = (
    "Check the id that POST /v1/proposals returned; GET /v1/proposals lists your proposals."
)


def api_hint(request: Request, err: AgentVaultError) -> None:
    """Default hints worded for an HTTP caller: a refused value is a field of the request (the CLI's
    client words it back for its own users), and an agent looks for its proposal over HTTP."""
    if isinstance(err, InvalidRequest) and err.hint == InvalidRequest.hint:
        err.hint = InvalidRequest.api_hint
    elif (
        type(err) is NotFound
        and request.method == "GET"
        and request.url.path.startswith("/v1/proposals/")
        and agent_caller(request)
    ):
        err.hint = AGENT_PROPOSAL_NOT_FOUND_HINT


def error_response(err: AgentVaultError) -> JSONResponse:
    headers = {}
    if err.status == 429 and "retry_after" in err.extra:
        headers["Retry-After"] = str(err.extra["retry_after"])
    return JSONResponse(err.body(), status_code=err.status, headers=headers)


def create_app(allowed_hosts: Callable[[], set[str]] | None = None) -> FastAPI:
    """The API. `allowed_hosts` returns acceptable Host header values (DNS-rebinding guard, 421).

    Every POST/PUT/PATCH/DELETE first passes `csrf.refusal` (cookie writes need our own Origin), in the
    middleware, so routers added later are covered without opting in."""
    app = FastAPI(title="agent-vault", version=__version__, docs_url=None, redoc_url=None)
    for r in (admin.router, identity.router, agent.router, instance.router):
        app.include_router(r)
    for name in OPTIONAL_ROUTERS:
        try:
            module = importlib.import_module(f"agent_vault.api.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"agent_vault.api.{name}":
                raise
            continue
        app.include_router(module.router)

    # SPEC §9: a body over 1 MiB is refused however it is framed (the check on Content-Length below
    # answers early; this one counts chunked bodies as they arrive: uvicorn reads them without a cap)
    app.add_middleware(RequestBodyLimitMiddleware, max_body_size=MAX_BODY)

    @app.middleware("http")
    async def guard(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if allowed_hosts is not None:
            host = request.headers.get("host", "")
            if host not in allowed_hosts():
                return JSONResponse(
                    {
                        "error": "misdirected_request",
                        "message": "unexpected Host header",
                        "hint": "Use the server's bound address.",
                    },
                    status_code=421,
                )
        core = getattr(request.app.state, "core", None)
        # before routing: every write, whichever router serves it (or none), passes the CSRF guard
        cross_site = csrf.refusal(request, core)
        if cross_site is not None:
            return error_response(cross_site)
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > MAX_BODY:
            return JSONResponse(
                {
                    "error": "body_too_large",
                    "message": "request body over 1 MiB",
                    "hint": "Send less data.",
                    "limit_bytes": MAX_BODY,
                },
                status_code=413,
            )
        limited = ratelimit.check(core, request) if core is not None else None
        if limited is not None:
            return error_response(limited)
        try:
            return await call_next(request)
        except Exception as exc:  # Starlette re-raises after the handler; answer here, log one line
            incident = uuid.uuid4().hex[:12]
            log.error("internal error %s: %s", incident, type(exc).__name__)
            return JSONResponse(
                {
                    "error": "internal",
                    "message": "internal error",
                    "hint": "See the server log.",
                    "incident": incident,
                },
                status_code=500,
            )

    @app.exception_handler(AgentVaultError)
    async def on_error(request: Request, exc: AgentVaultError) -> JSONResponse:
        api_hint(request, exc)
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = validation.fields(exc.errors())
        return JSONResponse(
            {
                "error": "invalid_request",
                "message": "the request body or parameters are invalid",
                "hint": "Fix the fields listed.",
                "fields": fields,
            },
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def on_http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # 400 is FastAPI's "error parsing the body" (e.g. not UTF-8): the SPEC §6 `bad_request`.
        code, hint = {
            400: ("bad_request", "Send a well-formed UTF-8 JSON body."),
            413: ("body_too_large", "Send less data."),
            404: ("not_found", "Check the URL; the API's paths start with /v1/."),
            405: ("method_not_allowed", "Use a method this path accepts (the Allow header lists them)."),
        }.get(exc.status_code, ("http_error", "Check the request against the API reference."))
        body: dict[str, object] = {"error": code, "message": str(exc.detail), "hint": hint}
        if exc.status_code == 413:
            body["limit_bytes"] = MAX_BODY
        return JSONResponse(body, status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def on_crash(_request: Request, exc: Exception) -> JSONResponse:
        incident = uuid.uuid4().hex[:12]
        log.error("internal error %s: %s", incident, type(exc).__name__)
        return JSONResponse(
            {
                "error": "internal",
                "message": "internal error",
                "hint": "See the server log.",
                "incident": incident,
            },
            status_code=500,
        )

    return app

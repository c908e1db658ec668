"""The one place that knows mitmproxy's private internals: the tested version range, the private
names agent-vault imports, and a start-up check of every patch point against the running engine.

agent-vault replaces or wraps parts of mitmproxy that are not public API (`engine.py`,
`dispatch.py`, the tunnel splice, the JSON error page). A setattr on a name the engine no longer
reads does nothing, so on an untested engine a fail-closed guard could silently fall back to
mitmproxy's own behaviour, which fails open. Therefore:

* `TESTED` is the mitmproxy range CI tests (the same as pyproject's pin);
* private names are imported here, and only here, inside a guard: a renamed module does not
  crash the import with a traceback, it becomes a named problem;
* `problems()` checks the version and each patch point (that the HTTP layer still builds its stream
  through the module-level name we replace, that the HTTP/1 server still answers early errors
  through `make_error_response`, ...); `require_compatible()` raises `EngineIncompatible`, which
  the CLI prints as one line and exits 1. The server calls it before importing the patching modules.

Danger: adding a new patch means adding its check to `_patch_points`.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Iterator
from typing import Any

import agent_vault.proxy.lean_mitmproxy  # noqa: F401 - before any mitmproxy.addons import (no web UI etc.)

# isort: split
from mitmproxy import version as mversion

from agent_vault.errors import AgentVaultError

TESTED = ((12, 3), (12, 4))  # >= 12.3.0, < 12.4
TESTED_TEXT = ">=12.3.0,<12.4"

_import_problems: list[str] = []
try:  # every private mitmproxy module agent-vault touches
    from mitmproxy.proxy.layers.http import _http1, _http_h2
    from mitmproxy.proxy.layers.http._base import ReceiveHttp
    from mitmproxy.proxy.layers.http._events import (
        ErrorCode,
        RequestData,
        RequestEndOfMessage,
        RequestHeaders,
        RequestProtocolError,
        ResponseData,
        ResponseEndOfMessage,
        ResponseHeaders,
        ResponseProtocolError,
    )
    from mitmproxy.proxy.layers.http._hooks import HttpErrorHook
    from mitmproxy.proxy.layers.http._http2 import Http2Client, Http2Server
except ImportError as e:  # pragma: no cover - only on an untested engine
    _import_problems.append(f"private module {e.name or e} is gone ({type(e).__name__})")

__all__ = [
    "TESTED_TEXT",
    "EngineIncompatible",
    "ErrorCode",
    "Http2Client",
    "Http2Server",
    "HttpErrorHook",
    "ReceiveHttp",
    "RequestData",
    "RequestEndOfMessage",
    "RequestHeaders",
    "RequestProtocolError",
    "ResponseData",
    "ResponseEndOfMessage",
    "ResponseHeaders",
    "ResponseProtocolError",
    "_http1",
    "problems",
    "require_compatible",
]


class EngineIncompatible(AgentVaultError):
    """The installed mitmproxy is outside the tested range or lacks a patch point."""

    code = "engine_incompatible"
    status = 500


def engine_version() -> str:
    return str(mversion.VERSION)


def _version_tuple(text: str) -> tuple[int, ...]:
    parts: list[int] = []
    for p in text.split(".")[:3]:
        digits = "".join(c for c in p if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def version_ok(text: str) -> bool:
    low, high = TESTED
    return low <= _version_tuple(text)[:2] < high


def _codes(func: Any) -> list[types.CodeType]:
    """The code objects of `func`, of what it wraps (decorators) and of functions in its closure."""
    out: list[types.CodeType] = []
    todo, seen = [func], set()
    while todo:
        f = todo.pop()
        if id(f) in seen:
            continue
        seen.add(id(f))
        code = getattr(f, "__code__", None)
        if isinstance(code, types.CodeType):
            out.append(code)
        if hasattr(f, "__wrapped__"):
            todo.append(f.__wrapped__)
        for cell in getattr(f, "__closure__", None) or ():
            if callable(cell.cell_contents):
                todo.append(cell.cell_contents)
    return out


def _names(func: Any) -> set[str]:
    """Global and attribute names a function's code reads (nested code objects included)."""
    out: set[str] = set()
    stack = _codes(func)
    while stack:
        c = stack.pop()
        out |= set(c.co_names)
        stack += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    return out


def _consts(func: Any) -> str:
    """Every string constant of a function's code (f-string parts included), joined."""
    out: list[str] = []
    stack = _codes(func)
    while stack:
        c = stack.pop()
        out += [k for k in c.co_consts if isinstance(k, str)]
        stack += [k for k in c.co_consts if isinstance(k, types.CodeType)]
    return "\n".join(out)


def _engine_class(cls: type) -> type:
    """The first class in `cls`'s MRO that mitmproxy defines: what a patch point is about, whether or
    not agent-vault's subclass has been installed under the engine's name."""
    return next((k for k in cls.__mro__ if k.__module__.startswith("mitmproxy.")), cls)


def _patch_points() -> Iterator[tuple[str, Callable[[], bool]]]:
    """(what agent-vault relies on, a check of it against the running engine)."""
    import inspect

    from mitmproxy import certs, http
    from mitmproxy.addonmanager import AddonManager
    from mitmproxy.addons import proxyserver, tlsconfig
    from mitmproxy.proxy import mode_servers, server
    from mitmproxy.proxy.layers import TCPLayer
    from mitmproxy.proxy.layers import http as mhttp
    from mitmproxy.proxy.layers import websocket as mws

    # mitmproxy's own class, also once engine.install has put VaultHttpStream under its name
    stream: Any = _engine_class(mhttp.HttpStream)
    yield (
        "HttpLayer.make_stream builds HttpStream through the module name engine.install replaces",
        lambda: "HttpStream" in _names(mhttp.HttpLayer.make_stream),
    )
    yield (
        "HttpLayer starts HTTP/1 clients through the module name Http1Server",
        lambda: "Http1Server" in _names(mhttp.HttpLayer._handle_event) and hasattr(mhttp, "Http1Server"),
    )
    state_methods = (
        "state_wait_for_request_headers",
        "state_stream_request_body",
        "state_consume_request_body",
        "state_wait_for_response_headers",
        "state_done",
        "state_errored",
        "handle_protocol_error",
        "send_response",
    )
    yield (
        "HttpStream state methods " + ", ".join(state_methods),
        lambda: (
            all(callable(getattr(stream, m, None)) for m in state_methods)
            and {"client_state", "server_state"} <= _names(stream.__init__)
        ),
    )
    yield (
        "Http1Server answers early errors through _http1.make_error_response",
        lambda: (
            "make_error_response" in _names(_http1.Http1Server.read_headers)
            and callable(getattr(_http1, "make_error_response", None))
        ),
    )
    yield (
        "HttpStream buffers a request body in request_body_buf (engine keeps a body that must be read "
        "whole from switching to streaming); Http1Server.send only closes on a ResponseProtocolError "
        "once a response head is out (engine sends the JSON answer first); HttpLayer picks the client "
        "protocol by ALPN (h2, is_h3_alpn)",
        lambda: (
            "request_body_buf" in _names(stream.state_consume_request_body)
            and {"response", "CloseConnection"} <= _names(_http1.Http1Server.send)
            and "is_h3_alpn" in _names(mhttp.HttpLayer._handle_event)
        ),
    )
    yield (
        "Http1Server and Http1Client keep unparsed input in self.buf and parse heads in read_headers "
        "(engine caps the head size there)",
        lambda: all(
            {"buf", "maybe_extract_lines"} <= _names(cls.read_headers)
            and callable(getattr(cls, "done", None))
            for cls in (_http1.Http1Server, _http1.Http1Client)
        ),
    )
    yield (
        "Http1Connection.mark_done decides keep-alive from the request and response headers",
        lambda: "connection_close" in _names(_http1.Http1Connection.mark_done),
    )
    yield (
        "ErrorCode has CONNECT_FAILED, GENERIC_SERVER_ERROR, REQUEST_TOO_LARGE",
        lambda: all(
            hasattr(ErrorCode, n) for n in ("CONNECT_FAILED", "GENERIC_SERVER_ERROR", "REQUEST_TOO_LARGE")
        ),
    )
    yield (
        "the origin-form refusal still says 'destination unknown'",
        lambda: "destination unknown" in _consts(stream.state_wait_for_request_headers),
    )
    yield (
        "parsed HTTP messages call MessageData.__post_init__ (the runtime type check engine skips)",
        lambda: (
            "__post_init__" in http.MessageData.__dict__
            and "__post_init__" in _names(http.RequestData.__init__)
        ),
    )
    yield (
        "TCPLayer.relay_messages relays raw tunnel data (TunnelLayer counts it)",
        lambda: callable(getattr(TCPLayer, "relay_messages", None)),
    )
    yield (
        "hooks go through AddonManager.handle_lifecycle (LeanDispatch replaces it per instance)",
        lambda: (
            callable(getattr(AddonManager, "handle_lifecycle", None))
            and "handle_lifecycle" in _names(mode_servers.ProxyConnectionHandler.handle_hook)
        ),
    )
    yield (
        "ConnectionHandler reads sockets into self.server_event, keeps transports and a timeout watchdog",
        lambda: (
            "server_event" in _names(server.ConnectionHandler.handle_connection)
            and {"transports", "timeout_watchdog"} <= _names(server.ConnectionHandler.__init__)
            and callable(getattr(server.TimeoutWatchdog, "register_activity", None))
            and callable(getattr(server.ConnectionHandler, "close_connection", None))
        ),
    )
    yield (
        "Proxyserver keeps its connection handlers in .connections",
        lambda: "connections" in _names(proxyserver.Proxyserver.__init__),
    )
    yield (
        "WebsocketLayer builds both sides through the module name WebsocketConnection, reassembling "
        "messages in frame_buf and reading wsproto events through events()",
        lambda: (
            "WebsocketConnection" in _names(mws.WebsocketLayer.start)
            and "frame_buf" in _names(mws.WebsocketLayer.relay_messages)
            and callable(getattr(mws.WebsocketConnection, "events", None))
        ),
    )
    yield (
        "Proxyserver connection handlers abort a side through transports[conn].writer",
        lambda: (
            "transports" in _names(server.ConnectionHandler.handle_connection)
            or "transports" in _names(server.ConnectionHandler.close_connection)
        ),
    )
    yield (
        "TlsConfig signs client-side leaf certificates through self.certstore, a CertStore(privatekey, "
        "ca, chain_file, crl, dhparams) (ProxyRunner.prepare_ca swaps it to rotate the CA)",
        lambda: (
            "certstore" in _names(tlsconfig.TlsConfig.get_cert)
            and "get_cert" in _names(tlsconfig.TlsConfig.tls_start_client)
            and list(inspect.signature(certs.CertStore.__init__).parameters)[1:]
            == ["default_privatekey", "default_ca", "default_chain_file", "default_crl", "dhparams"]
            and callable(getattr(certs, "dummy_crl", None))
        ),
    )
    yield (
        "RegularInstance binds in AsyncioServerInstance.listen via asyncio.start_server(handle_stream) "
        "(reuseport.install gives it a listen with SO_REUSEPORT)",
        lambda: (
            "start_server" in _names(mode_servers.AsyncioServerInstance.listen)
            and "listen" in _names(mode_servers.AsyncioServerInstance._start)
            and callable(getattr(mode_servers.RegularInstance, "handle_stream", None))
        ),
    )
    yield (
        "HttpLayer builds HTTP/2 agent connections through the module name Http2Server, keeps its streams "
        "in .streams (dropped on DropStream), and a stream's upstream is its context.server "
        "(h2bounds.BoundedHttp2Server)",
        lambda: (
            "Http2Server" in _names(mhttp.HttpLayer._handle_event)
            and isinstance(mhttp.__dict__.get("Http2Server"), type)
            and "streams" in _names(mhttp.HttpLayer.__init__)
            and "DropStream" in _names(mhttp.HttpLayer.event_to_child)
            and {"context", "server"} <= _names(stream.make_server_connection)
            and "child_layer" in stream.__annotations__
        ),
    )
    yield (
        "Http2Connection queues DATA per stream in h2_conn.stream_buffers (chunks with .data), tracks "
        "stream ids in .streams and answers is_closed (h2bounds caps the queue, forgets closed streams)",
        lambda: (
            "stream_buffers" in _names(_http_h2.BufferedH2Connection.send_data)
            and "data" in _http_h2.SendH2Data._fields
            and any({"h2_conn", "streams"} <= _names(vars(k).get("__init__")) for k in Http2Server.__mro__)
            and callable(getattr(Http2Server, "is_closed", None))
            and "_paused" in _names(stream.handle_event)
        ),
    )
    yield (
        "HttpLayer and HttpClient build HTTP/2 upstream connections through the module name Http2Client, "
        "which queues DATA in h2_conn.stream_buffers and requests awaiting a free stream in stream_queue "
        "(h2bounds.BoundedHttp2Client)",
        lambda: (
            "Http2Client" in _names(mhttp.HttpLayer._handle_event)
            and "Http2Client" in _names(mhttp.HttpClient._handle_event)
            and isinstance(mhttp.__dict__.get("Http2Client"), type)
            and issubclass(mhttp.__dict__["Http2Client"], Http2Client)
            and "stream_queue" in _names(Http2Client.__init__)
            and "stream_queue" in _names(Http2Client._handle_event)
        ),
    )
    yield (
        "ConnectionHandler.handle_connection awaits drain_writers after each read, in the task kept as "
        "transports[conn].handler (h2bounds holds an upstream's read loop back there)",
        lambda: (
            "drain_writers" in _names(server.ConnectionHandler.handle_connection)
            and "current_task" in _names(server.ConnectionHandler.open_connection)
            and "handler" in {f.name for f in dataclasses.fields(server.ConnectionIO)}
        ),
    )
    yield (
        "HTTP message fields are dataclasses (LeanDispatch reads hook fields)",
        lambda: dataclasses.is_dataclass(HttpErrorHook),
    )
    from mitmproxy.proxy.layer import Layer

    yield (
        "Layer.handle_event queues events in _paused_event_queue while _paused (h1bounds.HeldBodyCap "
        "bounds a request body queued while a hook holds the stream)",
        lambda: {"_paused", "_paused_event_queue"} <= _names(Layer.handle_event),
    )
    yield (
        "Http1Server buffers input in self.buf before its state, waits for a response in wait (a state "
        "read as self.wait) and ends it in send/mark_done (h1bounds caps and closes)",
        lambda: (
            "buf" in _names(_http1.Http1Connection._handle_event)
            and "wait" in _names(_http1.Http1Server.mark_done)
            and {"mark_done", "ResponseEndOfMessage"} <= _names(_http1.Http1Server.send)
            and callable(getattr(_http1.Http1Server, "wait", None))
        ),
    )
    own = vars(_http1.Http1Client).get("_handle_event")
    yield (
        "Http1Client inherits Http1Connection._handle_event, which appends input to self.buf before its "
        "state (not in passthrough); mark_done tracks request_done/response_done; done ends it (h1bounds "
        "refuses input past a complete response and caps an upstream's unparsed input)",
        lambda: (
            (own is None or getattr(own, "__wrapped__", None) is _http1.Http1Connection._handle_event)
            and {"buf", "state", "passthrough"} <= _names(_http1.Http1Connection._handle_event)
            and {"request_done", "response_done"} <= _names(_http1.Http1Connection.mark_done)
            and callable(getattr(_http1.Http1Connection, "done", None))
        ),
    )


def problems(version: str | None = None) -> list[str]:
    """What does not match the tested engine (empty when compatible)."""
    found = list(_import_problems)
    v = engine_version() if version is None else version
    if not version_ok(v):
        found.append(f"version {v} is outside the tested range {TESTED_TEXT}")
    if not _import_problems:
        for what, check in _patch_points():
            try:
                ok = check()
            except Exception:  # an attribute the check reads is gone: that is the finding
                ok = False
            if not ok:
                found.append(f"patch point missing: {what}")
    return found


def require_compatible() -> None:
    """Raise EngineIncompatible (one line: mitmproxy, its version, the tested range) on a mismatch."""
    found = problems()
    if found:
        raise EngineIncompatible(
            f"mitmproxy {engine_version()} is not supported: agent-vault is tested with mitmproxy "
            f"{TESTED_TEXT} ({found[0]}{'; ' + str(len(found) - 1) + ' more' if len(found) > 1 else ''})",
            hint=f"Install a tested engine: pip install 'mitmproxy{TESTED_TEXT}' (or use the lock file).",
        )

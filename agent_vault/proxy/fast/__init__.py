"""The HTTP/1.1 fast path (issue #24): an intercepted, authenticated HTTP/1.1 connection served by a lean
loop instead of mitmproxy's layer stack, with the same decisions, injection, limits, audit and
redaction (the product addon's own hooks). See README "Fast path for HTTP/1.1".

Modules: `tlsio` (TLS on a memory BIO, configured by mitmproxy's TlsConfig), `upstream` (the pinned,
verified upstream connection), `h1` (heads and bodies, parsed as the engine parses them, gated by
llhttp), `exchange` (one request/response through the addon's hooks), `session` (the connection
loop), `entry` (when a connection goes lean, and how it is taken off the layer stack).
"""

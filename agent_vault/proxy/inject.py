"""Credential injection and placeholder substitution (SPEC §5.5-§5.6); redaction helpers re-exported.

Pure: works on plain Python types and on any `MutableMapping[str, str]` whose keys are
case-insensitive (mitmproxy's `Headers` is one; a plain dict is handled too). No mitmproxy import.

Dangers: the values handled here are live credentials. They never go into an exception message, a
repr or a log line; errors name the key only (`CredentialNotFound`, `SubstitutionError`).
Order per request: `substitute_request`, `hygiene.strip_request_headers`, `apply_injection` -- so the
injected value always wins and no client header can remove it.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Collection, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import quote, quote_plus, unquote_plus

from agent_vault.authtypes import BrokeredAuth
from agent_vault.errors import CredentialNotFound, SubstitutionError
from agent_vault.proxy.hygiene import is_multidict, remove_header
from agent_vault.proxy.redact import StreamRedactor as StreamRedactor
from agent_vault.proxy.redact import redact_bytes as redact_bytes
from agent_vault.proxy.redact import redact_text as redact_text
from agent_vault.proxy.redact import value_forms
from agent_vault.servicedef import (
    PLACEHOLDER_PATTERN,
    ApiKeyAuth,
    BasicAuth,
    BearerAuth,
    CustomAuth,
    PassthroughAuth,
)

#: Brokered types (OAuth2, AWS) build an empty Injection here; `proxy.brokered` fills it in.
AuthSpec = BearerAuth | BasicAuth | ApiKeyAuth | CustomAuth | PassthroughAuth | BrokeredAuth

#: Values shorter than this are not redacted from responses (SPEC §5.9): too many false positives.
MIN_REDACT_LEN = 8
PLACEHOLDER_RE = re.compile(PLACEHOLDER_PATTERN)
_KEY = r"([A-Z][A-Z0-9_]{0,127})"
_URL_PLACEHOLDER_RE = re.compile(r"(?:\{|%7[bB]){2}(?: |%20)*" + _KEY + r"(?: |%20)*(?:\}|%7[dD]){2}")
_FORM_PLACEHOLDER_RE = re.compile(r"(?:\{|%7[bB]){2}(?: |%20|\+)*" + _KEY + r"(?: |%20|\+)*(?:\}|%7[dD]){2}")
_CRLFNUL = re.compile(r"[\r\n\x00]")


@dataclass
class Injection:
    """What one request gets: headers to set, query params to set, keys used, secrets to redact.

    `secrets` holds (key name, exact value bytes) pairs of at least MIN_REDACT_LEN characters.
    The repr shows names only.
    """

    headers: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    used_keys: list[str] = field(default_factory=list)
    secrets: list[tuple[str, bytes]] = field(default_factory=list)

    def __repr__(self) -> str:
        return (
            f"Injection(headers={sorted(self.headers)}, query={sorted(self.query)}, "
            f"used_keys={self.used_keys}, secrets={list(dict.fromkeys(k for k, _ in self.secrets))})"
        )

    def _use(self, key: str, value: str) -> str:
        if key not in self.used_keys:
            self.used_keys.append(key)
        self.add_secret(key, value)
        return value

    def add_secret(self, key: str, value: str) -> None:
        """Redact `value` (if long enough: MIN_REDACT_LEN) and its escaped forms from the response as KEY."""
        if len(value) >= MIN_REDACT_LEN:
            for form in value_forms(value):
                if (key, form) not in self.secrets:
                    self.secrets.append((key, form))


def _value(values: Mapping[str, str], key: str) -> str:
    try:
        v = values[key]
    except KeyError:
        raise CredentialNotFound(key) from None
    if _CRLFNUL.search(v):
        raise SubstitutionError(key)
    return v


def build_injection(auth: AuthSpec, values: Mapping[str, str]) -> Injection:
    """Compute what `auth` injects (SPEC §5.5) from decrypted `values` (key -> value).

    Raises CredentialNotFound(key) for a missing value and SubstitutionError(key) for a value with
    CR, LF or NUL (or a `:` in a basic username, which would change the password boundary).
    """
    inj = Injection()
    if isinstance(auth, BearerAuth):
        inj.headers["Authorization"] = "Bearer " + inj._use(auth.token, _value(values, auth.token))
    elif isinstance(auth, BasicAuth):
        if auth.username is not None:
            user = inj._use(auth.username, _value(values, auth.username))
            if ":" in user:
                raise SubstitutionError(auth.username)
        else:
            user = auth.username_literal or ""
        password = inj._use(auth.password, _value(values, auth.password)) if auth.password else ""
        encoded = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        inj.headers["Authorization"] = "Basic " + encoded
        owner = auth.password or auth.username
        if owner is not None and (password or auth.username is not None):
            inj.add_secret(owner, encoded)
    elif isinstance(auth, ApiKeyAuth):
        value = auth.prefix + inj._use(auth.key, _value(values, auth.key))
        header = auth.header_name
        if header is not None:
            inj.headers[header] = value
        else:
            assert auth.query is not None
            inj.query[auth.query] = value
            inj.add_secret(auth.key, quote(values[auth.key], safe=""))
    elif isinstance(auth, CustomAuth):

        def render(template: str) -> str:
            return PLACEHOLDER_RE.sub(lambda m: inj._use(m.group(1), _value(values, m.group(1))), template)

        for name, template in auth.headers.items():
            inj.headers[name] = render(template)
        for param, template in auth.query.items():
            inj.query[param] = render(template)
            for m in PLACEHOLDER_RE.finditer(template):  # the URL carries it %-encoded: redact that too
                inj.add_secret(m.group(1), quote(values[m.group(1)], safe=""))
    return inj


def set_query_params(path: str, params: Mapping[str, str]) -> str:
    """Set each param in `path`'s query string, replacing any existing value; others keep their raw bytes."""
    if not params:
        return path
    base, sep, qs = path.partition("?")
    wanted = set(params)
    kept = [p for p in qs.split("&") if p and unquote_plus(p.partition("=")[0]) not in wanted] if sep else []
    kept += [f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in params.items()]
    return base + "?" + "&".join(kept)


def apply_injection(headers: MutableMapping[str, str], path: str, inj: Injection) -> str:
    """Replace every client header named like an injected one (case-insensitive), set the injected
    headers and query params, and return the new path (path + query string)."""
    replaces = is_multidict(headers)  # mitmproxy's Headers: `[]=` replaces every case of the name
    for name, value in inj.headers.items():
        if not replaces:
            remove_header(headers, name)
        headers[name] = value
    return set_query_params(path, inj.query)


# --- placeholder substitution (SPEC §5.6) ---------------------------------------------------------


def _sub(
    pattern: re.Pattern[str],
    text: str,
    values: Mapping[str, str],
    allowed: Collection[str],
    encode: Callable[[str, str], str],
    used: list[str],
) -> str:
    def repl(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in allowed or key not in values:
            return m.group(0)
        if key not in used:
            used.append(key)
        return encode(key, values[key])

    return pattern.sub(repl, text)


def _raw(_key: str, v: str) -> str:
    return v


def _url(_key: str, v: str) -> str:
    return quote(v, safe="")


def _header_value(key: str, v: str) -> str:
    if _CRLFNUL.search(v):
        raise SubstitutionError(key)
    return v


def substitute_text(
    text: str,
    values: Mapping[str, str],
    allowed: Collection[str],
    *,
    encoding: Literal["raw", "url"],
) -> tuple[str, list[str]]:
    """Replace `{{KEY}}` placeholders for keys in `allowed` that have a value; leave others literal.

    `url` also recognises percent-encoded braces (`%7B%7BKEY%7D%7D`, hex any case) and inserts the
    value percent-encoded. Returns (new text, keys used in order).
    """
    used: list[str] = []
    if encoding == "url":
        if "{" not in text and "%7" not in text:
            return text, used
        return _sub(_URL_PLACEHOLDER_RE, text, values, allowed, _url, used), used
    if "{{" not in text:
        return text, used
    return _sub(PLACEHOLDER_RE, text, values, allowed, _raw, used), used


def substitute_request(
    headers: MutableMapping[str, str],
    path: str,
    allowed_values: Mapping[str, str],
    surfaces: Collection[str],
) -> tuple[str, list[str]]:
    """Substitute placeholders for the keys of `allowed_values` into header values (raw), the path
    and the query (url-encoded), as enabled by `surfaces`. Headers are edited in place; returns
    (new path, keys used). A value with CR, LF or NUL bound for a header -> SubstitutionError(key).
    """
    used: list[str] = []
    if not allowed_values:
        return path, used
    allowed = allowed_values.keys()
    if "header" in surfaces:
        # mitmproxy's Headers joins repeated fields on __getitem__; edit each field separately.
        get_all, set_all = getattr(headers, "get_all", None), getattr(headers, "set_all", None)
        fields = getattr(headers, "fields", None)  # mitmproxy: raw (name, value) bytes, a cheap pre-check
        names = [] if fields is not None and not any(b"{{" in v for _, v in fields) else list(headers)
        for name in names:
            old = get_all(name) if get_all and set_all else [headers[name]]
            if any("{{" in v for v in old):
                new = [_sub(PLACEHOLDER_RE, v, allowed_values, allowed, _header_value, used) for v in old]
                if get_all and set_all:
                    set_all(name, new)
                else:
                    headers[name] = new[0]
    base, sep, qs = path.partition("?")
    for surface, part in (("path", base), ("query", qs)):
        if surface in surfaces and part and ("{" in part or "%7" in part):
            new_part = _sub(_URL_PLACEHOLDER_RE, part, allowed_values, allowed, _url, used)
            base, qs = (new_part, qs) if surface == "path" else (base, new_part)
    return base + sep + qs, used


_TEXT_TYPES = frozenset(
    "application/" + t for t in ("xml", "javascript", "graphql", "x-ndjson", "yaml", "x-yaml")
)


def substitute_body(
    body: bytes,
    content_type: str | None,
    content_encoding: str | None,
    values: Mapping[str, str],
    allowed: Collection[str],
) -> tuple[bytes, list[str]]:
    """Substitute placeholders in a buffered request body (the caller recomputes Content-Length).

    JSON (`application/json`, `*+json`): value JSON-string-escaped. Form
    (`application/x-www-form-urlencoded`): raw and percent-encoded placeholders, value form-encoded.
    Other text (`text/*`, xml, ...; or no/unknown type if the body is valid UTF-8): raw. Multipart,
    a `Content-Encoding` other than identity, and non-UTF-8 unknown bodies are returned unchanged:
    a compressed body is never decoded (SPEC §5.6), so a request "bomb" costs nothing here.
    """
    used: list[str] = []
    if not body or (b"{" not in body and b"%7" not in body):
        return body, used
    if content_encoding and content_encoding.strip().lower() not in ("", "identity"):
        return body, used
    mime = (content_type or "").split(";", 1)[0].strip().lower()
    if mime.startswith("multipart/"):
        return body, used
    text = body.decode("utf-8", "surrogateescape")
    if mime == "application/json" or mime.endswith("+json"):
        out = _sub(PLACEHOLDER_RE, text, values, allowed, lambda _k, v: json.dumps(v)[1:-1], used)
    elif mime == "application/x-www-form-urlencoded":
        out = _sub(_FORM_PLACEHOLDER_RE, text, values, allowed, lambda _k, v: quote_plus(v, safe=""), used)
    elif mime.startswith("text/") or mime in _TEXT_TYPES or mime.endswith("+xml") or _is_utf8(body):
        out = _sub(PLACEHOLDER_RE, text, values, allowed, _raw, used)
    else:
        return body, used
    return (out.encode("utf-8", "surrogateescape") if used else body), used


def _is_utf8(body: bytes) -> bool:
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True

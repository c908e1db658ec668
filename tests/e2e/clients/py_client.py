"""A Python HTTP client configured only by its environment, as an agent started by `vault run` would be.

usage: py_client.py MODE URL...   MODE: requests | httpx | httpx-async | httpx-h2 | aiohttp | urllib

GETs each URL with the library's defaults - no proxy, CA or TLS option anywhere (aiohttp gets
`trust_env=True`, its documented opt-in; httpx-h2 gets `http2=True`) - and prints one JSON line per URL:
`{"url", "status", "http_version", "body"}`, or `{"url", "error"}`. Exit 1 if any request failed."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

Result = dict[str, Any]


def ok(url: str, status: int, http_version: str, body: str) -> Result:
    return {"url": url, "status": status, "http_version": http_version, "body": body}


def failed(url: str, e: BaseException) -> Result:
    return {"url": url, "error": f"{type(e).__name__}: {e}"}


def run_sync(urls: list[str], get: Callable[[str], Result]) -> list[Result]:
    out = []
    for url in urls:
        try:
            out.append(get(url))
        except Exception as e:
            out.append(failed(url, e))
    return out


async def run_async(urls: list[str], get: Callable[[str], Awaitable[Result]]) -> list[Result]:
    results = await asyncio.gather(*(get(url) for url in urls), return_exceptions=True)
    return [failed(u, r) if isinstance(r, BaseException) else r for u, r in zip(urls, results, strict=True)]


def with_requests(urls: list[str]) -> list[Result]:
    import requests

    with requests.Session() as s:

        def get(url: str) -> Result:
            r = s.get(url, timeout=30)
            return ok(url, r.status_code, "HTTP/1.1", r.text)

        return run_sync(urls, get)


def with_httpx(urls: list[str], *, http2: bool = False) -> list[Result]:
    import httpx

    with httpx.Client(http2=http2, timeout=30) as c:

        def get(url: str) -> Result:
            r = c.get(url)
            return ok(url, r.status_code, r.http_version, r.text)

        return run_sync(urls, get)


async def with_httpx_async(urls: list[str]) -> list[Result]:
    import httpx

    async with httpx.AsyncClient(timeout=30) as c:

        async def get(url: str) -> Result:
            r = await c.get(url)
            return ok(url, r.status_code, r.http_version, r.text)

        return await run_async(urls, get)


async def with_aiohttp(urls: list[str]) -> list[Result]:
    import aiohttp

    async with aiohttp.ClientSession(trust_env=True) as s:

        async def get(url: str) -> Result:
            async with s.get(url) as r:
                return ok(url, r.status, f"HTTP/{r.version.major}.{r.version.minor}", await r.text())

        return await run_async(urls, get)


def with_urllib(urls: list[str]) -> list[Result]:
    import urllib.error
    import urllib.request

    def get(url: str) -> Result:
        try:
            with urllib.request.urlopen(url, timeout=30) as r:
                return ok(url, r.status, "HTTP/1.1", r.read().decode())
        except urllib.error.HTTPError as e:
            return ok(url, e.code, "HTTP/1.1", e.read().decode())

    return run_sync(urls, get)


MODES: dict[str, Callable[[list[str]], list[Result]]] = {
    "requests": with_requests,
    "httpx": with_httpx,
    "httpx-h2": lambda urls: with_httpx(urls, http2=True),
    "httpx-async": lambda urls: asyncio.run(with_httpx_async(urls)),
    "aiohttp": lambda urls: asyncio.run(with_aiohttp(urls)),
    "urllib": with_urllib,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in MODES:
        print(f"usage: py_client.py {{{'|'.join(MODES)}}} URL...", file=sys.stderr)
        return 2
    results = MODES[argv[0]](argv[1:])
    for r in results:
        print(json.dumps(r), flush=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

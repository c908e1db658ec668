"""A WebSocket client (the `websockets` library) configured only by its environment.

usage: py_ws.py URL... - for each URL: connect (websockets >= 15 reads the proxy from the environment by
default and tunnels through it with CONNECT), read the server's first message, send a text message, read its
echo, close. Prints one JSON line per URL: `{"url", "first", "echo"}` or `{"url", "error"}`. Exit 1 if any
failed."""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from websockets.asyncio.client import connect


async def talk(url: str) -> dict[str, Any]:
    try:
        async with connect(url, open_timeout=30) as ws:
            first = await asyncio.wait_for(ws.recv(), 30)
            await ws.send("hello through the proxy")
            echo = await asyncio.wait_for(ws.recv(), 30)
            return {"url": url, "first": first, "echo": echo}
    except Exception as e:
        return {"url": url, "error": f"{type(e).__name__}: {e}"}


async def main(urls: list[str]) -> int:
    results = [await talk(url) for url in urls]
    for r in results:
        print(json.dumps(r), flush=True)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))

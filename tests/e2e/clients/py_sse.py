"""An SSE consumer (httpx streaming, as the OpenAI/Anthropic SDKs do) configured only by its environment.

usage: py_sse.py URL - prints `{"status", "events": [{"data", "t"}]}` where `t` is the arrival time of each
event in seconds after the response headers; a proxy that buffers the stream makes every `t` equal."""

from __future__ import annotations

import json
import sys
import time

import httpx


def main(url: str) -> int:
    events: list[dict[str, object]] = []
    with httpx.Client(timeout=30) as c, c.stream("GET", url, headers={"Accept": "text/event-stream"}) as r:
        start = time.monotonic()
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append({"data": line[5:].strip(), "t": round(time.monotonic() - start, 3)})
        print(json.dumps({"status": r.status_code, "events": events}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Peer: a pixel endpoint as a Python developer would write it for uvicorn.

    PIXEL_BENCH_PEER_LOG=events.jsonl uvicorn asgi_pixel:app --app-dir bench/peers \
        --http httptools --loop uvloop --lifespan off --no-access-log --host 127.0.0.1 --port 8001

Every GET is decoded, checked and logged by segment_event.event_line, then answered with the
43-byte GIF. Lines go through Python's buffered file writer: fast, and lost if the process
dies, unlike pixel.py, which writes each line before it answers.
"""

import os

from segment_event import GIF
from segment_event import event_line

RESPONSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"image/gif"),
                (b"content-length", str(len(GIF)).encode("ascii")),
                (b"cache-control", b"no-cache, no-store, must-revalidate")],
}
RESPONSE_BODY = {"type": "http.response.body", "body": GIF}

# uvicorn imports this module once per worker, so the log opens once per process.
event_log = open(os.environ["PIXEL_BENCH_PEER_LOG"], "a", encoding="utf-8")


async def app(scope, receive, send):
    if scope["type"] != "http":   # run with --lifespan off; nothing else is expected
        return
    headers = dict(scope["headers"])
    client = scope.get("client")
    line = event_line(scope["path"].rsplit("/", 1)[-1],
                      scope["query_string"].decode("latin-1"),
                      client[0] if client else None,
                      headers.get(b"user-agent", b"").decode("latin-1"))
    if line is not None:
        event_log.write(line)
    await send(RESPONSE_START)
    await send(RESPONSE_BODY)

"""Peer: the pixel server most http.server tutorials end with.

    PIXEL_BENCH_PEER_LOG=events.jsonl python3 bench/peers/naive_pixel.py PORT

ThreadingHTTPServer and BaseHTTPRequestHandler with their defaults: HTTP/1.0 (one request per
connection), a listen backlog of 5, a new thread per connection, headers parsed by
email.parser. The decoding is the same as the uvicorn peer's (segment_event.event_line).
Listens on 127.0.0.1 only.
"""

import os
import sys
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from urllib.parse import urlsplit

from segment_event import GIF
from segment_event import event_line


class PixelHandler(BaseHTTPRequestHandler):
    def do_GET(self):
        target = urlsplit(self.path)
        line = event_line(target.path.rsplit("/", 1)[-1], target.query, self.client_address[0],
                          self.headers.get("User-Agent"))
        if line is not None:
            self.server.event_log.write(line)
            self.server.event_log.flush()
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.send_header("Content-Length", str(len(GIF)))
        self.send_header("Cache-Control", "no-cache, no-store, must-revalidate")
        self.end_headers()
        self.wfile.write(GIF)

    def log_message(self, format, *args):
        """Quiet: the bench measures serving, not a line on stderr per request."""


def main():
    port = int(sys.argv[1])
    server = ThreadingHTTPServer(("127.0.0.1", port), PixelHandler)
    server.event_log = open(os.environ["PIXEL_BENCH_PEER_LOG"], "a", encoding="utf-8")
    server.serve_forever()


if __name__ == "__main__":
    main()

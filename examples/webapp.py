"""A tiny web application for the demo and the tests: answers every GET with its node name (FOS_NODE) and the
fencing epoch it was started with (FOS_EPOCH), and /health with 200."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    name = "?"

    def do_GET(self) -> None:
        body = f"{self.name} epoch={os.environ.get('FOS_EPOCH', '-')}\n" if self.path != "/health" else "ok\n"
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        return


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--name", default=os.environ.get("FOS_NODE", "?"))
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--bind", default="::", help="'::' serves IPv6 and IPv4")
    args = parser.parse_args()
    Handler.name = args.name
    server_class = DualStackServer if ":" in args.bind else ThreadingHTTPServer
    server = server_class((args.bind, args.port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An HTTP stream receiver for tern's black-box tests (tests/blackbox/gw_streams.rs), in the
shape of flespi's http-stream-receiver examples: an express-style route `POST /post` and an
aiohttp-style `POST /`, each taking the JSON array a stream sends.

Each request is answered by the next entry of `--plan` (comma-separated: a status code such
as 200 or 500, or `hang`: say nothing for `--hang` seconds, past the stream's timeout); once the
plan is used up every request gets 200. Every request is appended to `--out` as one JSON line
`{"path", "status", "content_type", "messages"}` before it is answered, so the test sees what
arrived and what it was told. With `--cert` and `--key` it serves https. Prints `ready` once
listening.

Standard library only: python3 stream_receiver.py --port 8080 --out got.jsonl --plan 200,500
"""

import argparse
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--plan", default="")
    ap.add_argument("--hang", type=float, default=5.0)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    args = ap.parse_args()
    plan = [p for p in args.plan.split(",") if p]
    lock = threading.Lock()

    class Receiver(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_args) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            if self.path not in ("/", "/post") and not self.path.startswith("/post/"):
                self.answer(404, b"not found")
                return
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            try:
                messages = json.loads(raw)
            except ValueError:
                messages = None
            with lock:
                step = plan.pop(0) if plan else "200"
                with open(args.out, "a", encoding="utf-8") as f:
                    f.write(
                        json.dumps(
                            {
                                "path": self.path,
                                "status": step,
                                "content_type": self.headers.get("Content-Type"),
                                "messages": messages,
                            }
                        )
                        + "\n"
                    )
            if step == "hang":
                time.sleep(args.hang)
                step = "200"
            self.answer(int(step), b"{}")

        def answer(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the stream gave up (timeout)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Receiver)
    server.daemon_threads = True
    if args.cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(args.cert, args.key)
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    print("ready", flush=True)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
# tests/maillog/capture.py: a stand-in HTTP receiver for Dovecot's event exporter, recording
# every POST (path, headers, body) as one JSON line, for the corpus and the daemon tests.
#
# Usage: capture.py OUTFILE
# It binds a free loopback port, prints `CAPTURE_URL=http://127.0.0.1:PORT/dovecot` on stdout
# (then flushes, so a parent can read it as the readiness signal) and serves until killed.
# Each record is a JSON object on its own line: {"path", "content_type", "headers": [[name,
# value], ...], "body"} with the body as text (Dovecot sends UTF-8 JSON). It answers 200 with an
# empty body, over HTTP/1.1 keep-alive as Dovecot's HTTP client expects.
import http.server
import json
import sys
import threading

OUT = sys.argv[1]
LOCK = threading.Lock()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length) if length > 0 else b""
        record = {
            "path": self.path,
            "content_type": self.headers.get("Content-Type"),
            "headers": [[k, v] for k, v in self.headers.items()],
            "body": body.decode("utf-8", errors="replace"),
        }
        line = json.dumps(record, sort_keys=True) + "\n"
        # One write per record under a lock, so concurrent connections never interleave lines.
        with LOCK:
            with open(OUT, "a", encoding="utf-8") as f:
                f.write(line)
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, fmt, *args):
        # Requests are recorded in OUT; stderr stays quiet.
        pass


def main():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    port = server.server_address[1]
    sys.stdout.write("CAPTURE_URL=http://127.0.0.1:%d/dovecot\n" % port)
    sys.stdout.flush()
    server.serve_forever()


if __name__ == "__main__":
    main()

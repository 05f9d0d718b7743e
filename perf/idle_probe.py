#!/usr/bin/env python3
"""Memory per idle connection of a livetap binary, by what the clients do.

Usage: perf/idle_probe.py MODE N BINARY [livetap flags...]
MODE: tcp (connect only), health (one GET /healthz, then idle keep-alive), same (live stream,
one shared filter), distinct (live stream, N distinct filters), none (unfiltered stream).
Prints the hub's RSS growth divided by N. Used for the idle-memory table in RESULTS.md.
"""
import resource
import socket
import subprocess
import sys
import time

hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
mode, n, binary, extra = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4:]
token = "probe-token-0123456789"
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
hub = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--admin-token", token] + extra,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except OSError:
        time.sleep(0.05)


def rss():
    return int(open(f"/proc/{hub.pid}/statm").read().split()[1]) * 4096


before = rss()
conns = []
for i in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    conns.append(c)
    if mode == "tcp":
        continue
    if mode == "health":
        c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        continue
    q = {"distinct": f"remote-ip=10.0.{i // 250}.{i % 250}", "same": "remote-ip=10.0.0.1", "none": ""}[mode]
    c.sendall(f"GET /api/telemetry/traces/live?{q} HTTP/1.1\r\nHost: x\r\n"
              f"Authorization: Bearer {token}\r\n\r\n".encode())
    if i % 500 == 0:
        time.sleep(0.05)
time.sleep(3)
print(f"{mode} {n} {' '.join(extra)}: {(rss() - before) / n:.0f} bytes per connection")
hub.kill()

#!/usr/bin/env python3
"""How long one new subscriber waits for its answer on a hub that already holds N.

Usage: perf/lone_connect.py N BINARY
Connects N subscribers with distinct filters, waits for the index builder to settle, then
times five lone connects (request sent to first answer byte), half a second apart. What it
shows is the index builder's policy: one shard rebuild, plus any rest it is still taking.
"""
import resource, socket, subprocess, sys, time
hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
n, binary = int(sys.argv[1]), sys.argv[2]
token = "probe-token-0123456789"
with socket.socket() as s:
    s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
hub = subprocess.Popen([binary, "--listen", f"127.0.0.1:{port}", "--admin-token", token], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", port)).close(); break
    except OSError: time.sleep(0.05)
def sub(q):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(f"GET /api/telemetry/traces/live?{q} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
    return c
conns = [sub(f"remote-ip=10.0.{i // 250}.{i % 250}") for i in range(n)]
time.sleep(3 + n / 2000)
lat = []
for k in range(5):
    t = time.perf_counter(); c = sub("remote-ip=192.168.0.1"); c.recv(64); lat.append((time.perf_counter() - t) * 1000)
    conns.append(c); time.sleep(0.5)
print(f"{binary}: lone connect at {n} subscribers: " + ", ".join(f"{x:.1f}" for x in lat) + " ms")
hub.kill()

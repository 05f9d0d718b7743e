#!/usr/bin/env python3
"""Summarises a perf/campaign.sh directory: medians over runs of each scenario, and the ratios
measured side by side within each run (firehose-100 vs rawlimit, livetap vs Nchan)."""
import json, re, statistics, sys
from collections import defaultdict
from pathlib import Path

d = Path(sys.argv[1])
groups = defaultdict(list)
for f in sorted(d.glob("*.json")):
    m = re.match(r"(.*?)(?:-(\d+))?$", f.stem)
    groups[m.group(1)].append((int(m.group(2) or 0), json.loads(f.read_text())))

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")

def rows(name, which=0):
    return [r["rows"][which] for _, r in sorted(groups.get(name, []), key=lambda t: t[0]) if len(r["rows"]) > which]

print((d / "machine.txt").read_text().strip())
print()
hdr = f"{'scenario':28} {'runs':>4} {'ingest/s':>10} {'deliver/s':>10} {'MB/s':>7} {'lost':>5} {'lagged':>7} {'p50 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} {'cpu s':>6} {'peak MiB':>8}"
print("medians over runs (range of p99 in brackets)")
print(hdr)
for name in sorted(groups):
    if name.startswith("rawlimit") or "idle" in name:
        continue
    for which in (0, 1):
        rs = rows(name, which)
        if not rs:
            continue
        label = name if which == 0 else name + " (+stalled)"
        p99s = [r["p99_us"] for r in rs]
        print(f"{label:28} {len(rs):>4} {med([r['ingest_rate'] for r in rs]):>10.0f} "
              f"{med([r['deliveries_per_sec'] for r in rs]):>10.0f} {med([r['bytes_per_sec'] for r in rs]) / 1e6:>7.1f} "
              f"{max(r['lost'] for r in rs):>5} {max(r['lagged'] for r in rs):>7} {med([r['p50_us'] for r in rs]):>8.0f} "
              f"{med(p99s):>8.0f} {med([r['p999_us'] for r in rs]):>9.0f} {med([r['hub_cpu_secs'] for r in rs]):>6.2f} "
              f"{med([r['hub_peak_rss'] for r in rs]) / 2**20:>8.1f}  [{min(p99s)}-{max(p99s)}]")

print()
raw = {i: r for i, r in groups.get("rawlimit-100", [])}
fh = {i: r["rows"][0] for i, r in groups.get("firehose-100", [])}
ratios = [fh[i]["bytes_per_sec"] / raw[i]["bytes_per_sec"] for i in sorted(fh) if i in raw]
if ratios:
    print("firehose-100 delivered bytes/s vs rawlimit --sockets 100, per run:",
          ", ".join(f"{fh[i]['bytes_per_sec'] / 1e6:.0f} / {raw[i]['bytes_per_sec'] / 1e6:.0f} MB/s = {100 * fh[i]['bytes_per_sec'] / raw[i]['bytes_per_sec']:.1f}%" for i in sorted(fh) if i in raw))
    print(f"  median ratio {100 * med(ratios):.1f}%")
nc = {i: r["rows"][0] for i, r in groups.get("nchan-fanout", [])}
lt = {i: r["rows"][0] for i, r in groups.get("livetap-at-nchan-rate", [])}
pairs = [(nc[i], lt[i]) for i in sorted(nc) if i in lt]
if pairs:
    print("fanout-1k at Nchan's rate, p99 livetap vs Nchan per run:",
          ", ".join(f"{b['p99_us']} vs {a['p99_us']} µs" for a, b in pairs))
    print(f"  median livetap/Nchan p99 ratio {med([b['p99_us'] / a['p99_us'] for a, b in pairs]):.2f}")
for name in ("slow-consumer",):
    for _, r in sorted(groups.get(name, []), key=lambda t: t[0]):
        for n in r.get("notes", []):
            print(f"{name}: {n}")
for name in ("idle-10k", "nchan-idle-10k"):
    for _, r in groups.get(name, []):
        row = r["rows"][0]
        print(f"{name}: {row['bytes_per_subscriber']:.0f} bytes per idle subscriber "
              f"(rss {row['hub_rss_before'] / 2**20:.1f} -> {row['hub_rss_after'] / 2**20:.1f} MiB)")

"""Latency of one keep-alive connection, one request at a time.

    python3 bench/latency.py URL [--post JSON] [-n 2000]   → prints "p50_ms p99_ms"

wrk's latency histogram is not usable against the bentoml replica here (at one
connection it reported 13 ms average latency with 1,600 responses a second),
so the latency the proxy adds is measured with this plain sequential client,
the same for the direct and the proxied URL; its own cost is in both figures.
"""

import argparse
import http.client
import statistics
import time
import urllib.parse

ap = argparse.ArgumentParser()
ap.add_argument("url")
ap.add_argument("--post")
ap.add_argument("-n", type=int, default=2000)
args = ap.parse_args()
u = urllib.parse.urlsplit(args.url)
conn = http.client.HTTPConnection(u.hostname, u.port)
method, body = ("POST", args.post.encode()) if args.post else ("GET", None)
headers = {"Content-Type": "application/json"} if body else {}
samples = []
for i in range(args.n + 100):
    t0 = time.perf_counter()
    conn.request(method, u.path, body=body, headers=headers)
    r = conn.getresponse()
    r.read()
    if r.status != 200:
        raise SystemExit(f"{method} {args.url}: HTTP {r.status}")
    if i >= 100:  # the first 100 warm up
        samples.append((time.perf_counter() - t0) * 1000)
q = statistics.quantiles(samples, n=100)
print(f"{statistics.median(samples):.3f} {q[98]:.3f}")

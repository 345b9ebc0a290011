#!/usr/bin/env python3
"""Registry benchmark for yatai-rs; run it through bench/run-registry.

Three parts, each measured side by side with its baseline in the same run:

  datapath  raw HTTP upload (PATCH start_upload + PUT upload) and download of
            one archive through `yatai serve` with curl, against `cp` of the
            same file on the same disk; the server's RSS growth meanwhile.
  e2e       `bentoml models push` / `models pull` of one model in each
            transfer strategy, against `cp -r` of the model directory, with
            the client's own tar/extract time measured on its own.
  get       requests/s and latency of GET …/bentos/{version} under wrk, with
            SQLite and PostgreSQL, after seeding N versions in one repository
            through the API.

Standard library only. Prints a Markdown report (and writes it to --out).
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TOKEN = "yatai_bench_token_0123456789abcdef"
MIB = 1 << 20

# A bento manifest shaped like the one `bentoml push` sends (≈0.9 KB).
BENTO_MANIFEST = {
    "service": "service:IrisClassifier",
    "bentoml_version": "1.4.40",
    "size_bytes": 27593,
    "name": "iris_service",
    "entry_service": "IrisClassifier",
    "labels": {"owner": "bench", "stage": "dev"},
    "apis": [],
    "models": [],
    "runners": [],
    "services": [
        {
            "name": "IrisClassifier",
            "service": "",
            "models": [],
            "dependencies": [],
            "config": {"traffic": {"timeout": 30}, "resources": {"cpu": "1"}},
        }
    ],
    "envs": [],
    "schema": {
        "name": "IrisClassifier",
        "type": "service",
        "routes": [
            {
                "name": "classify",
                "route": "/classify",
                "batchable": False,
                "input": {"properties": {"input_series": {"type": "tensor"}}},
                "output": {"type": "tensor"},
            }
        ],
    },
    "image": {"base_image": "python:3.11-slim", "python_version": "3.11"},
    "spec": 2,
}


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def poll(what, timeout, f, every=0.05):
    """Calls f until it returns something truthy; fails after timeout."""
    deadline = time.monotonic() + timeout
    while True:
        v = f()
        if v:
            return v
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def timed(cmd, **kw):
    """Runs cmd and returns its wall time in seconds."""
    t = time.perf_counter()
    run(cmd, **kw)
    return time.perf_counter() - t


def mbps(nbytes, seconds):
    return nbytes / seconds / 1e6


def fmt_size(n):
    return f"{n / (1 << 30):.3g} GiB" if n >= 1 << 30 else f"{n / MIB:.4g} MiB"


def sync():
    run(["sync"])


def cpu_busy(seconds=1.0):
    """Fraction of the machine's CPU time spent busy over the next `seconds`."""
    def sample():
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        return sum(f), f[3] + f[4]  # total, idle + iowait
    t0, i0 = sample()
    time.sleep(seconds)  # a measurement window, not synchronisation
    t1, i1 = sample()
    return 1 - (i1 - i0) / max(1, t1 - t0)


def wait_idle(limit, timeout):
    """Waits (with a deadline) for other work on the machine to stop, and
    returns how busy the CPUs were when this part started."""
    deadline = time.monotonic() + timeout
    while True:
        busy = cpu_busy()
        if busy <= limit or time.monotonic() > deadline:
            if busy > limit:
                log(f"the machine is still {busy:.0%} busy; measuring anyway (noted in the report)")
            return busy


# --- the server ---------------------------------------------------------------


class Server:
    """A `yatai serve` on a free loopback port, with its own data dir."""

    def __init__(self, binary, data_dir, args=(), env=None):
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        e = dict(os.environ)
        e.update({"YATAI_INITIAL_API_TOKEN": TOKEN})
        e.update(env or {})
        cmd = [str(binary), "serve", "--bind", "127.0.0.1:0",
               "--data-dir", str(self.data_dir), *args]
        self.logf = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.logf,
                                     env=e, text=True)
        self.url = None
        deadline = time.monotonic() + 60
        while self.url is None:
            line = self.proc.stdout.readline()
            if not line:
                self.logf.flush()
                raise SystemExit(f"yatai serve exited; log:\n{self.log_path.read_text()[-3000:]}")
            m = re.match(r"yatai listening on (http://\S+)", line.strip())
            if m:
                self.url = m.group(1)
            if time.monotonic() > deadline:
                raise SystemExit("yatai serve did not print its address")
        self.pid = self.proc.pid
        poll("/healthz", 30, lambda: self.ok("/healthz"))

    def ok(self, path):
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def call(self, method, path, body=None):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("X-YATAI-API-TOKEN", TOKEN)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            raise SystemExit(f"{method} {path}: {e.code} {e.read()[:500]!r}")

    def status(self):
        """VmRSS and VmHWM in bytes."""
        out = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
        return out

    def reset_peak(self):
        # Writing 5 to clear_refs resets VmHWM to the current RSS.
        Path(f"/proc/{self.pid}/clear_refs").write_text("5")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def make_file(path, size):
    """A tar of `size` bytes holding one member of random bytes
    (incompressible, like model weights): the server refuses non-tar archives."""
    import tarfile
    payload = size - 512 - 1024  # member header, end-of-archive blocks
    assert payload > 0 and payload % 512 == 0, "the size must be a multiple of 512 above 1536"
    header = tarfile.TarInfo("./weights.bin")
    header.size = payload
    with open("/dev/urandom", "rb") as src, open(path, "wb") as dst:
        dst.write(header.tobuf(format=tarfile.USTAR_FORMAT))
        left = payload
        while left:
            n = min(left, 16 * MIB)
            dst.write(src.read(n))
            left -= n
        dst.write(bytes(1024))


def stamp(path, n):
    """Makes the file's content unique to run n, so no upload deduplicates
    (inside the member, after its 512-byte header)."""
    with open(path, "r+b") as f:
        f.seek(512)
        f.write(f"yatai-bench-run-{n:08d}".encode())


# --- 1. the server's own data path ------------------------------------------------


def split_url(url):
    u = urllib.parse.urlsplit(url)
    return u.hostname, u.port or 80, u.path + (f"?{u.query}" if u.query else "")


def lean_put(url, src):
    """PUT a file with sendfile(2): the lightest client there is, so the
    measurement is of the server. Returns (seconds, response JSON or None)."""
    host, port, path = split_url(url)
    size = os.path.getsize(src)
    with socket.create_connection((host, int(port))) as s, open(src, "rb") as f:
        s.sendall((f"PUT {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-YATAI-API-TOKEN: {TOKEN}\r\n"
                   f"Content-Type: application/octet-stream\r\nContent-Length: {size}\r\n"
                   "Connection: close\r\n\r\n").encode())
        t = time.perf_counter()
        s.sendfile(f)
        resp = b""
        while chunk := s.recv(65536):
            resp += chunk
        elapsed = time.perf_counter() - t
    head, _, body = resp.partition(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        raise SystemExit(f"PUT {path}: {resp[:500]!r}")
    return elapsed, json.loads(body) if body.startswith(b"{") else None


def lean_get(url, dst):
    """GET into a file with 1 MiB reads and writes. Returns seconds, bytes."""
    host, port, path = split_url(url)
    buf = bytearray(MIB)
    mv = memoryview(buf)
    with socket.create_connection((host, int(port))) as s:
        s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nX-YATAI-API-TOKEN: {TOKEN}\r\n"
                   "Connection: close\r\n\r\n").encode())
        t = time.perf_counter()
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                n = s.recv_into(mv)
                if not n:
                    raise SystemExit(f"GET {path}: connection closed in the headers")
                head += bytes(mv[:n])
            head, _, rest = head.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"GET {path}: {head[:300]!r}")
            os.write(fd, rest)
            total = len(rest)
            while n := s.recv_into(mv):
                os.write(fd, mv[:n])
                total += n
        finally:
            os.close(fd)
        return time.perf_counter() - t, total


def datapath(a, tmp, report):
    size = a.size
    src = tmp / "archive.tar"
    log(f"datapath: making a {fmt_size(size)} file of random bytes")
    make_file(src, size)
    rows = []
    configs = [("local, --fsync true (default)", ["--fsync", "true"], True),
               ("local, --fsync false", ["--fsync", "false"], False)]
    if a.s3:
        configs.append(("s3s-fs, proxied", a.s3_args, False))
    hdr = ["-H", f"X-YATAI-API-TOKEN: {TOKEN}"]
    for label, args, fsync in configs:
        log(f"datapath: {label}")
        data = tmp / f"dp-{len(rows)}"
        s3 = "s3s" in label
        with Server(a.binary, data, args, a.s3_env if s3 else None) as srv:
            srv.call("POST", "/api/v1/bento_repositories", {"name": "dp"})
            res = {k: [] for k in ("cp", "cp_sync", "put", "put_curl", "cp_get", "get", "get_curl", "rss", "s3_put", "s3_get")}
            stamp_no = 0

            def new_version(name):
                nonlocal stamp_no
                srv.call("POST", "/api/v1/bento_repositories/dp/bentos", {"version": name, "manifest": None})
                srv.call("PATCH", f"/api/v1/bento_repositories/dp/bentos/{name}/start_upload")
                stamp_no += 1
                stamp(src, stamp_no)
                sync()
                return f"/api/v1/bento_repositories/dp/bentos/{name}"

            for i in range(a.runs):
                # cp baselines: plain, and with the copy synced to disk.
                for key, with_sync in (("cp", False), ("cp_sync", True)):
                    dst = data / f"cp-{i}"
                    sync()
                    t = time.perf_counter()
                    run(["cp", str(src), str(dst)])
                    if with_sync:
                        run(["sync", str(dst)])
                    res[key].append(time.perf_counter() - t)
                    dst.unlink()
                # Upload with the lean client, watching the server's memory.
                path = new_version(f"run{i}")
                srv.reset_peak()
                before = srv.status()["VmRSS"]
                took, body = lean_put(srv.url + path + "/upload", src)
                res["put"].append(took)
                res["rss"].append(srv.status()["VmHWM"] - before)
                assert body["upload_status"] == "success" and body["archive_size_bytes"] == size, body
                # The same with curl.
                path_c = new_version(f"run{i}-curl")
                t = time.perf_counter()
                out = run(["curl", "-sSf", "-X", "PUT", *hdr, "-H", "Content-Type: application/octet-stream",
                           "-T", str(src), srv.url + path_c + "/upload"], capture_output=True, text=True).stdout
                res["put_curl"].append(time.perf_counter() - t)
                assert json.loads(out)["upload_status"] == "success", out
                # Download to a file on the same disk, against cp of the stored blob.
                if not s3:
                    blob = max((data / "artifacts" / "blobs").iterdir(), key=lambda p: p.stat().st_mtime)
                    dst = data / f"cpget-{i}"
                    sync()
                    res["cp_get"].append(timed(["cp", str(blob), str(dst)]))
                    dst.unlink()
                else:
                    # The baseline for a proxy in front of S3: the same client
                    # straight to the S3 server through presigned URLs.
                    path_d = new_version(f"run{i}-direct")
                    url = srv.call("PATCH", path_d + "/presign_upload_url")["presigned_upload_url"]
                    res["s3_put"].append(lean_put(url, src)[0])
                    srv.call("PATCH", path_d + "/finish_upload", {"status": "success"})
                    url = srv.call("PATCH", path_d + "/presign_download_url")["presigned_download_url"]
                    dst = data / f"direct-{i}"
                    sync()
                    took, n = lean_get(url, dst)
                    assert n == size, n
                    res["s3_get"].append(took)
                    dst.unlink()
                dst = data / f"get-{i}"
                sync()
                took, n = lean_get(srv.url + path + "/download", dst)
                assert n == size, n
                res["get"].append(took)
                dst.unlink()
                sync()
                res["get_curl"].append(timed(["curl", "-sSf", *hdr, "-o", str(dst), srv.url + path + "/download"]))
                assert dst.stat().st_size == size
                dst.unlink()
                sync()
            med = {k: statistics.median(v) for k, v in res.items() if v}
            rows.append((label, fsync, med, res))
    # Report.
    r = report
    r.append(f"### Data path: raw HTTP, {fmt_size(size)} archive, median of {a.runs} runs\n")
    r.append("\"lean client\": Python, `sendfile(2)` for the PUT and 1 MiB reads/writes for the GET, so "
             "the client costs as little CPU as possible (it shares the 2 cores with the server). "
             "curl (64 KiB upload buffer, 16 KiB receive buffer) is shown for reference. Baselines: "
             "`cp` of the same file (GNU cp 9.1: `copy_file_range`, in-kernel), and `cp` followed by "
             "`sync FILE`; downloads compare against `cp` of the stored blob. **Bold** is the fair "
             "comparison: a syncing server against `cp` + `sync`, a non-syncing one against `cp`.\n")
    r.append("| storage | operation | client | server MB/s | baseline | baseline MB/s | server / baseline |")
    r.append("|---|---|---|---:|---|---:|---:|")
    for label, fsync, m, _ in rows:
        base = ("cp_sync", "`cp` + `sync FILE`") if fsync else ("cp", "`cp`")
        if "s3_put" in m:
            base = ("s3_put", "lean client straight to s3s-fs (presigned)")
        for key, client in (("put", "lean"), ("put_curl", "curl")):
            bold = "**" if client == "lean" else ""
            r.append(f"| {label} | upload (PUT) | {client} | {mbps(size, m[key]):.0f} | {base[1]} | "
                     f"{mbps(size, m[base[0]]):.0f} | {bold}{m[base[0]] / m[key]:.0%}{bold} |")
            if fsync and client == "lean":
                r.append(f"| {label} | upload (PUT) | lean | {mbps(size, m[key]):.0f} | `cp` (no sync) | "
                         f"{mbps(size, m['cp']):.0f} | {m['cp'] / m[key]:.0%} |")
        gb = ("cp_get", "`cp` of the stored blob") if "cp_get" in m else (
            "s3_get", "lean client straight from s3s-fs (presigned)")
        for key, client in (("get", "lean"), ("get_curl", "curl")):
            bold = "**" if client == "lean" else ""
            r.append(f"| {label} | download (GET) to a file | {client} | {mbps(size, m[key]):.0f} | {gb[1]} | "
                     f"{mbps(size, m[gb[0]]):.0f} | {bold}{m[gb[0]] / m[key]:.0%}{bold} |")
    r.append("")
    r.append("| storage | server RSS growth during each upload (VmHWM after − VmRSS before) |")
    r.append("|---|---|")
    for label, _, _, res in rows:
        r.append(f"| {label} | {', '.join(f'{x / MIB:.1f} MiB' for x in res['rss'])} |")
    r.append("")
    src.unlink()


# --- 2. end to end with the bentoml CLI ----------------------------------------------


def bentoml_env(home, url):
    e = dict(os.environ)
    e.update({"BENTOML_HOME": str(home), "BENTOML_DO_NOT_TRACK": "true",
              "BENTO_CLOUD_API_ENDPOINT": url, "BENTO_CLOUD_API_KEY": TOKEN,
              "NO_PROXY": "*", "TERM": "dumb", "COLUMNS": "200"})
    return e


CLIENT_TAR = """
import os, sys, tarfile, tempfile, time
from bentoml._internal.utils.filesystem import safe_extract_tarfile
src, scratch = sys.argv[1], sys.argv[2]
# What `bentoml models push` does before it sends a byte (cloud/model.py).
t = time.perf_counter()
fd, name = tempfile.mkstemp(suffix=".tar", dir=scratch)
with os.fdopen(fd, "wb+") as f:
    with tarfile.open(fileobj=f, mode="w:") as tar:
        tar.add(src, arcname="./")
t_tar = time.perf_counter() - t
# What `bentoml models pull` does after the last byte arrives.
out = tempfile.mkdtemp(dir=scratch)
t = time.perf_counter()
with open(name, "rb") as f:
    safe_extract_tarfile(tarfile.open(fileobj=f, mode="r"), out)
t_extract = time.perf_counter() - t
print(t_tar, t_extract)
"""


def e2e(a, tmp, report):
    venv = Path(a.venv)
    bentoml = str(venv / "bin" / "bentoml")
    python = str(venv / "bin" / "python")
    src_home = tmp / "client-src"
    src_home.mkdir()
    log(f"e2e: saving a {fmt_size(a.size)} model with bentoml")
    code = (
        "import bentoml, os\n"
        f"with bentoml.models.create('bench-model') as m:\n"
        f"    with open(os.path.join(m.path, 'weights.bin'), 'wb') as f, open('/dev/urandom', 'rb') as r:\n"
        f"        left = {a.size}\n"
        "        while left > 0:\n"
        "            n = min(left, 16 << 20); f.write(r.read(n)); left -= n\n"
        "print(m.tag)\n"
    )
    env = bentoml_env(src_home, "http://127.0.0.1:9")
    tag = run([python, "-c", code], env=env, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    name, version = tag.split(":")
    model_dir = src_home / "models" / name / version
    model_bytes = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file())
    # Baselines, same disk: cp -r of the model directory, and the CLI's start-up.
    cps, cpsyncs, tars, extracts, startups = [], [], [], [], []
    for i in range(a.runs):
        dst = tmp / "cp-model"
        sync()
        cps.append(timed(["cp", "-r", str(model_dir), str(dst)]))
        shutil.rmtree(dst)
        sync()
        t = time.perf_counter()
        run(["cp", "-r", str(model_dir), str(dst)])
        run(["sync", "-f", str(dst / "weights.bin")])
        cpsyncs.append(time.perf_counter() - t)
        shutil.rmtree(dst)
        scratch = tmp / f"tar-{i}"
        scratch.mkdir()
        sync()
        out = run([python, "-c", CLIENT_TAR, str(model_dir), str(scratch)], env=env,
                  capture_output=True, text=True).stdout.split()
        tars.append(float(out[0]))
        extracts.append(float(out[1]))
        shutil.rmtree(scratch)
        startups.append(timed([bentoml, "models", "get", tag], env=env, capture_output=True))
    rows = []
    for mode in a.modes:
        pushes, pulls = [], []
        for i in range(a.e2e_runs):
            log(f"e2e: {mode}, run {i + 1}")
            data = tmp / f"e2e-{mode}-{i}"
            with Server(a.binary, data, ["--transmission-strategy", mode]) as srv:
                env = bentoml_env(src_home, srv.url)
                sync()
                t = time.perf_counter()
                p = run([bentoml, "models", "push", tag], env=env, capture_output=True, text=True, check=False)
                pushes.append(time.perf_counter() - t)
                if p.returncode != 0 or "uccessfully pushed" not in p.stdout + p.stderr:
                    raise SystemExit(f"push failed:\n{p.stdout}{p.stderr}")
                dst_home = tmp / f"client-dst-{mode}-{i}"
                dst_home.mkdir()
                env = bentoml_env(dst_home, srv.url)
                sync()
                t = time.perf_counter()
                p = run([bentoml, "models", "pull", tag], env=env, capture_output=True, text=True, check=False)
                pulls.append(time.perf_counter() - t)
                if p.returncode != 0:
                    raise SystemExit(f"pull failed:\n{p.stdout}{p.stderr}")
                got = dst_home / "models" / name / version / "weights.bin"
                assert got.stat().st_size == (model_dir / "weights.bin").stat().st_size
                shutil.rmtree(dst_home)
            shutil.rmtree(data)
        rows.append((mode, statistics.median(pushes), statistics.median(pulls)))
    cp, cpsync = statistics.median(cps), statistics.median(cpsyncs)
    tar, extract, startup = statistics.median(tars), statistics.median(extracts), statistics.median(startups)
    r = report
    r.append(f"### End to end: bentoml 1.4.40 CLI, {fmt_size(model_bytes)} model, local storage, "
             f"server defaults (fsync on), median of {a.e2e_runs} run(s)\n")
    r.append(f"Baselines in the same run (median of {a.runs}): `cp -r` of the model directory "
             f"{cp:.2f} s ({mbps(model_bytes, cp):.0f} MB/s); with `sync` {cpsync:.2f} s "
             f"({mbps(model_bytes, cpsync):.0f} MB/s). The client's own work, timed alone with the "
             f"client's code: tar of the model directory {tar:.2f} s, extraction {extract:.2f} s; "
             f"CLI start-up (`bentoml models get`) {startup:.2f} s.\n")
    r.append("| strategy | push s | push MB/s | `cp` / push | pull s | pull MB/s | `cp` / pull | push − tar − start-up | pull − extract − start-up |")
    r.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, push, pull in rows:
        r.append(f"| {mode} | {push:.2f} | {mbps(model_bytes, push):.0f} | {cp / push:.0%} | {pull:.2f} | "
                 f"{mbps(model_bytes, pull):.0f} | {cp / pull:.0%} | {push - tar - startup:.2f} s | "
                 f"{pull - extract - startup:.2f} s |")
    r.append("")


# --- 3. GET …/bentos/{version} under load ------------------------------------------------


WRK_LAT = re.compile(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def parse_wrk(out):
    to_ms = {"us": 1e-3, "ms": 1.0, "s": 1e3}
    lat = {int(p): float(v) * to_ms[u] for p, v, u in WRK_LAT.findall(out)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": lat.get(50), "p99": lat.get(99),
            "non2xx": int(non2xx.group(1)) if non2xx else 0,
            "errors": errors.group(0) if errors else ""}


def seed(srv, repo, n, threads, conns):
    """Creates n versions in one repository through the API, with wrk."""
    srv.call("POST", "/api/v1/bento_repositories", {"name": repo})
    per = n // threads
    path = f"/api/v1/bento_repositories/{repo}/bentos"
    t = time.perf_counter()
    proc = subprocess.Popen(["wrk", "-t", str(threads), "-c", str(conns), "-d", "3600s",
                             "-s", str(HERE / "lua" / "seed.lua"), srv.url, "--",
                             path, TOKEN, str(per), json.dumps(BENTO_MANIFEST)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def counted():
        if proc.poll() is not None:
            raise SystemExit(f"wrk exited early:\n{proc.stdout.read()}{proc.stderr.read()}")
        try:
            with urllib.request.urlopen(urllib.request.Request(
                    f"{srv.url}/api/v1/bento_repositories/{repo}/bentos?count=1",
                    headers={"X-YATAI-API-TOKEN": TOKEN}), timeout=10) as r:
                return json.loads(r.read())["total"] >= per * threads
        except urllib.error.HTTPError:
            return False  # 404 while the repository is still empty

    try:
        poll(f"{n} versions", 1800, counted, every=1.0)
    except BaseException:
        proc.kill()  # wrk runs for an hour unless stopped
        proc.wait()
        raise
    elapsed = time.perf_counter() - t
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    m = re.search(r"seed: answered=(\d+) failed=(\d+)", out)
    if not m or int(m.group(2)) != 0:
        raise SystemExit(f"seeding failed:\n{out}{err}")
    return per * threads, elapsed, per


def wrk_get(url, args, duration, conns, threads=1):
    cmd = ["wrk", "-t", str(threads), "-c", str(conns), "-d", f"{duration}s", "--latency", *args]
    out = run(cmd + [url], capture_output=True, text=True).stdout
    res = parse_wrk(out)
    if res["non2xx"] or res["errors"]:
        raise SystemExit(f"wrk saw errors:\n{out}")
    return res


def get_bench(a, tmp, report, pg_url):
    backends = [("SQLite", [])]
    if pg_url:
        backends.append(("PostgreSQL", ["--database-url", pg_url]))
    rows = []
    seeds = []
    list_ms = []
    for label, args in backends:
        data = tmp / f"get-{label}"
        with Server(a.binary, data, args) as srv:
            log(f"get: seeding {a.versions} versions ({label})")
            n, took, per = seed(srv, "bench", a.versions, a.seed_threads, a.seed_conns)
            seeds.append((label, n, took))
            path = "/api/v1/bento_repositories/bench/bentos"
            middle = f"s1-{per // 2:07d}"
            fixed_url = f"{srv.url}{path}/{middle}"
            hdr = ["-H", f"X-YATAI-API-TOKEN: {TOKEN}"]
            # The first page of the version list (what `bentoml pull` and the
            # dashboard ask for), timed alone.
            lists = []
            for _ in range(20):
                t = time.perf_counter()
                srv.call("GET", f"{path}?count=20")
                lists.append((time.perf_counter() - t) * 1000)
            list_ms.append((label, statistics.median(lists)))
            log(f"get: warming up ({label})")
            wrk_get(fixed_url, hdr, 3, 32)
            for c in a.connections:
                log(f"get: {label}, {c} connections")
                fixed = wrk_get(fixed_url, hdr, a.duration, c)
                rand = run(["wrk", "-t", "1", "-c", str(c), "-d", f"{a.duration}s", "--latency",
                            "-s", str(HERE / "lua" / "get-random.lua"), srv.url, "--",
                            path, TOKEN, str(a.seed_threads), str(per)],
                           capture_output=True, text=True).stdout
                rand = parse_wrk(rand)
                if rand["non2xx"] or rand["errors"]:
                    raise SystemExit(f"wrk (random versions) saw errors: {rand}")
                rows.append((label, c, fixed, rand))
    r = report
    r.append(f"### GET /api/v1/bento_repositories/{{name}}/bentos/{{version}}, {a.versions:,} versions "
             f"in the repository, wrk -t1 --latency, {a.duration} s per row\n")
    r.append("One wrk thread and the server share the machine's 2 cores. \"one version\": the same "
             "version every request; \"random\": a uniformly random one of all versions (wrk Lua "
             "script, which costs wrk some throughput).\n")
    r.append("| database | connections | one version: req/s | p50 ms | p99 ms | random: req/s | p50 ms | p99 ms |")
    r.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, c, f, rnd in rows:
        r.append(f"| {label} | {c} | {f['rps']:,.0f} | {f['p50']:.2f} | {f['p99']:.2f} | "
                 f"{rnd['rps']:,.0f} | {rnd['p50']:.2f} | {rnd['p99']:.2f} |")
    r.append("")
    for label, ms in list_ms:
        r.append(f"First page of the version list (`GET …/bentos?count=20`) with {label}: "
                 f"{ms:.1f} ms (median of 20, one at a time).")
    for label, n, took in seeds:
        r.append(f"Seeding {label}: {n:,} versions through `POST …/bentos` (wrk, "
                 f"{a.seed_threads} thread(s), {a.seed_conns} connections, bench/lua/seed.lua) "
                 f"in {took:.1f} s = {n / took:,.0f} versions/s.")
    r.append("")


# --- PostgreSQL and s3s-fs, as scripts/test starts them ---------------------------------


class Postgres:
    BIN = "/usr/lib/postgresql/15/bin"

    def __init__(self, tmp, port):
        self.dir = tmp / "pg"
        self.dir.mkdir()
        shutil.chown(self.dir, "postgres", "postgres")
        su = ["runuser", "-u", "postgres", "--"]
        run([*su, f"{self.BIN}/initdb", "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"], capture_output=True)
        run([*su, f"{self.BIN}/pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-w",
             "-o", f"-p {port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c max_connections=200", "start"], capture_output=True)
        self.url = f"postgres://postgres@127.0.0.1:{port}/postgres"

    def stop(self):
        run(["runuser", "-u", "postgres", "--", f"{self.BIN}/pg_ctl", "-D", str(self.dir / "data"),
             "-m", "fast", "stop"], capture_output=True, check=False)


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--binary", default=os.environ.get("YATAI_BIN"), required=not os.environ.get("YATAI_BIN"))
    p.add_argument("--only", default="datapath,e2e,get", help="comma-separated parts to run")
    p.add_argument("--size", type=lambda s: int(float(s) * MIB), default=1024 * MIB,
                   help="archive/model size in MiB (default 1024)")
    p.add_argument("--runs", type=int, default=3, help="runs of each data-path measurement")
    p.add_argument("--e2e-runs", type=int, default=1)
    p.add_argument("--modes", default="proxy,presigned,multipart")
    p.add_argument("--versions", type=int, default=100_000)
    p.add_argument("--seed-threads", type=int, default=1)
    p.add_argument("--seed-conns", type=int, default=16)
    p.add_argument("--connections", default="8,32,128", help="wrk connection counts for the GET")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk row")
    p.add_argument("--no-postgres", action="store_true")
    p.add_argument("--s3s-fs", default=os.environ.get("YATAI_S3S_FS"), help="s3s-fs binary: adds an S3 data-path row")
    p.add_argument("--venv", default=os.environ.get("YATAI_TEST_VENV", "/var/cache/yatai-rs/venv"))
    p.add_argument("--scratch", default="/var/tmp", help="where files are written (the disk measured)")
    p.add_argument("--out", help="also write the report here")
    p.add_argument("--idle", type=float, default=0.10,
                   help="wait until other work uses at most this fraction of the CPUs (default 0.10)")
    p.add_argument("--idle-timeout", type=float, default=300, help="…for at most this many seconds")
    a = p.parse_args()
    a.argv = [x for x in sys.argv[1:] if not x.startswith("--binary")]
    parts = set(a.only.split(","))
    a.modes = a.modes.split(",")
    a.connections = [int(c) for c in a.connections.split(",")]
    a.binary = Path(a.binary).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="yatai-bench.", dir=a.scratch))
    os.chmod(tmp, 0o755)
    pg = s3 = None
    a.s3 = False
    started = time.strftime("%Y-%m-%d %H:%M %Z")
    commit = run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                 text=True, check=False).stdout.strip()
    dirty = run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True, text=True, check=False).stdout.strip()
    report = [f"Measured {started} (nice {os.nice(0)}) at commit {commit}"
              f"{' (with uncommitted changes)' if dirty else ''} with "
              f"`bench/run-registry {' '.join(a.argv)}`.", ""]

    def emit(part, busy):
        """Prints a finished part at once (and appends it to --out), so a
        later failure loses nothing."""
        report.append(f"(CPU busy with other work when this part started: {busy:.0%}.)\n")
        text = "\n".join(report)
        print(text, flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(text + "\n")
        report.clear()

    try:
        if a.s3s_fs and "datapath" in parts:
            port = free_port()
            (tmp / "s3" / "bench").mkdir(parents=True)
            s3 = subprocess.Popen([a.s3s_fs, "--host", "127.0.0.1", "--port", str(port),
                                   "--access-key", "bench", "--secret-key", "bench-secret", str(tmp / "s3")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            poll("s3s-fs", 30, lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0)
            a.s3 = True
            a.s3_args = ["--storage", "s3://bench", "--s3-endpoint", f"http://127.0.0.1:{port}",
                         "--transmission-strategy", "proxy"]
            a.s3_env = {"YATAI_S3_ACCESS_KEY_ID": "bench", "YATAI_S3_SECRET_ACCESS_KEY": "bench-secret"}
        if "datapath" in parts:
            busy = wait_idle(a.idle, a.idle_timeout)
            datapath(a, tmp, report)
            emit("datapath", busy)
        if "e2e" in parts:
            busy = wait_idle(a.idle, a.idle_timeout)
            e2e(a, tmp, report)
            emit("e2e", busy)
        if "get" in parts:
            busy = wait_idle(a.idle, a.idle_timeout)
            if not a.no_postgres:
                pg = Postgres(tmp, free_port())
            get_bench(a, tmp, report, pg.url if pg else None)
            emit("get", busy)
    except BaseException:
        # Keep the servers' logs of a failed run.
        for log_file in tmp.glob("*.log"):
            shutil.copy(log_file, Path(a.scratch) / f"yatai-bench-failed-{log_file.name}")
        log(f"failed; server logs copied to {a.scratch}/yatai-bench-failed-*.log")
        raise
    finally:
        if pg:
            pg.stop()
        if s3:
            s3.terminate()
            s3.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()

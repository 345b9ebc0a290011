#!/usr/bin/env bash
# Benchmark of the local runtime (issue 3):
#   - deploy-to-ready time, split into preparing the Python environment (cold:
#     empty environment and uv caches; warm: environment cached) and starting
#     the replica process;
#   - the reverse proxy's added latency (p50, p99: bench/latency.py, one request at
#     a time) and requests/s (wrk), measured
#     side by side with calling the replica directly, in the same run.
# Usage: bench/deploy.sh            (results are printed as a Markdown table)
# Needs: the test setup (scripts/setup-test-deps), wrk (apt-get install wrk).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE=${YATAI_CACHE:-/var/cache/yatai-rs}
VENV=$CACHE/venv
command -v wrk >/dev/null || { apt-get install -y -qq wrk >/dev/null; }
cargo build -q --release -p yatai
BIN=$PWD/target/release/yatai

T=$(mktemp -d /tmp/yatai-bench-deploy.XXXXXX)
SERVER_PID=
cleanup() { [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"; }
trap cleanup EXIT

TOKEN=bench-token-0123456789abcdef
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
EP=http://127.0.0.1:$PORT
start_server() { # env-dir uv-cache
    YATAI_INITIAL_API_TOKEN=$TOKEN UV_CACHE_DIR="$2" "$BIN" serve --bind 127.0.0.1:$PORT --data-dir "$T/data" \
        --uv "$VENV/bin/uv" --env-dir "$1" --stop-grace 5s >"$T/server.out" 2>"$T/server.log" &
    SERVER_PID=$!
    until curl -sf "$EP/healthz" >/dev/null; do sleep 0.1; done
}
api() { curl -sf -H "X-YATAI-API-TOKEN: $TOKEN" "$@"; }

# A bento to deploy: the test suite's iris fixture.
export BENTOML_HOME=$T/bentoml BENTOML_DO_NOT_TRACK=true BENTO_CLOUD_API_ENDPOINT=$EP BENTO_CLOUD_API_KEY=$TOKEN
(cd tests/fixtures/iris && "$VENV/bin/python" save_models.py bench >/dev/null && "$VENV/bin/bentoml" build . >/dev/null 2>&1)
BENTO=$(ls "$BENTOML_HOME/bentos/iris_service" | grep -v latest | head -1)

# Deploys, waits until running, prints: total_s env_s replica_s
deploy() { # name
    local t0 t1 logs
    t0=$(date +%s.%N)
    api -X POST "$EP/api/v2/deployments" -H 'content-type: application/json' \
        -d "{\"name\": \"$1\", \"bento\": \"iris_service:$BENTO\"}" >/dev/null
    until [ "$(api "$EP/api/v2/deployments/$1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["status"])')" = running ]; do
        sleep 0.05
    done
    t1=$(date +%s.%N)
    logs=$(api "$EP/api/v2/deployments/$1/logs?tail=200")
    env_s=$(grep -oE 'Python environment (built|reused from the cache) \(([0-9.]+) s\)' <<<"$logs" | grep -oE '[0-9.]+ s' | head -1 | cut -d' ' -f1)
    rep_s=$(grep -oE 'is ready \(([0-9.]+) s after start\)' <<<"$logs" | grep -oE '[0-9.]+ s' | head -1 | cut -d' ' -f1)
    echo "$(python3 -c "print(f'{$t1-$t0:.1f}')") $env_s $rep_s"
}

ENV_COLD=$T/envs-cold UV_COLD=$T/uv-cold
start_server "$ENV_COLD" "$UV_COLD"
"$VENV/bin/bentoml" push "iris_service:$BENTO" >/dev/null 2>&1
read -r cold_total cold_env cold_rep < <(deploy cold)
api -X DELETE "$EP/api/v2/deployments/cold" >/dev/null
read -r warm_total warm_env warm_rep < <(deploy warm)
echo "deploy: cold $cold_total $cold_env $cold_rep, warm $warm_total $warm_env $warm_rep" >&2

# Baseline for the replica start: `bentoml serve` of the same bento, started by
# hand from the bench's own venv (same Python and bentoml), until /readyz answers.
BPORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
t0=$(date +%s.%N)
setsid "$VENV/bin/bentoml" serve "iris_service:$BENTO" --host 127.0.0.1 --port "$BPORT" >"$T/bare.log" 2>&1 &
BARE_PID=$!
until curl -sf "http://127.0.0.1:$BPORT/readyz" >/dev/null; do sleep 0.05; done
bare_s=$(python3 -c "print(f'{$(date +%s.%N)-$t0:.1f}')")
kill -TERM -- -"$BARE_PID" 2>/dev/null || true
wait "$BARE_PID" 2>/dev/null || true
echo "bare bentoml serve ready in $bare_s s" >&2

# Proxy overhead: the same request through the proxy and straight to the replica.
DEP=$(api "$EP/api/v2/deployments/warm")
PROXY=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["urls"][0])' "$DEP")
DIRECT=http://127.0.0.1:$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["replicas"][0]["port"])' "$DEP")
cat >"$T/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"input_series": [[5.1, 3.5, 1.4, 0.2]]}'
wrk.headers["Content-Type"] = "application/json"
LUA
ROUNDS=${ROUNDS:-3}
BODY='{"input_series": [[5.1, 3.5, 1.4, 0.2]]}'
throughput() { # url path extra-args... → requests/s of wrk -t1 -c4 -d5s
    local url=$1 path=$2; shift 2
    wrk -t1 -c4 -d5s "$@" "$url$path" | awk '/Requests\/sec/ {print $2}'
}
latency() { # url path → "p50_ms p99_ms" of 2,000 sequential requests
    local post=(); [ "$2" = /classify ] && post=(--post "$BODY")
    python3 bench/latency.py "$1$2" "${post[@]}"
}
# The server's CPU time (user + system, in clock ticks) so far.
server_cpu() { awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"; }
# Direct and proxied runs alternate, ROUNDS times each; the report takes medians.
: >"$T/runs"
for path in /livez /classify; do
    extra=(); [ "$path" = /classify ] && extra=(-s "$T/post.lua")
    throughput "$DIRECT" "$path" "${extra[@]}" >/dev/null  # warm-up
    for round in $(seq "$ROUNDS"); do
        for mode in direct proxied; do
            url=$DIRECT; [ $mode = proxied ] && url=$PROXY
            cpu0=$(server_cpu)
            rps=$(throughput "$url" "$path" "${extra[@]}")
            ticks=$(($(server_cpu) - cpu0))
            echo "$path $mode $rps $ticks $(latency "$url" "$path")" >>"$T/runs"
        done
    done
done

echo "## Local runtime ($(date -u +%F), \`bench/deploy.sh\`)"
echo
echo "Load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
echo
echo "| deploy to ready | total | Python environment | replica start |"
echo "|---|---|---|---|"
echo "| cold (no environment, empty uv cache) | ${cold_total} s | ${cold_env} s | ${cold_rep} s |"
echo "| warm (environment cached) | ${warm_total} s | ${warm_env} s | ${warm_rep} s |"
echo "| baseline: \`bentoml serve\` of the same bento started by hand, until /readyz | ${bare_s} s | – | ${bare_s} s |"
echo
python3 - "$T/runs" "$ROUNDS" "$(getconf CLK_TCK)" <<'PY'
import statistics, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    path, mode, rps, ticks, p50, p99 = line.split()
    # The server's CPU per request during the wrk run (-d5s), in µs.
    cpu_us = int(ticks) / int(sys.argv[3]) / (float(rps) * 5) * 1e6
    runs[(path, mode)].append((float(rps), cpu_us, float(p50), float(p99)))
med = lambda rows, i: statistics.median(r[i] for r in rows)
print(f"Medians of {sys.argv[2]} alternating rounds. Throughput: `wrk -t1 -c4 -d5s`; latency: 2,000")
print("requests one at a time on one kept-alive connection (`bench/latency.py`).")
print()
print("| route | direct req/s | proxied req/s | proxied / direct | proxy CPU per request | direct p50 / p99 ms | proxied p50 / p99 ms | added p50 / p99 ms |")
print("|---|---|---|---|---|---|---|---|")
for path in ("/livez", "/classify"):
    d, p = runs[(path, "direct")], runs[(path, "proxied")]
    name = "GET /livez" if path == "/livez" else "POST /classify"
    d50, d99, p50, p99 = med(d, 2), med(d, 3), med(p, 2), med(p, 3)
    print(f"| {name} | {med(d, 0):.0f} | {med(p, 0):.0f} | {med(p, 0) / med(d, 0):.2f} | {med(p, 1):.0f} µs "
          f"| {d50:.2f} / {d99:.2f} | {p50:.2f} / {p99:.2f} | {p50 - d50:+.2f} / {p99 - d99:+.2f} |")
PY

#!/usr/bin/env bash
# Image builder benchmark (one command):
#
#   bench/build/run.sh [--no-buildah]
#
# Builds the iris bento (made by bentoml 1.4.40, scripts/build-testbed/make-bentos.sh) onto the
# debootstrap base (scripts/build-testbed/base-image.sh) into a throwaway docker-registry on
# loopback, with the release `yatai-build` binary:
#   cold-empty   empty builder cache and empty uv cache (wheels downloaded from PyPI)
#   cold         empty builder cache, uv's download cache warm (fresh repository)
#   warm         builder cache warm (dependencies cached), fresh repository: every layer uploaded
#   no-op        the same again: tag exists, nothing built
#   code-only    bento v2 (only service.py changed) into the same repository
#   twin         another bento with the same requirements
# and, for comparison, `buildah bud` (chroot isolation, overlay storage) of the bento's own
# generated env/docker/Dockerfile, then `buildah push` (gzip) to the same registry; v1, then v2.
# Bytes pushed = growth of the registry's blob storage (same measure for both tools).
# Prints a markdown table. Needs: docker-registry skopeo umoci debootstrap buildah, the bentoml
# venv (/var/cache/yatai-rs/venv), network access to PyPI and the Debian mirror (buildah's apt).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${YATAI_BUILD_TEST_CACHE:-/var/cache/yatai-rs/build}
VENV=${YATAI_TEST_VENV:-/var/cache/yatai-rs/venv}
BUILDAH=1
[ "${1:-}" = "--no-buildah" ] && BUILDAH=0

cd "$ROOT"
cargo build --release -q -p yatai-build --bin yatai-build
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/yatai-build
LAYOUT=$(scripts/build-testbed/base-image.sh "$CACHE")
BENTOS=$(scripts/build-testbed/make-bentos.sh "$CACHE")

# lowercase only: buildah parses an oci: layout path as an image name
T=/tmp/yatai-build-bench-$$-$(date +%s)
mkdir -p "$T"
REG_PID=
cleanup() {
  if [ -n "$REG_PID" ]; then kill "$REG_PID" 2>/dev/null || true; wait "$REG_PID" 2>/dev/null || true; fi
  [ -d "$T/buildah-root" ] && buildah --root "$T/buildah-root" --runroot "$T/buildah-run" rm -a >/dev/null 2>&1
  umount -R "$T/buildah-root/overlay" 2>/dev/null || true
  rm -rf "$T"
  return 0
}
trap cleanup EXIT

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
REG=127.0.0.1:$PORT
mkdir -p "$T/registry"
cat > "$T/registry.yml" <<YML
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $T/registry}, delete: {enabled: true}}
http: {addr: $REG, secret: bench}
YML
docker-registry serve "$T/registry.yml" >"$T/registry.log" 2>&1 &
REG_PID=$!
for _ in $(seq 200); do curl -sf "http://$REG/v2/" >/dev/null && break; sleep 0.05; done
skopeo copy --quiet --dest-tls-verify=false "oci:$LAYOUT:bookworm" "docker://$REG/base/debian-python:bookworm"

stored() { du -sb "$T/registry" | cut -f1; }
now() { date +%s.%N; }
ROWS=()
row() { ROWS+=("| $1 | $2 | $5 | $3 | $4 |"); }
human() { numfmt --to=iec-i --suffix=B --format=%.1f "$1"; }

yb() { # label cache uvcache repo bento
  local label=$1 cache=$2 uvc=$3 repo=$4 bento=$5 tag=$6
  local before; before=$(stored)
  local t0; t0=$(now)
  /usr/bin/time -f "%U %S" -o "$T/cpu" "$BIN" "$tag" --bento-path "$BENTOS/$bento.bento" --registry "$REG/$repo" \
      --base "$REG/base/debian-python:bookworm" --plain-http --cache-dir "$cache" --uv-cache "$uvc" \
      --uv "$VENV/bin/uv" --json-report "$T/report.json" >"$T/out" 2>"$T/err" || { cat "$T/err"; exit 1; }
  local t1; t1=$(now)
  local pushed; pushed=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["bytes_pushed"])' "$T/report.json")
  local cpu; cpu=$(awk '{printf "%.2f", $1 + $2}' "$T/cpu")
  row "yatai-build: $label" "$(printf '%.2f' "$(echo "$t1 - $t0" | bc)")" "$(human "$pushed")" "$(human $(( $(stored) - before )))" "$cpu"
}

yb "cold (empty builder and uv caches)" "$T/c0" "$T/uv0" bench-a iris-v1 iris_classifier
yb "cold (empty builder cache, uv download cache warm)" "$T/c1" "$T/uv0" bench-b iris-v1 iris_classifier
yb "warm (dependencies cached), empty repository" "$T/c1" "$T/uv0" bench-c iris-v1 iris_classifier
yb "no-op (tag exists)" "$T/c1" "$T/uv0" bench-c iris-v1 iris_classifier
yb "code-only change (bento v2)" "$T/c1" "$T/uv0" bench-c iris-v2 iris_classifier
yb "another bento, same requirements" "$T/c1" "$T/uv0" bench-c twin twin_classifier

if [ $BUILDAH = 1 ] && command -v buildah >/dev/null; then
  # BentoML's Dockerfile starts FROM python:3.11-slim (Docker Hub is unreachable here): buildah's
  # --from swaps in the same debootstrap base, plus uv (the Dockerfile would pip-install it; the
  # Debian base has no pip) and the host's CA bundle (this network intercepts TLS).
  mkdir -p "$T/bbase"
  cp -a "$CACHE/base-rootfs/." "$T/bbase/"
  cp "$VENV/bin/uv" "$T/bbase/usr/local/bin/uv"
  cp /etc/ssl/certs/ca-certificates.crt "$T/bbase/etc/ssl/certs/ca-certificates.crt"
  tar -C "$T/bbase" --numeric-owner --exclude=./.complete -cf "$T/bbase.tar" .
  umoci init --layout "$T/bbase-oci" && umoci new --image "$T/bbase-oci:b"
  umoci raw add-layer --image "$T/bbase-oci:b" "$T/bbase.tar"
  umoci config --image "$T/bbase-oci:b" --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
      --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --config.env UV_NATIVE_TLS=1
  rm -rf "$T/bbase" "$T/bbase.tar"
  B="buildah --root $T/buildah-root --runroot $T/buildah-run"
  bb() { # label bento
    mkdir -p "$T/ctx-$2" && tar -xf "$BENTOS/$2.bento" -C "$T/ctx-$2"
    local before; before=$(stored)
    local t0; t0=$(now)
    $B bud --quiet --isolation chroot --layers --from "oci:$T/bbase-oci:b" -f "$T/ctx-$2/env/docker/Dockerfile" \
        -t "bench/iris:$2" "$T/ctx-$2" >"$T/buildah.log" 2>&1 || { tail -20 "$T/buildah.log"; return 1; }
    local t1; t1=$(now)
    $B push --quiet --tls-verify=false "bench/iris:$2" "docker://$REG/buildah:$2" >>"$T/buildah.log" 2>&1
    local t2; t2=$(now)
    local grown=$(( $(stored) - before ))
    row "buildah bud + push: $1" "$(printf '%.2f (%.2f build + %.2f push)' "$(echo "$t2 - $t0" | bc)" "$(echo "$t1 - $t0" | bc)" "$(echo "$t2 - $t1" | bc)")" "–" "$(human $grown)" "–"
  }
  bb "cold (empty layer cache)" iris-v1 || row "buildah bud: failed (see log)" "–" "–" "–" "–"
  bb "code-only change (bento v2, --layers cache)" iris-v2 || row "buildah bud v2: failed" "–" "–" "–" "–"
fi

echo "Run $(date -u +%Y-%m-%dT%H:%MZ) on $(nproc) cores (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)), $(git -C "$ROOT" rev-parse --short HEAD): \`bench/build/run.sh $*\`"
echo
echo "| build | wall time (s) | CPU user+sys (s) | bytes pushed (builder) | registry storage growth |"
echo "|---|---|---|---|---|"
printf '%s\n' "${ROWS[@]}"

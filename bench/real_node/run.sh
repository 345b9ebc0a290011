#!/usr/bin/env bash
# Benchmark of the seed flow on the testbed's real node (issue 14): create → first answer through
# Traefik (cold, new version, cached, and a bare Pod of the same spec), the HPA's reaction under
# load, and the footprint at idle. Driver: bench/real_node/first_answer.rs.
# Usage: bench/real_node/run.sh [ROUNDS]      (default 3; results printed as Markdown)
#        BENCH_PROFILE=dev bench/real_node/run.sh   (debug builds: no release build to wait for)
# Needs: root (the real node), the test setup (scripts/setup-test-deps builds the testbed).
set -euo pipefail
cd "$(dirname "$0")/../.."
export YATAI_TEST_REAL_NODE=1
scripts/setup-test-deps >&2
CACHE=${YATAI_CACHE:-/var/cache/yatai-rs}
export YATAI_TEST_VENV="$CACHE/venv"
T=$(mktemp -d /tmp/yatai-bench.XXXXXX)
chmod 755 "$T"
trap 'rm -rf "$T"' EXIT
export YATAI_TEST_TMP="$T"
# --workspace: the same features as `cargo test --workspace`, so a dev build reuses its dependencies.
exec cargo bench --locked --workspace --profile "${BENCH_PROFILE:-release}" --bench real_node -- "$@"

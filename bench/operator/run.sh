#!/usr/bin/env bash
# Benchmark of `yatai operator` (issue 12) on the Kubernetes testbed with kwok nodes:
#   - cold start: time for a fresh operator to converge N BentoDeployments that already exist
#     (every child applied and status written; then every one Available);
#   - the reconcile latency of one new BentoDeployment while N exist;
#   - the operator's RSS and CPU, idle and while converging; API requests per reconcile.
# Usage: bench/operator/run.sh [N]      (default 1000; results printed as a Markdown table)
# Needs: the test setup (scripts/setup-test-deps builds the testbed).
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-1000}
cargo build -q --release -p yatai --example operator_converge
# Enough kwok capacity for every pod (110 pods per node).
export K8S_TESTBED_NODES=${K8S_TESTBED_NODES:-$(( N / 100 + 2 ))}
export YATAI_BIN=$PWD/target/release/yatai
exec target/release/examples/operator_converge "$N"

#!/usr/bin/env bash
# Benchmark of deploying to a Kubernetes cluster from yatai (issue 13), on the testbed with kwok
# nodes and `yatai operator` (release build), side by side with a plain client:
#   - apply → `running` through yatai's Kubernetes target vs. apply → Available with a plain
#     client (the same Bento and BentoDeployment, a cached image), median of 5 each;
#   - the API requests per minute yatai's target sends, with no deployment and with 5 running.
# Usage: bench/kubernetes/run.sh     (results printed as a Markdown table)
# Needs: the test setup (scripts/setup-test-deps builds the testbed).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -q --release -p yatai --bin yatai --example kube_deploy
export YATAI_BIN=$PWD/target/release/yatai
exec target/release/examples/kube_deploy

#!/usr/bin/env bash
# Builds (once, cached) the test bentos of the image builder with the real bentoml 1.4.40 client
# and exports them:
#   $CACHE/bentos/iris-v1.bento       iris_classifier, service code v1
#   $CACHE/bentos/iris-v2.bento       same model and requirements, only the service code changed
#   $CACHE/bentos/twin.bento          another bento (twin_classifier) with the same requirements
#   $CACHE/bentoml-home               the BENTOML_HOME holding them and the iris_clf model
# Prints $CACHE/bentos.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${1:-${YATAI_BUILD_TEST_CACHE:-/var/cache/yatai-rs/build}}
VENV=${YATAI_TEST_VENV:-/var/cache/yatai-rs/venv}
OUT=$CACHE/bentos
mkdir -p "$CACHE"
exec 9>"$CACHE/.bentos.lock"
flock 9
if [ -e "$OUT/.complete" ] && cmp -s "$OUT/.inputs" <(cat "$HERE"/iris/* "$HERE/make-bentos.sh"); then echo "$OUT"; exit 0; fi

rm -rf "$OUT" "$CACHE/bentoml-home"
mkdir -p "$OUT"
export BENTOML_HOME=$CACHE/bentoml-home BENTOML_DO_NOT_TRACK=true PATH=$VENV/bin:$PATH
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cp "$HERE"/iris/* "$WORK/"
cd "$WORK"
{
  python train.py
  bentoml build --output tag . | tee "$WORK/v1.tag"
  bentoml export "$(tail -1 "$WORK/v1.tag" | sed 's/^__tag__://')" "$OUT/iris-v1.bento"
  sed -i 's/iris v1/iris v2/' service.py
  bentoml build --output tag . | tee "$WORK/v2.tag"
  bentoml export "$(tail -1 "$WORK/v2.tag" | sed 's/^__tag__://')" "$OUT/iris-v2.bento"
  sed -i 's/class IrisClassifier/class TwinClassifier/; s/IrisClassifier/TwinClassifier/' service.py bentofile.yaml
  bentoml build --output tag . | tee "$WORK/twin.tag"
  bentoml export "$(tail -1 "$WORK/twin.tag" | sed 's/^__tag__://')" "$OUT/twin.bento"
} >"$CACHE/make-bentos.log" 2>&1 || { tail -30 "$CACHE/make-bentos.log" >&2; exit 1; }
cat "$HERE"/iris/* "$HERE/make-bentos.sh" > "$OUT/.inputs"
touch "$OUT/.complete"
echo "$OUT"

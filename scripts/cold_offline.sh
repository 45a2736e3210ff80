#!/usr/bin/env bash
# Cold-offline check: install diffuse from a wheelhouse into a fresh venv with no index, then
# train, sample and evaluate every domain at small sizes and sample every shipped model, with the
# network unused and every pickle load made to fail. Documented in docs/guides/offline.md.
#
#   bash scripts/cold_offline.sh                 # build the wheelhouse (pip wheel), then the check
#   bash scripts/cold_offline.sh --skip-wheel    # reuse $WHEELHOUSE
#
# Everything after the wheelhouse runs in a network namespace with no interface (`unshare -n`,
# as root) where that is available, so a connection attempt fails at once; elsewhere with no
# index and proxies pointed at a closed port.
#
# WHEELHOUSE (default /tmp/diffuse-wheelhouse) and VENV (default /tmp/diffuse-offline) live in
# /tmp: the wheelhouse holds torch and is never committed.
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
WHEELHOUSE="${WHEELHOUSE:-/tmp/diffuse-wheelhouse}"
VENV="${VENV:-/tmp/diffuse-offline}"
WORK="${WORK:-/tmp/diffuse-offline-work}"
PYTHON="${PYTHON:-python3}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
T0="${T0:-$(date +%s)}"
stage() { echo "[cold-offline] $(( $(date +%s) - T0 )) s: $*"; }

if [[ "${1:-}" != "--skip-wheel" && "${1:-}" != "--offline-stage" ]]; then
    stage "building the wheelhouse in $WHEELHOUSE (pip wheel: the only step that may use the network)"
    mkdir -p "$WHEELHOUSE"
    "$PYTHON" -m pip wheel --quiet --wheel-dir "$WHEELHOUSE" "$REPO"
fi

if [[ "${1:-}" != "--offline-stage" ]] && command -v unshare > /dev/null && unshare -n true 2> /dev/null; then
    stage "entering a network namespace without network (unshare -n)"
    T0="$T0" exec unshare -n bash "$0" --offline-stage
fi
if [[ "${1:-}" == "--offline-stage" ]]; then
    "$PYTHON" -c "import socket; s = socket.socket(); s.settimeout(3); s.connect(('1.1.1.1', 443))" 2> /dev/null \
        && { echo "[cold-offline] the network is reachable inside the namespace"; exit 1; }
    stage "no network: a connection attempt fails"
fi
stage "fresh venv $VENV, install with --no-index --find-links (no network from here on)"
rm -rf "$VENV" "$WORK"
"$PYTHON" -m venv "$VENV"
# no network from here on: no index, proxies pointed at a closed port
export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE" PIP_CONFIG_FILE=/dev/null
export http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9 HTTPS_PROXY=http://127.0.0.1:9
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
"$VENV/bin/pip" install --quiet --no-index --find-links "$WHEELHOUSE" diffuse
SITE="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
cp "$REPO/scripts/no_pickle.py" "$SITE/diffuse_no_pickle.py"
printf 'import diffuse_no_pickle\ndiffuse_no_pickle.install()\n' > "$SITE/sitecustomize.py"
"$VENV/bin/python" - <<'PY'
import pickle, torch
try:
    pickle.loads(pickle.dumps(1))
except RuntimeError as exc:
    print("no-pickle guard active:", exc)
else:
    raise SystemExit("the no-pickle guard is not active")
PY

mkdir -p "$WORK" && cd "$WORK"   # not the repository: the installed package is what runs
D="$VENV/bin/diffuse"
Q=(--no-progress --device cpu)
stage "image: train, sample, evaluate"
"$D" train --domain image --steps 20 --batch-size 16 --eval-samples 0 --out runs/image "${Q[@]}"
"$D" sample -c runs/image --num 4 --steps 10 --out s/image
"$D" evaluate -c runs/image --num 16 --steps 10
stage "audio: train, sample, evaluate"
"$D" train --domain audio --steps 10 --batch-size 8 --eval-samples 0 --out runs/audio "${Q[@]}"
"$D" sample -c runs/audio --num 2 --steps 10 --out s/audio
"$D" evaluate -c runs/audio --num 8 --steps 10
stage "molecules: train, sample, evaluate"
"$D" train --domain molecules --steps 20 --batch-size 16 --eval-samples 0 --out runs/molecules "${Q[@]}"
"$D" sample -c runs/molecules --num 4 --steps 20 --out s/molecules
"$D" evaluate -c runs/molecules --num 16 --steps 20
stage "every shipped model: sample"
"$D" sample --pretrained image --num 4 --label 7 --guidance-scale 2 --steps 20 --out s/pre-image
"$D" sample --pretrained audio --num 2 --label snare --steps 20 --out s/pre-audio
"$D" sample --pretrained molecules --num 4 --steps 50 --out s/pre-molecules
stage "a model folder: save, sample it back"
"$D" save-pretrained runs/image models/image
"$D" sample --pretrained models/image --num 2 --steps 5 --out s/saved
stage "done: all domains and shipped models worked offline, no pickle loaded"
echo "[cold-offline] total $(( $(date +%s) - T0 )) s"

#!/usr/bin/env bash
# Generates a Python client from openapi/phxkv.json with openapi-python-client
# (pinned, from PyPI) and runs smoke.py with it against a throw-away dev
# cluster: put, get, a CAS conflict, a listing, a transaction and a watch.
# The generation itself must go cleanly: any warning but the one about
# /metrics (an OpenMetrics text body, which the generator leaves out) fails
# the run, since a schema the generator drops is a schema other clients
# lose too.
#
# Environment:
#   PHXKV_BIN   use this phxkv binary instead of building one
set -euo pipefail

GENERATOR_VERSION=0.29.1
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
here=$repo/e2e/clients/python
cache=${XDG_CACHE_HOME:-$HOME/.cache}/phxkv
venv=$cache/venv-openapi-python-client-$GENERATOR_VERSION

log() { printf 'python client: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
# shellcheck source=../../lib.sh
source "$repo/e2e/lib.sh"

ensure_venv "$venv" 'import openapi_python_client' "openapi-python-client==$GENERATOR_VERSION"
bin=$(phxkv_bin "$repo")

work=$(mktemp -d)
cluster_pid=
cleanup() {
    stop_process "$cluster_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "generating a client from openapi/phxkv.json"
"$venv/bin/openapi-python-client" generate --path "$repo/openapi/phxkv.json" \
    --config "$here/config.yaml" \
    --output-path "$work/client" --meta setup >"$work/generate.log" 2>&1 ||
    { cat "$work/generate.log" >&2; die "openapi-python-client failed"; }
# Each warning starts a line in capitals ("WARNING parsing GET /metrics ...",
# "Unable to process schema ..."); only the /metrics one is expected.
unexpected=$(grep -E '^(WARNING|Unable|Failure|Attempted)' "$work/generate.log" |
    grep -v '^WARNING parsing GET /metrics within operations' || true)
if [[ -n $unexpected ]]; then
    cat "$work/generate.log" >&2
    die "the generator dropped parts of the document: $unexpected"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps "$work/client"
"$venv/bin/python" -c 'import httpx, attrs, dateutil' 2>/dev/null ||
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$work/client"

# `phxkv dev` uses client ports PORT..PORT+2 and peer ports PORT+100..PORT+102.
port=$(free_port_base 0 1 2 100 101 102)
start_dev_cluster "$bin" "$port" "$work/cluster" --ephemeral
(cd "$work" && "$venv/bin/python" "$here/smoke.py" "http://127.0.0.1:$port") || die "the smoke test failed"

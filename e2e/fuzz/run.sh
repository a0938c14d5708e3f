#!/usr/bin/env bash
# Schema-based fuzzing of the public HTTP API: starts a throw-away dev
# cluster and lets schemathesis send generated (valid and invalid) requests
# built from openapi/phxkv.json, checking that no request gets a 5xx and that
# every response matches the document; then again against a secured cluster
# (`dev --secure`: TLS and --auth) with the admin token. See e2e/fuzz/README.md.
#
# Environment:
#   PHXKV_BIN            use this phxkv binary instead of building one
#   FUZZ_MAX_EXAMPLES    test cases per operation and phase (default 200)
#   FUZZ_SECURE_MAX_EXAMPLES  the same for the secured pass (default 100)
#   FUZZ_SEED            schemathesis seed, to replay a run
#   FUZZ_REPORT_DIR      also write a JUnit report there
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/phxkv
venv=$cache/venv-schemathesis-$SCHEMATHESIS_VERSION
max_examples=${FUZZ_MAX_EXAMPLES:-200}

log() { printf 'fuzz: %s\n' "$*" >&2; }
# shellcheck source=../lib.sh
source "$repo/e2e/lib.sh"

ensure_venv "$venv" 'import schemathesis' "schemathesis==$SCHEMATHESIS_VERSION"
bin=$(phxkv_bin "$repo")

# `phxkv dev` uses client ports PORT..PORT+2 and peer ports PORT+100..PORT+102.
port=$(free_port_base 0 1 2 100 101 102)

work=$(mktemp -d)
cluster_pid=
cleanup() {
    stop_process "$cluster_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start_dev_cluster "$bin" "$port" "$work/cluster" --ephemeral
base=http://127.0.0.1:$port

report=()
if [[ -n ${FUZZ_REPORT_DIR:-} ]]; then
    # schemathesis runs in a scratch directory, so a relative path would
    # land there and be deleted with it.
    report=(--report junit --report-dir "$(realpath -m "$FUZZ_REPORT_DIR")")
fi
seed=()
if [[ -n ${FUZZ_SEED:-} ]]; then
    seed=(--seed "$FUZZ_SEED")
fi

# GET /v1/watch is left out: a successful watch is an endless event stream
# (see the README). No cluster token is sent, so membership changes are
# fuzzed only up to their authentication: with the token, generated names
# and addresses would join the cluster under test and break its quorum.
#
# One worker: schemathesis' worker threads parse Python source concurrently
# while building generators, which some CPython 3.11 releases cannot do
# ("AST constructor recursion depth mismatch"), failing the run at random.
# fuzz URL MAX-EXAMPLES ARGS...: one schemathesis run against URL.
fuzz() {
    local url=$1 examples=$2
    shift 2
    (
        cd "$work"
        # hooks.py tells schemathesis how to send NDJSON bodies.
        PYTHONPATH="$repo/e2e/fuzz" SCHEMATHESIS_HOOKS=hooks \
        "$venv/bin/st" run "$repo/openapi/phxkv.json" \
            --url "$url" \
            --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
            --phases examples,coverage,fuzzing \
            --max-examples "$examples" \
            --request-timeout 10 \
            --workers 1 \
            --generation-database none \
            --exclude-path /v1/watch \
            --no-color \
            "${seed[@]}" "$@"
    )
}

# Taking a lock or campaigning waits (up to the request's wait_ms) while
# another lease holds it, which a fuzzer that grants leases can arrange and
# would report as a timeout. So this pass grants no lease: every lock and
# campaign is refused at once, after its input is checked. The secured pass
# grants leases, and leaves out those two waits instead.
status=0
fuzz "$base" "$max_examples" --exclude-operation-id grant "${report[@]}" || status=$?

if [[ $status -ne 0 ]]; then
    log "schemathesis reported failures (exit $status); cluster log tail:"
    tail -n 20 "$work/cluster.err" >&2
    exit "$status"
fi
stop_process "$cluster_pid"
cluster_pid=

# The same document against a secured cluster (`dev --secure`: HTTPS, mutual
# TLS between replicas, --auth), with the admin token: every route,
# including /v1/auth, must answer without a 5xx. Membership changes are left
# out: with the admin token they would really remove the members (the
# unsecured pass sends them without a token).
secure_port=$(free_port_base 0 1 2 100 101 102)
secure=$work/secure
log "starting a secured dev cluster on port $secure_port"
"$bin" dev --port "$secure_port" --secure --data-dir "$secure" \
    >"$work/secure.out" 2>"$work/secure.err" &
cluster_pid=$!
ca=$secure/tls/ca.crt
sbase=https://127.0.0.1:$secure_port
ready=
for _ in $(seq 300); do
    if ! kill -0 "$cluster_pid" 2>/dev/null; then
        log "the secured dev cluster exited early:"
        cat "$work/secure.out" "$work/secure.err" >&2
        exit 2
    fi
    if [[ -f $ca ]] && [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 1 \
        --cacert "$ca" "$sbase/readyz" || true) == 200 ]]; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ -z $ready ]]; then
    log "the secured dev cluster did not become ready within 30s:"
    tail -n 20 "$work/secure.err" >&2
    exit 2
fi
token=$(cat "$secure/cluster-token")
# Without the token the API answers 401, not data.
code=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$ca" "$sbase/v1/kv/a" || true)
if [[ $code != 401 ]]; then
    log "a request without a token got $code, not 401"
    exit 1
fi
fuzz "$sbase" "${FUZZ_SECURE_MAX_EXAMPLES:-100}" \
    --tls-verify "$ca" \
    --header "Authorization: Bearer $token" \
    --exclude-path-regex '^/v1/cluster/members' \
    --exclude-operation-id lock --exclude-operation-id campaign || status=$?
if [[ $status -ne 0 ]]; then
    log "schemathesis reported failures against the secured cluster (exit $status); log tail:"
    tail -n 20 "$work/secure.err" >&2
fi
exit "$status"

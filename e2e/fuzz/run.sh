#!/usr/bin/env bash
# Schema-based fuzzing of the public HTTP API: starts a throw-away dev
# cluster and lets schemathesis send generated (valid and invalid) requests
# built from openapi/phxkv.json, checking that no request gets a 5xx and that
# every response matches the document. See e2e/fuzz/README.md.
#
# Environment:
#   PHXKV_BIN            use this phxkv binary instead of building one
#   FUZZ_MAX_EXAMPLES    test cases per operation and phase (default 200)
#   FUZZ_SEED            schemathesis seed, to replay a run
#   FUZZ_REPORT_DIR      also write a JUnit report there
set -euo pipefail

SCHEMATHESIS_VERSION=4.32.5
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cache=${XDG_CACHE_HOME:-$HOME/.cache}/phxkv
venv=$cache/venv-schemathesis-$SCHEMATHESIS_VERSION
max_examples=${FUZZ_MAX_EXAMPLES:-200}

log() { printf 'fuzz: %s\n' "$*" >&2; }

# The venv lives outside the repository and is keyed by the pinned version,
# so repeated runs skip the install and a version bump starts afresh.
if [[ ! -x $venv/bin/st ]]; then
    log "installing schemathesis $SCHEMATHESIS_VERSION into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "schemathesis==$SCHEMATHESIS_VERSION"
fi

if [[ -n ${PHXKV_BIN:-} ]]; then
    bin=$PHXKV_BIN
else
    log "building phxkv (release)"
    (cd "$repo" && cargo build --release --quiet -p phxkv-server --bin phxkv)
    bin=$(cd "$repo" && realpath -m "${CARGO_TARGET_DIR:-target}/release/phxkv")
fi
[[ -x $bin ]] || { log "no executable phxkv at $bin"; exit 2; }

# `phxkv dev` uses client ports PORT..PORT+2 and peer ports PORT+100..PORT+102;
# pick a base where all six are free right now.
port=$("$venv/bin/python" - <<'EOF'
import random, socket
def free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False
for _ in range(200):
    base = random.randrange(20000, 40000)
    if all(free(base + d) for d in (0, 1, 2, 100, 101, 102)):
        print(base)
        break
else:
    raise SystemExit("no free ports")
EOF
)

work=$(mktemp -d)
cluster_pid=
cleanup() {
    if [[ -n $cluster_pid ]] && kill -0 "$cluster_pid" 2>/dev/null; then
        kill -INT "$cluster_pid" 2>/dev/null || true
        # Give the cluster a moment to remove its ephemeral data, then insist.
        for _ in $(seq 50); do
            kill -0 "$cluster_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$cluster_pid" 2>/dev/null || true
        wait "$cluster_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "starting a dev cluster on port $port"
"$bin" dev --ephemeral --port "$port" >"$work/cluster.out" 2>"$work/cluster.err" &
cluster_pid=$!

base=http://127.0.0.1:$port
ready=
for _ in $(seq 300); do
    if ! kill -0 "$cluster_pid" 2>/dev/null; then
        log "the dev cluster exited early:"
        cat "$work/cluster.out" "$work/cluster.err" >&2
        exit 2
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$base/readyz" || true)
    if [[ $code == 200 ]]; then
        ready=1
        break
    fi
    sleep 0.1
done
if [[ -z $ready ]]; then
    log "the dev cluster did not become ready within 30s:"
    tail -n 20 "$work/cluster.err" >&2
    exit 2
fi

log "cluster ready at $base"

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
status=0
(
    cd "$work"
    "$venv/bin/st" run "$repo/openapi/phxkv.json" \
        --url "$base" \
        --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance \
        --phases examples,coverage,fuzzing \
        --max-examples "$max_examples" \
        --request-timeout 10 \
        --workers 1 \
        --generation-database none \
        --exclude-path /v1/watch \
        --no-color \
        "${seed[@]}" "${report[@]}"
) || status=$?

if [[ $status -ne 0 ]]; then
    log "schemathesis reported failures (exit $status); cluster log tail:"
    tail -n 20 "$work/cluster.err" >&2
fi
exit "$status"

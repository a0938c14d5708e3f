#!/usr/bin/env bash
# Browser tests of the web console (/ui) and the API docs page (/docs):
# starts a throw-away dev cluster and drives the pages in a real headless
# Chromium through Playwright for Python, failing on any step that does not
# work and on any JavaScript error the pages log. See e2e/browser/README.md.
#
# Environment:
#   PHXKV_BIN            use this phxkv binary instead of building one
#   CHROMIUM             the browser to drive (default /usr/bin/chromium)
#   BROWSER_SCREENSHOTS  also save screenshots of the main pages there
#   BROWSER_TESTS        run only the tests whose names contain this text
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.2
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
here=$repo/e2e/browser
cache=${XDG_CACHE_HOME:-$HOME/.cache}/phxkv
venv=$cache/venv-playwright-$PLAYWRIGHT_VERSION
chromium=${CHROMIUM:-/usr/bin/chromium}

log() { printf 'browser: %s\n' "$*" >&2; }

# The system's Chromium is used; Playwright's own browser download is never
# run (it needs a CDN these machines cannot reach).
if [[ ! -x $chromium ]]; then
    if [[ $chromium == /usr/bin/chromium && $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
        log "installing chromium"
        apt-get install -y --no-install-recommends chromium >/dev/null
    else
        log "no Chromium at $chromium (install the Debian package chromium, or set CHROMIUM)"
        exit 2
    fi
fi

# The venv lives outside the repository and is keyed by the pinned version,
# so repeated runs skip the install and a version bump starts afresh.
if [[ ! -x $venv/bin/python ]] || ! "$venv/bin/python" -c 'import playwright' 2>/dev/null; then
    log "installing playwright $PLAYWRIGHT_VERSION into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "playwright==$PLAYWRIGHT_VERSION"
fi

if [[ -n ${PHXKV_BIN:-} ]]; then
    bin=$PHXKV_BIN
else
    log "building phxkv (release)"
    (cd "$repo" && cargo build --release --quiet -p phxkv-server --bin phxkv)
    bin=$(cd "$repo" && realpath -m "${CARGO_TARGET_DIR:-target}/release/phxkv")
fi
[[ -x $bin ]] || { log "no executable phxkv at $bin"; exit 2; }

# `phxkv dev` uses client ports PORT..PORT+2 and peer ports PORT+100..PORT+102,
# and the node that joins for the membership test PORT+3 and PORT+103; pick
# a base where all eight are free right now.
port=$("$venv/bin/python" - <<'PY'
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
    if all(free(base + d) for d in (0, 1, 2, 3, 100, 101, 102, 103)):
        print(base)
        break
else:
    raise SystemExit("no free ports")
PY
)

work=$(mktemp -d)
cluster_pid=
joiner_pid=
stop() {
    local pid=$1
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid" 2>/dev/null || true
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
}
cleanup() {
    stop "$joiner_pid"
    stop "$cluster_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A data directory of our own (not --ephemeral) so the tests can read the
# cluster token `phxkv dev` writes there, for the membership actions.
log "starting a dev cluster on port $port"
"$bin" dev --data-dir "$work/data" --port "$port" >"$work/cluster.out" 2>"$work/cluster.err" &
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

# A fourth node waiting to be added, so the console can add, promote and
# remove a member that really runs.
"$bin" serve --id n4 --data-dir "$work/n4" --join --cluster-id phxkv-dev \
    --cluster-token-file "$work/data/cluster-token" \
    --listen "127.0.0.1:$((port + 3))" --peer-listen "127.0.0.1:$((port + 103))" \
    >"$work/joiner.out" 2>"$work/joiner.err" &
joiner_pid=$!
for _ in $(seq 100); do
    curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$((port + 3))/healthz" && break
    sleep 0.1
done

status=0
PHXKV_URL=$base \
PHXKV_TOKEN_FILE=$work/data/cluster-token \
PHXKV_JOINER="n4=http://127.0.0.1:$((port + 103))" \
CHROMIUM=$chromium \
    "$venv/bin/python" "$here/harness.py" "$here" || status=$?

if [[ $status -ne 0 ]]; then
    log "browser tests failed (exit $status); cluster log tail:"
    tail -n 20 "$work/cluster.err" >&2
fi
exit "$status"

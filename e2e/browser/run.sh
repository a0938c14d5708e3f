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
# shellcheck source=../lib.sh
source "$repo/e2e/lib.sh"

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

ensure_venv "$venv" 'import playwright' "playwright==$PLAYWRIGHT_VERSION"
bin=$(phxkv_bin "$repo")

# `phxkv dev` uses client ports PORT..PORT+2 and peer ports PORT+100..PORT+102,
# and the node that joins for the membership test PORT+3 and PORT+103.
port=$(free_port_base 0 1 2 3 100 101 102 103)

work=$(mktemp -d)
cluster_pid=
joiner_pid=
cleanup() {
    stop_process "$joiner_pid"
    stop_process "$cluster_pid"
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A data directory of our own (not --ephemeral) so the tests can read the
# cluster token `phxkv dev` writes there, for the membership actions.
start_dev_cluster "$bin" "$port" "$work/cluster" --data-dir "$work/data"
base=http://127.0.0.1:$port


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

# Shared pieces of the end-to-end scripts (fuzzing, browser tests): a pinned
# Python tool in a cached venv, the phxkv binary under test, free ports, and a
# throw-away `phxkv dev` cluster. Source it after defining `log`.

# ensure_venv VENV CHECK PIP-SPEC...: creates VENV with PIP-SPEC installed
# unless `VENV/bin/python -c CHECK` already succeeds. Venvs live outside the
# repository, keyed by the pinned version, so repeated runs skip the install
# and a version bump starts afresh.
ensure_venv() {
    local venv=$1 check=$2
    shift 2
    if [[ -x $venv/bin/python ]] && "$venv/bin/python" -c "$check" 2>/dev/null; then
        return 0
    fi
    log "installing $* into $venv"
    rm -rf "$venv"
    mkdir -p "$(dirname "$venv")"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$@"
}

# phxkv_bin REPO: the binary to test: $PHXKV_BIN, or a release build of REPO.
phxkv_bin() {
    local repo=$1 bin
    if [[ -n ${PHXKV_BIN:-} ]]; then
        bin=$PHXKV_BIN
    else
        log "building phxkv (release)"
        (cd "$repo" && cargo build --release --quiet -p phxkv-server --bin phxkv) >&2
        bin=$(cd "$repo" && realpath -m "${CARGO_TARGET_DIR:-target}/release/phxkv")
    fi
    [[ -x $bin ]] || { log "no executable phxkv at $bin"; return 2; }
    printf '%s\n' "$bin"
}

# free_port_base OFFSET...: a port P such that P+OFFSET is free right now for
# every OFFSET given.
free_port_base() {
    python3 - "$@" <<'PY'
import random, socket, sys
offsets = [int(a) for a in sys.argv[1:]]
def free(p):
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", p))
            return True
        except OSError:
            return False
for _ in range(200):
    base = random.randrange(20000, 40000)
    if all(free(base + d) for d in offsets):
        print(base)
        break
else:
    raise SystemExit("no free ports")
PY
}

# stop_process PID: Ctrl-C (so a dev cluster removes its ephemeral data),
# then SIGKILL after 5 s.
stop_process() {
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

# start_dev_cluster BIN PORT OUT-PREFIX DEV-ARGS...: starts `phxkv dev` in the
# background (its pid in $cluster_pid, its output in OUT-PREFIX.out/.err) and
# waits up to 30 s for its first replica to be ready.
start_dev_cluster() {
    local bin=$1 port=$2 out=$3
    shift 3
    log "starting a dev cluster on port $port"
    "$bin" dev --port "$port" "$@" >"$out.out" 2>"$out.err" &
    cluster_pid=$!
    local base=http://127.0.0.1:$port code
    for _ in $(seq 300); do
        if ! kill -0 "$cluster_pid" 2>/dev/null; then
            log "the dev cluster exited early:"
            cat "$out.out" "$out.err" >&2
            return 2
        fi
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$base/readyz" || true)
        if [[ $code == 200 ]]; then
            log "cluster ready at $base"
            return 0
        fi
        sleep 0.1
    done
    log "the dev cluster did not become ready within 30s:"
    tail -n 20 "$out.err" >&2
    return 2
}

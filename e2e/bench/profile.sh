#!/usr/bin/env bash
# Instruction counts per operation for a 3-replica phxkv, from callgrind.
#
# Timings on a shared 2-core machine are noisy; instruction counts are not.
# This starts three `phxkv serve` under `valgrind --tool=callgrind`, runs a
# fixed write load and a read load with phxkv-bench, and prints, for each
# phase, the instructions (Ir) all three replicas executed per operation,
# plus the top functions of the busiest replica. Use it to decide what to
# optimise and to compare before/after.
#
# Environment:
#   PHXKV_BIN / BENCH_BIN   binaries (default: release builds under the target dir)
#   PROFILE_WRITES          writes in the write phase (default 2000)
#   PROFILE_READS_SECS      seconds of the read phase (default 10)
#   PROFILE_CLIENTS         concurrent clients (default 16)
#   PROFILE_KEEP            keep the callgrind files (prints the directory)
#   PROFILE_TLS             1: TLS on both ports (mutual TLS between replicas,
#                           a CA made with openssl, as compare.sh's TLS clusters),
#                           so that a plain and a TLS run give the instructions
#                           TLS adds per operation
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-$repo/target}")
phxkv=${PHXKV_BIN:-$target_dir/release/phxkv}
bench=${BENCH_BIN:-$target_dir/release/phxkv-bench}
writes=${PROFILE_WRITES:-2000}
read_secs=${PROFILE_READS_SECS:-10}
clients=${PROFILE_CLIENTS:-16}
[[ -x $phxkv && -x $bench ]] || { echo "profile.sh: build first: cargo build --release -p phxkv-server -p phxkv-e2e" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "profile.sh: valgrind is required (apt-get install valgrind)" >&2; exit 2; }

work=$(mktemp -d "${TMPDIR:-/var/tmp}/phxkv-profile.XXXXXX")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    if [[ -n ${PROFILE_KEEP:-} ]]; then echo "profile.sh: files kept in $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

ports=(19481 19482 19483)
peers=(19581 19582 19583)
names=(a b c)
scheme=http tls_serve=() ca_args=()
if [[ ${PROFILE_TLS:-} == 1 ]]; then
    source "$repo/e2e/bench/certs.sh"
    make_certs "$work/tls"
    scheme=https
    tls_serve=(--tls-cert "$work/tls/node.crt" --tls-key "$work/tls/node.key" --tls-ca "$work/tls/ca.crt")
    ca_args=(--cacert "$work/tls/ca.crt")
fi
members=$(for i in 0 1 2; do printf '%s=%s://127.0.0.1:%s,' "${names[$i]}" "$scheme" "${peers[$i]}"; done)
members=${members%,}
eps=$(printf "$scheme://127.0.0.1:%s," "${ports[@]}"); eps=${eps%,}
client_ports=$(printf 'sport = :%s or ' "${ports[@]}"); client_ports=${client_ports% or }
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"

for i in 0 1 2; do
    # A long lease: everything runs ~50x slower under callgrind.
    valgrind --tool=callgrind --callgrind-out-file="$work/callgrind.${names[$i]}.%p" \
        "$phxkv" serve --id "${names[$i]}" --data-dir "$work/${names[$i]}" \
        --listen "127.0.0.1:${ports[$i]}" --peer-listen "127.0.0.1:${peers[$i]}" \
        --initial-members "$members" --cluster-token-file "$work/token" --lease 10s "${tls_serve[@]}" \
        >"$work/${names[$i]}.log" 2>&1 &
    pids+=($!)
done
deadline=$((SECONDS + 180))
for p in "${ports[@]}"; do
    until curl -sf -m 2 "${ca_args[@]}" "$scheme://127.0.0.1:$p/readyz" >/dev/null; do
        ((SECONDS < deadline)) || { echo "profile.sh: cluster not ready" >&2; exit 1; }
        sleep 0.5
    done
done

# KV requests the three replicas have answered (their /metrics): the
# operations of a phase are counted from when its counters were zeroed.
kv_requests() {
    local p
    for p in "${ports[@]}"; do
        curl -sf -m 10 "${ca_args[@]}" "$scheme://127.0.0.1:$p/metrics"
    done | awk '/^phxkv_http_requests_total\{route="\/v1\/kv\/\{\*key\}"/ {n += $NF} END {print n + 0}'
}

# Sums the Ir of the dumps of one phase over the three replicas.
phase() { # name bench-args...
    local name=$1; shift
    "$bench" run --target phxkv --endpoints "$eps" "${ca_args[@]}" --quiet --clients "$clients" \
        "$@" >/dev/null &
    local load=$!
    # Counters start once every client is connected, so that connection
    # set-up (TLS handshakes above all, a key exchange and a signature each)
    # is not charged to the few thousand operations measured here; a long
    # benchmark run pays it once in hundreds of thousands.
    local deadline=$((SECONDS + 60))
    until (($(ss -Htn state established "( $client_ports )" | wc -l) >= clients)); do
        ((SECONDS < deadline)) || { echo "profile.sh: the load's clients did not connect" >&2; exit 1; }
        sleep 0.05
    done
    for p in "${pids[@]}"; do callgrind_control -z "$p" >/dev/null 2>&1; done
    local first ops
    first=$(kv_requests)
    wait "$load"
    for p in "${pids[@]}"; do callgrind_control -d "$name" "$p" >/dev/null 2>&1; done
    ops=$(($(kv_requests) - first))
    sleep 1
    local total=0 f ir busiest="" max=0
    for f in "$work"/callgrind.*; do
        grep -q "^desc: Trigger: dump $name$" "$f" 2>/dev/null || continue
        ir=$(awk '/^(summary|totals):/ {print $2; exit}' "$f")
        total=$((total + ir))
        if ((ir > max)); then max=$ir; busiest=$f; fi
    done
    printf '%-8s %8d ops  %14d Ir on 3 replicas  %10d Ir/op\n' "$name" "$ops" "$total" $((total / ops))
    # callgrind_annotate charges a thread's whole cost to its entry frames
    # (thread start, the tokio worker loop and task harness) when Rust code
    # is inlined into them: such lines hold a large share of the total and
    # say nothing about where time goes, so lines over 30% are left out.
    callgrind_annotate --inclusive=no --threshold=100 "$busiest" 2>/dev/null |
        sed -n '/file:function/,$p' | sed 1,2d |
        awk '{ pct = $2 $3; gsub(/[()%]/, "", pct); if (pct + 0 < 30) print }' |
        head -25 >"$work/$name.top" || true
}

phase writes --fill --keys "$writes" --value-size 256
phase reads --read-ratio 1 --keys "$writes" --duration "${read_secs}s" --warmup 0s
echo
for name in writes reads; do
    echo "top functions (exclusive Ir) of the busiest replica, $name:"
    cat "$work/$name.top"
    echo
done

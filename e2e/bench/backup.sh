#!/usr/bin/env bash
# Backup of a large store under write load: memory of the member serving the
# backup, and write latency with and without a backup running.
#
# Starts a 3-replica phxkv on loopback, fills it with BENCH_BACKUP_KEYS keys of
# 100 B, then runs the same modest open-loop write load twice: once alone (the
# steady state) and once while `phxkv backup save` downloads the whole store
# from the master, one backup at a time, BENCH_GAP seconds apart. Every write's
# scheduled start and latency are logged (phxkv-bench --latency-log), so the
# writes due while a backup ran are compared with the steady state's. VmRSS of
# the master is sampled from /proc every 100 ms in both phases (and its VmHWM
# is reset before each with /proc/PID/clear_refs, so the peak is not missed
# between samples). The backup client stands for one on another machine: it
# writes to tmpfs at nice 19, so that its CPU and disk work on this shared
# machine do not count against the servers. Prints a table and writes the
# "Backup of a 1,000,000-key store" section of BENCHMARKS.md (kept in
# e2e/bench/backup.md, which compare.sh appends to the report it writes).
#
# Environment:
#   BENCH_BACKUP_KEYS  keys in the store (default 1000000)
#   BENCH_DURATION     measured seconds of each phase (default 60)
#   BENCH_WARMUP       warm-up seconds before each (default 2)
#   BENCH_RATE         writes per second of the load, open loop (default 1000)
#   BENCH_CLIENTS      clients of the load (default 16)
#   BENCH_PHXKV_WORKERS  phxkv's --worker-threads (default: phxkv's own, one per CPU)
#   BENCH_GAP          seconds between one backup's end and the next's start (default 2)
#   BENCH_BACKUP_NICE  niceness of the backup client (default 19; empty: none)
#   BENCH_BACKUP_DIR   where the backup client writes its file (default /dev/shm
#                      when there is one: a backup client runs on another
#                      machine, and its 125 MB write and fsync per backup on
#                      the servers' disk would measure the disk, not phxkv)
#   BENCH_OUT          the report to update (default BENCHMARKS.md; empty: none)
#   BENCH_KEEP         keep the data and logs directory (prints its path)
#   CARGO_TARGET_DIR   as for cargo
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
keys=${BENCH_BACKUP_KEYS:-1000000}
duration=${BENCH_DURATION:-60}
warmup=${BENCH_WARMUP:-2}
rate=${BENCH_RATE:-1000}
clients=${BENCH_CLIENTS:-16}
px_workers=${BENCH_PHXKV_WORKERS:-}
out=${BENCH_OUT-$repo/BENCHMARKS.md}
section=$repo/e2e/bench/backup.md
gap=${BENCH_GAP:-2}
nice=${BENCH_BACKUP_NICE-19}
backup_dir=${BENCH_BACKUP_DIR:-}
[[ -z $backup_dir && -d /dev/shm && -w /dev/shm ]] && backup_dir=/dev/shm
target_dir=$(realpath -m "${CARGO_TARGET_DIR:-$repo/target}")
started_at=$(date +%s)

log() { printf '\n==> %s\n' "$*" >&2; }
note() { printf '    %s\n' "$*" >&2; }
die() { printf 'backup.sh: %s\n' "$*" >&2; exit 1; }

for tool in jq curl; do command -v "$tool" >/dev/null || die "$tool is needed"; done

log "building phxkv and phxkv-bench (release)"
cargo build --release --quiet -p phxkv-server --bin phxkv -p phxkv-e2e --bin phxkv-bench
phxkv=$target_dir/release/phxkv
bench=$target_dir/release/phxkv-bench
[[ -x $phxkv && -x $bench ]] || die "no binaries under $target_dir/release"

work=$(mktemp -d "${TMPDIR:-/var/tmp}/phxkv-backup-bench.XXXXXX")
backup_file=$(mktemp -u "${backup_dir:-$work}/phxkv-bench.XXXXXX.backup")
declare -A pids=()
sampler=""

cleanup() {
    if [[ -n $sampler ]]; then kill "$sampler" 2>/dev/null || true; fi
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    rm -f "$backup_file" "$backup_file.tmp"
    if [[ -n ${BENCH_KEEP:-} ]]; then
        printf 'backup.sh: data and logs kept in %s\n' "$work" >&2
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

names=(a b c)
client=(19291 19292 19293)
peer=(19391 19392 19393)
for p in "${client[@]}" "${peer[@]}"; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then die "port $p is in use"; fi
done
eps=$(printf 'http://127.0.0.1:%s,' "${client[@]}"); eps=${eps%,}
members=$(for i in 0 1 2; do printf '%s=http://127.0.0.1:%s,' "${names[$i]}" "${peer[$i]}"; done)
members=${members%,}
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/token"

for i in 0 1 2; do
    n=${names[$i]}
    "$phxkv" serve --id "$n" --data-dir "$work/$n" \
        --listen "127.0.0.1:${client[$i]}" --peer-listen "127.0.0.1:${peer[$i]}" \
        --initial-members "$members" --cluster-token-file "$work/token" \
        ${px_workers:+--worker-threads "$px_workers"} \
        >>"$work/$n.log" 2>&1 &
    pids[$i]=$!
done
deadline=$((SECONDS + 60))
for i in 0 1 2; do
    until curl -sf -m 1 "http://127.0.0.1:${client[$i]}/readyz" >/dev/null; do
        ((SECONDS < deadline)) || die "member ${names[$i]} not ready after 60s (logs in $work)"
        sleep 0.05
    done
done

master_index() {
    local m i
    m=$(curl -sf -m 2 "http://127.0.0.1:${client[0]}/v1/cluster" | jq -r '.master // empty')
    for i in 0 1 2; do [[ ${names[$i]} == "$m" ]] && { echo "$i"; return 0; }; done
    return 1
}

log "filling $keys keys of 100 B (64 clients)"
t0=$(date +%s.%N)
"$bench" run --endpoints "$eps" --quiet --fill --clients 64 --keys "$keys" --value-size 100 \
    --key-prefix backup- --json-file "$work/fill.json" >"$work/fill.txt" ||
    die "fill failed: $(cat "$work/fill.txt")"
t1=$(date +%s.%N)
fill_s=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
note "filled in $fill_s s ($(jq -r '.throughput | floor' "$work/fill.json") writes/s)"

m=$(master_index) || die "no master"
mpid=${pids[$m]}
murl="http://127.0.0.1:${client[$m]}"
note "the backup is served by the master, ${names[$m]} (pid $mpid)"
# Compactions and allocator settling after the fill.
sleep 10

rss_kib() { awk '$1 == "VmRSS:" {print $2}' "/proc/$1/status"; }
hwm_kib() { awk '$1 == "VmHWM:" {print $2}' "/proc/$1/status"; }
reset_hwm() { echo 5 >"/proc/$1/clear_refs" 2>/dev/null || note "cannot reset VmHWM of $1"; }
sample_rss() { # pid file
    while :; do
        rss_kib "$1" >>"$2" || return 0
        sleep 0.1
    done
}
mib() { awk -v k="$1" 'BEGIN {printf "%.1f", k / 1024}'; }
stats() { # file -> "median max" in KiB
    sort -n "$1" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)], v[NR]}'
}

load() { # json-file latency-log
    "$bench" run --endpoints "$eps" --quiet --clients "$clients" --rate "$rate" \
        --keys 100000 --value-size 100 --key-prefix load- \
        --duration "${duration}s" --warmup "${warmup}s" --json-file "$1" --latency-log "$2"
}
# count p50 p99 p99.9 max, in ms, of a file of latencies in µs
pcts() {
    sort -n "$1" | awk '{v[NR] = $1}
        function q(p) {i = int(p * NR + 0.999999); if (i < 1) i = 1; return v[i] / 1000}
        END {if (NR == 0) print 0, 0, 0, 0, 0; else printf "%d %.3f %.3f %.3f %.3f\n", NR, q(0.5), q(0.99), q(0.999), v[NR] / 1000}'
}

# ---------------------------------------------------------------- steady state

log "steady state: $rate writes/s for ${duration}s, no backup"
reset_hwm "$mpid"
: >"$work/rss-steady"
sample_rss "$mpid" "$work/rss-steady" &
sampler=$!
load "$work/steady.json" "$work/steady.lat" >"$work/steady.txt" || die "load failed: $(cat "$work/steady.txt")"
kill "$sampler"; wait "$sampler" 2>/dev/null || true; sampler=""
read -r steady_med steady_max < <(stats "$work/rss-steady")
steady_hwm=$(hwm_kib "$mpid")
note "RSS median $(mib "$steady_med") MiB, max $(mib "$steady_max") MiB"

# ---------------------------------------------------------------- with backups

log "the same load, with one backup of the whole store at a time, ${gap}s apart"
reset_hwm "$mpid"
: >"$work/rss-backup"
: >"$work/saves"
: >"$work/windows"
sample_rss "$mpid" "$work/rss-backup" &
sampler=$!
load "$work/backup.json" "$work/backup.lat" >"$work/backup-load.txt" &
loader=$!
saves=0
sleep "$warmup"
while kill -0 "$loader" 2>/dev/null; do
    sleep "$gap"
    kill -0 "$loader" 2>/dev/null || break
    s0=$(date +%s%N)
    if ${nice:+nice -n "$nice"} "$phxkv" backup save "$backup_file" --force --endpoints "$murl" \
        --token-file "$work/token" >"$work/save.txt" 2>&1; then
        s1=$(date +%s%N)
        echo "$s0 $s1" >>"$work/windows"
        awk -v a="$s0" -v b="$s1" 'BEGIN {printf "%.2f\n", (b - a) / 1e9}' >>"$work/saves"
        saves=$((saves + 1))
    else
        kill -0 "$loader" 2>/dev/null && die "backup failed: $(cat "$work/save.txt")"
    fi
done
wait "$loader" || die "load failed: $(cat "$work/backup-load.txt")"
kill "$sampler"; wait "$sampler" 2>/dev/null || true; sampler=""
((saves > 0)) || die "no backup finished during the load"
read -r backup_med backup_max < <(stats "$work/rss-backup")
backup_hwm=$(hwm_kib "$mpid")
backup_bytes=$(stat -c %s "$backup_file")
save_s=$(sort -n "$work/saves" | awk '{v[NR] = $1} END {print v[int((NR + 1) / 2)]}')

# Writes due while a backup ran, and the others of the same run.
awk -v during="$work/lat-during" -v between="$work/lat-between" '
    NR == FNR {s[NR] = $1; e[NR] = $2; n = NR; next}
    $3 != "w" {next}
    {
        while (k < n && e[k + 1] < $1) k++
        if (k < n && s[k + 1] <= $1) print $2 >during; else print $2 >between
    }' "$work/windows" "$work/backup.lat"
touch "$work/lat-during" "$work/lat-between"
awk '$3 == "w" {print $2}' "$work/steady.lat" >"$work/lat-steady"
note "$saves backups, median $save_s s each ($(mib $((backup_bytes / 1024))) MiB); RSS max $(mib "$backup_max") MiB, VmHWM $(mib "$backup_hwm") MiB"
for f in steady during between; do
    note "writes $f: $(pcts "$work/lat-$f" | awk '{printf "n %d, p50 %s ms, p99 %s ms, max %s ms", $1, $2, $3, $5}')"
done

# ---------------------------------------------------------------- report

peak=$((backup_hwm > backup_max ? backup_hwm : backup_max))
delta_kib=$((peak - steady_med))
read -r _ _ p99_steady _ _ < <(pcts "$work/lat-steady")
read -r _ _ p99_during _ _ < <(pcts "$work/lat-during")
p99_ratio=$(awk -v a="$p99_during" -v b="$p99_steady" 'BEGIN {printf "%.2f", a / b}')
rss_ok=$(awk -v d="$delta_kib" 'BEGIN {print (d <= 64 * 1024) ? "met" : "**not met**"}')
p99_ok=$(awk -v r="$p99_ratio" 'BEGIN {print (r <= 2) ? "met" : "**not met**"}')
commit=$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo unknown)
[[ -n $(git -C "$repo" status --porcelain --untracked-files=no 2>/dev/null) ]] && commit+="-dirty"
cpu_model=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
row() { # phase latencies rss-median rss-peak
    pcts "$2" | awk -v phase="$1" -v med="$(mib "$3")" -v max="$(mib "$4")" \
        '{printf "| %s | %d | %s | %s | %s | %s | %s | %s |\n", phase, $1, $2, $3, $4, $5, med, max}'
}

{
    echo "## Backup of a 1,000,000-key store"
    echo
    echo "Generated by \`bash e2e/bench/backup.sh\` ($(($(date +%s) - started_at)) s). A 3-replica phxkv"
    echo "on loopback (default settings: fsync on, a compaction every 10,000 instances) holds"
    echo "$keys keys of 100 B (filled at $(jq -r '.throughput | floor' "$work/fill.json") writes/s). An open-loop load of $rate"
    echo "writes/s of 100 B ($clients clients, keys drawn from 100,000 others) runs ${duration} s alone"
    echo "(the steady state), then ${duration} s more while \`phxkv backup save\` downloads the whole store"
    echo "from the master, one backup at a time with ${gap} s between them. Latencies are per write,"
    echo "from its scheduled start (open loop: a stall is charged to every write it delays), split"
    echo "by whether the write was due while a backup ran. RSS is the master's \`VmRSS\`, sampled"
    echo "every 100 ms, or its \`VmHWM\` (reset before each phase through \`/proc/PID/clear_refs\`) if"
    echo "higher. The backup client stands for one on another machine: it writes its file to"
    echo "$(df --output=fstype "$(dirname "$backup_file")" | tail -1) and runs at \`nice ${nice:-0}\`, so that its own CPU and disk work on this"
    echo "shared machine does not count against the servers."
    echo
    echo "- commit: \`$commit\`; $("$phxkv" --version); \`--worker-threads ${px_workers:-(default)}\`"
    echo "- machine: the three replicas, the load generator and the backup client share $(nproc) cores"
    echo "  ($cpu_model), $(awk '/MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo) RAM, Linux $(uname -r)"
    echo "- backups: $saves during the load, median $save_s s each, $(mib $((backup_bytes / 1024))) MiB per file"
    echo
    echo "| writes | count | p50 ms | p99 ms | p99.9 ms | max ms | master RSS median, MiB | master RSS peak, MiB |"
    echo "|---|---:|---:|---:|---:|---:|---:|---:|"
    row "steady state (no backup)" "$work/lat-steady" "$steady_med" "$((steady_hwm > steady_max ? steady_hwm : steady_max))"
    row "due while a backup ran" "$work/lat-during" "$backup_med" "$peak"
    row "due between backups" "$work/lat-between" "$backup_med" "$peak"
    echo
    echo "| target | measured | verdict |"
    echo "|---|---|---|"
    echo "| RSS during a backup within 64 MiB of the steady state | +$(mib "$delta_kib") MiB (peak $(mib "$peak") vs median $(mib "$steady_med") MiB) | $rss_ok |"
    echo "| write p99 during a backup at most 2× the steady state's | ${p99_ratio}× ($p99_during vs $p99_steady ms) | $p99_ok |"
} >"$section"

cat "$section"
if [[ -n $out ]]; then
    # Replace the section if the report has it, else append it.
    if [[ -f $out ]] && grep -q '^## Backup of a 1,000,000-key store' "$out"; then
        awk -v f="$section" '
            /^## Backup of a 1,000,000-key store/ {skip = 1; while ((getline l < f) > 0) print l; next}
            skip && /^## / {skip = 0; print ""}
            !skip {print}' "$out" >"$out.tmp" && mv "$out.tmp" "$out"
    else
        { echo; cat "$section"; } >>"$out"
    fi
    log "updated $out"
fi

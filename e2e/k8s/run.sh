#!/usr/bin/env bash
# Walks the README's "Run on Kubernetes" section against the cluster that
# KUBECONFIG (or kubectl's default) points at: helm install into a fresh
# namespace, wait for the PaxosKV, put and get through a port-forward, a
# second PaxosKV scaled 3 -> 5 -> 3, the master pod deleted under a stream
# of writes with every acknowledged write read back, the leading operator
# pod deleted (the standby takes over and reconciles), then uninstall. When no
# cluster answers it prints "SKIPPED: ..." and exits 0. See e2e/k8s/README.md.
#
# Environment:
#   PHXKV_IMAGE              image to run, repository:tag (default: the chart's)
#   PHXKV_IMAGE_PULL_POLICY  e.g. Always for a re-pushed tag, Never for a local one
#   PHXKV_E2E_SCOPE          cluster (default: the chart's default, a cluster-wide
#                            operator) or namespace (operator.watchNamespace)
#   PHXKV_E2E_NAMESPACE      namespace to create (default phxkv-e2e-<time>)
#   PHXKV_E2E_TIMEOUT        seconds to wait for each rollout (default 600)
#   PHXKV_E2E_KEEP           1: leave the namespace for inspection
#   HELM                     helm binary (default: helm on PATH, else installed
#                            into the cache by e2e/chart/install-helm.sh)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ns=${PHXKV_E2E_NAMESPACE:-phxkv-e2e-$(date +%s)}
release=phxkv
scope=${PHXKV_E2E_SCOPE:-cluster}
timeout=${PHXKV_E2E_TIMEOUT:-600}

step() { printf '\n==> %s\n' "$*" >&2; }
log() { printf 'k8s: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }
k() { kubectl --namespace "$ns" "$@"; }

# --- is there a cluster? ----------------------------------------------------

skip() {
    echo "SKIPPED: no reachable Kubernetes cluster ($1)"
    exit 0
}
command -v kubectl >/dev/null || skip "kubectl is not installed"
# `timeout` as well as --request-timeout: an exec credential plugin can hang
# before any request is made.
if ! out=$(timeout 20 kubectl cluster-info --request-timeout=5s 2>&1); then
    reason=$(printf '%s\n' "$out" | grep -v '^\s*$' | grep -v 'cluster-info dump' | tail -n 1)
    skip "${reason:-kubectl cluster-info failed}"
fi

case $scope in
    cluster | namespace) ;;
    *) die "PHXKV_E2E_SCOPE must be cluster or namespace, not $scope" ;;
esac
[[ $timeout =~ ^[0-9]+$ ]] || die "PHXKV_E2E_TIMEOUT must be a number of seconds"

step "cluster"
kubectl version --request-timeout=5s >&2
printf '%s\n' "$out" | head -n 1 >&2

if [[ -n ${HELM:-} ]]; then
    helm=$HELM
elif command -v helm >/dev/null; then
    helm=$(command -v helm)
else
    helm=$(bash "$repo/e2e/chart/install-helm.sh")
fi
log "helm: $("$helm" version --short)"

for resource in namespaces customresourcedefinitions.apiextensions.k8s.io; do
    [[ $(kubectl auth can-i create "$resource" 2>/dev/null) == yes ]] || die "this user may not create $resource"
done
if [[ $scope == cluster ]] && kubectl get clusterrole "$release-operator" >/dev/null 2>&1; then
    die "a cluster-wide phxkv operator is already installed (ClusterRole $release-operator);" \
        "it would manage this test's clusters too: uninstall it, or run with PHXKV_E2E_SCOPE=namespace"
fi

# --- clean-up, whatever happens ----------------------------------------------

work=$(mktemp -d)
forward_pids=()
writer_pid=
installed=

diagnose() {
    log "state of namespace $ns:"
    k get pkv,statefulsets,pods,pvc,services -o wide >&2 || true
    k describe pkv >&2 || true
    k logs deployment/"$release-operator" --tail=50 >&2 || true
    for pod in $(k get pods -l app.kubernetes.io/name=phxkv -o name 2>/dev/null); do
        log "last lines of $pod:"
        k logs "$pod" --tail=20 >&2 || true
    done
}

cleanup() {
    local status=$?
    set +e
    [[ -n $writer_pid ]] && kill "$writer_pid" 2>/dev/null
    for pid in "${forward_pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    wait 2>/dev/null
    if [[ $status -ne 0 && -n $installed ]]; then
        diagnose
    fi
    if [[ ${PHXKV_E2E_KEEP:-} == 1 ]]; then
        log "keeping namespace $ns (PHXKV_E2E_KEEP=1)"
    elif [[ -n $installed ]]; then
        step "clean-up: PaxosKVs, then the release, then namespace $ns"
        # PaxosKVs first, while the operator still runs to tidy up after them.
        k delete pkv --all --wait=true --timeout=300s >&2
        "$helm" uninstall "$release" --namespace "$ns" --wait --timeout 300s >&2
        kubectl delete namespace "$ns" --wait=true --timeout=300s >&2
        log "the CRD paxoskvs.phxkv.io stays (Helm never deletes CRDs)"
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- helpers -----------------------------------------------------------------

# Starts `kubectl port-forward TARGET :PORT` and sets $forward_port to the
# local port kubectl chose.
forward() {
    local target=$1 port=$2 out
    out=$work/forward-${#forward_pids[@]}.out
    # kubectl itself, not the k function: a function would run in a subshell
    # whose pid $! would be, and killing that leaves kubectl running.
    kubectl --namespace "$ns" port-forward "$target" ":$port" >"$out" 2>&1 &
    forward_pids+=($!)
    forward_port=
    for _ in $(seq 100); do
        forward_port=$(sed -n 's/^Forwarding from 127\.0\.0\.1:\([0-9]*\) .*/\1/p' "$out" | head -n 1)
        [[ -n $forward_port ]] && break
        kill -0 "${forward_pids[-1]}" 2>/dev/null || break
        sleep 0.1
    done
    [[ -n $forward_port ]] || { cat "$out" >&2; die "port-forward to $target failed"; }
    log "port-forward $target -> 127.0.0.1:$forward_port"
}

# field PKV JSONPATH
field() { k get pkv "$1" -o jsonpath="$2"; }

# Waits until PaxosKV $1 reports $2 ready replicas and $2 members, for the
# current generation, with a master.
wait_for_size() {
    local name=$1 want=$2 deadline=$((SECONDS + timeout))
    local gen observed ready members master
    while :; do
        gen=$(field "$name" '{.metadata.generation}')
        observed=$(field "$name" '{.status.observedGeneration}')
        ready=$(field "$name" '{.status.readyReplicas}')
        members=$(field "$name" '{.status.members[*].name}' | wc -w)
        master=$(field "$name" '{.status.master}')
        if [[ $observed == "$gen" && $ready == "$want" && $members -eq $want && -n $master ]]; then
            log "$name: $ready ready, $members members, master $master"
            return 0
        fi
        ((SECONDS < deadline)) ||
            die "$name did not reach $want replicas within ${timeout}s" \
                "(generation $gen, observed ${observed:-none}, ready ${ready:-0}, members $members, master ${master:-none})"
        sleep 3
    done
}

# put PORT KEY VALUE, get PORT KEY
put() { curl -sS --fail-with-body --max-time 10 -X PUT --data-binary "$3" "http://127.0.0.1:$1/v1/kv/$2"; }
get() { curl -sS --fail-with-body --max-time 10 "http://127.0.0.1:$1/v1/kv/$2"; }

# Retries a command for up to 60 s: a fresh port-forward, or a cluster that
# has only just elected its master, may refuse the first requests.
retry() {
    local deadline=$((SECONDS + 60))
    until "$@" >"$work/retry.out" 2>&1; do
        ((SECONDS < deadline)) || { cat "$work/retry.out" >&2; return 1; }
        sleep 1
    done
    cat "$work/retry.out"
}

# --- the walk-through --------------------------------------------------------

step "helm install $release into namespace $ns ($scope-scoped operator)"
args=(--namespace "$ns" --create-namespace --wait --timeout "${timeout}s")
if [[ -n ${PHXKV_IMAGE:-} ]]; then
    # The tag is what follows the last colon, unless that colon belongs to
    # a registry's host:port.
    repository=${PHXKV_IMAGE%:*}
    tag=${PHXKV_IMAGE##*:}
    if [[ $repository == "$PHXKV_IMAGE" || $tag == */* ]]; then
        die "PHXKV_IMAGE must be repository:tag, not $PHXKV_IMAGE"
    fi
    args+=(--set "image.repository=$repository" --set "image.tag=$tag")
fi
if [[ -n ${PHXKV_IMAGE_PULL_POLICY:-} ]]; then
    args+=(--set "image.pullPolicy=$PHXKV_IMAGE_PULL_POLICY")
fi
if [[ $scope == namespace ]]; then
    args+=(--set "operator.watchNamespace=$ns")
fi
installed=1
"$helm" install "$release" "$repo/charts/phxkv" "${args[@]}" >&2

step "wait for PaxosKV $release to be Available"
k wait --for=condition=Available "pkv/$release" --timeout="${timeout}s" >&2
k get pkv >&2

step "put and get through kubectl port-forward svc/$release"
forward "svc/$release" 8080
port=$forward_port
retry put "$port" greeting hello >/dev/null || die "PUT greeting"
got=$(retry get "$port" greeting) || die "GET greeting"
[[ $got == hello ]] || die "GET greeting returned '$got', not 'hello'"
log "PUT then GET greeting: $got"
retry curl -sS --fail --max-time 10 "http://127.0.0.1:$port/v1/cluster" >&2 || die "GET /v1/cluster"
echo >&2

step "a second PaxosKV: demo"
k apply -f - >&2 <<'EOF'
apiVersion: phxkv.io/v1alpha1
kind: PaxosKV
metadata:
  name: demo
spec:
  replicas: 3
  storage:
    size: 1Gi
    reclaimPolicy: Delete
EOF
k wait --for=condition=Available pkv/demo --timeout="${timeout}s" >&2
wait_for_size demo 3
forward svc/demo 8080
retry put "$forward_port" before-scaling kept >/dev/null || die "PUT before-scaling on demo"

for size in 5 3; do
    step "scale demo to $size"
    k patch pkv demo --type merge -p "{\"spec\":{\"replicas\":$size}}" >&2
    wait_for_size demo "$size"
done
# The first port-forward may have gone with a removed pod; open another.
forward svc/demo 8080
got=$(retry get "$forward_port" before-scaling) || die "GET before-scaling after scaling"
[[ $got == kept ]] || die "before-scaling reads '$got' after scaling, not 'kept'"
log "a key written before scaling reads back after 3 -> 5 -> 3"

step "delete the master pod of demo under a stream of writes"
master=$(field demo '{.status.master}')
[[ -n $master ]] || die "demo reports no master"
# Writes go through a pod that is not the master, so the port-forward
# survives the deletion; that pod forwards them to whichever is master.
via=
for pod in $(k get pods -l app.kubernetes.io/instance=demo,app.kubernetes.io/component=server -o name); do
    [[ ${pod#pod/} != "$master" ]] && { via=$pod; break; }
done
[[ -n $via ]] || die "no pod of demo other than the master $master"
forward "$via" 8080
wport=$forward_port
acked=$work/acked
: >"$acked"
(
    # Bounded: at most 5000 writes or 5 minutes; stopped earlier below.
    end=$((SECONDS + 300))
    for i in $(seq 5000); do
        ((SECONDS < end)) || break
        [[ -e $work/stop ]] && break
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT \
            --data-binary "value-$i" "http://127.0.0.1:$wport/v1/kv/failover/$i" || true)
        # Only a 200 is an acknowledgement; 503 and 504 (or no answer) are not.
        if [[ $code == 200 ]]; then
            echo "$i" >>"$acked"
        else
            echo "$i $code" >>"$work/refused"
        fi
    done
) &
writer_pid=$!

wait_for_acks() {
    local want=$1 deadline=$((SECONDS + timeout))
    until (($(wc -l <"$acked") >= want)); do
        kill -0 "$writer_pid" 2>/dev/null || die "the writer stopped early"
        ((SECONDS < deadline)) || die "fewer than $want writes acknowledged within ${timeout}s"
        sleep 0.2
    done
}
wait_for_acks 50
before=$(wc -l <"$acked")
log "$before writes acknowledged; deleting master pod $master"
killed_at=$SECONDS
k delete pod "$master" --wait=false >&2
# Progress: another 50 acknowledged writes after the deletion.
wait_for_acks $((before + 50))
log "writes acknowledged again within $((SECONDS - killed_at))s of the deletion"
wait_for_size demo 3
touch "$work/stop"
wait "$writer_pid" || die "the writer failed"
writer_pid=
log "new master: $(field demo '{.status.master}')"

step "every acknowledged write reads back"
total=$(wc -l <"$acked")
refused=0
[[ -e $work/refused ]] && refused=$(wc -l <"$work/refused")
# Reads back key failover/$1; a read that gets no answer (or a 5xx) is
# retried, a wrong value or a 404 is a lost write.
read_back() {
    local i=$1 code attempt
    for attempt in $(seq 10); do
        code=$(curl -s -o "$work/value" -w '%{http_code}' --max-time 10 \
            "http://127.0.0.1:$wport/v1/kv/failover/$i" || true)
        case $code in
            200) [[ $(<"$work/value") == "value-$i" ]] && return 0
                 log "failover/$i: acknowledged, but reads '$(<"$work/value")'"
                 return 1 ;;
            404) log "failover/$i: acknowledged, but not found"
                 return 1 ;;
        esac
        sleep "$attempt"
    done
    die "failover/$i: no answer to 10 reads (last status $code)"
}
lost=0
while read -r i; do
    read_back "$i" || lost=$((lost + 1))
done <"$acked"
((lost == 0)) || die "$lost of $total acknowledged writes did not read back"
log "$total acknowledged writes all read back ($refused refused or unanswered during the failover)"

step "operator failover: delete the leading operator pod; the standby takes over and reconciles"
lease=$release-operator
leader=$(k get lease "$lease" -o jsonpath='{.spec.holderIdentity}')
[[ -n $leader ]] || die "no operator replica holds the Lease $lease"
replicas=$(k get deployment "$release-operator" -o jsonpath='{.status.readyReplicas}')
((${replicas:-0} >= 2)) || die "$release-operator has ${replicas:-0} ready replicas; failover needs a standby"
log "operator $leader leads; deleting its pod"
old_uid=$(k get service "$release" -o jsonpath='{.metadata.uid}')
killed_at=$SECONDS
k delete pod "$leader" --wait=false >&2
# The leader releases the Lease on SIGTERM; a standby takes it within a
# retry period (3 s by default). Allow a whole lease duration and more.
new_leader=
deadline=$((SECONDS + 60))
while :; do
    new_leader=$(k get lease "$lease" -o jsonpath='{.spec.holderIdentity}')
    [[ -n $new_leader && $new_leader != "$leader" ]] && break
    ((SECONDS < deadline)) || die "no other replica took the Lease within 60s (holder: ${new_leader:-none})"
    sleep 1
done
log "operator $new_leader took over within $((SECONDS - killed_at))s"
# Proof that it reconciles: an owned object deleted by hand comes back.
k delete service "$release" --wait=true >&2
deadline=$((SECONDS + 120))
until uid=$(k get service "$release" -o jsonpath='{.metadata.uid}' 2>/dev/null) && [[ -n $uid && $uid != "$old_uid" ]]; do
    ((SECONDS < deadline)) || die "the new leader did not recreate Service $release within 120s"
    sleep 2
done
log "the new leader recreated Service $release"
k rollout status deployment "$release-operator" --timeout="${timeout}s" >&2

step "done"
echo "PASSED: phxkv on Kubernetes ($ns)"

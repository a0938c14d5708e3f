#!/usr/bin/env bash
# Walks the README's "Run on Kubernetes" section against the cluster that
# KUBECONFIG (or kubectl's default) points at: helm install into a fresh
# namespace, wait for the PaxosKV, put and get through a port-forward (over
# HTTPS with the cluster's CA and token; plain HTTP is refused), a
# second PaxosKV scaled 3 -> 5 -> 3, the master pod deleted under a stream
# of writes with every acknowledged write read back, the leading operator
# pod deleted (the standby takes over and reconciles); then, on demo: an
# upgrade to an image that cannot start (it stops at one pod) and its
# rollback, a follower's volume lost, a switchover by annotation, hibernation
# on and off, a PaxosKV whose names conflict with demo's, (opt-in) a backup
# to an in-namespace MinIO and a recovery from it, and (opt-in, slow)
# self-healing; then uninstall. When no cluster answers it prints
# "SKIPPED: ..." and exits 0. See e2e/k8s/README.md.
#
# Environment:
#   PHXKV_IMAGE              image to run, repository:tag (default: the chart's)
#   PHXKV_IMAGE_PULL_POLICY  e.g. Always for a re-pushed tag, Never for a local one
#   PHXKV_E2E_SCOPE          cluster (default: the chart's default, a cluster-wide
#                            operator) or namespace (operator.watchNamespace)
#   PHXKV_E2E_NAMESPACE      namespace to create (default phxkv-e2e-<time>)
#   PHXKV_E2E_TIMEOUT        seconds to wait for each rollout (default 600)
#   PHXKV_E2E_KEEP           1: leave the namespace for inspection
#   PHXKV_K8S_SLOW           1: also run the self-healing step (several
#                            minutes; it needs to create a ResourceQuota)
#   PHXKV_K8S_BACKUP         1: also run the backup and recovery step (pulls
#                            MinIO's images; several minutes)
#   PHXKV_E2E_MINIO_IMAGE    MinIO server image (default quay.io/minio/minio)
#   PHXKV_E2E_MC_IMAGE       MinIO client image (default quay.io/minio/mc)
#   HELM                     helm binary (default: helm on PATH, else installed
#                            into the cache by e2e/chart/install-helm.sh)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ns=${PHXKV_E2E_NAMESPACE:-phxkv-e2e-$(date +%s)}
release=phxkv
scope=${PHXKV_E2E_SCOPE:-cluster}
timeout=${PHXKV_E2E_TIMEOUT:-600}
slow=${PHXKV_K8S_SLOW:-0}
backups=${PHXKV_K8S_BACKUP:-0}

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
[[ $slow == 0 || $slow == 1 ]] || die "PHXKV_K8S_SLOW must be 0 or 1, not $slow"
[[ $backups == 0 || $backups == 1 ]] || die "PHXKV_K8S_BACKUP must be 0 or 1, not $backups"

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
quota=

diagnose() {
    log "state of namespace $ns:"
    k get pkv,statefulsets,pods,pvc,services -o wide >&2 || true
    k describe pkv >&2 || true
    k get events --sort-by=.lastTimestamp >&2 || true
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
    # The self-healing step's quota admits no new pod: never leave it.
    [[ -n $quota ]] && k delete resourcequota "$quota" --ignore-not-found >&2
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

# The admin token of PaxosKV NAME (auth is on by default): its generated
# Secret NAME-token. Requests below send $bearer, set per cluster.
token_of() { k get secret "$1-token" -o jsonpath='{.data.token}' | base64 -d; }
bearer=

# The CA of PaxosKV NAME (TLS is on by default): key ca.crt of its Secret
# NAME-tls, written to $work/NAME-ca.crt, whose path it prints; fails when
# the Secret holds no certificate there. Requests below trust $cacert, set
# per cluster like $bearer.
ca_of() {
    local file=$work/$1-ca.crt
    k get secret "$1-tls" -o jsonpath='{.data.ca\.crt}' | base64 -d >"$file" &&
        grep -q 'BEGIN CERTIFICATE' "$file" && echo "$file"
}
cacert=

# tls_curl ARGS...: curl trusting only $cacert. The certificate names
# localhost, not 127.0.0.1, so a port-forward is called as
# https://localhost:PORT, with localhost pinned to 127.0.0.1 (where forward
# reads kubectl's port; it may not listen on ::1).
tls_curl() { curl --cacert "$cacert" --connect-to localhost::127.0.0.1: "$@"; }

# put PORT KEY VALUE, get PORT KEY
put() { tls_curl -sS --fail-with-body --max-time 10 -H "Authorization: Bearer $bearer" -X PUT --data-binary "$3" "https://localhost:$1/v1/kv/$2"; }
get() { tls_curl -sS --fail-with-body --max-time 10 -H "Authorization: Bearer $bearer" "https://localhost:$1/v1/kv/$2"; }

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

# wait_until SECONDS WHAT COMMAND...: runs COMMAND every 3 s until it
# succeeds. COMMAND prints one line: its view of the state. After SECONDS,
# or at once when COMMAND returns 2 (what it waits for can no longer come
# about), dies with "WHAT" and that line. The last line stays in
# $work/wait.out.
wait_until() {
    local limit=$1 what=$2 rc
    local deadline=$((SECONDS + limit))
    shift 2
    while :; do
        rc=0
        "$@" >"$work/wait.out" 2>&1 || rc=$?
        ((rc == 0)) && return 0
        ((rc != 2)) || die "$what: $(tail -n 1 "$work/wait.out")"
        ((SECONDS < deadline)) || die "$what within ${limit}s ($(tail -n 1 "$work/wait.out"))"
        sleep 3
    done
}

# phase_is PKV PHASE: the status of PKV describes its current generation
# and says PHASE.
phase_is() {
    local gen observed phase
    gen=$(field "$1" '{.metadata.generation}')
    observed=$(field "$1" '{.status.observedGeneration}')
    phase=$(field "$1" '{.status.phase}')
    echo "phase ${phase:-none}, generation $gen, observed ${observed:-none}"
    [[ $observed == "$gen" && $phase == "$2" ]]
}

# condition PKV TYPE FIELD: status, reason or message of a condition.
condition() { field "$1" "{.status.conditions[?(@.type==\"$2\")].$3}"; }

# member PKV MEMBER FIELD: a field of one entry of status.members.
member() { field "$1" "{.status.members[?(@.name==\"$2\")].$3}"; }

# follower_of PKV: a voting member of PKV that is not its master.
follower_of() {
    local name=$1 master m
    master=$(field "$name" '{.status.master}')
    [[ -n $master ]] || return 1
    for m in $(field "$name" '{.status.members[?(@.role=="voter")].name}'); do
        [[ $m != "$master" ]] && { echo "$m"; return 0; }
    done
    return 1
}

# pod_table PKV: its server pods, one line each: name, uid, template
# revision (controller-revision-hash), Ready condition (True, False or
# nothing yet).
pod_table() {
    k get pods -l "app.kubernetes.io/instance=$1,app.kubernetes.io/component=server" \
        -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.uid} {.metadata.labels.controller-revision-hash} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}'
}

# claim_table PKV: its volume claims, one line each: name, uid, deletion
# time (nothing unless being deleted).
claim_table() {
    k get pvc -l "app.kubernetes.io/instance=$1" \
        -o jsonpath='{range .items[*]}{.metadata.name} {.metadata.uid} {.metadata.deletionTimestamp}{"\n"}{end}'
}

# events PKV REASON: the Events of that reason about PaxosKV PKV, one line
# each: name/resourceVersion (an event that repeats keeps its name and gets
# a new resourceVersion, so it shows as a new line too).
events() {
    k get events --field-selector "involvedObject.kind=PaxosKV,involvedObject.name=$1,reason=$2" \
        -o jsonpath='{range .items[*]}{.metadata.name}/{.metadata.resourceVersion}{"\n"}{end}'
}

# new_event PKV REASON SNAPSHOT: succeeds, printing its message, once an
# Event of that reason about PKV is not among those in the file SNAPSHOT
# (written by events before the action).
new_event() {
    local line
    line=$(events "$1" "$2" | grep -vxF -f "$3" | tail -n 1) || true
    [[ -n $line ]] || { echo "no new $2 event about $1 yet"; return 1; }
    echo "$2: $(k get event "${line%/*}" -o jsonpath='{.message}')"
}

# write_key PKV KEY VALUE, expect_key PKV KEY VALUE, expect_no_key PKV
# KEY: through a fresh port-forward to PKV's client Service (the pod an
# earlier one went to may be gone), with PKV's own token and CA.
# Waits for a MemberReplaced event newer than those in $3, phase Running
# and three members, and for member $1 to be another incarnation than $2;
# sets new_id to it.
expect_replaced() {
    local victim=$1 old_id=$2 before=$3
    wait_until "$timeout" "no MemberReplaced event about demo" \
        new_event demo MemberReplaced "$before"
    log "$(tail -n 1 "$work/wait.out")"
    wait_until "$timeout" "demo did not get back to phase Running" phase_is demo Running
    wait_for_size demo 3
    new_id=$(member demo "$victim" id)
    [[ -n $new_id && $new_id != "$old_id" ]] ||
        die "member $victim is incarnation ${new_id:-none}, not a new one (it was $old_id)"
}

write_key() {
    local bearer cacert
    bearer=$(token_of "$1")
    cacert=$(ca_of "$1") || die "Secret $1-tls holds no ca.crt"
    forward "svc/$1" 8080
    retry put "$forward_port" "$2" "$3" >/dev/null || die "PUT $2 on $1"
}
expect_key() {
    local bearer cacert got
    bearer=$(token_of "$1")
    cacert=$(ca_of "$1") || die "Secret $1-tls holds no ca.crt"
    forward "svc/$1" 8080
    got=$(retry get "$forward_port" "$2") || die "GET $2 on $1"
    [[ $got == "$3" ]] || die "$2 on $1 reads '$got', not '$3'"
    log "$2 on $1 reads back '$got'"
}
# Only a 404 will do: a request refused for another reason (a wrong token
# or CA) says nothing about the key.
expect_no_key() {
    local bearer cacert code
    bearer=$(token_of "$1")
    cacert=$(ca_of "$1") || die "Secret $1-tls holds no ca.crt"
    forward "svc/$1" 8080
    code=$(retry tls_curl -sS -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $bearer" \
        "https://localhost:$forward_port/v1/kv/$2") || die "GET $2 on $1"
    [[ $code == 200 ]] && die "$2 is on $1, where it must not be"
    [[ $code == 404 ]] || die "GET $2 on $1 answered $code, not 404"
    log "$2 is not on $1"
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
bearer=$(token_of "$release")
cacert=$(ca_of "$release") || die "Secret $release-tls holds no ca.crt"
# Auth is on by default: no token, no data.
code=$(tls_curl -s -o /dev/null -w '%{http_code}' --max-time 10 "https://localhost:$port/v1/kv/greeting" || true)
[[ $code == 401 ]] || die "GET without a token answered $code, not 401"
retry put "$port" greeting hello >/dev/null || die "PUT greeting"
got=$(retry get "$port" greeting) || die "GET greeting"
[[ $got == hello ]] || die "GET greeting returned '$got', not 'hello'"
log "PUT then GET greeting: $got"
# TLS is on by default: plain HTTP to the client port gets nothing, even
# with the token (without it, a plain-HTTP server would refuse too).
code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $bearer" \
    "http://127.0.0.1:$port/v1/kv/greeting" || true)
[[ $code != 2* ]] || die "plain HTTP to the client port answered $code"
log "plain HTTP to the client port: ${code/#000/no answer}, no data"
retry tls_curl -sS --fail --max-time 10 -H "Authorization: Bearer $bearer" "https://localhost:$port/v1/cluster" >&2 ||
    die "GET /v1/cluster"
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
peer_rule=$(k get networkpolicy demo -o jsonpath='{.spec.ingress[0].ports[0].port} {.spec.ingress[0].from[0].podSelector.matchLabels.app\.kubernetes\.io/instance}')
[[ $peer_rule == "8081 demo" ]] ||
    die "NetworkPolicy demo does not close the peer port to demo's pods (got '$peer_rule')"
bearer=$(token_of demo)
cacert=$(ca_of demo) || die "Secret demo-tls holds no ca.crt"

step "the peer port of demo admits the replicas' certificate only"
allowed=$(k get statefulset demo \
    -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="PHXKV_PEER_CERT_ALLOWED_CN")].value}')
[[ $allowed == "demo.$ns" ]] || die "demo's peer ports admit '$allowed', not demo.$ns"
# A client certificate from demo's CA, as the README shows how to make one.
k get secret demo-ca -o jsonpath='{.data.ca\.crt}' | base64 -d >"$work/demo-ca.crt"
k get secret demo-ca -o jsonpath='{.data.ca\.key}' | base64 -d >"$work/demo-ca.key"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=app \
    -keyout "$work/app.key" -out "$work/app.csr" 2>/dev/null &&
    openssl x509 -req -in "$work/app.csr" -CA "$work/demo-ca.crt" -CAkey "$work/demo-ca.key" \
        -CAcreateserial -days 1 -extfile <(echo extendedKeyUsage=clientAuth) \
        -out "$work/app.crt" 2>/dev/null || die "cannot issue a client certificate from demo-ca"
rm -f "$work/demo-ca.key"
k get secret demo-tls -o jsonpath='{.data.tls\.crt}' | base64 -d >"$work/replica.crt"
k get secret demo-tls -o jsonpath='{.data.tls\.key}' | base64 -d >"$work/replica.key"
forward pod/demo-0 8081
peer_call() { # cert key: the HTTP status of a peer call without the token (000: no answer)
    tls_curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cert "$1" --key "$2" \
        -X POST -H 'Content-Type: application/json' --data '[]' \
        "https://localhost:$forward_port/peer/v1/messages" || true
}
code=$(peer_call "$work/app.crt" "$work/app.key")
[[ $code == 000 ]] ||
    die "demo-0's peer port answered $code to a client certificate of demo's CA; it must refuse it in the handshake"
code=$(peer_call "$work/replica.crt" "$work/replica.key")
[[ $code == 401 ]] ||
    die "demo-0's peer port answered $code to the replicas' certificate without the token, not 401"
rm -f "$work/replica.key" "$work/app.key"
log "demo-0's peer port refuses a client certificate of demo's CA and admits the replicas'"

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
        code=$(tls_curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X PUT \
            -H "Authorization: Bearer $bearer" \
            --data-binary "value-$i" "https://localhost:$wport/v1/kv/failover/$i" || true)
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
        code=$(tls_curl -s -o "$work/value" -w '%{http_code}' --max-time 10 \
            -H "Authorization: Bearer $bearer" \
            "https://localhost:$wport/v1/kv/failover/$i" || true)
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

# --- failure and maintenance: all on demo -----------------------------------

step "failed upgrade: demo to an image that cannot start; it stops at one pod"
wait_until "$timeout" "demo did not settle to phase Running" phase_is demo Running
wait_for_size demo 3
image=$(k get statefulset demo -o jsonpath='{.spec.template.spec.containers[0].image}')
[[ -n $image ]] || die "StatefulSet demo has no image"
spec_image=$(field demo '{.spec.image}')
# The same repository with a tag that does not exist: the pod waits for its
# image forever (ErrImagePull and ImagePullBackOff, or ErrImageNeverPull
# with pull policy Never) and never gets ready.
broken=${image%@*}
[[ ${broken##*/} == *:* ]] && broken=${broken%:*}
broken=$broken:phxkv-e2e-no-such-tag
old_rev=$(k get statefulset demo -o jsonpath='{.status.updateRevision}')
pod_table demo | awk '{print $1, $2}' >"$work/pods-before"
(($(wc -l <"$work/pods-before") == 3)) || die "demo has $(wc -l <"$work/pods-before") pods, not 3"

# upgrade_stuck PKV REVISION UIDS: PKV's StatefulSet has a template revision
# other than REVISION, exactly one pod runs it, not ready and waiting for
# its image, and every other pod is one listed in the file UIDS ("name
# uid", before the upgrade): untouched.
upgrade_stuck() {
    local name=$1 old=$2 before=$3 rev pod uid hash ready reason new=()
    rev=$(k get statefulset "$name" -o jsonpath='{.status.updateRevision}')
    if [[ -z $rev || $rev == "$old" ]]; then
        echo "StatefulSet $name has no new template revision yet"
        return 1
    fi
    while read -r pod uid hash ready; do
        if [[ $hash == "$rev" ]]; then
            new+=("$pod")
            if [[ $ready == True ]]; then
                echo "$pod runs the new template and is ready, though its image does not exist"
                return 2
            fi
        elif ! grep -qxF "$pod $uid" "$before"; then
            echo "$pod is neither the pod it was before the upgrade nor on the new template"
            return 1
        fi
    done < <(pod_table "$name")
    if ((${#new[@]} > 1)); then
        echo "${#new[@]} pods run the new template (${new[*]}): the upgrade went past the first"
        return 2
    fi
    ((${#new[@]} == 1)) || { echo "no pod runs the new template yet"; return 1; }
    reason=$(k get pod "${new[0]}" -o jsonpath='{.status.containerStatuses[*].state.waiting.reason}')
    case $reason in
        ErrImagePull | ImagePullBackOff | ErrImageNeverPull | InvalidImageName) ;;
        *) echo "${new[0]} runs the new template, waiting: ${reason:-not yet}"; return 1 ;;
    esac
    echo "${new[0]} runs the new template and waits for its image ($reason); the others are untouched"
}

log "patching spec.image to $broken (it was ${spec_image:-unset}; the pods run $image)"
k patch pkv demo --type merge -p "{\"spec\":{\"image\":\"$broken\"}}" >&2
wait_until "$timeout" "the upgrade did not replace exactly one pod with a pod stuck on $broken" \
    upgrade_stuck demo "$old_rev" "$work/pods-before"
log "$(tail -n 1 "$work/wait.out")"
new_rev=$(k get statefulset demo -o jsonpath='{.status.updateRevision}')
stuck=$(pod_table demo | awk -v rev="$new_rev" '$3 == rev {print $1}')
# The operator re-checks a cluster in change every few seconds: it must go
# no further, and the cluster must keep serving on the other pods.
hold_until=$((SECONDS + 30))
while ((SECONDS < hold_until)); do
    upgrade_stuck demo "$old_rev" "$work/pods-before" >"$work/hold.out" 2>&1 ||
        die "the upgrade did not stay stopped at $stuck: $(tail -n 1 "$work/hold.out")"
    [[ $(condition demo Available status) == True ]] ||
        die "demo is not Available with only $stuck on the broken image: $(condition demo Available message)"
    sleep 3
done
log "for 30s: only $stuck on the new template, the others untouched, demo Available" \
    "($(condition demo Available message)), phase $(field demo '{.status.phase}')"

step "roll back: spec.image of demo back; the stuck pod is replaced, the others stay"
if [[ -n $spec_image ]]; then
    k patch pkv demo --type merge -p "{\"spec\":{\"image\":\"$spec_image\"}}" >&2
else
    k patch pkv demo --type merge -p '{"spec":{"image":null}}' >&2
fi

# rolled_back PKV UIDS STUCK: phase Running, every pod ready on the current
# template, and every pod but STUCK one of those in the file UIDS.
rolled_back() {
    local name=$1 before=$2 stuck=$3 rev pod uid hash ready n=0
    phase_is "$name" Running || return 1
    rev=$(k get statefulset "$name" -o jsonpath='{.status.updateRevision}')
    while read -r pod uid hash ready; do
        n=$((n + 1))
        if [[ $pod != "$stuck" ]] && ! grep -qxF "$pod $uid" "$before"; then
            echo "$pod was replaced, though only $stuck ran the broken image"
            return 2
        fi
        if [[ $hash != "$rev" || $ready != True ]]; then
            echo "$pod is not ready on the current template (revision $hash, ready ${ready:-no})"
            return 1
        fi
    done < <(pod_table "$name")
    ((n > 0)) || { echo "$name has no pods"; return 1; }
    echo "$n pods ready on the current template"
}
wait_until "$timeout" "demo did not come back to phase Running with every pod ready after the rollback" \
    rolled_back demo "$work/pods-before" "$stuck"
wait_for_size demo 3
log "rolled back: $stuck replaced, the other pods untouched throughout"

step "lost volume: delete a follower's volume claim and pod; the operator replaces the member"
victim=$(follower_of demo) || die "demo reports no follower"
write_key demo lost-volume/kept yes
old_id=$(member demo "$victim" id)
old_claim=$(k get pvc "data-$victim" -o jsonpath='{.metadata.uid}')
[[ -n $old_id && -n $old_claim ]] || die "no member id or no volume claim data-$victim for $victim"
events demo MemberReplaced >"$work/events-before"
# The claim stays (protected) until its pod is gone; the StatefulSet then
# brings the pod back on a new, empty claim.
log "deleting claim data-$victim and pod $victim (member incarnation $old_id)"
k delete pvc "data-$victim" --wait=false >&2
k delete pod "$victim" --wait=false >&2
expect_replaced "$victim" "$old_id" "$work/events-before"
new_claim=$(k get pvc "data-$victim" -o jsonpath='{.metadata.uid}')
[[ -n $new_claim && $new_claim != "$old_claim" ]] || die "data-$victim is not a new claim"
log "$victim is member incarnation $new_id on a new claim"
expect_key demo lost-volume/kept yes

step "switchover: annotate demo with a follower's name; it becomes master"
target=$(follower_of demo) || die "demo reports no follower"

# switched_over PKV TARGET: status.switchover says Succeeded for TARGET and
# TARGET is master; 2 when it says Failed.
switched_over() {
    local name=$1 target=$2 asked phase message master
    asked=$(field "$name" '{.status.switchover.target}')
    phase=$(field "$name" '{.status.switchover.phase}')
    message=$(field "$name" '{.status.switchover.message}')
    master=$(field "$name" '{.status.master}')
    echo "status.switchover: ${asked:-none} ${phase:-none} (${message:-no message}); master ${master:-none}"
    [[ $asked == "$target" && $phase == Failed ]] && return 2
    [[ $asked == "$target" && $phase == Succeeded && $master == "$target" ]]
}
no_switchover() {
    local s
    s=$(field "$1" '{.status.switchover}')
    echo "status.switchover: ${s:-none}"
    [[ -z $s ]]
}
log "master $(field demo '{.status.master}'); asking for $target"
k annotate pkv demo "phxkv.io/switchover=$target" --overwrite >&2
wait_until "$timeout" "demo did not switch over to $target" switched_over demo "$target"
log "$(tail -n 1 "$work/wait.out")"
# Tidy up: without the annotation the status has no switchover.
k annotate pkv demo phxkv.io/switchover- >&2
wait_until 120 "status.switchover of demo stayed after the annotation was removed" no_switchover demo

step "hibernation: demo stops every pod and keeps its volumes, then comes back with its data"
write_key demo hibernation/kept yes
claim_table demo | sort >"$work/claims-before"
(($(wc -l <"$work/claims-before") == 3)) || die "demo has $(wc -l <"$work/claims-before") volume claims, not 3"

# hibernated PKV: phase Hibernated and no pods.
hibernated() {
    local pods
    phase_is "$1" Hibernated || return 1
    pods=$(pod_table "$1" | awk '{print $1}' | xargs)
    [[ -z $pods ]] || { echo "phase Hibernated, but pods are left: $pods"; return 1; }
    echo "phase Hibernated, no pods"
}
# same_claims PKV WHEN: PKV's volume claims are those of the file
# claims-before, none being deleted.
same_claims() {
    claim_table "$1" | sort >"$work/claims-now"
    diff "$work/claims-before" "$work/claims-now" >&2 || die "the volume claims of $1 changed $2"
}
k patch pkv demo --type merge -p '{"spec":{"hibernation":true}}' >&2
wait_until "$timeout" "demo did not hibernate" hibernated demo
same_claims demo "while hibernating"
log "demo is Hibernated with no pods; its $(wc -l <"$work/claims-before") volume claims are kept"
k patch pkv demo --type merge -p '{"spec":{"hibernation":false}}' >&2
k wait --for=condition=Available pkv/demo --timeout="${timeout}s" >&2
wait_for_size demo 3
same_claims demo "over hibernation"
expect_key demo hibernation/kept yes

step "name conflict: a PaxosKV named demo-peers next to demo"
# demo's headless Service is demo-peers: the client Service of a PaxosKV
# named demo-peers. The operator must not take it over.
k apply -f - >&2 <<'EOF2'
apiVersion: phxkv.io/v1alpha1
kind: PaxosKV
metadata:
  name: demo-peers
spec:
  replicas: 1
  storage:
    size: 1Gi
    reclaimPolicy: Delete
EOF2
name_conflict() {
    local reason
    reason=$(condition "$1" Ready reason)
    echo "Ready: $(condition "$1" Ready status) ${reason:-none}: $(condition "$1" Ready message)"
    [[ $reason == NameConflict ]]
}
wait_until 120 "demo-peers did not report Ready=False with reason NameConflict" name_conflict demo-peers
log "demo-peers: $(tail -n 1 "$work/wait.out")"
[[ $(condition demo-peers Ready status) == False ]] || die "demo-peers has reason NameConflict but is Ready"
owner=$(k get service demo-peers -o jsonpath='{.metadata.ownerReferences[*].name}')
[[ $owner == demo ]] || die "Service demo-peers now belongs to '${owner:-nobody}', not demo"
[[ -z $(k get statefulset demo-peers --ignore-not-found -o name) ]] ||
    die "demo-peers got a StatefulSet despite the conflict"
k delete pkv demo-peers --wait=true --timeout=120s >&2
left_behind() {
    local objects
    objects=$(k get serviceaccounts,services,poddisruptionbudgets,networkpolicies,secrets,configmaps,statefulsets \
        -l "app.kubernetes.io/instance=$1" -o name | xargs)
    echo "left: ${objects:-nothing}"
    [[ -z $objects ]]
}
wait_until 120 "objects of the deleted demo-peers are still there" left_behind demo-peers
k wait --for=condition=Available pkv/demo --timeout=120s >&2
owner=$(k get service demo-peers -o jsonpath='{.metadata.ownerReferences[*].name}')
[[ $owner == demo ]] || die "Service demo-peers belongs to '${owner:-nobody}' after the clean-up, not demo"
log "demo-peers was refused and deleted; demo and its Service demo-peers are as they were"

step "revocation: a client certificate put on spec.tls.revocationList is shut out, another of the CA is not"
# One replica with client certificates required and a revocation list in
# the Secret crl-list, which does not exist yet: the operator says so and
# holds the list back, so the pod starts without one; once the Secret
# holds a usable list, the pod rolls onto it.
k apply -f - >&2 <<'EOF2'
apiVersion: phxkv.io/v1alpha1
kind: PaxosKV
metadata:
  name: crl
spec:
  replicas: 1
  storage:
    size: 1Gi
    reclaimPolicy: Delete
  tls:
    clientCertAuth: true
    revocationList:
      name: crl-list
EOF2
: >"$work/crl-events-before"
wait_until 120 "no RevocationListInvalid event about crl's missing Secret" \
    new_event crl RevocationListInvalid "$work/crl-events-before"
log "$(tail -n 1 "$work/wait.out")"
grep -q "does not exist" "$work/wait.out" || die "the event does not say the Secret is missing"
list_held() {
    local reason
    reason=$(k get pkv crl -o jsonpath='{.status.conditions[?(@.type=="RevocationListApplied")].reason}')
    echo "RevocationListApplied reason: ${reason:-none}"
    [[ $reason == RevocationListInvalid ]]
}
wait_until 60 "crl's status does not say its list is held back" list_held
ca_key_ready() { k get secret crl-ca -o jsonpath='{.data.ca\.key}' | grep -q .; }
wait_until 120 "Secret crl-ca was not made" ca_key_ready
# The README's recipe: an openssl ca state beside the operator's CA.
crl_dir=$work/crl
mkdir -p "$crl_dir"
k get secret crl-ca -o jsonpath='{.data.ca\.crt}' | base64 -d >"$crl_dir/ca.crt"
k get secret crl-ca -o jsonpath='{.data.ca\.key}' | base64 -d >"$crl_dir/ca.key"
for holder in app other; do
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$holder" \
        -keyout "$crl_dir/$holder.key" -out "$crl_dir/$holder.csr" 2>/dev/null &&
        openssl x509 -req -in "$crl_dir/$holder.csr" -CA "$crl_dir/ca.crt" -CAkey "$crl_dir/ca.key" \
            -CAcreateserial -days 1 -extfile <(echo extendedKeyUsage=clientAuth) \
            -out "$crl_dir/$holder.crt" 2>/dev/null || die "cannot issue a client certificate from crl-ca"
done
(
    cd "$crl_dir" || exit 1
    touch index.txt && echo 01 >crlnumber &&
        printf '[ca]\ndefault_ca = c\n[c]\ndatabase = index.txt\ncrlnumber = crlnumber\ndefault_md = sha256\ndefault_crl_days = 30\n' >crl.cnf &&
        openssl ca -config crl.cnf -cert ca.crt -keyfile ca.key -gencrl -out ca.crl 2>/dev/null
) || die "openssl ca -gencrl with crl-ca"
k wait --for=condition=Available pkv/crl --timeout="${timeout}s" >&2
k create secret generic crl-list --from-file=ca.crl="$crl_dir/ca.crl" >&2
crl_given() {
    local v
    v=$(k get statefulset crl -o jsonpath='{.spec.template.spec.containers[0].env[?(@.name=="PHXKV_TLS_CRL")].value}')
    echo "PHXKV_TLS_CRL: ${v:-unset}"
    [[ -n $v ]]
}
wait_until 120 "the pods of crl were not given the list" crl_given
k wait --for=condition=RevocationListApplied pkv/crl --timeout=60s >&2 ||
    die "crl's condition RevocationListApplied did not become True with the list given"
[[ -n $(k get pkv crl -o jsonpath='{.status.revocationLists[0].number}') ]] ||
    die "crl's status.revocationLists does not record the list given"
rolled() { # every pod of crl on the StatefulSet's template, and ready
    local want table
    want=$(k get statefulset crl -o jsonpath='{.status.updateRevision}')
    table=$(pod_table crl)
    echo "pods: ${table//$'\n'/; } (template $want)"
    [[ -n $table ]] && ! awk -v w="$want" '$3 != w || $4 != "True"' <<<"$table" | grep -q .
}
wait_until "$timeout" "the pod of crl did not roll onto the list" rolled
k wait --for=condition=Available pkv/crl --timeout="${timeout}s" >&2
bearer=$(token_of crl)
cacert=$(ca_of crl) || die "Secret crl-tls holds no ca.crt"
forward svc/crl 8080
crl_port=$forward_port
as_holder() { # HOLDER: the HTTP status of a write with the token and HOLDER's certificate (000: refused)
    tls_curl -s -o /dev/null -w '%{http_code}' --max-time 10 --cert "$crl_dir/$1.crt" \
        --key "$crl_dir/$1.key" -H "Authorization: Bearer $bearer" -X PUT --data-binary "$1" \
        "https://localhost:$crl_port/v1/kv/written-by-$1" || true
}
admitted() { local code; code=$(as_holder "$1"); echo "$1: $code"; [[ $code == 200 ]]; }
wait_until 60 "crl does not admit app's certificate before its revocation" admitted app
[[ $(as_holder other) == 200 ]] || die "crl does not admit other's certificate"
(
    cd "$crl_dir" || exit 1
    openssl ca -config crl.cnf -cert ca.crt -keyfile ca.key -revoke app.crt 2>/dev/null &&
        openssl ca -config crl.cnf -cert ca.crt -keyfile ca.key -gencrl -out ca.crl 2>/dev/null
) || die "openssl ca -revoke app.crt"
k create secret generic crl-list --from-file=ca.crl="$crl_dir/ca.crl" --dry-run=client -o yaml |
    k apply -f - >&2
revoked_at=$SECONDS
refused() { local code; code=$(as_holder app); echo "app: $code"; [[ $code == 000 ]]; }
# The kubelet's refresh of the volume (about a minute), then the replica's
# reload (within 30 s).
wait_until 240 "app's certificate is still admitted after its revocation" refused
log "app's certificate refused $((SECONDS - revoked_at))s after the list was replaced"
[[ $(as_holder other) == 200 ]] || die "other's certificate is refused too"
rm -f "$crl_dir"/*.key
k delete pkv crl --wait=true --timeout=120s >&2
k delete secret crl-list >&2
log "a revoked certificate is refused within minutes, without a restart; the CA's others still write"
bearer=$(token_of demo)
cacert=$(ca_of demo) || die "Secret demo-tls holds no ca.crt"

if [[ $backups == 1 ]]; then
    step "backup and recovery: demo archives to MinIO, a PaxosKVBackup, a new PaxosKV recovered to its revision"
    minio_image=${PHXKV_E2E_MINIO_IMAGE:-quay.io/minio/minio}
    mc_image=${PHXKV_E2E_MC_IMAGE:-quay.io/minio/mc}
    s3_key=phxkv-e2e
    s3_secret=$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
    k create secret generic s3-credentials --from-literal=AWS_ACCESS_KEY_ID="$s3_key" \
        --from-literal=AWS_SECRET_ACCESS_KEY="$s3_secret" --from-literal=AWS_REGION=us-east-1 >&2
    k create deployment minio --image="$minio_image" --port=9000 -- minio server /data >&2
    k set env deployment/minio MINIO_ROOT_USER="$s3_key" MINIO_ROOT_PASSWORD="$s3_secret" >&2
    k expose deployment minio --port=9000 >&2
    k rollout status deployment/minio --timeout="${timeout}s" >&2
    endpoint=http://minio.$ns.svc:9000
    k create job make-bucket --image="$mc_image" -- sh -c \
        "mc alias set s3 $endpoint $s3_key $s3_secret && mc mb --ignore-existing s3/phxkv" >&2
    k wait --for=condition=Complete job/make-bucket --timeout="${timeout}s" >&2 || die "creating the bucket"

    k patch pkv demo --type merge -p "{\"spec\":{\"backup\":{\"destination\":{\"url\":\"s3://phxkv/e2e\",
        \"credentialsSecret\":{\"name\":\"s3-credentials\"},\"endpointURL\":\"$endpoint\"},
        \"retention\":{\"keep\":3}}}}" >&2
    # The pods are replaced one at a time, now with PHXKV_ARCHIVE_URL.
    wait_until "$timeout" "demo did not settle to phase Running" phase_is demo Running
    backup_healthy() {
        echo "BackupHealthy $(condition demo BackupHealthy status): $(condition demo BackupHealthy message)"
        [[ $(condition demo BackupHealthy status) == True ]]
    }
    wait_until "$timeout" "demo's archive is not healthy" backup_healthy
    archive=$(field demo '{.status.backup.archiveUrl}')
    [[ $archive == "s3://phxkv/e2e/$ns/demo" ]] || die "status.backup.archiveUrl of demo is '$archive'"
    write_key demo backup/before yes
    k apply -f - >&2 <<'EOF'
apiVersion: phxkv.io/v1alpha1
kind: PaxosKVBackup
metadata:
  name: demo-e2e
spec:
  cluster: demo
EOF
    backup_done() {
        local phase
        phase=$(k get pkvb demo-e2e -o jsonpath='{.status.phase}')
        echo "PaxosKVBackup demo-e2e: ${phase:-none}: $(k get pkvb demo-e2e -o jsonpath='{.status.message}')"
        [[ $phase == Failed ]] && return 2
        [[ $phase == Completed ]]
    }
    wait_until "$timeout" "the backup of demo did not complete" backup_done
    revision=$(k get pkvb demo-e2e -o jsonpath='{.status.revision}')
    [[ $revision =~ ^[0-9]+$ ]] || die "PaxosKVBackup demo-e2e reports revision '$revision'"
    log "demo-e2e holds revision $revision"
    write_key demo backup/after yes

    k apply -f - >&2 <<EOF
apiVersion: phxkv.io/v1alpha1
kind: PaxosKV
metadata:
  name: restored
spec:
  replicas: 3
  storage:
    size: 1Gi
    reclaimPolicy: Delete
  bootstrap:
    recovery:
      source:
        url: $archive
        credentialsSecret:
          name: s3-credentials
        endpointURL: $endpoint
      targetRevision: $revision
EOF
    k wait --for=condition=Available pkv/restored --timeout="${timeout}s" >&2
    wait_for_size restored 3
    recovery=$(field restored '{.status.recovery.phase}')
    [[ $recovery == Recovered ]] || die "restored reports recovery phase '$recovery'"
    expect_key restored backup/before yes
    # backup/after was written after revision $revision.
    expect_no_key restored backup/after
    log "restored has backup/before and not backup/after: recovered to revision $revision"
    if k patch pkv restored --type merge \
        -p '{"spec":{"bootstrap":{"recovery":{"source":{"url":"s3://phxkv/other"}}}}}' >/dev/null 2>"$work/patch.err"; then
        die "the API server let spec.bootstrap of restored change"
    fi
    log "changing spec.bootstrap is refused: $(head -n 1 "$work/patch.err")"
    k delete pkv restored --wait=true --timeout=300s >&2
else
    step "backup and recovery: SKIPPED (PHXKV_K8S_BACKUP=1 runs it; it pulls MinIO's images)"
fi

if [[ $slow == 1 ]]; then
    step "self-healing: a follower that cannot come back is recreated after replaceAfter (1m)"
    [[ $(kubectl auth can-i create resourcequotas --namespace "$ns" 2>/dev/null) == yes ]] ||
        die "this user may not create ResourceQuotas in $ns (the self-healing step needs one)"
    # As it was, to put back afterwards (the CRD defaults every field).
    healing=$(field demo '{.spec.selfHealing}')
    [[ $healing == '{'* ]] || die "demo has no spec.selfHealing to put back afterwards"
    k patch pkv demo --type merge -p '{"spec":{"selfHealing":{"enabled":true,"replaceAfter":"1m"}}}' >&2
    wait_until "$timeout" "demo did not settle to phase Running" phase_is demo Running
    wait_for_size demo 3
    victim=$(follower_of demo) || die "demo reports no follower"
    write_key demo self-healing/kept yes
    old_id=$(member demo "$victim" id)
    old_uid=$(k get pod "$victim" -o jsonpath='{.metadata.uid}')
    # A ResourceQuota that admits no further pod keeps the follower from
    # coming back once deleted: its member stays unhealthy (the master
    # no longer hears from it) until the operator recreates it.
    quota=phxkv-e2e-no-new-pods
    quota_counted() {
        local hard used
        hard=$(k get resourcequota "$quota" -o jsonpath='{.status.hard.pods}')
        used=$(k get resourcequota "$quota" -o jsonpath='{.status.used.pods}')
        echo "ResourceQuota $quota: hard ${hard:-?}, used ${used:-?}"
        [[ $hard == "$1" && -n $used ]]
    }
    k create quota "$quota" --hard=pods=1000 >&2
    wait_until 120 "ResourceQuota $quota was not counted" quota_counted 1000
    used=$(k get resourcequota "$quota" -o jsonpath='{.status.used.pods}')
    k patch resourcequota "$quota" --type merge -p "{\"spec\":{\"hard\":{\"pods\":\"$((used - 1))\"}}}" >&2
    wait_until 120 "ResourceQuota $quota did not take pods=$((used - 1))" quota_counted "$((used - 1))"
    events demo RecreatingMember >"$work/recreating-before"
    events demo MemberReplaced >"$work/replaced-before"
    log "$used pods in $ns, the quota admits $((used - 1)); deleting $victim (incarnation $old_id)"
    k delete pod "$victim" --wait=false >&2

    # recreating PKV MEMBER: a new RecreatingMember event about PKV.
    recreating() {
        local message
        if message=$(new_event "$1" RecreatingMember "$work/recreating-before"); then
            echo "$message"
            return 0
        fi
        if [[ -n $(pod_table "$1" | awk -v p="$2" -v u="$old_uid" '$1 == p && $2 != u') ]]; then
            echo "pod $2 came back despite ResourceQuota $quota, before the operator recreated it"
            return 2
        fi
        echo "$2: healthy $(member "$1" "$2" healthy), failing since $(member "$1" "$2" failingSince)"
        return 1
    }
    wait_until "$timeout" "demo did not recreate $victim" recreating demo "$victim"
    log "$(tail -n 1 "$work/wait.out")"
    k delete resourcequota "$quota" --wait=true >&2
    quota=
    # The StatefulSet retries the pod with a growing back-off, so it may
    # take a minute or two after the quota goes.
    expect_replaced "$victim" "$old_id" "$work/replaced-before"
    log "$victim is back as member incarnation $new_id"
    expect_key demo self-healing/kept yes
    k patch pkv demo --type merge -p "{\"spec\":{\"selfHealing\":$healing}}" >&2
    log "spec.selfHealing of demo is back to $healing"
else
    step "self-healing: SKIPPED (it takes several minutes; PHXKV_K8S_SLOW=1 runs it)"
fi

step "done"
if [[ $slow == 1 ]]; then
    echo "PASSED: phxkv on Kubernetes ($ns)"
else
    echo "PASSED: phxkv on Kubernetes ($ns), without the self-healing step (PHXKV_K8S_SLOW=1 runs it)"
fi

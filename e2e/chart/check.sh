#!/usr/bin/env bash
# Offline checks of the Helm chart (charts/phxkv) and of the README's sample
# PaxosKV: helm lint, rendering with several value sets, validation of every
# rendered object against the Kubernetes schemas and the CRD, the rejections
# values.schema.json promises, and the alerting rules and Grafana dashboard
# (promtool unit tests; every query parsed and its metrics checked against
# a real phxkv's /metrics). No cluster needed; see e2e/chart/README.md.
#
# Installs what it needs into a cache outside the repository, keyed by the
# pinned versions, so later runs take seconds:
#   helm          install-helm.sh
#   promtool      install-promtool.sh (from Debian's prometheus package)
#   python venv   kubernetes-validate, jsonschema, PyYAML
#   node modules  models for validating ServiceMonitors and PrometheusRules,
#                 the PromQL grammar (package-lock.json)
#
# Environment:
#   PHXKV_CACHE         the cache directory (default ${XDG_CACHE_HOME:-~/.cache}/phxkv)
#   PHXKV_OPERATOR_BIN  a built phxkv-operator (else it is built)
#   PHXKV_BIN           a built phxkv (else it is built)
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
JSONSCHEMA_VERSION=4.26.0
PYYAML_VERSION=6.0.4
# Validated against the oldest Kubernetes the chart supports (Chart.yaml's
# kubeVersion) and the newest kubernetes-validate knows.
K8S_VERSIONS=(1.33 1.37)

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
chart=$repo/charts/phxkv
crd=$chart/crds/paxoskv.yaml
backup_crd=$chart/crds/paxoskvbackup.yaml
cache=${PHXKV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/phxkv}
venv=$cache/venv-kubernetes-validate-$KUBERNETES_VALIDATE_VERSION
node_dir=$cache/node-chart-check-$(sha256sum "$here/package-lock.json" | cut -c1-12)

log() { printf 'chart: %s\n' "$*" >&2; }
die() { log "FAILED: $*"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- tools ----------------------------------------------------------------

for tool in python3 node npm; do
    command -v "$tool" >/dev/null || die "$tool is needed"
done
helm=$(bash "$here/install-helm.sh") || die "could not install helm"
promtool=$(bash "$here/install-promtool.sh") || die "could not install promtool"
# A private helm home, so the user's repositories and plugins play no part.
export HELM_CACHE_HOME=$work/helm-cache HELM_CONFIG_HOME=$work/helm-config HELM_DATA_HOME=$work/helm-data

if [[ ! -x $venv/bin/kubernetes-validate ]]; then
    log "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
    rm -rf "$venv"
    mkdir -p "$cache"
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" \
        "jsonschema==$JSONSCHEMA_VERSION" "PyYAML==$PYYAML_VERSION"
fi
python=$venv/bin/python

if [[ ! -d $node_dir/node_modules ]]; then
    log "installing prometheus-operator models and the PromQL grammar (npm ci) into $node_dir"
    rm -rf "$node_dir" "$node_dir.tmp"
    mkdir -p "$node_dir.tmp"
    cp "$here/package.json" "$here/package-lock.json" "$node_dir.tmp/"
    (cd "$node_dir.tmp" && npm ci --silent --no-audit --no-fund --ignore-scripts >/dev/null) ||
        die "npm ci failed"
    mv "$node_dir.tmp" "$node_dir"
fi

log "$("$helm" version --short), kubernetes-validate $("$venv/bin/kubernetes-validate" --version), node $(node --version), $("$promtool" --version 2>&1 | head -n1)"

# --- checks ---------------------------------------------------------------

passed=0
check() { log "ok: $*"; passed=$((passed + 1)); }

validate() {
    "$python" "$here/validate.py" "${K8S_VERSIONS[@]/#/-k}" --crd "$crd" --crd "$backup_crd" \
        --node-modules "$node_dir/node_modules" "$@"
}

# Renders the chart (CRD included) with the given flags into $work/$name.yaml.
render() {
    local name=$1
    shift
    "$helm" template phxkv "$chart" --namespace phxkv-check --include-crds "$@" >"$work/$name.yaml" ||
        die "helm template $* failed"
}

log "the validator rejects broken manifests (testdata/invalid.yaml)"
docs=$(grep -c '^kind:' "$here/testdata/invalid.yaml")
if validate "$here/testdata/invalid.yaml" >"$work/invalid.out"; then
    cat "$work/invalid.out" >&2
    die "validate.py accepted testdata/invalid.yaml"
fi
sed 's/^/  /' "$work/invalid.out" >&2
[[ $(grep -c '^FAIL' "$work/invalid.out") -eq $docs ]] ||
    die "validate.py should have rejected all $docs documents of testdata/invalid.yaml"
check "the validator rejects each of the $docs broken manifests"

log "helm lint --strict"
"$helm" lint --strict "$chart" >"$work/lint.out" 2>&1 || { cat "$work/lint.out" >&2; die "helm lint --strict"; }
# Lint in the namespace-scoped mode too: its template has its own branches.
"$helm" lint --strict "$chart" --namespace team-a --set operator.watchNamespace=team-a >"$work/lint.out" 2>&1 ||
    { cat "$work/lint.out" >&2; die "helm lint --strict (watchNamespace)"; }
check "helm lint --strict"

log "default values: render and validate"
render default
validate "$work/default.yaml" --expect CustomResourceDefinition=2 --expect PaxosKV=1 \
    --expect Deployment=1 --expect ClusterRole=2 --expect ClusterRoleBinding=2 --expect Role=1 \
    --expect RoleBinding=1 --expect PodDisruptionBudget=1 --expect NetworkPolicy=0 --expect ServiceMonitor=0 --expect PrometheusRule=0 --expect ConfigMap=0 ||
    die "default render does not validate"
check "default render validates"

log "the default cluster requires authentication"
"$python" - "$work/default.yaml" <<'PY' || die "auth is not on by default"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pkv = next(d for d in docs if d["kind"] == "PaxosKV")
assert pkv["spec"]["auth"]["enabled"] is True, pkv["spec"].get("auth")
PY
check "auth is on in the default PaxosKV"

# TLS: on by default with the operator's own CA (no issuerRef); with
# tls.issuerRef the operator has cert-manager issue the certificate.
log "the default cluster uses TLS; tls.issuerRef reaches the PaxosKV"
"$python" - "$work/default.yaml" <<'PY' || die "TLS is not on by default"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pkv = next(d for d in docs if d["kind"] == "PaxosKV")
tls = pkv["spec"].get("tls")
assert tls == {"enabled": True}, tls
PY
render issuer --set tls.issuerRef.name=ca-issuer --set tls.issuerRef.kind=ClusterIssuer
validate "$work/issuer.yaml" --expect PaxosKV=1 || die "render with tls.issuerRef does not validate"
"$python" - "$work/issuer.yaml" <<'PY' || die "tls.issuerRef does not reach the PaxosKV"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pkv = next(d for d in docs if d["kind"] == "PaxosKV")
tls = pkv["spec"].get("tls")
assert tls == {"enabled": True, "issuerRef": {"name": "ca-issuer", "kind": "ClusterIssuer"}}, tls
PY
check "TLS is on in the default PaxosKV, and tls.issuerRef reaches spec.tls.issuerRef"

log "tls.clientCertAuth and tls.revocationList reach the PaxosKV, and the ServiceMonitor scrapes the metrics port"
render mtls --set tls.clientCertAuth=true,tls.clientCertIdentity=true,serviceMonitor.enabled=true \
    --set tls.revocationList.name=phxkv-crl
validate "$work/mtls.yaml" --expect PaxosKV=1 --expect ServiceMonitor=2 || die "render with tls.clientCertAuth does not validate"
"$python" - "$work/mtls.yaml" "$work/default.yaml" <<'PY' || die "tls.clientCertAuth"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pkv = next(d for d in docs if d["kind"] == "PaxosKV")
tls = pkv["spec"]["tls"]
assert tls == {"enabled": True, "clientCertAuth": True, "clientCertIdentity": True,
               "revocationList": {"name": "phxkv-crl"}}, tls
name = pkv["metadata"]["name"]
sm = next(d for d in docs if d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == name)
assert sm["spec"]["endpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s",
                                    "scrapeTimeout": "10s"}], sm["spec"]["endpoints"]
assert sm["spec"]["selector"]["matchLabels"]["phxkv.io/service"] == "metrics", sm["spec"]["selector"]
# The job stays the cluster's name, which the alerts select.
assert sm["spec"]["jobLabel"] == "app.kubernetes.io/instance", sm["spec"]
PY
render monitored --set serviceMonitor.enabled=true
"$python" - "$work/monitored.yaml" <<'PY' || die "the default ServiceMonitor"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pkv = next(d for d in docs if d["kind"] == "PaxosKV")
sm = next(d for d in docs if d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == pkv["metadata"]["name"])
(ep,) = sm["spec"]["endpoints"]
assert ep["port"] == "client" and ep["scheme"] == "https" and ep["tlsConfig"]["ca"]["secret"]["key"] == "ca.crt", ep
PY
check "tls.clientCertAuth reaches spec.tls and moves the scrape to the metrics Service (ClusterIP); HTTPS on the client port otherwise"

# The operator's Deployment: two replicas (one leads, one stands by) spread
# over nodes, liveness on /healthz so a standby is never restarted for being
# one, readiness on /readyz, and the pod's name and namespace for the Lease.
log "the operator runs as a leader and a standby"
"$python" - "$work/default.yaml" <<'PY' || die "the operator's Deployment"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
dep = next(d for d in docs if d["kind"] == "Deployment")
spec = dep["spec"]
assert spec["replicas"] == 2, spec["replicas"]
assert spec["strategy"]["type"] == "RollingUpdate", spec["strategy"]
pod = spec["template"]["spec"]
c = pod["containers"][0]
assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", c["livenessProbe"]
assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", c["readinessProbe"]
env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c["env"]}
assert env.get("POD_NAME") == "metadata.name" and env.get("POD_NAMESPACE") == "metadata.namespace", env
args = c["args"]
for want in ("--lease-name=phxkv-operator", "--lease-duration=15s", "--manage-crd=true"):
    assert want in args, (want, args)
term = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0]["podAffinityTerm"]
assert term["topologyKey"] == "kubernetes.io/hostname", term
assert term["labelSelector"]["matchLabels"] == spec["selector"]["matchLabels"], term
pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
assert pdb["spec"]["maxUnavailable"] == 1 and pdb["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"], pdb
PY
render single --set operator.replicas=1,operator.manageCRD=false,operator.leaderElection.leaseDuration=1m
validate "$work/single.yaml" --expect Deployment=1 --expect PodDisruptionBudget=0 --expect ClusterRole=1 \
    --expect ClusterRoleBinding=1 --expect Role=1 || die "operator.replicas=1, manageCRD=false"
grep -q -- '--manage-crd=false' "$work/single.yaml" || die "operator.manageCRD=false does not reach --manage-crd"
grep -q -- '--lease-duration=1m' "$work/single.yaml" || die "leaseDuration does not reach --lease-duration"
check "the operator: 2 replicas across nodes, a budget, probes and the Lease's settings; 1 replica has no budget"

log "every option on: render and validate"
render full \
    --set networkPolicy.enabled=true,serviceMonitor.enabled=true \
    --set prometheusRule.enabled=true,grafanaDashboard.enabled=true \
    --set prometheusRule.additionalLabels.release=prometheus,grafanaDashboard.namespace=grafana \
    --set-json 'grafanaDashboard.annotations={"grafana_folder":"Databases"}' \
    --set-json 'networkPolicy.clientFrom=[{"namespaceSelector":{"matchLabels":{"kubernetes.io/metadata.name":"apps"}}}]' \
    --set serviceMonitor.labels.release=prometheus \
    --set cluster.replicas=5,cluster.lease=3s,cluster.storage.size=20Gi,cluster.storage.storageClassName=fast \
    --set cluster.storage.reclaimPolicy=Delete,cluster.service.type=LoadBalancer \
    --set cluster.otlpEndpoint=http://otel-collector:4318,operator.otlpEndpoint=http://otel-collector:4318 \
    --set cluster.limits.maxValueBytes=65536,cluster.scheduling.priorityClassName=high \
    --set-json 'cluster.scheduling.tolerations=[{"key":"dedicated","operator":"Equal","value":"kv","effect":"NoSchedule"}]' \
    --set-json 'cluster.scheduling.topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"app.kubernetes.io/instance":"phxkv"}}}]' \
    --set-json 'operator.extraEnv=[{"name":"RUST_LOG","value":"info"}]' \
    --set cluster.hibernation=true,cluster.selfHealing.replaceAfter=30m,cluster.selfHealing.maxLag=5000 \
    --set cluster.backup.destination.url=s3://backups/prod,cluster.backup.destination.credentialsSecret=s3 \
    --set cluster.backup.destination.endpointURL=http://minio.storage:9000,cluster.backup.schedule="0 3 * * *" \
    --set cluster.backup.retention.keep=7,cluster.backup.retention.maxAge=30d \
    --set image.tag=0.1.1,imagePullSecrets[0].name=regcred
validate "$work/full.yaml" --expect PaxosKV=1 --expect NetworkPolicy=0 --expect ServiceMonitor=2 \
    --expect PrometheusRule=1 --expect ConfigMap=1 || die "render with every option does not validate"
grep -q -- '--default-image=ghcr.io/phxkv/phxkv:0.1.1' "$work/full.yaml" || die "image.tag does not reach --default-image"
grep -q '^  hibernation: true' "$work/full.yaml" || die "cluster.hibernation does not reach the PaxosKV"
grep -q '^    replaceAfter: "30m"' "$work/full.yaml" || die "cluster.selfHealing does not reach the PaxosKV"
"$python" - "$work/full.yaml" <<'PY' || die "cluster.backup or networkPolicy does not reach the PaxosKV"
import sys, yaml
pkv = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "PaxosKV")
b = pkv["spec"]["backup"]
assert b["destination"] == {"url": "s3://backups/prod", "credentialsSecret": {"name": "s3"},
                            "endpointURL": "http://minio.storage:9000"}, b
assert b["schedule"] == "0 3 * * *" and b["retention"] == {"keep": 7, "maxAge": "30d"}, b
np = pkv["spec"]["networkPolicy"]
assert np == {"enabled": True, "clientFrom": [
    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}]}, np
# The pull Secret reaches the cluster's pods too, not only the operator's.
assert pkv["spec"]["imagePullSecrets"] == [{"name": "regcred"}], pkv["spec"].get("imagePullSecrets")
# The operator is told its own pods' labels, for the NetworkPolicy's exception.
op = next(d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d["kind"] == "Deployment")
env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
labels = dict(kv.split("=", 1) for kv in env["PHXKV_OPERATOR_POD_LABELS"].split(","))
assert labels.items() <= op["spec"]["template"]["metadata"]["labels"].items(), (labels, op["spec"]["template"]["metadata"]["labels"])
assert labels == op["spec"]["selector"]["matchLabels"], labels
PY
grep -q '^  backup:' "$work/default.yaml" && die "cluster.backup is off by default"
check "networkPolicy + serviceMonitor + prometheusRule + grafanaDashboard + every cluster option render validates"

log "namespace-scoped operator: render and validate"
render scoped --namespace team-a --set operator.watchNamespace=team-a
validate "$work/scoped.yaml" --expect Role=2 --expect RoleBinding=2 --expect ClusterRole=1 \
    --expect ClusterRoleBinding=1 || die "watchNamespace render does not validate"
grep -q -- '--namespace=team-a' "$work/scoped.yaml" || die "watchNamespace does not reach --namespace"
check "watchNamespace renders Roles (and only the CRD's ClusterRole) and --namespace"

log "cluster.enabled=false renders no PaxosKV"
render nocluster --set cluster.enabled=false,networkPolicy.enabled=true,serviceMonitor.enabled=true
validate "$work/nocluster.yaml" --expect PaxosKV=0 --expect NetworkPolicy=0 --expect ServiceMonitor=1 ||
    die "cluster.enabled=false"
check "cluster.enabled=false renders no PaxosKV (and no policy or monitor for it)"

# Each of these must fail, with a message containing the given text.
expect_rejected() {
    local want=$1
    shift
    if "$helm" template phxkv "$chart" "$@" >/dev/null 2>"$work/err"; then
        die "helm template $* succeeded; it must be rejected"
    fi
    grep -qF -- "$want" "$work/err" || { cat "$work/err" >&2; die "helm template $*: message lacks \"$want\""; }
    log "  rejected $*: $(grep -F -- "$want" "$work/err" | head -n1 | sed 's/^ *//')"
}
log "bad values are rejected with a clear message"
expect_rejected "at '/cluster/replicas': value must be 'an odd number" --set cluster.replicas=4
expect_rejected "at '/cluster/replicas': maximum" --set cluster.replicas=11
expect_rejected "at '/cluster/replicas': minimum" --set cluster.replicas=0
expect_rejected "at '/cluster/storage/size': value must be 'a size such as 1Gi" --set cluster.storage.size=1GB
expect_rejected "at '/cluster/storage/size': value must be 'a size such as 1Gi" --set cluster.storage.size=lots
expect_rejected "at '/cluster/storage/reclaimPolicy': value must be one of 'Retain', 'Delete'" \
    --set cluster.storage.reclaimPolicy=Recycle
expect_rejected "at '/cluster/service/type': value must be one of 'ClusterIP', 'NodePort', 'LoadBalancer'" \
    --set cluster.service.type=ExternalName
expect_rejected "at '': additional properties 'replicas' not allowed" --set replicas=3
expect_rejected "at '/cluster': additional properties 'replica' not allowed" --set cluster.replica=3
expect_rejected "at '/cluster/resources/requests/cpu': 'anyOf' failed" --set-json cluster.resources.requests.cpu=0.5
expect_rejected "at '/cluster/lease': value must be 'a duration" --set cluster.lease=5sec
expect_rejected "at '/cluster/lease': value must be 'a duration" --set cluster.lease=1.5s
expect_rejected "at '/cluster/lease': value must be 'a duration" --set cluster.lease=1h
expect_rejected "at '/cluster/limits/maxKeyBytes': maximum" --set cluster.limits.maxKeyBytes=2000000
expect_rejected "at '/cluster/limits/maxValueBytes': maximum" --set cluster.limits.maxValueBytes=100000000
expect_rejected "at '/cluster/limits/maxTxnOps': maximum" --set cluster.limits.maxTxnOps=20000
expect_rejected "at '/cluster/storage/size': value must be 'a size such as 1Gi" --set cluster.storage.size=1Ei
expect_rejected "at '/cluster/selfHealing/replaceAfter': '0m' does not match pattern" \
    --set cluster.selfHealing.replaceAfter=0m
expect_rejected "at '/cluster/service/port': value must be 'a port other than 8081" --set cluster.service.port=8081
expect_rejected "at '/cluster/imagePullSecrets/0': missing property 'name'" --set-json 'cluster.imagePullSecrets=[{}]'
expect_rejected "at '/cluster/selfHealing/replaceAfter': '5s' does not match pattern" \
    --set cluster.selfHealing.replaceAfter=5s
expect_rejected "at '/cluster/selfHealing/maxLag': minimum" --set cluster.selfHealing.maxLag=0
expect_rejected "at '/cluster/backup/destination/url': value must be 'an archive URL" \
    --set cluster.backup.destination.url=https://bucket.example
expect_rejected "at '/cluster/backup/retention/maxAge': value must be 'an age such as 30d" \
    --set cluster.backup.retention.maxAge=1y
expect_rejected "at '/cluster/backup/retention/maxAge': value must be 'an age such as 30d" \
    --set cluster.backup.retention.maxAge=0d
expect_rejected "at '/cluster/backup/retention/keep': minimum" --set cluster.backup.retention.keep=-1
expect_rejected "at '/image/pullPolicy': value must be one of" --set image.pullPolicy=Sometimes
expect_rejected "at '/operator/leaderElection/leaseDuration': value must be 'whole seconds" \
    --set operator.leaderElection.leaseDuration=2s
expect_rejected "at '/operator/leaderElection/leaseDuration': value must be 'whole seconds" \
    --set operator.leaderElection.leaseDuration=1.5s
expect_rejected "at '/operator/replicas': minimum" --set operator.replicas=0
expect_rejected "operator.watchNamespace is \"team-b\" but the release's PaxosKV goes into the release namespace" \
    --namespace team-a --set operator.watchNamespace=team-b
expect_rejected "at '/prometheusRule/memberLag/behind': value must be 'a duration such as 10s, 30s or 1m'" \
    --set prometheusRule.memberLag.behind=1min
expect_rejected "at '/prometheusRule/volume/almostFull/percent': maximum" --set prometheusRule.volume.almostFull.percent=150
expect_rejected "at '/prometheusRule/noMaster': additional properties 'after' not allowed" --set prometheusRule.noMaster.after=1m
expect_rejected "at '/grafanaDashboard/label': value must be 'a label name such as grafana_dashboard'" \
    --set "grafanaDashboard.label=grafana dashboard"
expect_rejected "at '/tls/issuerRef/kind': value must be one of 'Issuer', 'ClusterIssuer'" \
    --set tls.issuerRef.name=ca-issuer,tls.issuerRef.kind=CertificateAuthority
expect_rejected "at '/tls/issuerRef': value must be 'name (and optionally kind and group) of a cert-manager issuer" \
    --set tls.issuerRef.kind=ClusterIssuer
expect_rejected "at '/tls/issuerRef/name': value must be 'a name of lower-case letters" --set tls.issuerRef.name=CA_Issuer
expect_rejected "at '/tls/enabled': value must be true" --set tls.enabled=false,tls.clientCertAuth=true
expect_rejected "at '/tls/clientCertAuth': value must be true" --set tls.clientCertIdentity=true
expect_rejected "at '/tls/revocationList': value must be 'name (and optionally key)" --set tls.revocationList.key=a.crl
expect_rejected "at '/tls/enabled': value must be true" --set tls.enabled=false,tls.revocationList.name=phxkv-crl
expect_rejected "at '/auth/enabled': value must be true" \
    --set tls.clientCertAuth=true,tls.clientCertIdentity=true,auth.enabled=false
check "bad values are rejected"

log "NOTES.txt renders"
"$helm" install phxkv "$chart" --namespace phxkv-check --dry-run=client >"$work/notes.out" ||
    die "helm install --dry-run=client"
for want in "kubectl -n phxkv-check port-forward svc/phxkv 8080:8080" "https://phxkv.phxkv-check.svc:8080" \
    "kubectl -n phxkv-check get secret phxkv-tls -o jsonpath='{.data.ca\\.crt}'" \
    "curl --cacert ca.crt -H \"Authorization: Bearer \$(cat admin.token)\"" "https://localhost:8080/v1/kv/greeting" \
    "kubectl -n phxkv-check get secret phxkv-token" "kubectl -n phxkv-check describe pkv phxkv"; do
    grep -qF -- "$want" "$work/notes.out" || die "NOTES.txt lacks: $want"
done
sed -n '/^NOTES:/,$p' "$work/notes.out" | grep -F "http://" && die "NOTES.txt shows an http:// address, but TLS is on by default"
"$helm" install phxkv "$chart" --namespace phxkv-check --dry-run=client --set cluster.enabled=false >"$work/notes.out" ||
    die "helm install --dry-run=client --set cluster.enabled=false"
grep -qF "No PaxosKV was created" "$work/notes.out" || die "NOTES.txt with cluster.enabled=false"
check "NOTES.txt renders, with and without the release's cluster"

log "the README's sample PaxosKV"
validate "$repo/README.md" --markdown-block sample-paxoskv --expect PaxosKV=1 || die "README sample"
check "README sample validates against the CRD"

# The objects the operator creates for a PaxosKV (StatefulSet, Services,
# PDB, ...) are rendered by `phxkv-operator render` from the same code the
# controller runs, and must validate strictly too.
log "the operator's objects for the README sample and for an empty spec"
operator_bin=${PHXKV_OPERATOR_BIN:-}
if [[ -z $operator_bin ]]; then
    log "building phxkv-operator (set PHXKV_OPERATOR_BIN to use a built one)"
    cargo build --quiet --release --locked -p phxkv-operator --bin phxkv-operator --manifest-path "$repo/Cargo.toml" ||
        die "cargo build of phxkv-operator"
    operator_bin=$repo/target/release/phxkv-operator
fi
"$python" "$here/validate.py" --crd "$crd" --markdown-block sample-paxoskv --print "$repo/README.md" >"$work/sample-pkv.yaml" ||
    die "extracting the README sample"
"$operator_bin" render "$work/sample-pkv.yaml" >"$work/operator-sample.yaml" || die "phxkv-operator render (README sample)"
printf 'apiVersion: phxkv.io/v1alpha1\nkind: PaxosKV\nmetadata: {name: minimal, namespace: kv}\nspec: {}\n' >"$work/minimal-pkv.yaml"
"$operator_bin" render "$work/minimal-pkv.yaml" >"$work/operator-minimal.yaml" || die "phxkv-operator render (empty spec)"
printf 'apiVersion: phxkv.io/v1alpha1\nkind: PaxosKV\nmetadata: {name: crl, namespace: kv}\nspec: {tls: {revocationList: {name: crl-list, key: corp.crl}}}\n' >"$work/crl-pkv.yaml"
"$operator_bin" render "$work/crl-pkv.yaml" >"$work/operator-crl.yaml" || die "phxkv-operator render (revocation list)"
grep -q 'secretName: crl-list' "$work/operator-crl.yaml" || die "the revocation list Secret is not mounted"
for f in operator-sample operator-minimal operator-crl; do
    validate "$work/$f.yaml" --expect StatefulSet=1 --expect Service=2 --expect PodDisruptionBudget=1 \
        --expect ServiceAccount=1 --expect ConfigMap=1 --expect Secret=1 || die "$f objects do not validate"
done
check "the operator's objects validate (README sample, empty spec, a revocation list)"

# The operator's RBAC against the table of the calls its code makes
# (`phxkv-operator rbac`, operator/src/access.rs, which the operator's tests
# hold to its calls): nothing more is granted, nothing is missing, in the
# right Roles. First, that the check catches a chart granting one verb too
# many or too few.
log "the operator's RBAC grants exactly what its code uses"
rbac_check() {
    local rendered=$1 ns=$2
    shift 2
    "$python" "$here/rbac.py" "$rendered" "$work/rbac-table.json" --operator phxkv-operator --namespace "$ns" "$@"
}
"$operator_bin" rbac --lease-name phxkv-operator >"$work/rbac-table.json" || die "phxkv-operator rbac"
sed 's/verbs: \["list", "delete"\]/verbs: ["list", "delete", "get"]/' "$work/default.yaml" >"$work/rbac-more.yaml"
sed 's/verbs: \["list", "delete"\]/verbs: ["list"]/' "$work/default.yaml" >"$work/rbac-less.yaml"
for f in rbac-more rbac-less; do
    cmp -s "$work/default.yaml" "$work/$f.yaml" && die "could not make $f.yaml (the pods rule changed?)"
    if rbac_check "$work/$f.yaml" phxkv-check >"$work/$f.out"; then
        die "rbac.py accepted $f.yaml"
    fi
    sed 's/^/  /' "$work/$f.out" >&2
done
rbac_check "$work/default.yaml" phxkv-check || die "the default RBAC differs from phxkv-operator rbac"
rbac_check "$work/scoped.yaml" team-a --watch-namespace team-a || die "the watchNamespace RBAC differs"
"$operator_bin" rbac --lease-name phxkv-operator --manage-crd=false >"$work/rbac-table.json" || die "phxkv-operator rbac"
rbac_check "$work/single.yaml" phxkv-check || die "the manageCRD=false RBAC differs"
check "the operator's RBAC is exactly its table (cluster-wide, one namespace, without the CRD)"

# The release's ServiceMonitor against the Services the operator creates for
# the release's PaxosKV: each pod must be scraped through one Service only
# (the headless peer Service reaches the same pods).
log "the cluster's ServiceMonitor selects one Service"
"$python" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PaxosKV"]
print(yaml.safe_dump(docs[0]))' "$work/full.yaml" >"$work/chart-pkv.yaml" || die "extracting the chart's PaxosKV"
"$operator_bin" render "$work/chart-pkv.yaml" >"$work/operator-chart.yaml" || die "phxkv-operator render (chart's PaxosKV)"
"$python" "$here/scrape_targets.py" "$work/full.yaml" "$work/operator-chart.yaml" ||
    die "the cluster's ServiceMonitor must select exactly one Service"
check "the cluster's ServiceMonitor scrapes each pod through one Service"
"$python" -c 'import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d and d.get("kind") == "PaxosKV"]
print(yaml.safe_dump(docs[0]))' "$work/mtls.yaml" >"$work/mtls-pkv.yaml" || die "extracting the PaxosKV"
"$operator_bin" render "$work/mtls-pkv.yaml" >"$work/operator-mtls.yaml" || die "phxkv-operator render (clientCertAuth)"
"$python" "$here/scrape_targets.py" "$work/mtls.yaml" "$work/operator-mtls.yaml" ||
    die "with tls.clientCertAuth the ServiceMonitor must select exactly one Service"
"$python" - "$work/operator-mtls.yaml" <<'PY' || die "the metrics Service"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
svc = next(d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("-metrics"))
assert svc["spec"]["type"] == "ClusterIP" and svc["spec"]["ports"][0]["port"] == 8082, svc["spec"]
assert svc["metadata"]["labels"]["app.kubernetes.io/instance"] == svc["spec"]["selector"]["app.kubernetes.io/instance"]
sts = next(d for d in docs if d["kind"] == "StatefulSet")
c = sts["spec"]["template"]["spec"]["containers"][0]
assert {"name": "metrics", "containerPort": 8082, "protocol": "TCP"} in c["ports"], c["ports"]
assert c["readinessProbe"]["httpGet"]["port"] == "metrics", c["readinessProbe"]
PY
check "with tls.clientCertAuth it does too, through the ClusterIP metrics Service of the pods' metrics port"
"$python" - "$work/full.yaml" <<'PY' || die "the cluster's ServiceMonitor must scrape over HTTPS with the cluster's CA"
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
pkv = next(d for d in docs if d["kind"] == "PaxosKV")
name, ns = pkv["metadata"]["name"], pkv["metadata"]["namespace"]
sm = next(d for d in docs if d["kind"] == "ServiceMonitor" and d["metadata"]["name"] == name)
ep = sm["spec"]["endpoints"][0]
assert ep["scheme"] == "https", ep
assert ep["tlsConfig"]["ca"]["secret"] == {"name": f"{name}-tls", "key": "ca.crt"}, ep
assert ep["tlsConfig"]["serverName"] == f"{name}.{ns}.svc", ep
PY
check "the cluster's ServiceMonitor scrapes over HTTPS, trusting the cluster's CA"

# The alerting rules, run through promtool: `check rules` (syntax, templates)
# and `test rules` (series in, alerts out) with the tests in testdata/, which
# must cover every alert both firing and silent. The expression tests run
# on the rules without annotations, so a rewording needs no test change;
# alerts-annotations.test.yaml checks the annotations that depend on the
# series.
log "alerting rules: promtool check rules and test rules"
render rules --set prometheusRule.enabled=true
"$python" "$here/observability.py" rules "$work/rules.yaml" --out "$work/rules" \
    --tests "$here/testdata/alerts.test.yaml" "$here/testdata/alerts-annotations.test.yaml" ||
    die "the PrometheusRule's alerts"
cp "$here/testdata/alerts.test.yaml" "$here/testdata/alerts-annotations.test.yaml" "$work/rules/"
"$promtool" check rules "$work/rules/rules.yaml" >&2 || die "promtool check rules"
"$promtool" test rules "$work/rules/alerts.test.yaml" "$work/rules/alerts-annotations.test.yaml" >&2 ||
    die "promtool test rules"
check "alerting rules pass promtool check rules and their unit tests"

# What the tests cannot see, as they run on the default values: the quorum
# arithmetic for other sizes, and the rules without the release's cluster.
log "alerting rules for 5 replicas, 1 replica, and no cluster"
rules_of() {
    "$python" "$here/observability.py" rules "$work/$1.yaml" --out "$work/$1" || die "the PrometheusRule's alerts ($1)"
    "$promtool" check rules "$work/$1/rules.yaml" >/dev/null || die "promtool check rules ($1)"
}
render rules5 --set prometheusRule.enabled=true,cluster.replicas=5
rules_of rules5
grep -qF ') <= 3' "$work/rules5/rules-expr.yaml" || die "5 replicas: PhxkvQuorumAtRisk must fire at 3 healthy or fewer"
grep -qF -- '< 5' "$work/rules5/rules-expr.yaml" || die "5 replicas: PhxkvMemberDown must count 5 targets"
render rules1 --set prometheusRule.enabled=true,cluster.replicas=1
rules_of rules1
! grep -q "alert: PhxkvQuorumAtRisk" "$work/rules1/rules-expr.yaml" || die "1 replica: no PhxkvQuorumAtRisk (it would always fire)"
render rules0 --set prometheusRule.enabled=true,cluster.enabled=false
rules_of rules0
! grep -q 'phxkv_is_master\|kubelet_' "$work/rules0/rules-expr.yaml" || die "cluster.enabled=false: only the operator's alerts"
check "alerting rules for 5 and 1 replicas and without a cluster"

# Every query of the rules and the dashboard is parsed with the PromQL
# grammar and may use only metrics that exist: the server's as a real phxkv
# serves them (a one-replica `phxkv dev` after a write and a read), the
# operator's as operator/src/metrics.rs registers them, and kubelet's volume
# statistics. Each selector must be limited to a namespace.
log "the rules' and dashboard's queries use only metrics phxkv serves"
phxkv_bin=${PHXKV_BIN:-}
if [[ -z $phxkv_bin ]]; then
    log "building phxkv (set PHXKV_BIN to use a built one)"
    cargo build --quiet --release --locked -p phxkv-server --bin phxkv --manifest-path "$repo/Cargo.toml" ||
        die "cargo build of phxkv"
    phxkv_bin=$repo/target/release/phxkv
fi
"$python" "$here/observability.py" scrape --bin "$phxkv_bin" --out "$work/metrics.txt" >&2 || die "scraping phxkv dev"
render observability --set prometheusRule.enabled=true,grafanaDashboard.enabled=true
"$python" "$here/observability.py" queries "$work/observability.yaml" --namespace phxkv-check \
    --exposition "$work/metrics.txt" --operator-source "$repo/operator/src/metrics.rs" \
    --node-modules "$node_dir/node_modules" >&2 || die "the rules' and dashboard's queries"
check "the rules' and dashboard's queries parse and use only metrics phxkv serves"

# The scripts are linted where shellcheck is already present; it is not
# installed for this (apt-get update alone takes longer than every other
# check).
if command -v shellcheck >/dev/null; then
    log "shellcheck of the chart and Kubernetes scripts"
    shellcheck "$here"/*.sh "$repo"/e2e/k8s/*.sh || die "shellcheck"
    check "shellcheck"
else
    log "shellcheck not installed: scripts not linted"
fi

log "$passed passed, 0 failed"

//! The Kubernetes objects of one `PaxosKV`, as pure functions of its spec.
//! Nothing here talks to the API server, so every object can be checked in
//! unit tests and by `kubernetes-validate` (see `phxkv-operator render`).
//!
//! Per cluster `N`: StatefulSet `N` (pods `N-0`, `N-1`, ...), headless
//! Service `N-peers` (peer discovery; it publishes pods before they are ready,
//! since a cluster needs its peers to become ready at all), client Service
//! `N`, PodDisruptionBudget `N`, ServiceAccount `N`, ConfigMap `N-bootstrap`
//! and Secret `N-token`; with TLS (the default) Secrets `N-tls` (the
//! replicas' certificate) and `N-ca` (the CA the operator signs it with),
//! or a cert-manager `Certificate` `N-tls`.
//!
//! Two choices carry the orchestration:
//! - `podManagementPolicy: Parallel`: the bootstrap pods must all start
//!   before any can be ready (a lone replica has no majority), and scaled-up
//!   pods wait, unready, until the operator adds them.
//! - `updateStrategy: OnDelete`: the operator replaces pods itself, one at a
//!   time, master last, after the previous one caught up.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{
    StatefulSet, StatefulSetPersistentVolumeClaimRetentionPolicy, StatefulSetSpec,
    StatefulSetUpdateStrategy,
};
use k8s_openapi::api::core::v1::{
    Affinity, Capabilities, ConfigMap, ConfigMapKeySelector, Container, ContainerPort,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodAffinityTerm, PodAntiAffinity,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, SeccompProfile, Secret, SecretEnvSource,
    SecretVolumeSource, SecurityContext, Service, ServiceAccount, ServicePort,
    ServiceSpec as K8sServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
    WeightedPodAffinityTerm,
};
use k8s_openapi::api::networking::v1::{
    NetworkPolicy, NetworkPolicyIngressRule, NetworkPolicyPeer, NetworkPolicyPort,
    NetworkPolicySpec as K8sNetworkPolicySpec,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{
    ArchiveSpec, LogFormatSpec, PaxosKV, ReadModeSpec, ReclaimPolicy, RecoverySpec, SecretKey,
};

/// Port of the client API inside the pod.
pub const CLIENT_PORT: i32 = 8080;
/// Port of the peer API inside the pod.
pub const PEER_PORT: i32 = 8081;
/// Port of the probes and `/metrics` in plain HTTP, with
/// `spec.tls.clientCertAuth` (`phxkv serve --metrics-listen`).
pub const METRICS_PORT: i32 = 8082;
/// Where each replica's volume is mounted.
pub const DATA_MOUNT: &str = "/var/lib/phxkv";
/// Where the cluster token Secret is mounted.
pub const TOKEN_MOUNT: &str = "/etc/phxkv/token";
/// Where the certificate Secret is mounted.
pub const TLS_MOUNT: &str = "/etc/phxkv/tls";
/// Where the revocation list Secret (`spec.tls.revocationList`) is
/// mounted: its key appears there as [`CRL_FILE`].
pub const CRL_MOUNT: &str = "/etc/phxkv/crl";
/// The file name of the revocation lists under [`CRL_MOUNT`].
pub const CRL_FILE: &str = "ca.crl";
/// Keys of a certificate Secret (`kubernetes.io/tls`, as cert-manager
/// writes them): the certificate, its key, and the CA that signed it.
pub const TLS_CERT_KEY: &str = "tls.crt";
/// See [`TLS_CERT_KEY`].
pub const TLS_KEY_KEY: &str = "tls.key";
/// See [`TLS_CERT_KEY`].
pub const CA_CERT_KEY: &str = "ca.crt";
/// The CA's private key, in the CA Secret only.
pub const CA_KEY_KEY: &str = "ca.key";
/// The key of the bootstrap ConfigMap recording whether the cluster was
/// created with TLS (absent in clusters created before TLS existed: plain).
pub const TLS_RECORD_KEY: &str = "tls";
/// Key of the token in its Secret.
pub const TOKEN_KEY: &str = "token";
/// Key of the bootstrap replica count in the bootstrap ConfigMap.
pub const BOOTSTRAP_KEY: &str = "replicas";
/// The key of the bootstrap ConfigMap holding the read mode the cluster was
/// created with (absent in clusters created before it existed: `lease`).
pub const READ_MODE_KEY: &str = "readMode";
/// The key of the bootstrap ConfigMap holding the archive a recovered
/// cluster was restored from (absent: it started empty).
pub const RECOVERY_SOURCE_KEY: &str = "recoverySource";
/// The key of the bootstrap ConfigMap holding the recovery's target, in
/// words.
pub const RECOVERY_TARGET_KEY: &str = "recoveryTarget";
/// The key of the bootstrap ConfigMap naming the one pod that restores from
/// the archive: the first pod while the recovery runs, empty once the
/// restored replica runs (so a pod that later comes back on an empty volume
/// starts empty and is replaced, as in any cluster).
pub const RESTORE_MEMBER_KEY: &str = "restoreMember";
/// Label telling the cluster's Services apart: `client` on the client
/// Service, `peers` on the headless one, `metrics` on the one of the
/// metrics port (see [`metrics_service`]). They select the same pods, so a
/// ServiceMonitor selects one of them (`client`, or `metrics` with
/// `spec.tls.clientCertAuth`) to scrape each pod once.
pub const SERVICE_LABEL: &str = "phxkv.io/service";
/// Annotation on a `PaxosKV` asking for mastership to move to the member
/// it names (a switchover).
pub const SWITCHOVER: &str = "phxkv.io/switchover";
/// Annotation on a hibernated StatefulSet: how many pods it had, to bring
/// back on wake-up.
pub const HIBERNATED_REPLICAS: &str = "phxkv.io/hibernated-replicas";
/// Field manager of the operator's server-side applies.
pub const MANAGER: &str = "phxkv-operator";
/// User and group the image runs as (distroless `nonroot`).
const RUN_AS: i64 = 65532;

/// Settings that come from the operator, not from the resource.
#[derive(Clone, Debug)]
pub struct Defaults {
    /// Image used when `spec.image` is not set.
    pub image: String,
    /// The operator's own pods, let through a restricted client port.
    pub operator_pods: OperatorPods,
}

/// Which pods are the operator's: the NetworkPolicy of a cluster whose
/// client port is restricted (`networkPolicy.clientFrom`) lets them in,
/// since the operator reads each member's view there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorPods {
    /// Their namespace (`POD_NAMESPACE`); `None` (an operator run outside
    /// the cluster, that did not say) matches pods of any namespace.
    pub namespace: Option<String>,
    /// Labels that select them (the chart passes its selector labels).
    pub labels: BTreeMap<String, String>,
}

impl Default for OperatorPods {
    /// Pods labelled as the chart labels them by default, anywhere.
    fn default() -> Self {
        OperatorPods {
            namespace: None,
            labels: BTreeMap::from([(
                OPERATOR_POD_LABEL.0.to_string(),
                OPERATOR_POD_LABEL.1.to_string(),
            )]),
        }
    }
}

impl OperatorPods {
    /// Parses `k=v,k=v` (as `--pod-labels` takes them).
    pub fn parse_labels(text: &str) -> Result<BTreeMap<String, String>, String> {
        let mut labels = BTreeMap::new();
        for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, v) = pair
                .split_once('=')
                .ok_or_else(|| format!("{pair:?} is not key=value"))?;
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                return Err(format!("{pair:?} has no key"));
            }
            labels.insert(k.to_string(), v.to_string());
        }
        if labels.is_empty() {
            return Err("no labels given: they would select every pod".into());
        }
        Ok(labels)
    }
}

/// Names of the objects of cluster `name`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    /// StatefulSet, client Service, PDB and ServiceAccount.
    pub cluster: String,
    /// Headless Service.
    pub peers: String,
    /// Service of the metrics port (see [`metrics_service`]).
    pub metrics: String,
    /// Token Secret.
    pub token: String,
    /// Bootstrap ConfigMap.
    pub bootstrap: String,
    /// Secret with the replicas' certificate (and cert-manager's
    /// `Certificate` of the same name).
    pub tls: String,
    /// Secret with the CA the operator issues the certificate from.
    pub ca: String,
    /// How the replicas talk: fixed when the cluster is created.
    pub transport: Transport,
    /// Host name suffix of the pods in peer URLs: `N-peers` for plain
    /// clusters (as they always were), `N-peers.<namespace>` with TLS, so
    /// that the certificate's `*.N-peers.<namespace>` covers each pod.
    pub peer_domain: String,
}

/// Plain HTTP or TLS on both ports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP (clusters created with `spec.tls.enabled: false`, or
    /// before TLS existed).
    Plain,
    /// HTTPS on the client port, mutual TLS on the peer port.
    Tls,
}

impl Transport {
    /// `http` or `https`.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Plain => "http",
            Transport::Tls => "https",
        }
    }
}

impl Names {
    /// Names for cluster `name`.
    pub fn of(name: &str) -> Names {
        Names {
            cluster: name.to_string(),
            peers: format!("{name}-peers"),
            metrics: format!("{name}-metrics"),
            token: format!("{name}-token"),
            bootstrap: format!("{name}-bootstrap"),
            tls: format!("{name}-tls"),
            ca: format!("{name}-ca"),
            transport: Transport::Plain,
            peer_domain: format!("{name}-peers"),
        }
    }

    /// Names for cluster `name` in namespace `ns` reached over `transport`.
    pub fn with_transport(name: &str, ns: &str, transport: Transport) -> Names {
        let mut names = Names::of(name);
        if transport == Transport::Tls {
            names.peer_domain = format!("{}.{ns}", names.peers);
        }
        names.transport = transport;
        names
    }

    /// A pod's client API from inside the Kubernetes cluster, through the
    /// headless Service.
    pub fn client_url(&self, ns: &str, pod: &str) -> String {
        format!(
            "{}://{pod}.{}.{ns}.svc:{CLIENT_PORT}",
            self.transport.scheme(),
            self.peers
        )
    }

    /// The DNS names the replicas' certificate holds (see
    /// [`TlsSpec`](crate::crd::TlsSpec)).
    pub fn certificate_names(&self, ns: &str) -> Vec<String> {
        let peers = &self.peers;
        let cluster = &self.cluster;
        vec![
            format!("*.{peers}.{ns}"),
            format!("*.{peers}.{ns}.svc"),
            format!("*.{peers}.{ns}.svc.cluster.local"),
            cluster.clone(),
            format!("{cluster}.{ns}"),
            format!("{cluster}.{ns}.svc"),
            format!("{cluster}.{ns}.svc.cluster.local"),
            "localhost".into(),
        ]
    }

    /// The subject common name of the replicas' certificate, whoever
    /// issues it: the only name their peer port admits (see
    /// [`statefulset`]).
    pub fn certificate_common_name(&self, ns: &str) -> String {
        format!("{}.{ns}", self.cluster)
    }

    /// Name of the pod with this ordinal.
    pub fn pod(&self, ordinal: i32) -> String {
        format!("{}-{ordinal}", self.cluster)
    }

    /// The ordinal of a pod of this set, if `pod` is one.
    pub fn ordinal(&self, pod: &str) -> Option<i32> {
        pod.strip_prefix(&self.cluster)?
            .strip_prefix('-')?
            .parse()
            .ok()
            .filter(|o: &i32| *o >= 0)
    }

    /// The peer URL a pod advertises (resolvable in the namespace through
    /// the headless Service).
    pub fn peer_url(&self, pod: &str) -> String {
        format!(
            "{}://{pod}.{}:{PEER_PORT}",
            self.transport.scheme(),
            self.peer_domain
        )
    }
}

/// Labels on every object of cluster `name`.
pub fn labels(name: &str) -> BTreeMap<String, String> {
    let mut l = selector_labels(name);
    l.insert("app.kubernetes.io/component".into(), "server".into());
    l.insert("app.kubernetes.io/managed-by".into(), MANAGER.into());
    l
}

/// The labels that select the pods of cluster `name`.
pub fn selector_labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".to_string(), "phxkv".to_string()),
        ("app.kubernetes.io/instance".to_string(), name.to_string()),
    ])
}

pub(crate) fn meta(pkv: &PaxosKV, name: String) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: pkv.namespace(),
        labels: Some(labels(&pkv.name_any())),
        owner_references: owner(pkv).map(|o| vec![o]),
        ..ObjectMeta::default()
    }
}

fn owner(pkv: &PaxosKV) -> Option<OwnerReference> {
    pkv.controller_owner_ref(&())
}

/// The volume claim of a pod of the StatefulSet (its claim template is
/// named `data`).
pub fn claim_name(pod: &str) -> String {
    format!("data-{pod}")
}

/// The image the replicas run.
pub fn image(pkv: &PaxosKV, defaults: &Defaults) -> String {
    pkv.spec
        .image
        .clone()
        .unwrap_or_else(|| defaults.image.clone())
}

/// The StatefulSet with `replicas` pods (the orchestration decides the
/// count; it differs from `spec.replicas` while scaling).
pub fn statefulset(
    pkv: &PaxosKV,
    defaults: &Defaults,
    replicas: i32,
    transport: Transport,
) -> StatefulSet {
    let name = pkv.name_any();
    let names = Names::with_transport(&name, &pkv.namespace().unwrap_or_default(), transport);
    let spec = &pkv.spec;
    let mut pod_labels = labels(&name);
    pod_labels.remove("app.kubernetes.io/managed-by");

    let mut storage_request = BTreeMap::new();
    storage_request.insert("storage".to_string(), Quantity(spec.storage.size.clone()));
    let claim = PersistentVolumeClaim {
        metadata: ObjectMeta {
            name: Some("data".into()),
            labels: Some(selector_labels(&name)),
            ..ObjectMeta::default()
        },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            storage_class_name: spec.storage.storage_class_name.clone(),
            resources: Some(VolumeResourceRequirements {
                requests: Some(storage_request),
                ..VolumeResourceRequirements::default()
            }),
            ..PersistentVolumeClaimSpec::default()
        }),
        ..PersistentVolumeClaim::default()
    };

    StatefulSet {
        metadata: meta(pkv, names.cluster.clone()),
        spec: Some(StatefulSetSpec {
            replicas: Some(replicas),
            service_name: Some(names.peers.clone()),
            pod_management_policy: Some("Parallel".into()),
            update_strategy: Some(StatefulSetUpdateStrategy {
                type_: Some("OnDelete".into()),
                rolling_update: None,
            }),
            persistent_volume_claim_retention_policy: Some(
                StatefulSetPersistentVolumeClaimRetentionPolicy {
                    // A removed member's data must not come back: a later
                    // scale-up joins with an empty volume. Hibernation
                    // scales to zero and must keep every volume.
                    when_scaled: Some(if spec.hibernation { "Retain" } else { "Delete" }.into()),
                    when_deleted: Some(
                        match spec.storage.reclaim_policy {
                            ReclaimPolicy::Retain => "Retain",
                            ReclaimPolicy::Delete => "Delete",
                        }
                        .into(),
                    ),
                },
            ),
            selector: LabelSelector {
                match_labels: Some(selector_labels(&name)),
                match_expressions: None,
            },
            volume_claim_templates: Some(vec![claim]),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec(pkv, defaults, &names)),
            },
            ..StatefulSetSpec::default()
        }),
        status: None,
    }
}

fn pod_spec(pkv: &PaxosKV, defaults: &Defaults, names: &Names) -> PodSpec {
    let spec = &pkv.spec;
    let sched = &spec.scheduling;
    PodSpec {
        service_account_name: Some(names.cluster.clone()),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        // Long enough for a master to hand over before it exits.
        termination_grace_period_seconds: Some(30),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS),
            run_as_group: Some(RUN_AS),
            fs_group: Some(RUN_AS),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..PodSecurityContext::default()
        }),
        affinity: Some(
            sched
                .affinity
                .clone()
                .unwrap_or_else(|| spread_over_nodes(&names.cluster)),
        ),
        node_selector: (!sched.node_selector.is_empty()).then(|| sched.node_selector.clone()),
        tolerations: (!sched.tolerations.is_empty()).then(|| sched.tolerations.clone()),
        topology_spread_constraints: (!sched.topology_spread_constraints.is_empty())
            .then(|| sched.topology_spread_constraints.clone()),
        priority_class_name: sched.priority_class_name.clone(),
        image_pull_secrets: (!spec.image_pull_secrets.is_empty())
            .then(|| spec.image_pull_secrets.clone()),
        init_containers: spec
            .bootstrap
            .as_ref()
            .and_then(|b| b.recovery.as_ref())
            .map(|r| vec![restore_container(pkv, defaults, names, r)]),
        containers: vec![container(pkv, defaults, names)],
        volumes: Some(volumes(pkv, names)),
        ..PodSpec::default()
    }
}

/// The token Secret, and with TLS the certificate Secret and the
/// revocation lists, if any (which the kubelet refreshes in place when
/// they change; the server reloads them). A revocation list Secret that
/// goes missing keeps pods from starting rather than running without the
/// lists they enforce (the controller gives pods a list only once it has
/// checked it).
fn volumes(pkv: &PaxosKV, names: &Names) -> Vec<Volume> {
    let secret = |volume: &str, secret: &str| Volume {
        name: volume.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.into()),
            default_mode: Some(0o400),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    };
    let mut volumes = vec![secret("token", &names.token)];
    if names.transport == Transport::Tls {
        volumes.push(secret("tls", &names.tls));
        if let Some(list) = &pkv.spec.tls.revocation_list {
            let mut crl = secret("crl", &list.name);
            if let Some(source) = crl.secret.as_mut() {
                source.items = Some(vec![KeyToPath {
                    key: list.key.clone(),
                    path: CRL_FILE.into(),
                    mode: None,
                }]);
            }
            volumes.push(crl);
        }
    }
    volumes
}

/// The revocation list that `set`'s pods mount (see [`volumes`]), if any.
pub fn mounted_revocation_list(set: &StatefulSet) -> Option<SecretKey> {
    let source = set
        .spec
        .as_ref()?
        .template
        .spec
        .as_ref()?
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == "crl")?
        .secret
        .as_ref()?;
    Some(SecretKey {
        name: source.secret_name.clone()?,
        key: source.items.as_ref()?.first()?.key.clone(),
    })
}

/// Without affinity rules in the spec, replicas prefer distinct nodes: a
/// node failure should cost one replica, not a quorum.
fn spread_over_nodes(name: &str) -> Affinity {
    Affinity {
        pod_anti_affinity: Some(PodAntiAffinity {
            preferred_during_scheduling_ignored_during_execution: Some(vec![
                WeightedPodAffinityTerm {
                    weight: 100,
                    pod_affinity_term: PodAffinityTerm {
                        label_selector: Some(LabelSelector {
                            match_labels: Some(selector_labels(name)),
                            match_expressions: None,
                        }),
                        topology_key: "kubernetes.io/hostname".into(),
                        ..PodAffinityTerm::default()
                    },
                },
            ]),
            required_during_scheduling_ignored_during_execution: None,
        }),
        ..Affinity::default()
    }
}

fn env(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.into(),
        value: Some(value.into()),
        value_from: None,
    }
}

fn container(pkv: &PaxosKV, defaults: &Defaults, names: &Names) -> Container {
    let spec = &pkv.spec;
    let ns = pkv.namespace().unwrap_or_default();
    let mut vars = vec![
        pod_name_env(),
        env("PHXKV_DATA_DIR", format!("{DATA_MOUNT}/data")),
        env("PHXKV_LISTEN", format!("0.0.0.0:{CLIENT_PORT}")),
        env("PHXKV_PEER_LISTEN", format!("0.0.0.0:{PEER_PORT}")),
        env("PHXKV_DISCOVERY", format!("dns:{}", names.peer_domain)),
        // Read when a pod starts on an empty volume: pods past this count
        // join instead of bootstrapping. A ConfigMap rather than a literal,
        // so lowering it on scale-down does not change the pod template.
        EnvVar {
            name: "PHXKV_REPLICAS".into(),
            value: None,
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: names.bootstrap.clone(),
                    key: BOOTSTRAP_KEY.into(),
                    optional: Some(false),
                }),
                ..EnvVarSource::default()
            }),
        },
        // From the ConfigMap written at creation, not from the spec: every
        // replica keeps the mode the cluster started with.
        EnvVar {
            name: "PHXKV_READ_MODE".into(),
            value: None,
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: names.bootstrap.clone(),
                    key: READ_MODE_KEY.into(),
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
        },
        env("PHXKV_CLUSTER_ID", format!("{}.{ns}", names.cluster)),
        env(
            "PHXKV_CLUSTER_TOKEN_FILE",
            format!("{TOKEN_MOUNT}/{TOKEN_KEY}"),
        ),
        env("PHXKV_AUTH", spec.auth.enabled.to_string()),
        env(
            "PHXKV_LOG_FORMAT",
            match spec.telemetry.log_format {
                LogFormatSpec::Json => "json",
                LogFormatSpec::Text => "text",
            },
        ),
    ];
    if let Some(lease) = &spec.lease {
        vars.push(env("PHXKV_LEASE", lease.clone()));
    }
    if let Some(v) = spec.limits.max_key_bytes {
        vars.push(env("PHXKV_MAX_KEY_BYTES", v.to_string()));
    }
    if let Some(v) = spec.limits.max_value_bytes {
        vars.push(env("PHXKV_MAX_VALUE_BYTES", v.to_string()));
    }
    if let Some(v) = spec.limits.max_txn_ops {
        vars.push(env("PHXKV_MAX_TXN_OPS", v.to_string()));
    }
    if let Some(v) = quota_bytes(spec) {
        vars.push(env("PHXKV_QUOTA_BYTES", v.to_string()));
    }
    if let Some(v) = spec.limits.disk_reserve_bytes {
        vars.push(env("PHXKV_DISK_RESERVE_BYTES", v.to_string()));
    }
    if let Some(v) = snapshot_every_bytes(spec) {
        vars.push(env("PHXKV_SNAPSHOT_EVERY_BYTES", v.to_string()));
    }
    if let Some(v) = &spec.limits.idle_timeout {
        vars.push(env("PHXKV_IDLE_TIMEOUT", v.clone()));
    }
    if let Some(v) = &spec.limits.body_timeout {
        vars.push(env("PHXKV_BODY_TIMEOUT", v.clone()));
    }
    if let Some(endpoint) = &spec.telemetry.otlp_endpoint {
        vars.push(env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.clone()));
    }
    let mut env_from = None;
    if let Some(backup) = &spec.backup {
        vars.push(env(
            "PHXKV_ARCHIVE_URL",
            backup.archive_url(&ns, &names.cluster),
        ));
        vars.extend(archive_env(&backup.destination));
        env_from = archive_env_from(&backup.destination, false);
    }

    let tls = names.transport == Transport::Tls;
    if tls {
        // One certificate for both ports, and the CA both to verify peers
        // (mutual TLS) and for the peers to verify this replica.
        // The peer port admits only certificates that carry the replicas'
        // common name: client certificates of the same CA (with
        // clientCertAuth, or any certificate of a shared cert-manager
        // issuer) name their holders, so they are refused there. An older
        // replica ignores the variable.
        vars.extend([
            env("PHXKV_TLS_CERT", format!("{TLS_MOUNT}/{TLS_CERT_KEY}")),
            env("PHXKV_TLS_KEY", format!("{TLS_MOUNT}/{TLS_KEY_KEY}")),
            env("PHXKV_TLS_CA", format!("{TLS_MOUNT}/{CA_CERT_KEY}")),
            env(
                "PHXKV_PEER_CERT_ALLOWED_CN",
                names.certificate_common_name(&ns),
            ),
        ]);
    }
    let crl = tls && spec.tls.revocation_list.is_some();
    if crl {
        vars.push(env("PHXKV_TLS_CRL", format!("{CRL_MOUNT}/{CRL_FILE}")));
    }
    // Client certificates of the same CA; the kubelet cannot present one,
    // so the probes go to a port that serves only them and the metrics.
    let client_certs = tls && spec.tls.client_cert_auth;
    if client_certs {
        vars.extend([
            env("PHXKV_CLIENT_CERT_AUTH", "true".to_string()),
            env("PHXKV_METRICS_LISTEN", format!("0.0.0.0:{METRICS_PORT}")),
        ]);
        if spec.tls.client_cert_identity {
            vars.push(env("PHXKV_CLIENT_CERT_IDENTITY", "true".to_string()));
        }
    }

    // The kubelet does not verify certificates of HTTPS probes.
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String(if client_certs { "metrics" } else { "client" }.into()),
            scheme: (tls && !client_certs).then(|| "HTTPS".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failures),
        ..Probe::default()
    };

    Container {
        name: "phxkv".into(),
        image: Some(image(pkv, defaults)),
        image_pull_policy: spec.image_pull_policy.map(|p| format!("{p:?}")),
        args: Some(vec!["serve".into()]),
        env: Some(vars),
        env_from,
        ports: Some(
            [
                Some(("client", CLIENT_PORT)),
                Some(("peer", PEER_PORT)),
                client_certs.then_some(("metrics", METRICS_PORT)),
            ]
            .into_iter()
            .flatten()
            .map(|(name, port)| ContainerPort {
                name: Some(name.into()),
                container_port: port,
                protocol: Some("TCP".into()),
                ..ContainerPort::default()
            })
            .collect(),
        ),
        // Ready = member of a cluster with a master, caught up.
        readiness_probe: Some(probe("/readyz", 5, 2)),
        // Alive = the process answers; generous, since a restart of a
        // replica that is merely catching up only slows it down.
        liveness_probe: Some(probe("/healthz", 10, 6)),
        // Started = the process answers at all. A replica replays its log
        // and snapshot before it listens, which takes minutes for a large
        // store: up to 10 minutes (60 x 10 s) before liveness counts, so
        // recovery is not killed and restarted in a loop.
        startup_probe: Some(probe("/healthz", 10, 60)),
        resources: spec.resources.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(
            [
                ("data", DATA_MOUNT, false),
                ("token", TOKEN_MOUNT, true),
                ("tls", TLS_MOUNT, true),
                ("crl", CRL_MOUNT, true),
            ]
            .into_iter()
            .filter(|(volume, ..)| match *volume {
                "tls" => tls,
                "crl" => crl,
                _ => true,
            })
            .map(|(volume, path, read_only)| VolumeMount {
                name: volume.into(),
                mount_path: path.into(),
                read_only: read_only.then_some(true),
                ..VolumeMount::default()
            })
            .collect(),
        ),
        ..Container::default()
    }
}

/// The S3 settings of an archive that are not in its Secret. Explicit
/// variables win over the Secret's (`env` over `envFrom`).
fn archive_env(archive: &ArchiveSpec) -> Vec<EnvVar> {
    let mut vars = Vec::new();
    if let Some(endpoint) = &archive.endpoint_url {
        vars.push(env("AWS_ENDPOINT_URL", endpoint.clone()));
    }
    if let Some(region) = &archive.region {
        vars.push(env("AWS_REGION", region.clone()));
    }
    vars
}

/// The archive's credentials Secret, as environment variables. `optional`
/// lets the pod start without it (the restore of a recovery, which stays in
/// the template after it is done, when the Secret is later deleted).
fn archive_env_from(archive: &ArchiveSpec, optional: bool) -> Option<Vec<EnvFromSource>> {
    archive.credentials_secret.as_ref().map(|secret| {
        vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: secret.name.clone(),
                optional: Some(optional),
            }),
            ..EnvFromSource::default()
        }]
    })
}

/// The arguments of the restore for `recovery`, run in every pod of the
/// template. `phxkv backup restore --only-member` makes it a no-op except
/// in the pod the bootstrap ConfigMap names (the first pod, and only while
/// the recovery runs); `--if-empty` makes a restart of the restored pod's
/// init container harmless. The pod's name and the restoring member come
/// from the container's environment (`$(VAR)` is expanded by the kubelet).
pub fn restore_args(pkv: &PaxosKV, names: &Names, recovery: &RecoverySpec) -> Vec<String> {
    let ns = pkv.namespace().unwrap_or_default();
    let mut args: Vec<String> = vec![
        "backup".into(),
        "restore".into(),
        "--from-archive".into(),
        recovery.source.url.clone(),
    ];
    if let Some(revision) = recovery.target_revision {
        args.extend(["--target-revision".into(), revision.to_string()]);
    } else if let Some(time) = &recovery.target_time {
        // One argument: a bare time would read as a YAML timestamp, not
        // a string, where the rendered objects are printed as YAML.
        args.push(format!("--target-time={time}"));
    }
    args.extend([
        "--data-dir".into(),
        format!("{DATA_MOUNT}/data"),
        "--name".into(),
        "$(PHXKV_ID)".into(),
        "--cluster-id".into(),
        format!("{}.{ns}", names.cluster),
        "--initial-members".into(),
        format!("$(PHXKV_ID)={}", names.peer_url("$(PHXKV_ID)")),
        "--if-empty".into(),
        "--only-member=$(PHXKV_RESTORE_MEMBER)".into(),
    ]);
    args
}

/// The init container that restores the first pod of a recovered cluster
/// from its archive before the server starts on the volume.
fn restore_container(
    pkv: &PaxosKV,
    defaults: &Defaults,
    names: &Names,
    recovery: &RecoverySpec,
) -> Container {
    let mut vars = vec![
        pod_name_env(),
        EnvVar {
            name: "PHXKV_RESTORE_MEMBER".into(),
            value: None,
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: names.bootstrap.clone(),
                    key: RESTORE_MEMBER_KEY.into(),
                    optional: Some(true),
                }),
                ..EnvVarSource::default()
            }),
        },
        env(
            "PHXKV_LOG_FORMAT",
            match pkv.spec.telemetry.log_format {
                LogFormatSpec::Json => "json",
                LogFormatSpec::Text => "text",
            },
        ),
    ];
    vars.extend(archive_env(&recovery.source));
    Container {
        name: "restore".into(),
        // Its last lines (the CLI's one-line error) become the
        // termination message the operator reports when it fails.
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        image: Some(image(pkv, defaults)),
        image_pull_policy: pkv.spec.image_pull_policy.map(|p| format!("{p:?}")),
        args: Some(restore_args(pkv, names, recovery)),
        env: Some(vars),
        env_from: archive_env_from(&recovery.source, true),
        resources: pkv.spec.resources.clone(),
        security_context: Some(container_security()),
        volume_mounts: Some(vec![VolumeMount {
            name: "data".into(),
            mount_path: DATA_MOUNT.into(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    }
}

fn container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            add: None,
        }),
        ..SecurityContext::default()
    }
}

/// `PHXKV_ID`: the pod's name, from the downward API.
fn pod_name_env() -> EnvVar {
    EnvVar {
        name: "PHXKV_ID".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: "metadata.name".into(),
                api_version: None,
            }),
            ..EnvVarSource::default()
        }),
    }
}

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        target_port: Some(IntOrString::String(name.into())),
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

/// The headless Service that gives each pod a stable DNS name. It lists
/// pods before they are ready: peers must reach each other to elect a
/// master, and the operator must reach a pod to add it.
pub fn peer_service(pkv: &PaxosKV) -> Service {
    let name = pkv.name_any();
    let names = Names::of(&name);
    let mut metadata = meta(pkv, names.peers);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(SERVICE_LABEL.into(), "peers".into());
    }
    Service {
        metadata,
        spec: Some(K8sServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![port("peer", PEER_PORT), port("client", CLIENT_PORT)]),
            ..K8sServiceSpec::default()
        }),
        status: None,
    }
}

/// The Service clients use; only ready pods receive requests.
pub fn client_service(pkv: &PaxosKV) -> Service {
    let name = pkv.name_any();
    let mut metadata = meta(pkv, name.clone());
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(SERVICE_LABEL.into(), "client".into());
    }
    if !pkv.spec.service.annotations.is_empty() {
        metadata.annotations = Some(pkv.spec.service.annotations.clone());
    }
    Service {
        metadata,
        spec: Some(K8sServiceSpec {
            type_: Some(pkv.spec.service.type_.as_str().into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![ServicePort {
                name: Some("client".into()),
                port: pkv.spec.service.port,
                target_port: Some(IntOrString::String("client".into())),
                protocol: Some("TCP".into()),
                ..ServicePort::default()
            }]),
            ..K8sServiceSpec::default()
        }),
        status: None,
    }
}

/// Whether the cluster has a [`metrics_service`]: with
/// `spec.tls.clientCertAuth` only.
pub fn wants_metrics_service(pkv: &PaxosKV) -> bool {
    pkv.spec.tls.enabled && pkv.spec.tls.client_cert_auth
}

/// The Service scrapers use when the client port wants client
/// certificates (`spec.tls.clientCertAuth`): the pods' plain HTTP
/// `metrics` port, which serves only the probes and `/metrics`. Always a
/// ClusterIP Service, whatever `spec.service.type` is, so that port is
/// never published outside the Kubernetes cluster; only ready pods, like
/// the client Service. Made only with `clientCertAuth`; turning that off
/// leaves it, without endpoints (the pods no longer have the port).
pub fn metrics_service(pkv: &PaxosKV) -> Service {
    let name = pkv.name_any();
    let mut metadata = meta(pkv, Names::of(&name).metrics);
    if let Some(labels) = metadata.labels.as_mut() {
        labels.insert(SERVICE_LABEL.into(), "metrics".into());
    }
    Service {
        metadata,
        spec: Some(K8sServiceSpec {
            type_: Some("ClusterIP".into()),
            selector: Some(selector_labels(&name)),
            ports: Some(vec![port("metrics", METRICS_PORT)]),
            ..K8sServiceSpec::default()
        }),
        status: None,
    }
}

/// A budget that lets voluntary disruptions (drains) take at most a
/// minority of the voters: `(voters - 1) / 2` pods. Quorum is a majority of
/// the voters, not of `spec.replicas`: while scaling, learners are pods but
/// not voters, and voters about to be removed still count. So `voters` is
/// the smaller of the voters the status last reported and `spec.replicas`
/// (the spec alone before any member is known). A single voter has no
/// quorum a drain could keep; a budget of zero would only block every
/// drain of its node forever, so it may go (the store is down until the
/// pod is back).
pub fn disruption_budget(pkv: &PaxosKV) -> PodDisruptionBudget {
    let name = pkv.name_any();
    let known = pkv
        .status
        .as_ref()
        .map(|s| s.members.iter().filter(|m| m.role == "voter").count())
        .and_then(|n| i32::try_from(n).ok())
        .filter(|n| *n > 0);
    let voters = known
        .map_or(pkv.spec.replicas, |v| v.min(pkv.spec.replicas))
        .max(1);
    let tolerable = if voters == 1 { 1 } else { (voters - 1) / 2 };
    PodDisruptionBudget {
        metadata: meta(pkv, name.clone()),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(tolerable)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(&name)),
                match_expressions: None,
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        status: None,
    }
}

/// The label of the operator's pods when it is not told theirs (see
/// [`OperatorPods`]).
pub const OPERATOR_POD_LABEL: (&str, &str) = ("app.kubernetes.io/name", "phxkv-operator");

/// The cluster's NetworkPolicy (see [`crate::crd::NetworkPolicySpec`]).
/// Pod ports, not Service ports: policies apply at the pod.
pub fn network_policy(pkv: &PaxosKV, operator: &OperatorPods) -> NetworkPolicy {
    let name = pkv.name_any();
    let pods = || LabelSelector {
        match_labels: Some(selector_labels(&name)),
        match_expressions: None,
    };
    let tcp = |port: i32| NetworkPolicyPort {
        port: Some(IntOrString::Int(port)),
        protocol: Some("TCP".into()),
        end_port: None,
    };
    let spec = &pkv.spec.network_policy;
    let client_from = if spec.client_from.is_empty() {
        None
    } else {
        // Its own namespace only, when known: pods elsewhere that copy
        // its labels are not the operator.
        let operator = NetworkPolicyPeer {
            namespace_selector: Some(LabelSelector {
                match_labels: operator.namespace.as_ref().map(|ns| {
                    BTreeMap::from([("kubernetes.io/metadata.name".to_string(), ns.clone())])
                }),
                match_expressions: None,
            }),
            pod_selector: Some(LabelSelector {
                match_labels: Some(operator.labels.clone()),
                match_expressions: None,
            }),
            ip_block: None,
        };
        Some(
            std::iter::once(operator)
                .chain(spec.client_from.iter().cloned())
                .collect(),
        )
    };
    NetworkPolicy {
        metadata: meta(pkv, name.clone()),
        spec: Some(K8sNetworkPolicySpec {
            pod_selector: Some(pods()),
            policy_types: Some(vec!["Ingress".into()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    ports: Some(vec![tcp(PEER_PORT)]),
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(pods()),
                        ..NetworkPolicyPeer::default()
                    }]),
                },
                // The metrics port, when there is one, to whoever may
                // reach the client port: scrapers do.
                NetworkPolicyIngressRule {
                    ports: Some(
                        std::iter::once(tcp(CLIENT_PORT))
                            .chain(wants_metrics_service(pkv).then(|| tcp(METRICS_PORT)))
                            .collect(),
                    ),
                    from: client_from,
                },
            ]),
            egress: None,
        }),
    }
}

/// The replicas' ServiceAccount: they never call the Kubernetes API, so it
/// has no roles and no mounted token.
pub fn service_account(pkv: &PaxosKV) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(pkv, pkv.name_any()),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// What a cluster was created with, as its bootstrap ConfigMap records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bootstrap {
    /// Pods below this ordinal bootstrap together when they start on an
    /// empty volume; the others join.
    pub replicas: i32,
    /// The read mode, fixed at creation.
    pub read_mode: ReadModeSpec,
    /// Whether the cluster was created with TLS; `None` for a cluster
    /// created before TLS existed (plain HTTP, whatever the spec says).
    pub tls: Option<bool>,
    /// The recovery it was created with, if any.
    pub recovery: Option<RecoveryRecord>,
}

/// A recovery as the bootstrap ConfigMap records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecoveryRecord {
    /// The archive.
    pub source: String,
    /// The target, in words.
    pub target: String,
    /// The pod that restores: the first one while the recovery runs, empty
    /// once the restored replica runs.
    pub restore_member: String,
}

impl Bootstrap {
    /// What a new cluster records: its size and read mode, or, recovered
    /// from an archive, one replica (the first pod restores and starts
    /// alone; the others join and are added as when scaling up).
    pub fn initial(pkv: &PaxosKV) -> Bootstrap {
        let recovery = pkv
            .spec
            .bootstrap
            .as_ref()
            .and_then(|b| b.recovery.as_ref())
            .map(|r| RecoveryRecord {
                source: r.source.url.clone(),
                target: r.target(),
                restore_member: Names::of(&pkv.name_any()).pod(0),
            });
        Bootstrap {
            replicas: if recovery.is_some() {
                1
            } else {
                pkv.spec.replicas
            },
            read_mode: pkv.spec.read_mode.unwrap_or_default(),
            tls: Some(pkv.spec.tls.enabled),
            recovery,
        }
    }

    /// How the replicas talk: as recorded at creation.
    pub fn transport(&self) -> Transport {
        if self.tls == Some(true) {
            Transport::Tls
        } else {
            Transport::Plain
        }
    }

    /// Reads a bootstrap ConfigMap's data; a missing size is `replicas`
    /// (the spec's), a missing read mode `lease`.
    pub fn from_data(data: &BTreeMap<String, String>, replicas: i32) -> Bootstrap {
        Bootstrap {
            replicas: data
                .get(BOOTSTRAP_KEY)
                .and_then(|v| v.parse::<i32>().ok())
                .unwrap_or(replicas),
            read_mode: match data.get(READ_MODE_KEY).map(String::as_str) {
                Some("quorum") => ReadModeSpec::Quorum,
                _ => ReadModeSpec::Lease,
            },
            tls: data.get(TLS_RECORD_KEY).map(|v| v == "true"),
            recovery: data.get(RECOVERY_SOURCE_KEY).map(|source| RecoveryRecord {
                source: source.clone(),
                target: data.get(RECOVERY_TARGET_KEY).cloned().unwrap_or_default(),
                restore_member: data.get(RESTORE_MEMBER_KEY).cloned().unwrap_or_default(),
            }),
        }
    }
}

/// The bootstrap ConfigMap: how many pods form the cluster when it is
/// first created, its read mode, and the recovery it was created with.
pub fn bootstrap_config(pkv: &PaxosKV, bootstrap: &Bootstrap) -> ConfigMap {
    let mut data = BTreeMap::from([
        (BOOTSTRAP_KEY.to_string(), bootstrap.replicas.to_string()),
        (
            READ_MODE_KEY.to_string(),
            bootstrap.read_mode.name().to_string(),
        ),
    ]);
    if let Some(tls) = bootstrap.tls {
        data.insert(TLS_RECORD_KEY.into(), tls.to_string());
    }
    if let Some(r) = &bootstrap.recovery {
        data.insert(RECOVERY_SOURCE_KEY.into(), r.source.clone());
        data.insert(RECOVERY_TARGET_KEY.into(), r.target.clone());
        data.insert(RESTORE_MEMBER_KEY.into(), r.restore_member.clone());
    }
    ConfigMap {
        metadata: meta(pkv, Names::of(&pkv.name_any()).bootstrap),
        data: Some(data),
        ..ConfigMap::default()
    }
}

/// The Secret holding the cluster token. Created once and never updated.
pub fn token_secret(pkv: &PaxosKV, token: &str) -> Secret {
    Secret {
        metadata: meta(pkv, Names::of(&pkv.name_any()).token),
        type_: Some("Opaque".into()),
        data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            ByteString(token.as_bytes().to_vec()),
        )])),
        ..Secret::default()
    }
}

/// A fresh cluster token: 32 random bytes, hex.
pub fn generate_token() -> String {
    use rand::{RngCore, SeedableRng};
    let mut bytes = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The store quota for the replicas: `spec.limits.quotaBytes`, else a
/// quarter of the memory limit (the store lives in memory, and a replica
/// needs room beyond its data for snapshots, a catch-up and requests),
/// else none, leaving the server's default.
fn quota_bytes(spec: &crate::crd::PaxosKVSpec) -> Option<u64> {
    spec.limits.quota_bytes.or_else(|| {
        let limit = spec.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        Some(crate::crd::quantity_bytes(&limit.0)? / 4)
    })
}

/// When the replicas compact their log by size: `spec.limits.snapshotEveryBytes`,
/// else an eighth of the memory limit within 1 MiB and the server's
/// default (the log since the last snapshot is held in memory beside the
/// store, which may take a quarter), else none, leaving that default.
fn snapshot_every_bytes(spec: &crate::crd::PaxosKVSpec) -> Option<u64> {
    use phxkv::cli::serve::{DEFAULT_SNAPSHOT_EVERY_BYTES, SNAPSHOT_EVERY_BYTES};
    spec.limits.snapshot_every_bytes.or_else(|| {
        let limit = spec.resources.as_ref()?.limits.as_ref()?.get("memory")?;
        let eighth = crate::crd::quantity_bytes(&limit.0)? / 8;
        (eighth < DEFAULT_SNAPSHOT_EVERY_BYTES).then(|| eighth.max(*SNAPSHOT_EVERY_BYTES.start()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::PaxosKVSpec;

    pub(crate) fn sample(spec: PaxosKVSpec) -> PaxosKV {
        let mut pkv = PaxosKV::new("kv", spec);
        pkv.metadata.namespace = Some("db".into());
        pkv.metadata.uid = Some("1111-2222".into());
        pkv
    }

    fn defaults() -> Defaults {
        Defaults {
            image: "ghcr.io/phxkv/phxkv:0.1.0".into(),
            operator_pods: OperatorPods::default(),
        }
    }

    fn env_of(sts: &StatefulSet) -> BTreeMap<String, EnvVar> {
        sts.spec
            .as_ref()
            .expect("spec")
            .template
            .spec
            .as_ref()
            .expect("pod")
            .containers[0]
            .env
            .clone()
            .expect("env")
            .into_iter()
            .map(|e| (e.name.clone(), e))
            .collect()
    }

    #[test]
    fn statefulset_runs_non_root_read_only_with_probes_and_owner() {
        let pkv = sample(PaxosKVSpec::default());
        let sts = statefulset(&pkv, &defaults(), 3, Transport::Plain);
        let spec = sts.spec.as_ref().expect("spec");
        assert_eq!(spec.replicas, Some(3));
        assert_eq!(spec.pod_management_policy.as_deref(), Some("Parallel"));
        assert_eq!(
            spec.update_strategy
                .as_ref()
                .and_then(|u| u.type_.as_deref()),
            Some("OnDelete")
        );
        assert_eq!(spec.service_name.as_deref(), Some("kv-peers"));
        let pod = spec.template.spec.as_ref().expect("pod");
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some("ghcr.io/phxkv/phxkv:0.1.0"));
        let sc = c.security_context.as_ref().expect("security context");
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            c.readiness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.as_deref()),
            Some("/readyz")
        );
        assert_eq!(
            c.liveness_probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.path.as_deref()),
            Some("/healthz")
        );
        let owner = &sts.metadata.owner_references.as_ref().expect("owner")[0];
        assert_eq!(owner.kind, "PaxosKV");
        assert_eq!(owner.controller, Some(true));
        let env = env_of(&sts);
        assert_eq!(
            env["PHXKV_DISCOVERY"].value.as_deref(),
            Some("dns:kv-peers")
        );
        assert_eq!(env["PHXKV_CLUSTER_ID"].value.as_deref(), Some("kv.db"));
        // Auth is on unless the spec turns it off.
        assert_eq!(env["PHXKV_AUTH"].value.as_deref(), Some("true"));
        assert!(env["PHXKV_REPLICAS"].value_from.is_some());
        assert!(
            !env.contains_key("PHXKV_LEASE"),
            "server default unless set"
        );
    }

    #[test]
    fn a_tls_cluster_mounts_its_certificate_probes_https_and_names_peers_by_namespace() {
        let pkv: PaxosKV = serde_json::from_value(serde_json::json!({
            "apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV",
            "metadata": {"name": "kv", "namespace": "db", "uid": "u"},
            "spec": {"bootstrap": {"recovery": {"source": {"url": "s3://bucket/x"}}}}
        }))
        .expect("pkv");
        let bootstrap = Bootstrap::initial(&pkv);
        assert_eq!(bootstrap.transport(), Transport::Tls, "on by default");
        let sts = statefulset(&pkv, &defaults(), 3, bootstrap.transport());
        let env = env_of(&sts);
        assert_eq!(
            env["PHXKV_DISCOVERY"].value.as_deref(),
            Some("dns:kv-peers.db"),
            "peer URLs under the certificate's *.kv-peers.db"
        );
        assert_eq!(
            env["PHXKV_TLS_CERT"].value.as_deref(),
            Some("/etc/phxkv/tls/tls.crt")
        );
        assert_eq!(
            env["PHXKV_TLS_KEY"].value.as_deref(),
            Some("/etc/phxkv/tls/tls.key")
        );
        assert_eq!(
            env["PHXKV_TLS_CA"].value.as_deref(),
            Some("/etc/phxkv/tls/ca.crt")
        );
        // Only the replicas' own certificate gets through the peer port.
        assert_eq!(
            env["PHXKV_PEER_CERT_ALLOWED_CN"].value.as_deref(),
            Some("kv.db")
        );
        let pod = sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        let volume = secret_volume(pod, "tls").expect("the certificate Secret is mounted");
        assert_eq!(volume.secret_name.as_deref(), Some("kv-tls"));
        let c = &pod.containers[0];
        assert!(
            c.volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "tls" && m.mount_path == TLS_MOUNT && m.read_only == Some(true))
        );
        for probe in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe] {
            let scheme = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .and_then(|h| h.scheme.as_deref());
            assert_eq!(scheme, Some("HTTPS"));
        }
        // The restored member records the same peer URL as discovery.
        let init = &pod.init_containers.as_ref().expect("restore")[0];
        let args = init.args.clone().expect("args");
        assert!(
            args.contains(&"$(PHXKV_ID)=https://$(PHXKV_ID).kv-peers.db:8081".to_string()),
            "{args:?}"
        );

        // Plain: as clusters always were.
        let plain = statefulset(&pkv, &defaults(), 3, Transport::Plain);
        let env = env_of(&plain);
        assert_eq!(
            env["PHXKV_DISCOVERY"].value.as_deref(),
            Some("dns:kv-peers")
        );
        assert!(!env.contains_key("PHXKV_TLS_CERT"));
        assert!(!env.contains_key("PHXKV_PEER_CERT_ALLOWED_CN"));
        let pod = plain
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod");
        assert!(pod.volumes.iter().flatten().all(|v| v.name != "tls"));
    }

    /// The Secret source of the pod's volume `name`, if it has one.
    fn secret_volume<'a>(pod: &'a PodSpec, name: &str) -> Option<&'a SecretVolumeSource> {
        pod.volumes
            .iter()
            .flatten()
            .find(|v| v.name == name)
            .and_then(|v| v.secret.as_ref())
    }

    #[test]
    fn a_revocation_list_is_mounted_from_its_secret_key_and_given_as_the_crl_file() {
        let pkv = |list: Option<serde_json::Value>| -> PaxosKV {
            let mut tls = serde_json::json!({});
            if let Some(list) = list {
                tls["revocationList"] = list;
            }
            serde_json::from_value(serde_json::json!({
                "apiVersion": "phxkv.io/v1alpha1", "kind": "PaxosKV",
                "metadata": {"name": "kv", "namespace": "db", "uid": "u"},
                "spec": {"tls": tls}
            }))
            .expect("pkv")
        };
        let pod_of = |sts: &StatefulSet| {
            sts.spec
                .as_ref()
                .and_then(|s| s.template.spec.clone())
                .expect("pod")
        };
        let with = pkv(Some(
            serde_json::json!({"name": "kv-crl", "key": "corp.crl"}),
        ));
        let sts = statefulset(&with, &defaults(), 3, Transport::Tls);
        assert_eq!(
            env_of(&sts)["PHXKV_TLS_CRL"].value.as_deref(),
            Some("/etc/phxkv/crl/ca.crl")
        );
        let pod = pod_of(&sts);
        let source = secret_volume(&pod, "crl")
            .cloned()
            .expect("the revocation list Secret is mounted");
        assert_eq!(source.secret_name.as_deref(), Some("kv-crl"));
        // Not optional: a pod never runs without the lists it must enforce.
        assert_eq!(source.optional, None);
        let items = source.items.expect("one key");
        assert_eq!(
            (items[0].key.as_str(), items[0].path.as_str()),
            ("corp.crl", CRL_FILE)
        );
        assert!(
            pod.containers[0]
                .volume_mounts
                .iter()
                .flatten()
                .any(|m| m.name == "crl" && m.mount_path == CRL_MOUNT && m.read_only == Some(true))
        );
        // The key defaults to ca.crl.
        let default_key = pkv(Some(serde_json::json!({"name": "kv-crl"})));
        let sts = statefulset(&default_key, &defaults(), 3, Transport::Tls);
        let pod = pod_of(&sts);
        let items = secret_volume(&pod, "crl")
            .and_then(|s| s.items.clone())
            .expect("one key");
        assert_eq!(items[0].key, "ca.crl");
        // Without a list, or on a plain cluster: nothing of it.
        for sts in [
            statefulset(&pkv(None), &defaults(), 3, Transport::Tls),
            statefulset(&with, &defaults(), 3, Transport::Plain),
        ] {
            assert!(!env_of(&sts).contains_key("PHXKV_TLS_CRL"));
            let pod = pod_of(&sts);
            assert!(pod.volumes.iter().flatten().all(|v| v.name != "crl"));
            assert!(
                pod.containers[0]
                    .volume_mounts
                    .iter()
                    .flatten()
                    .all(|m| m.name != "crl")
            );
        }
    }

    #[test]
    fn client_cert_auth_asks_clients_for_certificates_and_moves_probes_to_the_metrics_port() {
        let mut spec = PaxosKVSpec {
            replicas: 3,
            ..PaxosKVSpec::default()
        };
        spec.tls.client_cert_auth = true;
        spec.tls.client_cert_identity = true;
        let pkv = sample(spec);
        assert_eq!(pkv.spec.problems("kv"), Vec::<String>::new());
        let sts = statefulset(&pkv, &defaults(), 3, Transport::Tls);
        let env = env_of(&sts);
        for (name, value) in [
            ("PHXKV_CLIENT_CERT_AUTH", "true"),
            ("PHXKV_CLIENT_CERT_IDENTITY", "true"),
            ("PHXKV_METRICS_LISTEN", "0.0.0.0:8082"),
        ] {
            assert_eq!(env[name].value.as_deref(), Some(value), "{name}");
        }
        let c = &sts
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .expect("pod")
            .containers[0];
        let ports: Vec<_> = c
            .ports
            .iter()
            .flatten()
            .map(|p| (p.name.as_deref().unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [("client", 8080), ("peer", 8081), ("metrics", METRICS_PORT)]
        );
        // The kubelet presents no certificate: plain HTTP on the port that
        // serves only the probes and metrics.
        for probe in [&c.readiness_probe, &c.liveness_probe, &c.startup_probe] {
            let get = probe
                .as_ref()
                .and_then(|p| p.http_get.as_ref())
                .expect("an HTTP probe");
            assert_eq!(get.port, IntOrString::String("metrics".into()));
            assert_eq!(get.scheme, None, "HTTP");
        }
        assert!(wants_metrics_service(&pkv));
        // Scrapers reach that port through a Service of its own, never
        // published outside the Kubernetes cluster, whatever the client
        // Service's type.
        let mut exposed = pkv.clone();
        exposed.spec.service.type_ = crate::crd::ServiceType::LoadBalancer;
        let client = client_service(&exposed)
            .spec
            .and_then(|s| s.ports)
            .expect("ports");
        assert_eq!(client.len(), 1, "the client port only: {client:?}");
        let metrics = metrics_service(&exposed);
        assert_eq!(metrics.metadata.name.as_deref(), Some("kv-metrics"));
        let spec = metrics.spec.expect("spec");
        assert_eq!(spec.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(spec.selector, Some(selector_labels("kv")));
        let ports: Vec<_> = spec
            .ports
            .into_iter()
            .flatten()
            .map(|p| (p.name.unwrap_or_default(), p.port, p.target_port))
            .collect();
        assert_eq!(
            ports,
            [(
                "metrics".to_string(),
                METRICS_PORT,
                Some(IntOrString::String("metrics".into()))
            )]
        );
        let rules = network_policy(&pkv, &OperatorPods::default())
            .spec
            .and_then(|s| s.ingress)
            .expect("rules");
        let client_rule: Vec<_> = rules[1]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port.clone())
            .collect();
        assert_eq!(
            client_rule,
            [IntOrString::Int(8080), IntOrString::Int(METRICS_PORT)]
        );

        // Without it, none of that: no metrics port anywhere.
        let off = sample(PaxosKVSpec::default());
        assert!(!wants_metrics_service(&off));
        let env = env_of(&statefulset(&off, &defaults(), 3, Transport::Tls));
        for name in [
            "PHXKV_CLIENT_CERT_AUTH",
            "PHXKV_CLIENT_CERT_IDENTITY",
            "PHXKV_METRICS_LISTEN",
        ] {
            assert!(!env.contains_key(name), "{name}");
        }
        let rules = network_policy(&off, &OperatorPods::default())
            .spec
            .and_then(|s| s.ingress)
            .expect("rules");
        assert_eq!(
            rules[1].ports.as_ref().map(Vec::len),
            Some(1),
            "the client port only"
        );
        // A plain cluster (made before TLS existed) never gets the flag.
        let env = env_of(&statefulset(&pkv, &defaults(), 3, Transport::Plain));
        assert!(!env.contains_key("PHXKV_CLIENT_CERT_AUTH"));
    }

    #[test]
    fn client_cert_settings_that_cannot_work_are_refused() {
        let problems = |f: fn(&mut PaxosKVSpec)| {
            let mut spec = PaxosKVSpec {
                replicas: 3,
                ..PaxosKVSpec::default()
            };
            f(&mut spec);
            spec.problems("kv").join("; ")
        };
        let p = problems(|s| {
            s.tls.enabled = false;
            s.tls.client_cert_auth = true;
        });
        assert!(p.contains("clientCertAuth needs spec.tls.enabled"), "{p}");
        let p = problems(|s| {
            s.tls.enabled = false;
            s.tls.revocation_list = Some(crate::crd::SecretKey {
                name: "kv-crl".into(),
                key: "ca.crl".into(),
            });
        });
        assert!(p.contains("revocationList needs spec.tls.enabled"), "{p}");
        let p = problems(|s| s.tls.client_cert_identity = true);
        assert!(p.contains("clientCertIdentity needs"), "{p}");
        let p = problems(|s| {
            s.tls.client_cert_auth = true;
            s.tls.client_cert_identity = true;
            s.auth.enabled = false;
        });
        assert!(p.contains("clientCertIdentity needs"), "{p}");
        let p = problems(|s| {
            s.tls.client_cert_auth = true;
            s.service.port = METRICS_PORT;
        });
        assert!(p.contains("the metrics port"), "{p}");
        assert_eq!(problems(|s| s.service.port = METRICS_PORT), "");
    }

    #[test]
    fn the_bootstrap_record_keeps_tls_and_an_old_record_means_plain() {
        let pkv = sample(PaxosKVSpec::default());
        let initial = Bootstrap::initial(&pkv);
        let cm = bootstrap_config(&pkv, &initial);
        let data = cm.data.expect("data");
        assert_eq!(data.get(TLS_RECORD_KEY).map(String::as_str), Some("true"));
        assert_eq!(Bootstrap::from_data(&data, 3), initial);
        let old = BTreeMap::from([(BOOTSTRAP_KEY.to_string(), "3".to_string())]);
        let legacy = Bootstrap::from_data(&old, 3);
        assert_eq!(legacy.tls, None);
        assert_eq!(legacy.transport(), Transport::Plain);
    }

    #[test]
    fn the_network_policy_closes_the_peer_port_to_all_but_the_clusters_pods() {
        let open = network_policy(&sample(PaxosKVSpec::default()), &OperatorPods::default());
        let spec = open.spec.as_ref().expect("spec");
        let own = Some(LabelSelector {
            match_labels: Some(selector_labels("kv")),
            match_expressions: None,
        });
        assert_eq!(spec.pod_selector, own);
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_string()]));
        let rules = spec.ingress.as_ref().expect("rules");
        let port_of =
            |r: &NetworkPolicyIngressRule| r.ports.as_ref().expect("ports")[0].port.clone();
        assert_eq!(port_of(&rules[0]), Some(IntOrString::Int(PEER_PORT)));
        let from = rules[0].from.as_ref().expect("peers");
        assert_eq!(from.len(), 1);
        assert_eq!(from[0].pod_selector, own);
        assert!(from[0].namespace_selector.is_none(), "this namespace only");
        assert_eq!(port_of(&rules[1]), Some(IntOrString::Int(CLIENT_PORT)));
        assert!(
            rules[1].from.is_none(),
            "the client port is open by default"
        );

        let restricted: PaxosKVSpec = serde_json::from_value(serde_json::json!({
            "networkPolicy": {"clientFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "apps"}}}
            ]}
        }))
        .expect("spec");
        let np = network_policy(&sample(restricted.clone()), &OperatorPods::default());
        let rules = np
            .spec
            .as_ref()
            .and_then(|s| s.ingress.clone())
            .expect("rules");
        let from = rules[1].from.as_ref().expect("restricted");
        assert_eq!(from.len(), 2, "the operator, then the listed peers");
        let operator = from[0]
            .pod_selector
            .as_ref()
            .and_then(|p| p.match_labels.clone());
        assert_eq!(
            operator.and_then(|l| l.get(OPERATOR_POD_LABEL.0).cloned()),
            Some(OPERATOR_POD_LABEL.1.to_string())
        );

        // Told who it is (as the chart tells it), the operator lets in its
        // own pods, in its own namespace only.
        let told = OperatorPods {
            namespace: Some("ops".into()),
            labels: OperatorPods::parse_labels(
                "app.kubernetes.io/name=kv-operator,app.kubernetes.io/instance=kv",
            )
            .expect("labels"),
        };
        let np = network_policy(&sample(restricted), &told);
        let rules = np.spec.and_then(|s| s.ingress).expect("rules");
        let operator = &rules[1].from.as_ref().expect("restricted")[0];
        assert_eq!(
            operator
                .namespace_selector
                .as_ref()
                .and_then(|n| n.match_labels.clone()),
            Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "ops".to_string()
            )]))
        );
        assert_eq!(
            operator
                .pod_selector
                .as_ref()
                .and_then(|p| p.match_labels.clone()),
            Some(told.labels.clone())
        );
    }

    #[test]
    fn operator_pod_labels_are_parsed_or_refused() {
        assert_eq!(
            OperatorPods::parse_labels(" a=b , c=d ").expect("labels"),
            BTreeMap::from([("a".into(), "b".into()), ("c".into(), "d".into())])
        );
        for bad in ["", "a", "=b", " , "] {
            assert!(OperatorPods::parse_labels(bad).is_err(), "{bad:?}");
        }
    }

    /// The value of the environment variable `name` of the replicas of a
    /// cluster with `spec` (JSON), if it is set.
    fn replica_env(spec: serde_json::Value, name: &str) -> Option<String> {
        let spec: PaxosKVSpec = serde_json::from_value(spec).expect("spec");
        let sts = statefulset(&sample(spec), &defaults(), 3, Transport::Plain);
        env_of(&sts).get(name).and_then(|v| v.value.clone())
    }

    #[test]
    fn the_store_quota_follows_the_memory_limit_unless_given() {
        let quota = |spec| replica_env(spec, "PHXKV_QUOTA_BYTES");
        let memory = |limit: &str| serde_json::json!({"resources": {"limits": {"memory": limit}}});
        assert_eq!(quota(memory("512Mi")).as_deref(), Some("134217728"));
        assert_eq!(quota(memory("2G")).as_deref(), Some("500000000"));
        assert_eq!(quota(memory("1.5Gi")).as_deref(), Some("402653184"));
        // Given, it wins; without either, the server's default applies.
        let mut given = memory("512Mi");
        given["limits"] = serde_json::json!({"quotaBytes": 0});
        assert_eq!(quota(given).as_deref(), Some("0"));
        assert_eq!(quota(serde_json::json!({})), None);
        // A limit this operator cannot read leaves the server's default.
        assert_eq!(quota(memory("1e9")), None);
    }

    #[test]
    fn the_disk_reserve_is_passed_on_only_when_given() {
        let reserve = |spec| replica_env(spec, "PHXKV_DISK_RESERVE_BYTES");
        let given = serde_json::json!({"limits": {"diskReserveBytes": 104857600}});
        assert_eq!(reserve(given).as_deref(), Some("104857600"));
        assert_eq!(reserve(serde_json::json!({})), None);
    }

    #[test]
    fn the_log_compacts_by_size_within_the_memory_limit_unless_given() {
        let every = |spec| replica_env(spec, "PHXKV_SNAPSHOT_EVERY_BYTES");
        let memory = |limit: &str| serde_json::json!({"resources": {"limits": {"memory": limit}}});
        // An eighth of the limit while that is below the server's default.
        assert_eq!(every(memory("256Mi")).as_deref(), Some("33554432"));
        assert_eq!(
            every(memory("8M")).as_deref(),
            Some("1048576"),
            "at least 1 MiB"
        );
        assert_eq!(every(memory("512Mi")), None, "an eighth is the default");
        assert_eq!(every(memory("4Gi")), None, "never above the default");
        let mut given = memory("256Mi");
        given["limits"] = serde_json::json!({"snapshotEveryBytes": 268435456u64});
        assert_eq!(every(given).as_deref(), Some("268435456"));
        assert_eq!(every(serde_json::json!({})), None);
    }

    /// Every `PHXKV_*` variable the replica container gets names a flag of
    /// `phxkv serve`, and its value parses as that flag's: a renamed flag
    /// or a value the server refuses would otherwise show up only as pods
    /// that never start.
    #[test]
    fn every_variable_the_replicas_get_is_a_serve_flag_that_parses() {
        use clap::{CommandFactory, Parser};
        let spec: PaxosKVSpec = serde_json::from_value(serde_json::json!({
            "replicas": 3,
            "lease": "2s",
            "readMode": "quorum",
            "limits": {"maxKeyBytes": 100, "maxValueBytes": 1000, "maxTxnOps": 16,
                       "quotaBytes": 1000000, "snapshotEveryBytes": 2097152,
                       "idleTimeout": "5m", "bodyTimeout": "30s"},
            "telemetry": {"otlpEndpoint": "http://collector:4318", "logFormat": "text"},
            "backup": {"destination": {"url": "s3://backups/prod",
                       "endpoint": "http://minio:9000", "region": "eu-1"}}
        }))
        .expect("spec");
        let pkv = sample(spec);
        let bootstrap = Bootstrap {
            replicas: 3,
            read_mode: ReadModeSpec::Quorum,
            tls: Some(true),
            recovery: None,
        };
        let config = bootstrap_config(&pkv, &bootstrap).data.expect("data");
        let sts = statefulset(&pkv, &defaults(), 3, Transport::Tls);
        let pod = sts.spec.and_then(|s| s.template.spec).expect("pod");
        let container = &pod.containers[0];
        assert_eq!(container.args.as_deref(), Some(&["serve".to_string()][..]));

        let cli = phxkv::cli::Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        let mut argv = vec!["phxkv".to_string(), "serve".to_string()];
        let mut seen = 0;
        for var in container.env.iter().flatten() {
            if !var.name.starts_with("PHXKV_") {
                continue;
            }
            let arg = serve
                .get_arguments()
                .find(|a| a.get_env().and_then(|e| e.to_str()) == Some(var.name.as_str()))
                .unwrap_or_else(|| panic!("phxkv serve reads no {}", var.name));
            let from = var.value_from.as_ref();
            let value = match (&var.value, from) {
                (Some(v), _) => v.clone(),
                (None, Some(f)) if f.field_ref.is_some() => "kv-0".into(),
                (None, Some(f)) => {
                    let key = &f.config_map_key_ref.as_ref().expect("a ConfigMap key").key;
                    config.get(key).cloned().expect("written by the operator")
                }
                (None, None) => panic!("{} has no value", var.name),
            };
            let long = arg.get_long().expect("a long flag");
            seen += 1;
            if !arg.get_action().takes_values() {
                // A switch: clap reads its variable as true or false.
                match value.as_str() {
                    "true" => argv.push(format!("--{long}")),
                    "false" => {}
                    other => panic!("{} is {other:?}, not true or false", var.name),
                }
                continue;
            }
            argv.push(format!("--{long}={value}"));
        }
        assert!(seen >= 20, "only {seen} variables: {argv:?}");
        if let Err(e) = phxkv::cli::Cli::try_parse_from(&argv) {
            panic!("phxkv serve refuses what the operator sets: {e}\n{argv:?}");
        }
    }

    #[test]
    fn spec_settings_reach_the_pods() {
        let spec: PaxosKVSpec = serde_json::from_value(serde_json::json!({
            "replicas": 5,
            "image": "registry.example/phxkv:2",
            "lease": "2s",
            "limits": {"maxValueBytes": 1000, "idleTimeout": "5m", "bodyTimeout": "30s"},
            "storage": {"size": "20Gi", "storageClassName": "fast", "reclaimPolicy": "Delete"},
            "telemetry": {"otlpEndpoint": "http://collector:4318", "logFormat": "text"},
            "scheduling": {"nodeSelector": {"disk": "ssd"}}
        }))
        .expect("spec");
        let pkv = sample(spec);
        let sts = statefulset(&pkv, &defaults(), 5, Transport::Plain);
        let env = env_of(&sts);
        assert_eq!(env["PHXKV_LEASE"].value.as_deref(), Some("2s"));
        assert_eq!(env["PHXKV_MAX_VALUE_BYTES"].value.as_deref(), Some("1000"));
        assert_eq!(env["PHXKV_IDLE_TIMEOUT"].value.as_deref(), Some("5m"));
        assert_eq!(env["PHXKV_BODY_TIMEOUT"].value.as_deref(), Some("30s"));
        assert_eq!(env["PHXKV_LOG_FORMAT"].value.as_deref(), Some("text"));
        assert_eq!(
            env["OTEL_EXPORTER_OTLP_ENDPOINT"].value.as_deref(),
            Some("http://collector:4318")
        );
        let spec = sts.spec.as_ref().expect("spec");
        let claim = &spec.volume_claim_templates.as_ref().expect("claims")[0];
        let claim_spec = claim.spec.as_ref().expect("claim spec");
        assert_eq!(claim_spec.storage_class_name.as_deref(), Some("fast"));
        assert_eq!(
            claim_spec
                .resources
                .as_ref()
                .and_then(|r| r.requests.as_ref())
                .map(|r| r["storage"].0.clone()),
            Some("20Gi".to_string())
        );
        let retention = spec
            .persistent_volume_claim_retention_policy
            .as_ref()
            .expect("retention");
        assert_eq!(retention.when_deleted.as_deref(), Some("Delete"));
        assert_eq!(retention.when_scaled.as_deref(), Some("Delete"));
        let pod = spec.template.spec.as_ref().expect("pod");
        assert_eq!(
            pod.containers[0].image.as_deref(),
            Some("registry.example/phxkv:2")
        );
        assert_eq!(
            pod.node_selector.as_ref().map(|n| n["disk"].as_str()),
            Some("ssd")
        );
    }

    #[test]
    fn services_budget_and_names_fit_together() {
        let pkv = sample(PaxosKVSpec::default());
        let peers = peer_service(&pkv);
        let ps = peers.spec.as_ref().expect("spec");
        assert_eq!(ps.cluster_ip.as_deref(), Some("None"));
        assert_eq!(ps.publish_not_ready_addresses, Some(true));
        let client = client_service(&pkv);
        let cs = client.spec.as_ref().expect("spec");
        assert_eq!(cs.type_.as_deref(), Some("ClusterIP"));
        assert_eq!(cs.ports.as_ref().expect("ports")[0].port, 8080);
        for replicas in [3, 5, 7, 9] {
            let mut pkv = sample(PaxosKVSpec::default());
            pkv.spec.replicas = replicas;
            let pdb = disruption_budget(&pkv);
            let max = pdb.spec.and_then(|s| s.max_unavailable);
            // Losing that many still leaves a majority.
            let IntOrString::Int(n) = max.expect("set") else {
                panic!("an integer budget")
            };
            assert!(
                replicas - n > replicas / 2,
                "{replicas} replicas, {n} may go"
            );
        }
        let names = Names::of("kv");
        assert_eq!(names.pod(2), "kv-2");
        assert_eq!(names.ordinal("kv-12"), Some(12));
        assert_eq!(names.ordinal("kv-peers-0"), None);
        assert_eq!(names.ordinal("other-1"), None);
        assert_eq!(names.peer_url("kv-1"), "http://kv-1.kv-peers:8081");
    }

    #[test]
    fn a_replica_gets_ten_minutes_to_start_before_liveness_counts() {
        let sts = statefulset(
            &sample(PaxosKVSpec::default()),
            &defaults(),
            3,
            Transport::Plain,
        );
        let pod = sts.spec.and_then(|s| s.template.spec).expect("pod");
        let c = &pod.containers[0];
        let budget = |p: &Probe| {
            p.period_seconds.unwrap_or(10) * p.failure_threshold.unwrap_or(3)
                + p.initial_delay_seconds.unwrap_or(0)
        };
        let startup = c.startup_probe.as_ref().expect("a startup probe");
        assert_eq!(
            startup.http_get.as_ref().and_then(|h| h.path.as_deref()),
            Some("/healthz"),
            "started = the process answers"
        );
        assert!(
            budget(startup) >= 600,
            "recovering a large store may take minutes: {}s",
            budget(startup)
        );
        let liveness = c.liveness_probe.as_ref().expect("a liveness probe");
        assert!(budget(liveness) < budget(startup));
    }

    fn max_unavailable(pkv: &PaxosKV) -> i32 {
        match disruption_budget(pkv).spec.and_then(|s| s.max_unavailable) {
            Some(IntOrString::Int(n)) => n,
            other => panic!("an integer budget, not {other:?}"),
        }
    }

    fn with_members(replicas: i32, roles: &[&str]) -> PaxosKV {
        let mut pkv = sample(PaxosKVSpec::default());
        pkv.spec.replicas = replicas;
        pkv.status = Some(crate::crd::PaxosKVStatus {
            members: roles
                .iter()
                .enumerate()
                .map(|(i, role)| crate::crd::MemberStatus {
                    name: format!("kv-{i}"),
                    id: format!("{:016x}", i + 1),
                    role: (*role).into(),
                    applied_index: Some(10),
                    healthy: true,
                    failing_since: None,
                })
                .collect(),
            ..crate::crd::PaxosKVStatus::default()
        });
        pkv
    }

    #[test]
    fn the_budget_keeps_a_majority_of_the_voters_not_of_the_spec() {
        // Scaling 3 -> 5: three voters and a caught-up learner. Losing two
        // pods could take two of the three voters.
        let growing = with_members(5, &["voter", "voter", "voter", "learner"]);
        assert_eq!(max_unavailable(&growing), 1);
        // Scaling 5 -> 3 with five voters still in: the smaller count rules.
        let shrinking = with_members(3, &["voter"; 5]);
        assert_eq!(max_unavailable(&shrinking), 1);
        // Five voters, five wanted: two may go.
        assert_eq!(max_unavailable(&with_members(5, &["voter"; 5])), 2);
        // Nothing known yet: the spec.
        assert_eq!(max_unavailable(&with_members(7, &[])), 3);
    }

    #[test]
    fn a_single_replica_does_not_block_drains_forever() {
        // One voter has no quorum to protect from a drain; a budget of zero
        // would only make every node drain hang.
        assert_eq!(max_unavailable(&with_members(1, &[])), 1);
        assert_eq!(max_unavailable(&with_members(1, &["voter"])), 1);
    }

    #[test]
    fn only_the_client_service_is_labelled_for_scraping() {
        let pkv = sample(PaxosKVSpec::default());
        let label = |svc: &Service| {
            svc.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(SERVICE_LABEL).cloned())
        };
        let (client, peers) = (client_service(&pkv), peer_service(&pkv));
        assert_eq!(label(&client).as_deref(), Some("client"));
        assert_eq!(label(&peers).as_deref(), Some("peers"));
        // The pods are selected alike; the label is what tells them apart.
        assert_eq!(
            client.spec.as_ref().and_then(|s| s.selector.clone()),
            peers.spec.as_ref().and_then(|s| s.selector.clone())
        );
    }

    #[test]
    fn only_a_recovered_cluster_restores_and_its_target_time_is_one_argument() {
        let plain = statefulset(
            &sample(PaxosKVSpec::default()),
            &defaults(),
            3,
            Transport::Plain,
        );
        let pod = plain.spec.and_then(|s| s.template.spec).expect("pod");
        assert!(pod.init_containers.is_none(), "nothing to restore");
        let spec: PaxosKVSpec = serde_json::from_value(serde_json::json!({
            "bootstrap": {"recovery": {"source": {"url": "file:///archive/db/kv",
                          "credentialsSecret": {"name": "s3"}},
                          "targetTime": "2026-01-31T12:00:00Z"}}
        }))
        .expect("spec");
        let pkv = sample(spec);
        let bootstrap = Bootstrap::initial(&pkv);
        assert_eq!(bootstrap.replicas, 1);
        let cm = bootstrap_config(&pkv, &bootstrap).data.expect("data");
        assert_eq!(cm[RESTORE_MEMBER_KEY], "kv-0", "the first pod, and only it");
        assert_eq!(cm[RECOVERY_TARGET_KEY], "time 2026-01-31T12:00:00Z");
        let sts = statefulset(&pkv, &defaults(), 1, Transport::Plain);
        let pod = sts.spec.and_then(|s| s.template.spec).expect("pod");
        let init = &pod.init_containers.expect("a restore")[0];
        let args = init.args.clone().expect("args");
        assert!(args.contains(&"--target-time=2026-01-31T12:00:00Z".to_string()));
        assert!(args.contains(&"--only-member=$(PHXKV_RESTORE_MEMBER)".to_string()));
        let from = init.env_from.clone().expect("the Secret");
        assert_eq!(
            from[0].secret_ref.as_ref().and_then(|s| s.optional),
            Some(true),
            "a pod starts after the recovery even once the Secret is gone"
        );
    }

    #[test]
    fn tokens_are_long_random_and_distinct() {
        let (a, b) = (generate_token(), generate_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        let secret = token_secret(&sample(PaxosKVSpec::default()), &a);
        assert_eq!(secret.data.expect("data")["token"].0, a.as_bytes());
    }
}

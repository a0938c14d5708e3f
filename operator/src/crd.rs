//! The `PaxosKV` custom resource: what a user writes (`spec`) and what the
//! operator reports (`status`). The CRD is generated from these types
//! (`phxkv-operator crd`) and committed into the chart; a test fails when the
//! two differ.
//!
//! Every field has a default that works, so `spec: {}` is a 3-replica
//! cluster. The schema rejects what it can (odd replica counts, enums,
//! patterns); [`PaxosKVSpec::problems`] checks the rest at reconcile time and
//! the operator reports them as a condition without touching anything.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, LocalObjectReference, ResourceRequirements, Toleration, TopologySpreadConstraint,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// API group of the resource.
pub const GROUP: &str = "phxkv.io";
/// Longest name of a `PaxosKV`.
pub const MAX_NAME: usize = 52;
/// Largest cluster the operator manages.
pub const MAX_REPLICAS: i32 = 9;

/// A phxkv cluster: a StatefulSet of replicas running Multi-Paxos, with
/// services for clients and peers (and metrics, with client certificates), a disruption budget that keeps a quorum,
/// and a generated cluster token.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "phxkv.io",
    version = "v1alpha1",
    kind = "PaxosKV",
    plural = "paxoskvs",
    singular = "paxoskv",
    shortname = "pkv",
    namespaced,
    status = "PaxosKVStatus",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas"
    ),
    printcolumn = r#"{"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}"#,
    printcolumn = r#"{"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"}"#,
    printcolumn = r#"{"name": "Master", "type": "string", "jsonPath": ".status.master"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    doc = "A phxkv cluster: a strongly consistent key-value store on Multi-Paxos."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) || self.bootstrap == oldSelf.bootstrap)",
    "message": "spec.bootstrap cannot be set, changed or unset after creation: a cluster is recovered only when it is created"
}]))]
pub struct PaxosKVSpec {
    /// Number of voting replicas. Odd, so that a majority survives the loss
    /// of a minority: 1, 3, 5, 7 or 9. Changing it scales the cluster one
    /// membership change at a time.
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 9), extend("x-kubernetes-validations" = [{
        "rule": "self % 2 == 1",
        "message": "replicas must be odd (1, 3, 5, 7 or 9) so a majority survives the loss of a minority"
    }]))]
    pub replicas: i32,

    /// Container image with the `phxkv` binary. Defaults to the operator's
    /// own version. Changing it upgrades the cluster one pod at a time,
    /// master last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1))]
    pub image: Option<String>,

    /// Image pull policy for the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Secrets for pulling the image from a private registry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Persistent volume for each replica's data directory.
    #[serde(default)]
    pub storage: StorageSpec,

    /// CPU and memory for each replica.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,

    /// Master lease duration (for example `2s` or `1500ms`); a killed master
    /// is replaced after about one lease. Omit for the server's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m)$"))]
    pub lease: Option<String>,

    /// How the master confirms linearizable reads (`--read-mode`): `lease`
    /// (the default: no round trip, trusts clock rates within the drift
    /// bound) or `quorum` (a round trip to a majority, trusts no clock, and
    /// fails over without waiting out a lease). Fixed when the cluster is
    /// created: replicas in different modes refuse each other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_mode: Option<ReadModeSpec>,

    /// Request limits enforced by every replica.
    #[serde(default)]
    pub limits: LimitsSpec,

    /// Where the replicas may run.
    #[serde(default)]
    pub scheduling: SchedulingSpec,

    /// The client Service.
    #[serde(default)]
    pub service: ServiceSpec,

    /// Logs and traces.
    #[serde(default)]
    pub telemetry: TelemetrySpec,

    /// Replacing members that keep failing.
    #[serde(default)]
    pub self_healing: SelfHealingSpec,

    /// Who may reach the replicas' ports.
    #[serde(default)]
    pub network_policy: NetworkPolicySpec,

    /// Client authentication: on by default.
    #[serde(default)]
    pub auth: AuthSpec,

    /// TLS on both ports: on by default, with certificates the operator
    /// issues or cert-manager's. `enabled` is fixed when the cluster is
    /// created; the rest may change.
    #[serde(default)]
    pub tls: TlsSpec,

    /// Stops every pod and keeps the volumes, the Secrets and the
    /// membership: the cluster costs nothing but its storage. Setting it
    /// back to false brings the same cluster back, with all its data, on
    /// the same volumes.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hibernation: bool,

    /// Continuous archiving to object storage, scheduled backups and their
    /// retention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupSpec>,

    /// How the cluster starts when it is created: from an archive
    /// (`recovery`) instead of empty. Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<BootstrapSpec>,
}

/// Where backups go and when they are taken.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupSpec {
    /// The archive. Each cluster writes under
    /// `<url>/<namespace>/<name>`: the master ships its log there
    /// continuously, with periodic base snapshots.
    pub destination: ArchiveSpec,
    /// When to take a base backup (a `PaxosKVBackup` is created each
    /// time), in cron syntax with five fields (minute hour day-of-month
    /// month day-of-week), in UTC; for example `0 3 * * *`. Without it only
    /// the backups you create and the server's periodic bases are taken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^\s*\S+(\s+\S+){4}\s*$"))]
    pub schedule: Option<String>,
    /// Which base backups to keep in the archive.
    #[serde(default)]
    pub retention: RetentionSpec,
}

/// An archive in object storage or on a file system.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ArchiveSpec {
    /// `s3://bucket/prefix` or `file:///dir`.
    #[schemars(
        length(max = 1024),
        regex(pattern = r"^(s3://[a-z0-9][a-z0-9.-]*[a-z0-9](/.*)?|file:///.*)$")
    )]
    pub url: String,
    /// A Secret in the same namespace with `AWS_ACCESS_KEY_ID` and
    /// `AWS_SECRET_ACCESS_KEY` (optionally `AWS_REGION` and
    /// `AWS_ENDPOINT_URL`), given to the replicas as environment variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret: Option<SecretName>,
    /// Endpoint of an S3-compatible server (for example
    /// `http://minio.storage:9000`); AWS when omitted.
    #[serde(
        default,
        rename = "endpointURL",
        skip_serializing_if = "Option::is_none"
    )]
    #[schemars(length(max = 1024), regex(pattern = r"^https?://"))]
    pub endpoint_url: Option<String>,
    /// S3 region.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub region: Option<String>,
}

/// A Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
pub struct SecretName {
    /// Its name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// Retention of base backups. After each completed backup, and
/// periodically, the operator deletes the bases past `keep` (newest kept)
/// and those older than `maxAge` but the newest of them (a recovery to
/// any point within `maxAge` starts from it); the newest base is never
/// deleted. `keep` counts every base in the archive: scheduled, asked for,
/// and those each master takes on its own every 6 hours. The server then
/// drops the log no remaining base needs. Without either, everything is
/// kept.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetentionSpec {
    /// How many bases to keep at most, counting every base in the archive
    /// (with the one each master takes every 6 hours, four a day): to keep
    /// a span of time, use `maxAge`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub keep: Option<u32>,
    /// How far back a recovery can go (for example `30d`, `12h`; not
    /// zero): bases older than this are deleted, but for the newest of
    /// them, which a recovery to the window's oldest point starts from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^0*[1-9][0-9]*(m|h|d)$"))]
    pub max_age: Option<String>,
}

/// How a cluster starts.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BootstrapSpec {
    /// Restore the first replica from an archive, to its latest point or to
    /// a target; the others join it and are added one at a time, as when
    /// scaling up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoverySpec>,
}

/// Recovery from an archive.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(has(self.targetRevision) && has(self.targetTime))",
    "message": "set at most one of targetRevision and targetTime"
}]))]
pub struct RecoverySpec {
    /// The archive, with its full URL (a cluster's archive is
    /// `<destination>/<namespace>/<name>`).
    pub source: ArchiveSpec,
    /// Recover up to this revision (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub target_revision: Option<u64>,
    /// Recover up to this time (RFC 3339, for example
    /// `2026-01-31T12:00:00Z`, or Unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 64),
        regex(
            pattern = r"^([0-9]+|[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?([Zz]|[+-][0-9]{2}:[0-9]{2}))$"
        )
    )]
    pub target_time: Option<String>,
}

impl RecoverySpec {
    /// The target in words: `revision 12`, `time 2026-01-31T12:00:00Z`, or
    /// the latest recoverable point.
    pub fn target(&self) -> String {
        match (&self.target_revision, &self.target_time) {
            (Some(r), _) => format!("revision {r}"),
            (None, Some(t)) => format!("time {t}"),
            (None, None) => "the latest recoverable point".into(),
        }
    }
}

impl BackupSpec {
    /// The archive of cluster `name` in namespace `ns`.
    pub fn archive_url(&self, ns: &str, name: &str) -> String {
        format!("{}/{ns}/{name}", self.destination.url.trim_end_matches('/'))
    }
}

fn default_replicas() -> i32 {
    3
}

/// Self-healing: a member that has been unhealthy (the master does not
/// hear from it) or lagging for longer than `replaceAfter` is recreated on
/// a new volume: its pod and claim are deleted, the pod comes back empty
/// (possibly on another node) and is replaced as a new incarnation
/// (removed, added as a learner, promoted once caught up). One member at a
/// time, never during another change, and only while the other voters
/// keep a healthy majority.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SelfHealingSpec {
    /// Turns self-healing on (the default) or off.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// How long a member must keep failing before it is recreated (for
    /// example `10m`); at least 1m.
    #[serde(default = "default_replace_after")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub replace_after: String,
    /// A member whose applied index is this many entries behind the
    /// master's commit index counts as failing (lagging).
    #[serde(default = "default_max_lag")]
    #[schemars(range(min = 1))]
    pub max_lag: u64,
}

impl Default for SelfHealingSpec {
    fn default() -> Self {
        SelfHealingSpec {
            enabled: true,
            replace_after: default_replace_after(),
            max_lag: default_max_lag(),
        }
    }
}

/// A NetworkPolicy for the cluster's pods (ingress only). The peer port
/// admits the cluster's own pods and nothing else: nobody else has any
/// business there. The client port admits anyone, or, with `clientFrom`,
/// only those peers and the operator (which drives membership changes
/// through it).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySpec {
    /// Creates the NetworkPolicy (the default). Turned off, the operator
    /// deletes the one it made.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// networking.k8s.io/v1 NetworkPolicyPeer objects allowed to reach the
    /// client port (and the metrics port, 8082, with
    /// `spec.tls.clientCertAuth`); empty: anyone. Prometheus scrapes
    /// /metrics there: list it when you restrict the port. The operator's
    /// own pods (in its namespace, with the labels the chart gives them)
    /// are always allowed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client_from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

impl Default for NetworkPolicySpec {
    fn default() -> Self {
        NetworkPolicySpec {
            enabled: true,
            client_from: Vec::new(),
        }
    }
}

/// Client authentication (`phxkv serve --auth`). On, every request but
/// the probes, /metrics and the documentation needs a bearer token: the
/// cluster token in the Secret `<name>-token` (the admin credential, which
/// the operator uses too), or an API token made with `phxkv auth token
/// create`, whose roles grant read or write on key prefixes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthSpec {
    /// Requires a token (the default). Turning it off or on rolls the pods.
    #[serde(default = "yes")]
    pub enabled: bool,
}

impl Default for AuthSpec {
    fn default() -> Self {
        AuthSpec { enabled: true }
    }
}

fn yes() -> bool {
    true
}

/// TLS on both ports of every replica: HTTPS on the client port, mutual
/// TLS on the peer port (a peer without a certificate of the cluster's CA
/// is refused before any handler runs). The certificate (Secret
/// `<name>-tls`: `tls.crt`, `tls.key`, `ca.crt`) names the pods through
/// the headless Service (`*.<name>-peers.<namespace>` and its `.svc`
/// forms), the client Service (`<name>.<namespace>.svc` and shorter
/// forms) and `localhost` (for `kubectl port-forward`).
///
/// Without `issuerRef` the operator makes a CA (Secret `<name>-ca`, valid
/// ten years, rotated a year before its end: both CAs are trusted from the
/// rotation, the certificate comes from the new one 10 minutes later, and
/// the old one is dropped after 7 days) and signs the certificate with it:
/// valid 90 days, issued again once fewer than 30 remain. The replicas
/// load a replaced certificate at the next connection, without a restart.
///
/// Fixed at creation, like `readMode`: replicas record each other's peer
/// URLs, which change with TLS. Clusters created before TLS existed stay
/// plain HTTP.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.clientCertAuth) || !self.clientCertAuth || !has(self.enabled) || self.enabled",
    "message": "clientCertAuth needs TLS: set enabled to true"
}, {
    "rule": "!has(self.clientCertIdentity) || !self.clientCertIdentity || (has(self.clientCertAuth) && self.clientCertAuth)",
    "message": "clientCertIdentity needs clientCertAuth"
}, {
    "rule": "!has(self.revocationList) || !has(self.enabled) || self.enabled",
    "message": "revocationList needs TLS: set enabled to true"
}, {
    "rule": "(has(self.enabled) ? self.enabled : true) == (has(oldSelf.enabled) ? oldSelf.enabled : true)",
    "message": "tls.enabled is fixed when the cluster is created (its replicas record each other's peer URLs, https:// or http://): put it back"
}]))]
pub struct TlsSpec {
    /// TLS on both ports (the default).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// A cert-manager issuer to request the certificate from instead (a
    /// `Certificate` named `<name>-tls` is created). The issuer must put
    /// the CA in the Secret's `ca.crt` and keep the common name
    /// `<name>.<namespace>`, the only one the peer port admits, as the CA
    /// and Vault issuers do.
    /// Changing the issuer changes the CA: the replicas lose contact
    /// with each other until every one has loaded the new Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_ref: Option<IssuerRef>,
    /// Refuse clients on the client port that do not present a certificate
    /// of the cluster's CA (mutual TLS, like etcd's `--client-cert-auth`),
    /// on top of the token. The probes and `/metrics` then move to a plain
    /// HTTP port of their own, `metrics` (8082), which serves nothing else,
    /// reached through the ClusterIP Service `<name>-metrics`; the operator
    /// presents the replicas' certificate. Turning it on or off rolls the
    /// pods; it needs replicas of this version or later.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_cert_auth: bool,
    /// With `clientCertAuth` and auth on, a request without a token acts as
    /// the API token whose id (16 hex digits) is its certificate's subject
    /// common name; revoking the token shuts the certificate out. Whoever
    /// can have the CA sign a certificate can then act as any token: with
    /// `issuerRef`, everyone who may request certificates from that issuer.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_cert_identity: bool,
    /// Certificate revocation lists (PEM) of the cluster's CA, from a
    /// Secret in the same namespace (`phxkv serve --tls-crl`). A
    /// certificate they list is refused on the peer port and, with
    /// `clientCertAuth`, on the client port; connections open with it are
    /// closed as each replica reloads the Secret (the kubelet refreshes it
    /// within about a minute; nothing restarts). At least one list must be
    /// issued by a CA in `ca.crt` of `<name>-tls` (the operator's CA signs
    /// with the key in `<name>-ca`), and none may revoke the replicas' own
    /// certificate: the operator checks the lists on every pass, and one
    /// that would stop a replica is reported (event
    /// `RevocationListInvalid`) and not given to pods that do not mount it
    /// yet. After a CA rotation, add the new CA's list (event
    /// `RevocationListOutdated` until then). Setting this (once the list
    /// is usable) or removing it rolls the pods; changing the Secret does
    /// not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_list: Option<SecretKey>,
}

impl Default for TlsSpec {
    fn default() -> Self {
        TlsSpec {
            enabled: true,
            issuer_ref: None,
            client_cert_auth: false,
            client_cert_identity: false,
            revocation_list: None,
        }
    }
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKey {
    /// The Secret's name.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// The key (`ca.crl` unless given).
    #[serde(default = "crl_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

fn crl_key() -> String {
    "ca.crl".into()
}

/// A cert-manager issuer.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct IssuerRef {
    /// The issuer's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// `Issuer` (in the cluster's namespace, the default) or
    /// `ClusterIssuer`.
    #[serde(default)]
    pub kind: IssuerKind,
    /// The issuer's API group: `cert-manager.io` unless it is an external
    /// issuer.
    #[serde(default = "cert_manager_group")]
    #[schemars(length(min = 1, max = 253))]
    pub group: String,
}

/// The kind of a cert-manager issuer.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum IssuerKind {
    /// An issuer in the cluster's namespace.
    #[default]
    Issuer,
    /// An issuer for the whole Kubernetes cluster.
    ClusterIssuer,
}

impl IssuerKind {
    /// The kind as Kubernetes spells it.
    pub fn name(self) -> &'static str {
        match self {
            IssuerKind::Issuer => "Issuer",
            IssuerKind::ClusterIssuer => "ClusterIssuer",
        }
    }
}

fn cert_manager_group() -> String {
    "cert-manager.io".into()
}

fn default_replace_after() -> String {
    "10m".into()
}

fn default_max_lag() -> u64 {
    100_000
}

/// When to pull the image.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    /// Pull on every start.
    Always,
    /// Pull when the node does not have it.
    IfNotPresent,
    /// Never pull.
    Never,
}

/// Storage of each replica.
///
/// `storageClassName` is checked here rather than on the field: a
/// transition rule on a field is not evaluated when the old object lacks
/// it, which let setting or unsetting it through. `storage` itself always
/// exists (it has a default), so this rule sees every update.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.storageClassName) == has(oldSelf.storageClassName) && (!has(self.storageClassName) || self.storageClassName == oldSelf.storageClassName)",
    "message": "storage.storageClassName cannot be set, changed or unset after creation"
}]))]
pub struct StorageSpec {
    /// Size of each replica's volume, as a Kubernetes quantity: at least
    /// 64 MiB for the log's segments and a compaction's files plus
    /// `limits.diskReserveBytes` (96 MiB with the default reserve), and
    /// room for the store twice over (it is written to a snapshot beside
    /// the previous one). Fixed at creation: volume claim templates
    /// cannot change.
    #[serde(default = "default_storage_size")]
    #[schemars(regex(pattern = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$"), extend("x-kubernetes-validations" = [{
        "rule": "self == oldSelf",
        "message": "storage.size cannot be changed after creation (volume claim templates are immutable)"
    }]))]
    pub size: String,
    /// Storage class of the volumes; the cluster default when omitted.
    /// Fixed at creation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class_name: Option<String>,
    /// What happens to the volumes when the PaxosKV is deleted. Volumes of
    /// replicas removed by scaling down are always deleted, so a later
    /// scale-up starts them empty.
    #[serde(default)]
    pub reclaim_policy: ReclaimPolicy,
}

impl Default for StorageSpec {
    fn default() -> Self {
        StorageSpec {
            size: default_storage_size(),
            storage_class_name: None,
            reclaim_policy: ReclaimPolicy::default(),
        }
    }
}

fn default_storage_size() -> String {
    "1Gi".into()
}

/// Fate of the data volumes when the cluster is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ReclaimPolicy {
    /// Keep them (the default): the data survives a mistaken delete.
    #[default]
    Retain,
    /// Delete them with the cluster.
    Delete,
}

/// Limits on requests, passed to every replica.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Largest key, in bytes (server default 4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub max_key_bytes: Option<u32>,
    /// Largest value, in bytes (server default 1 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 67108864))]
    pub max_value_bytes: Option<u32>,
    /// Most compares plus operations in one transaction (server default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_txn_ops: Option<u32>,
    /// Largest size the store may reach (its keys and values plus 144
    /// bytes per key, about what each takes in memory) before writes that
    /// add data are refused (507 `quota_exceeded`; deletes are always
    /// taken); 0 for no quota. The whole store lives in each replica's
    /// memory, so when this is left out and `resources.limits.memory` is
    /// set, the quota is a quarter of that limit; with neither, the
    /// server's default (2 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota_bytes: Option<u64>,
    /// Free space each replica keeps on its data volume beyond the
    /// store's size, for its log and its next snapshot
    /// (`--disk-reserve-bytes`; server default 32 MiB); while less is
    /// free, writes that add data are refused (507 `disk_full`; deletes
    /// are always taken). 0 for no check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_reserve_bytes: Option<u64>,
    /// Compact the log into a snapshot once this many bytes of writes were
    /// applied since the last one (`--snapshot-every-bytes`, 1 MiB to
    /// 16 GiB). The log since the last snapshot is held in memory, so when
    /// this is left out and `resources.limits.memory` is set, it is an
    /// eighth of that limit, at least 1 MiB and at most the server's
    /// default (64 MiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1048576, max = 17179869184u64))]
    pub snapshot_every_bytes: Option<u64>,
    /// How long a connection may wait for its next request to begin
    /// before it is closed (`--idle-timeout`, 1s to 1h; server default
    /// 2m). Keep it above your clients' pool idle timeouts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub idle_timeout: Option<String>,
    /// How long a request body may take to arrive before the request is
    /// refused with 408 (`--body-timeout`, 1s to 1h; server default 2m).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub body_timeout: Option<String>,
}

/// Pod placement.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SchedulingSpec {
    /// Node labels the replicas require.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// Affinity rules. Without any, replicas prefer distinct nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    /// Taints the replicas tolerate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// How replicas spread across zones or nodes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    /// Priority class of the replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,
}

/// The client Service.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Service type.
    #[serde(default, rename = "type")]
    pub type_: ServiceType,
    /// Port clients connect to.
    #[serde(default = "default_client_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Extra annotations (load balancer settings and the like).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            type_: ServiceType::default(),
            port: default_client_port(),
            annotations: BTreeMap::new(),
        }
    }
}

fn default_client_port() -> i32 {
    8080
}

/// Kubernetes Service types the client Service may have.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum ServiceType {
    /// Reachable inside the cluster only.
    #[default]
    ClusterIP,
    /// Also on a port of every node.
    NodePort,
    /// Through a cloud load balancer.
    LoadBalancer,
}

impl ServiceType {
    /// The name Kubernetes uses.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIP => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
        }
    }
}

/// Logs and traces of the replicas.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    /// OTLP/HTTP endpoint for traces (sets `OTEL_EXPORTER_OTLP_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://"))]
    pub otlp_endpoint: Option<String>,
    /// Log format of the replicas.
    #[serde(default)]
    pub log_format: LogFormatSpec,
}

/// How linearizable reads are confirmed.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadModeSpec {
    /// From the master's lease.
    #[default]
    Lease,
    /// From a round trip to a majority.
    Quorum,
}

impl ReadModeSpec {
    pub fn name(self) -> &'static str {
        match self {
            ReadModeSpec::Lease => "lease",
            ReadModeSpec::Quorum => "quorum",
        }
    }
}

/// Log line format.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum LogFormatSpec {
    /// One JSON object per line (the default in a cluster).
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

/// What the operator observed and did, for `kubectl get pkv` and
/// `kubectl describe pkv`.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaxosKVStatus {
    /// Summary: Creating, Running, Scaling, Upgrading, Degraded, Invalid,
    /// Hibernating or Hibernated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Pods of the StatefulSet.
    #[serde(default)]
    pub replicas: i32,
    /// Pods that pass their readiness probe.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Name of the current master, if one is elected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
    /// Members of the Paxos configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<MemberStatus>,
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// The last switchover asked for with the `phxkv.io/switchover`
    /// annotation, and how it went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchover: Option<SwitchoverStatus>,
    /// Archiving and backups, when `spec.backup` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<BackupStatus>,
    /// Where the cluster was recovered from, when it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recovery: Option<RecoveryStatus>,
    /// The revocation lists last given to the replicas
    /// (`spec.tls.revocationList`), one per CA: a list older than one of
    /// these is refused, since a replica on a new volume would take it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revocation_lists: Vec<RevocationListStatus>,
    /// Available, Progressing, Degraded, VolumeLost, Hibernated, Ready and
    /// Reconciled (False with reason ReconcileError, or NameConflict when an
    /// object of that name belongs to something else, when the last pass
    /// failed), with reasons; RevocationListApplied with
    /// `spec.tls.revocationList`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// A revocation list given to the replicas: whose, and how new.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevocationListStatus {
    /// The issuing CA's name (RFC 4514), as in `CN=phxkv CA kv.db`.
    pub issuer: String,
    /// The list's CRL number, in decimal, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub number: Option<String>,
    /// When the list was issued (its thisUpdate).
    pub issued: Time,
}

/// Archiving and backups of a cluster.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupStatus {
    /// The cluster's archive.
    pub archive_url: String,
    /// The fire time of the last scheduled backup.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<Time>,
    /// The newest completed `PaxosKVBackup` of this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<BackupRef>,
    /// The oldest point the archive can recover to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_recoverable: Option<RecoverablePoint>,
    /// The newest point the archive can recover to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recoverable: Option<RecoverablePoint>,
    /// When the archive has gaps (log segments lost or deleted), the
    /// stretches between `firstRecoverable` and `lastRecoverable` it can
    /// recover to, oldest first: a point in between two of them cannot be
    /// reached. Empty when the archive is one stretch.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recoverable_ranges: Vec<RecoverableRange>,
    /// Log entries committed but not yet archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archive_lag: Option<u64>,
}

/// A completed backup.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRef {
    /// The base's name in the archive.
    pub name: String,
    /// The store's revision it holds.
    pub revision: u64,
    /// When it was taken.
    pub time: Time,
}

/// A point the archive can recover to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverablePoint {
    /// The store's revision.
    pub revision: u64,
    /// When it was committed.
    pub time: Time,
}

/// A stretch of points the archive can recover to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoverableRange {
    /// Its oldest point.
    pub first: RecoverablePoint,
    /// Its newest point.
    pub last: RecoverablePoint,
}

/// Where a cluster was recovered from.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    /// The archive.
    pub source: String,
    /// The target: a revision, a time, or the latest recoverable point.
    pub target: String,
    /// Restoring (the first replica restores and starts) or Recovered (it
    /// runs; the others join it).
    pub phase: RecoveryPhase,
    /// Why the restore failed, while it does (the end of its output).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// Where a recovery stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RecoveryPhase {
    /// The first replica restores from the archive.
    Restoring,
    /// The restored replica runs and has a master.
    Recovered,
}

/// A switchover: mastership moved to a named member on request.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SwitchoverStatus {
    /// The member asked for.
    pub target: String,
    /// Pending, Succeeded or Failed.
    pub phase: SwitchoverPhase,
    /// What happened, or what it waits for.
    pub message: String,
}

/// Where a switchover stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SwitchoverPhase {
    /// Not done yet: waiting for the cluster to settle, or for the target
    /// to be caught up; retried.
    Pending,
    /// The target is master.
    Succeeded,
    /// It cannot be done (no such member, or a learner); set the
    /// annotation to another member.
    Failed,
}

/// Phase of a cluster.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Objects created; waiting for a master.
    Creating,
    /// Every member up, nothing to do.
    Running,
    /// Adding or removing members.
    Scaling,
    /// Replacing pods with a new template, one at a time.
    Upgrading,
    /// Serving, but a member or pod is unhealthy, or there is no master.
    Degraded,
    /// The spec is invalid; nothing was changed.
    Invalid,
    /// `spec.hibernation` is on and pods are being stopped.
    Hibernating,
    /// Every pod is stopped; the volumes and Secrets are kept.
    Hibernated,
}

/// One member of the Paxos configuration.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberStatus {
    /// Member name (the pod name).
    pub name: String,
    /// The member's incarnation (16 hex digits): drawn when its volume was
    /// created, new when a pod comes back with an empty one.
    pub id: String,
    /// `voter` or `learner`.
    pub role: String,
    /// Log index the member has applied, as the member itself reports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_index: Option<u64>,
    /// Whether the master heard from it recently.
    pub healthy: bool,
    /// Since when this incarnation has been unhealthy or lagging, as the
    /// operator first saw it (self-healing counts from here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<Time>,
}

impl PaxosKVSpec {
    /// What is wrong with this spec (and the resource's name) beyond what
    /// the schema checks, or when the schema was bypassed, one readable
    /// sentence each.
    pub fn problems(&self, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        // Pod names add `-<ordinal>` and the StatefulSet's revision label
        // adds a hash: past 52 characters they no longer fit in a label.
        if name.len() > MAX_NAME || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
            out.push(format!(
                "metadata.name {name:?} must start with a lowercase letter and be at most {MAX_NAME} characters"
            ));
        }
        if self.replicas < 1 || self.replicas > MAX_REPLICAS {
            out.push(format!(
                "spec.replicas is {}; it must be between 1 and {MAX_REPLICAS}",
                self.replicas
            ));
        } else if self.replicas % 2 == 0 {
            out.push(format!(
                "spec.replicas is {}; it must be odd (1, 3, 5, 7 or 9) so a majority survives the loss of a minority",
                self.replicas
            ));
        }
        if let Some(lease) = &self.lease {
            match phxkv::cli::parse_duration(lease) {
                Ok(d) if d.as_millis() >= 100 && d.as_secs() <= 120 => {}
                Ok(_) => out.push(format!(
                    "spec.lease is {lease}; it must be between 100ms and 120s"
                )),
                Err(e) => out.push(format!("spec.lease: {e}")),
            }
        }
        if matches!(&self.image, Some(i) if i.trim().is_empty()) {
            out.push("spec.image is empty".into());
        }
        if !(1..=65535).contains(&self.service.port) {
            out.push(format!(
                "spec.service.port is {}; it must be between 1 and 65535",
                self.service.port
            ));
        }
        let tls = &self.tls;
        if tls.client_cert_auth && !tls.enabled {
            out.push("spec.tls.clientCertAuth needs spec.tls.enabled".into());
        }
        if tls.revocation_list.is_some() && !tls.enabled {
            out.push("spec.tls.revocationList needs spec.tls.enabled".into());
        }
        if tls.client_cert_identity && !(tls.client_cert_auth && self.auth.enabled) {
            out.push(
                "spec.tls.clientCertIdentity needs spec.tls.clientCertAuth and spec.auth.enabled"
                    .into(),
            );
        }
        if tls.client_cert_auth && self.service.port == crate::render::METRICS_PORT {
            out.push(format!(
                "spec.service.port must not be {}, the metrics port, with spec.tls.clientCertAuth",
                crate::render::METRICS_PORT
            ));
        }
        if self.service.port == crate::render::PEER_PORT {
            out.push(format!(
                "spec.service.port must not be {}, the peer port",
                crate::render::PEER_PORT
            ));
        }
        for (field, value) in [
            ("idleTimeout", &self.limits.idle_timeout),
            ("bodyTimeout", &self.limits.body_timeout),
        ] {
            let Some(value) = value else { continue };
            match phxkv::cli::parse_duration(value) {
                Ok(d) if phxkv::cli::serve::HTTP_TIMEOUTS.contains(&d) => {}
                Ok(_) => out.push(format!(
                    "spec.limits.{field} is {value}; it must be between 1s and 1h"
                )),
                Err(e) => out.push(format!("spec.limits.{field}: {e}")),
            }
        }
        if let Some(bytes) = self.limits.snapshot_every_bytes
            && !phxkv::cli::serve::SNAPSHOT_EVERY_BYTES.contains(&bytes)
        {
            out.push(format!(
                "spec.limits.snapshotEveryBytes is {bytes}; it must be between 1048576 (1 MiB) and 17179869184 (16 GiB)"
            ));
        }
        match phxkv::cli::parse_duration(&self.self_healing.replace_after) {
            Ok(d) if d.as_secs() >= 60 => {}
            Ok(_) => out.push(format!(
                "spec.selfHealing.replaceAfter is {}; it must be at least 1m",
                self.self_healing.replace_after
            )),
            Err(e) => out.push(format!("spec.selfHealing.replaceAfter: {e}")),
        }
        if let Some(backup) = &self.backup {
            if let Some(schedule) = &backup.schedule
                && let Err(e) = crate::backup::parse_schedule(schedule)
            {
                out.push(format!("spec.backup.schedule: {e}"));
            }
            if let Some(age) = &backup.retention.max_age
                && let Err(e) = crate::backup::parse_age(age)
            {
                out.push(format!("spec.backup.retention.maxAge: {e}"));
            }
            if !valid_archive_url(&backup.destination.url) {
                out.push(format!(
                    "spec.backup.destination.url is {:?}; it must be s3://bucket[/prefix] or file:///dir",
                    backup.destination.url
                ));
            }
        }
        if let Some(recovery) = self.bootstrap.as_ref().and_then(|b| b.recovery.as_ref()) {
            if recovery.target_revision.is_some() && recovery.target_time.is_some() {
                out.push(
                    "spec.bootstrap.recovery: set at most one of targetRevision and targetTime"
                        .into(),
                );
            }
            if let Some(t) = &recovery.target_time
                && t.parse::<k8s_openapi::jiff::Timestamp>().is_err()
            {
                out.push(format!(
                    "spec.bootstrap.recovery.targetTime is {t:?}; it must be an RFC 3339 time such as 2026-01-31T12:00:00Z"
                ));
            }
            if !valid_archive_url(&recovery.source.url) {
                out.push(format!(
                    "spec.bootstrap.recovery.source.url is {:?}; it must be s3://bucket[/prefix] or file:///dir",
                    recovery.source.url
                ));
            }
        }
        match quantity_bytes(&self.storage.size) {
            Some(bytes) if bytes > 0 => {
                let reserve = self
                    .limits
                    .disk_reserve_bytes
                    .unwrap_or(phxkv::cli::serve::DEFAULT_DISK_RESERVE_BYTES);
                let least = phxkv::storage::min_volume_bytes(reserve);
                if bytes < least {
                    out.push(format!(
                        "spec.storage.size is {}; a replica needs at least {} MiB: {} MiB for its log's segments and a compaction's files, and spec.limits.diskReserveBytes ({reserve}) free, or it refuses every write",
                        self.storage.size,
                        least.div_ceil(1 << 20),
                        (least - reserve) >> 20,
                    ));
                }
            }
            _ => out.push(format!(
                "spec.storage.size is {:?}; it must be a quantity such as 1Gi or 500Mi",
                self.storage.size
            )),
        }
        out
    }
}

fn valid_archive_url(url: &str) -> bool {
    match url.strip_prefix("s3://") {
        Some(rest) => {
            let bucket = rest.split('/').next().unwrap_or_default();
            bucket.len() >= 3
                && bucket
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        }
        None => url.strip_prefix("file:///").is_some(),
    }
}

/// A quantity in bytes ("512Mi", "2G", "1.5Gi", "1000"); `None` for forms
/// this does not read (exponents, milli-units), which the spec refuses for
/// sizes.
pub(crate) fn quantity_bytes(q: &str) -> Option<u64> {
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(q.len());
    let (num, unit) = q.split_at(split);
    let scale: u64 = match unit {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "P" => 1_000_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        "Pi" => 1 << 50,
        _ => return None,
    };
    let n: f64 = num.parse().ok()?;
    (n.is_finite() && n >= 0.0).then_some((n * scale as f64) as u64)
}

/// One base backup of a cluster: the operator asks a replica of the
/// `PaxosKV` named in `spec.cluster` to take a consistent snapshot and
/// upload it to the cluster's archive (`spec.backup.destination`), and
/// records the result. Done once: a Completed or Failed backup is never
/// run again. The operator creates one for each fire time of
/// `spec.backup.schedule`, owned by the cluster.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "phxkv.io",
    version = "v1alpha1",
    kind = "PaxosKVBackup",
    plural = "paxoskvbackups",
    singular = "paxoskvbackup",
    shortname = "pkvb",
    namespaced,
    status = "PaxosKVBackupStatus",
    printcolumn = r#"{"name": "Cluster", "type": "string", "jsonPath": ".spec.cluster"}"#,
    printcolumn = r#"{"name": "Phase", "type": "string", "jsonPath": ".status.phase"}"#,
    printcolumn = r#"{"name": "Revision", "type": "integer", "jsonPath": ".status.revision"}"#,
    printcolumn = r#"{"name": "Backup", "type": "string", "jsonPath": ".status.backupName"}"#,
    printcolumn = r#"{"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}"#,
    doc = "A base backup of a PaxosKV, uploaded to the cluster's archive."
)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self == oldSelf",
    "message": "the spec of a PaxosKVBackup cannot change; create another one"
}]))]
pub struct PaxosKVBackupSpec {
    /// The `PaxosKV` to back up, in the same namespace.
    #[schemars(length(min = 1, max = 52))]
    pub cluster: String,
}

/// What happened to a backup.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PaxosKVBackupStatus {
    /// Pending, Running, Completed or Failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupPhase>,
    /// The base's name in the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_name: Option<String>,
    /// The store's revision the backup holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u64>,
    /// The log index the backup holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<u64>,
    /// Its size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// When the operator first asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Time>,
    /// When it completed or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<Time>,
    /// Attempts made (a replica that does not answer, or a cluster without
    /// a master, is tried again a few times).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempts: u32,
    /// What happened, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `Complete` and `Failed`, with reasons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Where a backup stands.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupPhase {
    /// Waiting for the cluster (no replica to ask yet).
    Pending,
    /// A replica was asked and is taking it.
    Running,
    /// In the archive.
    Completed,
    /// It could not be taken; not tried again.
    Failed,
}

impl BackupPhase {
    /// Completed or Failed: never run again.
    pub fn is_done(self) -> bool {
        matches!(self, BackupPhase::Completed | BackupPhase::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schema of `spec.storage` in the generated CRD.
    fn storage_schema() -> serde_json::Value {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(PaxosKV::crd()).expect("crd");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["storage"]
            .clone()
    }

    /// The `pattern` at `path` under `spec` in the generated CRD, compiled
    /// as the API server would (both are RE2-like for these).
    fn spec_pattern(path: &[&str]) -> regex::Regex {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(PaxosKV::crd()).expect("crd");
        let mut at = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        for p in path {
            at = &at["properties"][p];
        }
        let pattern = at["pattern"].as_str().expect("a pattern");
        regex::Regex::new(pattern).expect("a pattern that compiles")
    }

    #[test]
    fn schedules_target_times_and_ages_are_refused_at_admission_when_malformed() {
        let schedule = spec_pattern(&["backup", "schedule"]);
        for good in ["0 3 * * *", "*/15 * * * *", "0 3 * * 1-5", "30 2 1 * *"] {
            assert!(schedule.is_match(good), "{good}");
        }
        // Six fields (with seconds, as some other operators take) would
        // otherwise stop the whole cluster's reconcile at the first pass.
        for bad in ["0 0 3 * * *", "daily", "0 3 * *", ""] {
            assert!(!schedule.is_match(bad), "{bad}");
        }
        let time = spec_pattern(&["bootstrap", "recovery", "targetTime"]);
        for good in [
            "2026-01-31T12:00:00Z",
            "2026-01-31T12:00:00.250+01:00",
            "1767225600",
        ] {
            assert!(time.is_match(good), "{good}");
        }
        for bad in ["2026-01-31 12:00", "yesterday", "2026-01-31", "12:00:00Z"] {
            assert!(!time.is_match(bad), "{bad}");
        }
        // A zero age would delete every base but the newest: no window.
        let age = spec_pattern(&["backup", "retention", "maxAge"]);
        for good in ["30d", "12h", "90m", "1m", "010d"] {
            assert!(age.is_match(good), "{good}");
        }
        for bad in ["0m", "00d", "0h", "1y", "d", "", "1.5h"] {
            assert!(!age.is_match(bad), "{bad}");
        }
    }

    fn rules(schema: &serde_json::Value) -> Vec<String> {
        schema["x-kubernetes-validations"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r["rule"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn storage_class_name_cannot_be_set_changed_or_unset_after_creation() {
        // A transition rule on the field itself is not evaluated when the
        // old object has no value for it, so setting or unsetting it went
        // through. The rule sits on `storage`, which always exists (it has
        // a default), and compares presence as well as value.
        let storage = storage_schema();
        assert!(storage["default"].is_object(), "{storage}");
        let rules = rules(&storage);
        let rule = rules
            .iter()
            .find(|r| r.contains("storageClassName"))
            .unwrap_or_else(|| panic!("a rule on storage for storageClassName: {rules:?}"));
        for part in [
            "has(self.storageClassName) == has(oldSelf.storageClassName)",
            "self.storageClassName == oldSelf.storageClassName",
        ] {
            assert!(rule.contains(part), "{rule} lacks {part}");
        }
    }

    /// Whether every rule on `spec.storage` lets `old` become `new`, as the
    /// API server would evaluate them on an update.
    fn storage_update_allowed(old: serde_json::Value, new: serde_json::Value) -> bool {
        rules(&storage_schema()).iter().all(|rule| {
            let program = cel_interpreter::Program::compile(rule)
                .unwrap_or_else(|e| panic!("{rule} does not compile: {e:?}"));
            let mut context = cel_interpreter::Context::default();
            context.add_variable("self", &new).expect("self");
            context.add_variable("oldSelf", &old).expect("oldSelf");
            match program.execute(&context) {
                Ok(cel_interpreter::Value::Bool(ok)) => ok,
                other => panic!("{rule} on {old} -> {new}: {other:?}"),
            }
        })
    }

    #[test]
    fn the_tls_rules_refuse_settings_that_need_tls_when_it_is_off() {
        use kube::CustomResourceExt;
        use serde_json::json;
        let crd = serde_json::to_value(PaxosKV::crd()).expect("crd");
        let tls = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["tls"];
        // The rules on one object (the transition rule has its own test).
        let rules: Vec<String> = rules(tls)
            .into_iter()
            .filter(|r| !r.contains("oldSelf"))
            .collect();
        assert_eq!(rules.len(), 3, "{rules:?}");
        let allowed = |value: serde_json::Value| {
            rules.iter().all(|rule| {
                let program = cel_interpreter::Program::compile(rule)
                    .unwrap_or_else(|e| panic!("{rule} does not compile: {e:?}"));
                let mut context = cel_interpreter::Context::default();
                context.add_variable("self", &value).expect("self");
                match program.execute(&context) {
                    Ok(cel_interpreter::Value::Bool(ok)) => ok,
                    other => panic!("{rule} on {value}: {other:?}"),
                }
            })
        };
        let list = json!({"name": "kv-crl", "key": "ca.crl"});
        assert!(allowed(json!({"enabled": true, "revocationList": list})));
        assert!(allowed(json!({"revocationList": list})));
        assert!(!allowed(json!({"enabled": false, "revocationList": list})));
        assert!(!allowed(json!({"enabled": false, "clientCertAuth": true})));
        assert!(allowed(json!({"enabled": false})));
    }

    #[test]
    fn tls_cannot_be_turned_on_or_off_after_creation() {
        use serde_json::json;
        let tls = &spec_schema()["properties"]["tls"];
        let on = json!({"enabled": true});
        let off = json!({"enabled": false});
        assert!(allowed(tls, None, &off), "chosen at creation");
        assert!(allowed(tls, Some(&on), &on));
        assert!(!allowed(tls, Some(&on), &off), "turned off");
        assert!(!allowed(tls, Some(&off), &on), "turned on");
        assert!(
            allowed(
                tls,
                Some(&on),
                &json!({"enabled": true, "clientCertAuth": true})
            ),
            "other TLS settings change at any time"
        );
        assert!(allowed(tls, Some(&json!({})), &on), "absent means on");
    }

    #[test]
    fn the_storage_class_rule_refuses_setting_changing_and_unsetting() {
        use serde_json::json;
        let none = json!({"size": "1Gi", "reclaimPolicy": "Retain"});
        let fast = json!({"size": "1Gi", "reclaimPolicy": "Retain", "storageClassName": "fast"});
        let slow = json!({"size": "1Gi", "reclaimPolicy": "Retain", "storageClassName": "slow"});
        let retain_deleted = json!({"size": "1Gi", "reclaimPolicy": "Delete"});
        assert!(storage_update_allowed(none.clone(), none.clone()));
        assert!(storage_update_allowed(fast.clone(), fast.clone()));
        assert!(
            storage_update_allowed(none.clone(), retain_deleted),
            "other storage fields are not its business"
        );
        assert!(!storage_update_allowed(none.clone(), fast.clone()), "set");
        assert!(!storage_update_allowed(fast.clone(), none), "unset");
        assert!(!storage_update_allowed(fast, slow), "changed");
    }

    /// Whether the rules at `schema` let `old` become `new` (`old` absent:
    /// a create, where transition rules are not evaluated).
    fn allowed(
        schema: &serde_json::Value,
        old: Option<&serde_json::Value>,
        new: &serde_json::Value,
    ) -> bool {
        rules(schema).iter().all(|rule| {
            if old.is_none() && rule.contains("oldSelf") {
                return true;
            }
            let program = cel_interpreter::Program::compile(rule)
                .unwrap_or_else(|e| panic!("{rule} does not compile: {e:?}"));
            let mut context = cel_interpreter::Context::default();
            context.add_variable("self", new).expect("self");
            if let Some(old) = old {
                context.add_variable("oldSelf", old).expect("oldSelf");
            }
            match program.execute(&context) {
                Ok(cel_interpreter::Value::Bool(ok)) => ok,
                other => panic!("{rule} on {old:?} -> {new}: {other:?}"),
            }
        })
    }

    fn spec_schema() -> serde_json::Value {
        use kube::CustomResourceExt;
        let crd = serde_json::to_value(PaxosKV::crd()).expect("crd");
        crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"].clone()
    }

    #[test]
    fn the_recovery_of_a_cluster_cannot_be_added_changed_or_removed_after_creation() {
        use serde_json::json;
        let spec = spec_schema();
        let plain = json!({"replicas": 3});
        let recovered = json!({"replicas": 3, "bootstrap": {"recovery": {
            "source": {"url": "s3://backups/db/kv"}, "targetRevision": 40}}});
        let elsewhere = json!({"replicas": 3, "bootstrap": {"recovery": {
            "source": {"url": "s3://backups/db/other"}}}});
        let scaled = json!({"replicas": 5, "bootstrap": {"recovery": {
            "source": {"url": "s3://backups/db/kv"}, "targetRevision": 40}}});
        assert!(allowed(&spec, None, &recovered), "created with a recovery");
        assert!(allowed(&spec, Some(&plain), &plain));
        assert!(
            allowed(&spec, Some(&recovered), &scaled),
            "other fields change freely"
        );
        assert!(!allowed(&spec, Some(&plain), &recovered), "added");
        assert!(!allowed(&spec, Some(&recovered), &plain), "removed");
        assert!(!allowed(&spec, Some(&recovered), &elsewhere), "changed");
    }

    #[test]
    fn a_recovery_has_a_revision_or_a_time_as_its_target_not_both() {
        use serde_json::json;
        let recovery = spec_schema()["properties"]["bootstrap"]["properties"]["recovery"].clone();
        let source = json!({"url": "s3://backups/db/kv"});
        assert!(allowed(&recovery, None, &json!({"source": source})));
        assert!(allowed(
            &recovery,
            None,
            &json!({"source": source, "targetRevision": 4})
        ));
        assert!(allowed(
            &recovery,
            None,
            &json!({"source": source, "targetTime": "2026-01-31T12:00:00Z"})
        ));
        assert!(!allowed(
            &recovery,
            None,
            &json!({"source": source, "targetRevision": 4, "targetTime": "2026-01-31T12:00:00Z"})
        ));
    }

    #[test]
    fn backup_and_recovery_settings_are_checked_at_reconcile_time() {
        let spec = |json: &str| -> PaxosKVSpec { serde_json::from_str(json).expect("parses") };
        let ok = spec(
            r#"{"backup": {"destination": {"url": "s3://backups/prod"}, "schedule": "0 3 * * *",
                "retention": {"keep": 7, "maxAge": "30d"}},
                "bootstrap": {"recovery": {"source": {"url": "file:///archive/db/kv"},
                "targetTime": "2026-01-31T12:00:00Z"}}}"#,
        );
        assert!(ok.problems("kv").is_empty(), "{:?}", ok.problems("kv"));
        let p =
            spec(r#"{"backup": {"destination": {"url": "s3://backups"}, "schedule": "daily"}}"#)
                .problems("kv");
        assert!(p[0].contains("spec.backup.schedule"), "{p:?}");
        let p = spec(
            r#"{"backup": {"destination": {"url": "http://x"}, "retention": {"maxAge": "1y"}}}"#,
        )
        .problems("kv");
        assert!(p.iter().any(|m| m.contains("maxAge")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("destination.url")), "{p:?}");
        let p = spec(
            r#"{"bootstrap": {"recovery": {"source": {"url": "s3://b/x"}, "targetRevision": 3,
                "targetTime": "yesterday"}}}"#,
        )
        .problems("kv");
        assert!(p.iter().any(|m| m.contains("at most one")), "{p:?}");
        assert!(p.iter().any(|m| m.contains("RFC 3339")), "{p:?}");
    }

    #[test]
    fn an_empty_spec_is_a_valid_three_replica_cluster() {
        let spec: PaxosKVSpec = serde_json::from_str("{}").expect("parses");
        assert_eq!(spec.replicas, 3);
        assert_eq!(spec.storage.size, "1Gi");
        assert_eq!(spec.storage.reclaim_policy, ReclaimPolicy::Retain);
        assert_eq!(spec.service.port, 8080);
        assert!(spec.problems("kv").is_empty(), "{:?}", spec.problems("kv"));
    }

    #[test]
    fn even_or_out_of_range_replicas_and_bad_fields_are_named() {
        let spec = |json: &str| -> PaxosKVSpec { serde_json::from_str(json).expect("parses") };
        let p = spec(r#"{"replicas": 4}"#).problems("kv");
        assert!(p[0].contains("must be odd"), "{p:?}");
        assert!(spec(r#"{"replicas": 11}"#).problems("kv")[0].contains("between 1 and 9"));
        assert!(spec(r#"{"replicas": 0}"#).problems("kv")[0].contains("between 1 and 9"));
        assert!(spec(r#"{"lease": "soon"}"#).problems("kv")[0].contains("spec.lease"));
        assert!(spec(r#"{"lease": "10ms"}"#).problems("kv")[0].contains("100ms"));
        assert!(spec(r#"{"storage": {"size": "lots"}}"#).problems("kv")[0].contains("quantity"));
        assert!(spec(r#"{"storage": {"size": "0"}}"#).problems("kv")[0].contains("quantity"));
        let limits = |l: &str| spec(&format!(r#"{{"limits": {l}}}"#)).problems("kv");
        assert!(
            limits(r#"{"idleTimeout": "500ms"}"#)[0]
                .contains("spec.limits.idleTimeout is 500ms; it must be between 1s and 1h")
        );
        assert!(limits(r#"{"bodyTimeout": "2h"}"#)[0].contains("spec.limits.bodyTimeout is 2h"));
        assert!(limits(r#"{"bodyTimeout": "soon"}"#)[0].contains("spec.limits.bodyTimeout:"));
        assert!(
            limits(r#"{"snapshotEveryBytes": 1000}"#)[0]
                .contains("spec.limits.snapshotEveryBytes is 1000")
        );
        assert!(
            limits(r#"{"idleTimeout": "1h", "bodyTimeout": "1s", "snapshotEveryBytes": 1048576}"#)
                .is_empty()
        );
        assert!(spec(r#"{"service": {"port": 8081}}"#).problems("kv")[0].contains("peer port"));
        assert!(spec("{}").problems(&"k".repeat(53))[0].contains("52 characters"));
        assert!(spec("{}").problems("9lives")[0].contains("lowercase letter"));
        assert!(
            spec(r#"{"replicas": 5, "lease": "2s", "storage": {"size": "10Gi"}}"#)
                .problems("kv")
                .is_empty()
        );
    }

    #[test]
    fn a_volume_too_small_for_the_log_and_the_disk_reserve_is_refused() {
        let problems = |json: &str| {
            serde_json::from_str::<PaxosKVSpec>(json)
                .expect("parses")
                .problems("kv")
        };
        // The default reserve is 32 MiB, the log and a compaction 64 MiB.
        let p = problems(r#"{"storage": {"size": "64Mi"}}"#);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("spec.storage.size is 64Mi; a replica needs at least 96 MiB"),
            "{p:?}"
        );
        assert!(problems(r#"{"storage": {"size": "96Mi"}}"#).is_empty());
        assert!(
            !problems(r#"{"storage": {"size": "100M"}}"#).is_empty(),
            "100M is 95.4 MiB"
        );
        assert!(problems(r#"{"storage": {"size": "101M"}}"#).is_empty());
        // A larger reserve needs a larger volume; none needs the log's room only.
        let p =
            problems(r#"{"storage": {"size": "1Gi"}, "limits": {"diskReserveBytes": 1073741824}}"#);
        assert!(p[0].contains("at least 1088 MiB"), "{p:?}");
        assert!(
            problems(r#"{"storage": {"size": "64Mi"}, "limits": {"diskReserveBytes": 0}}"#)
                .is_empty()
        );
        assert!(
            !problems(r#"{"storage": {"size": "63Mi"}, "limits": {"diskReserveBytes": 0}}"#)
                .is_empty()
        );
    }

    #[test]
    fn unknown_enum_values_are_refused_when_parsing() {
        assert!(
            serde_json::from_str::<PaxosKVSpec>(r#"{"storage": {"reclaimPolicy": "Shred"}}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<PaxosKVSpec>(r#"{"service": {"type": "ExternalName"}}"#)
                .is_err()
        );
    }
}

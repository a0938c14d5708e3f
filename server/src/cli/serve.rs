//! `phxkv serve`: one replica. Every flag also reads `PHXKV_<FLAG>` from the
//! environment; everything is validated before anything starts, and a bad
//! value stops the process with one line that names the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tracing::Instrument as _;

use crate::cluster;
use crate::kv::Limits;
use crate::net::PlainListener;
use crate::node::{Node, NodeConfig};
use crate::paxos::EngineConfig;
use crate::telemetry::{self, LogFormat, Metrics};
use crate::tls::{ClientAuth, Material, TlsPaths};

use super::{CliError, parse_duration};

/// Runs one phxkv replica.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// This node's name; in Kubernetes, the pod name. Defaults to the host name.
    #[arg(long, env = "PHXKV_ID")]
    pub id: Option<String>,

    /// Where this node keeps its log and snapshots. It records the node and
    /// cluster it belongs to and refuses to be used by another.
    #[arg(long, env = "PHXKV_DATA_DIR", default_value = "phxkv-data")]
    pub data_dir: PathBuf,

    /// Client API address: an IP address and a port (0.0.0.0:8080 for
    /// every interface, 127.0.0.1:8080, [::]:8080), not a host name.
    #[arg(long, env = "PHXKV_LISTEN", default_value = "0.0.0.0:8080",
          value_parser = parse_listen, value_name = "IP:PORT")]
    pub listen: SocketAddr,

    /// Peer API address (Paxos messages, snapshots, forwarded writes): an
    /// IP address and a port, as for --listen.
    #[arg(long, env = "PHXKV_PEER_LISTEN", default_value = "0.0.0.0:8081",
          value_parser = parse_listen, value_name = "IP:PORT")]
    pub peer_listen: SocketAddr,

    /// Also serve `/healthz`, `/readyz` and `/metrics`, and nothing else,
    /// over plain HTTP at this address, as etcd's --listen-metrics-urls
    /// does: for probes and scrapers that cannot present a client
    /// certificate when --client-cert-auth is on. Unset: none.
    #[arg(long, env = "PHXKV_METRICS_LISTEN", value_name = "IP:PORT",
          value_parser = parse_listen)]
    pub metrics_listen: Option<SocketAddr>,

    /// Bootstrap members of a new cluster: `name=http://host:peerport,...`
    /// (this node included, the same list on every member). Used only when
    /// the data directory is new: the member whose name sorts first creates
    /// the cluster once every member has answered that it is empty; a node
    /// whose data directory is new while the cluster exists (a lost volume)
    /// waits to be replaced (`phxkv members replace NAME`).
    #[arg(long, env = "PHXKV_INITIAL_MEMBERS", conflicts_with_all = ["discovery", "join"])]
    pub initial_members: Option<String>,

    /// Find the bootstrap members the Kubernetes way: `dns:<headless-service>`;
    /// pods are `<statefulset>-<ordinal>.<service>`, the count is `--replicas`.
    /// A pod whose ordinal is past the count starts empty and waits to be
    /// added, as with `--join` (how a scaled-up StatefulSet grows).
    #[arg(long, env = "PHXKV_DISCOVERY", requires = "replicas")]
    pub discovery: Option<String>,

    /// Number of bootstrap replicas, with `--discovery`.
    #[arg(long, env = "PHXKV_REPLICAS")]
    pub replicas: Option<u32>,

    /// Start with no members and wait to be added (`POST /v1/cluster/members`
    /// on the existing cluster).
    #[arg(long, env = "PHXKV_JOIN", default_value_t = false)]
    pub join: bool,

    /// Name of the cluster; a data directory of another cluster is refused.
    #[arg(long, env = "PHXKV_CLUSTER_ID", default_value = "phxkv")]
    pub cluster_id: String,

    /// File holding the cluster token that peers present to each other and
    /// that membership changes require. With --auth it is also the
    /// bootstrap admin credential on the client port.
    #[arg(long, env = "PHXKV_CLUSTER_TOKEN_FILE")]
    pub cluster_token_file: Option<PathBuf>,

    /// Require a bearer token on the client port for everything but the
    /// probes, /metrics and the docs: the cluster token (admin) or an API
    /// token made with `phxkv auth token create`, whose roles say which key
    /// prefixes it may read and write. Wrong tokens answer 401, missing
    /// permissions 403, and an address that sent 10 wrong tokens within
    /// 60 s gets 429 until the 60 s are over (valid API tokens still pass).
    /// On start, a node with --auth also switches auth on for the whole
    /// cluster (as `phxkv auth enable` does), so replicas started without
    /// the flag require a credential too.
    #[arg(long, env = "PHXKV_AUTH", default_value_t = false)]
    pub auth: bool,

    /// Master lease duration (e.g. 1s, 1500ms). Every node must use the same.
    ///
    /// It bounds failover: after the master dies, the others wait out the
    /// lease they granted it before electing a new one (then heartbeats run
    /// every lease/10, elections start after lease/5 to 2*lease/5 of silence).
    /// 1s fails over about as fast as etcd's default 1s election timeout.
    /// A longer lease tolerates longer stalls of the master (a pause, a slow
    /// disk) before mastership moves; it never affects safety.
    #[arg(long, env = "PHXKV_LEASE", default_value = "1s", value_parser = parse_duration)]
    pub lease: Duration,

    /// How the master makes sure it is still master before a linearizable
    /// read. Every node of a cluster must use the same; a node refuses peers
    /// in the other mode.
    ///
    /// `lease` (the default): from its master lease, with no round trip.
    /// Safe while clock rates differ by less than --max-drift-ppm and no
    /// process is paused between checking its lease and answering; after a
    /// master dies the others wait out its lease before electing a new one.
    /// `quorum`: after a round trip to a majority that starts after the
    /// read arrived (etcd's ReadIndex). Nothing depends on clocks, reads
    /// cost a round trip (shared by the reads waiting at once), and a new
    /// master is elected without waiting out a lease.
    #[arg(long, env = "PHXKV_READ_MODE", value_enum, default_value_t = ReadModeArg::Lease)]
    pub read_mode: ReadModeArg,

    /// Bound on clock-rate drift between nodes, in parts per million.
    #[arg(long, env = "PHXKV_MAX_DRIFT_PPM", default_value_t = 10_000)]
    pub max_drift_ppm: u32,

    /// How long a write waits for its outcome before answering 504 (the
    /// write may still commit). A replica whose master failed sends the
    /// write again, under the same request id, to the next master, but
    /// only within 5 s of first sending it (or this timeout, if shorter).
    /// A copy is never applied twice: one chosen after the first was
    /// forgotten (more than 100,000 writes later) is refused, and the write
    /// answered 504 too.
    #[arg(long, env = "PHXKV_WRITE_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub write_timeout: Duration,

    /// How long a connection, on either port, may wait for its next
    /// request head to be complete (from when it opens, or from the end of
    /// its previous answer) before it is closed: idle keep-alive
    /// connections, and clients that send a request a byte at a time.
    /// Answers that take long (a watch, a lock wait) are never cut. Keep it
    /// above your clients' pool idle timeouts (Go's and reqwest's 90 s,
    /// curl's 118 s), so that they close an idle connection first.
    #[arg(long, env = "PHXKV_IDLE_TIMEOUT", default_value = "2m",
          value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// How long a request body may take to arrive in full before the
    /// request is refused with 408 `request_timeout` (nothing changes).
    /// The default passes the largest body a node takes at about half a
    /// megabyte a second.
    #[arg(long, env = "PHXKV_BODY_TIMEOUT", default_value = "2m",
          value_parser = parse_duration, value_name = "DURATION")]
    pub body_timeout: Duration,

    /// Largest key, in bytes (units as for --quota-bytes).
    #[arg(long, env = "PHXKV_MAX_KEY_BYTES", default_value_t = 4096,
          value_parser = super::parse_bytes_usize, value_name = "BYTES")]
    pub max_key_bytes: usize,

    /// Largest value, in bytes (units as for --quota-bytes).
    #[arg(long, env = "PHXKV_MAX_VALUE_BYTES", default_value_t = 1 << 20,
          value_parser = super::parse_bytes_usize, value_name = "BYTES")]
    pub max_value_bytes: usize,

    /// Most compares plus operations in one transaction.
    #[arg(long, env = "PHXKV_MAX_TXN_OPS", default_value_t = 128)]
    pub max_txn_ops: usize,

    /// Largest size the store may reach (2 GiB by default; 0 for no
    /// quota), counted as its keys and values plus 144 bytes per key, about
    /// what each key takes in memory. The whole store is kept in memory on
    /// every replica, so set it well below the memory each replica has,
    /// about a third of it. Past it, writes that add data are refused with
    /// 507 `quota_exceeded` until keys are deleted; deletes are always
    /// taken. Give every replica the same quota. Sizes here and in the
    /// other byte options take a unit: 2Gi (or 2GiB) is 2 × 1024³, 2G is
    /// 2 × 1000³; Ki, Mi, Ti and k, M, T alike.
    #[arg(long, env = "PHXKV_QUOTA_BYTES", value_name = "BYTES", default_value_t = DEFAULT_QUOTA_BYTES,
          value_parser = super::parse_bytes)]
    pub quota_bytes: u64,

    /// Free space to keep on the data directory's file system (32 MiB by
    /// default: two log segments; 0 for no check), on top of the store's
    /// size (see --quota-bytes), which the next snapshot may take. While
    /// less is free, writes that add data are refused with 507
    /// `disk_full`; deletes are always taken. A replica that cannot write
    /// its log stops, and equal volumes fill together, so without this a
    /// full volume would stop every replica at once. The log and a
    /// compaction take 64 MiB besides, so a volume smaller than that plus
    /// the reserve refuses every write (logged as an error at start).
    #[arg(long, env = "PHXKV_DISK_RESERVE_BYTES", value_name = "BYTES", default_value_t = DEFAULT_DISK_RESERVE_BYTES,
          value_parser = super::parse_bytes)]
    pub disk_reserve_bytes: u64,

    /// Compact the log into a snapshot after this many applied instances.
    #[arg(long, env = "PHXKV_SNAPSHOT_EVERY", default_value_t = 10_000)]
    pub snapshot_every: u64,

    /// Compact the log into a snapshot once this many bytes of writes were
    /// applied since the last one, however few the instances. Every
    /// instance since the last snapshot is held in memory, so this bounds
    /// what the log takes when values are large (a key overwritten with
    /// 1 MiB values). Each compaction writes the whole store to disk.
    #[arg(long, env = "PHXKV_SNAPSHOT_EVERY_BYTES", value_name = "BYTES",
          default_value_t = DEFAULT_SNAPSHOT_EVERY_BYTES,
          value_parser = |s: &str| bytes_in(s, SNAPSHOT_EVERY_BYTES))]
    pub snapshot_every_bytes: u64,

    /// Threads that serve the client and peer ports (the engine and the
    /// log have threads of their own). Default: one per CPU this process
    /// may use, as its CPU limit allows. Replicas that share a machine's
    /// cores run faster with fewer: measured with three replicas on two
    /// cores, one thread each gave 7 to 10% more writes per second than two.
    #[arg(long, env = "PHXKV_WORKER_THREADS", value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Send every outgoing request to peers through this HTTP proxy
    /// (`http://host:port`): an egress proxy, or a fault-injection harness
    /// that cuts chosen links. `https://` peers are reached through CONNECT
    /// tunnels, with TLS end to end. Without it, peers are reached directly
    /// (proxy environment variables are ignored for peer traffic).
    #[arg(long, env = "PHXKV_PEER_PROXY", value_name = "URL")]
    pub peer_proxy: Option<String>,

    /// Accepted so that configurations of earlier versions still start, and
    /// ignored: peers always speak JSON (the binary `compact` encoding was
    /// removed; a node that still names it says so once in its log).
    #[arg(long, env = "PHXKV_PEER_ENCODING", hide = true,
          value_parser = ["json", "compact"])]
    pub peer_encoding: Option<String>,

    /// Serve the client port over TLS with this certificate chain (PEM,
    /// leaf first). Reloaded when the file changes: the next connection
    /// gets the new certificate, open ones keep theirs. Also the peer
    /// port's certificate unless --peer-tls-cert is given.
    #[arg(
        long,
        env = "PHXKV_TLS_CERT",
        value_name = "PATH",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "PHXKV_TLS_KEY",
        value_name = "PATH",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// CA certificates (PEM) that sign client certificates (see
    /// --client-cert-auth) and, unless --peer-tls-ca is given, the peers'.
    #[arg(long, env = "PHXKV_TLS_CA", value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,

    /// Certificate revocation lists (PEM, as `openssl ca -gencrl` writes
    /// them) of the CAs in --tls-ca: a certificate they list is refused on
    /// the client port (with --client-cert-auth) and, unless --peer-tls-ca
    /// is given, on the peer port and by new calls to peers. Reloaded when
    /// the file changes, like the certificates; connections to this node
    /// that are open with a certificate the new lists revoke are closed.
    /// A list older than the one in force for its CA is refused, also
    /// across restarts (the lists in force are kept in --data-dir).
    #[arg(long, env = "PHXKV_TLS_CRL", value_name = "PATH", requires = "tls_ca")]
    pub tls_crl: Option<PathBuf>,

    /// Refuse clients on the client port that do not present a certificate
    /// signed by --tls-ca. Probes and scrapers that present none can use
    /// --metrics-listen.
    #[arg(long, env = "PHXKV_CLIENT_CERT_AUTH", default_value_t = false,
          requires_all = ["tls_cert", "tls_ca"])]
    pub client_cert_auth: bool,

    /// With auth on, a request that sends no bearer token acts as the API
    /// token its client certificate names: the token whose id (16 hex
    /// digits) is the certificate's subject common name (CN). Revoking that
    /// token shuts the certificate out. Needs --client-cert-auth.
    #[arg(
        long,
        env = "PHXKV_CLIENT_CERT_IDENTITY",
        default_value_t = false,
        requires = "client_cert_auth"
    )]
    pub client_cert_identity: bool,

    /// The peer port's certificate (PEM), when it is not --tls-cert. It is
    /// both served to peers and presented when calling them, so it must be
    /// valid for the host name of this node's peer URL. With a peer
    /// certificate the peer port speaks mutual TLS only and peer URLs are
    /// https://.
    #[arg(
        long,
        env = "PHXKV_PEER_TLS_CERT",
        value_name = "PATH",
        requires = "peer_tls_key"
    )]
    pub peer_tls_cert: Option<PathBuf>,

    /// The private key of --peer-tls-cert (PEM).
    #[arg(
        long,
        env = "PHXKV_PEER_TLS_KEY",
        value_name = "PATH",
        requires = "peer_tls_cert"
    )]
    pub peer_tls_key: Option<PathBuf>,

    /// The CA (PEM) that signs every peer's certificate, when it is not
    /// --tls-ca. A peer without a certificate it signed is refused during
    /// the handshake. Give one with --client-cert-auth (or give
    /// --peer-cert-allowed-cn): otherwise every client certificate also
    /// passes the peer port's handshake.
    #[arg(long, env = "PHXKV_PEER_TLS_CA", value_name = "PATH")]
    pub peer_tls_ca: Option<PathBuf>,

    /// Certificate revocation lists (PEM) of --peer-tls-ca: a peer
    /// certificate they list is refused on the peer port and by new calls
    /// to peers. Without --peer-tls-ca, --tls-crl covers peers.
    #[arg(
        long,
        env = "PHXKV_PEER_TLS_CRL",
        value_name = "PATH",
        requires = "peer_tls_ca"
    )]
    pub peer_tls_crl: Option<PathBuf>,

    /// Admit to the peer port only certificates whose subject common name
    /// (CN) is NAME, besides being signed by the peer CA, as etcd's
    /// --peer-cert-allowed-cn does. Client certificates of the same CA name
    /// their holders, not NAME, so they are refused there. This node's own
    /// peer certificate must carry NAME: its peers check it too.
    #[arg(long, env = "PHXKV_PEER_CERT_ALLOWED_CN", value_name = "NAME")]
    pub peer_cert_allowed_cn: Option<String>,

    /// Log format on stderr.
    #[arg(long, env = "PHXKV_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Archive continuously to this location: `s3://bucket/prefix` (S3 or
    /// an S3-compatible server) or `file:///dir`. The master ships the log
    /// in segments and takes periodic base snapshots there, for
    /// `phxkv backup restore --from-archive` to any point in time. Give
    /// every cluster its own location. S3 credentials, region and endpoint
    /// come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
    /// AWS_ENDPOINT_URL, or from --archive-credentials-file.
    #[arg(long, env = "PHXKV_ARCHIVE_URL", value_name = "URL")]
    pub archive_url: Option<String>,

    /// A file of NAME=value lines (AWS_ACCESS_KEY_ID=..., etc.) for the
    /// archive; its values win over the environment's.
    #[arg(
        long,
        env = "PHXKV_ARCHIVE_CREDENTIALS_FILE",
        value_name = "PATH",
        requires = "archive_url"
    )]
    pub archive_credentials_file: Option<PathBuf>,

    /// How often the master puts a new base snapshot in the archive: a
    /// restore replays the log from the newest base before its target.
    #[arg(long, env = "PHXKV_ARCHIVE_BASE_EVERY", default_value = "6h",
          value_parser = parse_duration, value_name = "DURATION")]
    pub archive_base_every: Duration,

    /// How often the master ships what was applied since the last time:
    /// the most a lost cluster loses beyond what the archive holds.
    #[arg(long, env = "PHXKV_ARCHIVE_FLUSH_EVERY", default_value = "1s",
          value_parser = parse_duration, value_name = "DURATION")]
    pub archive_flush_every: Duration,

    /// How long nothing may have been uploaded to an archive before a
    /// cluster restored from its latest point continues it (takes it over
    /// from the cluster it came from, which should have stopped: a running
    /// one uploads at least every 30 s).
    #[arg(long, env = "PHXKV_ARCHIVE_TAKEOVER_AFTER", default_value = "2m",
          value_parser = parse_duration, value_name = "DURATION")]
    pub archive_takeover_after: Duration,

    /// How much time's log segments the master merges into one object,
    /// once that window (aligned to the epoch) has been over for a sixth of
    /// it: an archive then grows by one object an hour, not one a second
    /// (merged segments hold at most 16 MiB or 3,600 segments). 0 merges
    /// nothing.
    #[arg(long, env = "PHXKV_ARCHIVE_MERGE_EVERY", default_value = "1h",
          value_parser = parse_duration, value_name = "DURATION")]
    pub archive_merge_every: Duration,

    /// Memory each replica keeps for applied log entries not yet archived
    /// (in bytes). The master continues the archive from it; when a base
    /// snapshot upload takes longer than this much writing, the archive
    /// starts over from a new base.
    #[arg(long, env = "PHXKV_ARCHIVE_TAIL_BYTES", default_value_t = 64 << 20,
          value_parser = |s: &str| bytes_in(s, (1 << 20)..=(16 << 30)),
          value_name = "BYTES")]
    pub archive_tail_bytes: u64,
}

/// Everything `serve` needs, validated.
#[derive(Debug)]
pub struct Validated {
    pub node: NodeConfig,
    /// TLS of the client port; none serves plain HTTP.
    pub client_tls: Option<Arc<Material>>,
    pub listen: SocketAddr,
    pub peer_listen: SocketAddr,
    /// Where the probes and metrics are also served, in plain HTTP.
    pub metrics_listen: Option<SocketAddr>,
    pub http: HttpTimeouts,
    pub log_format: LogFormat,
}

/// How long the HTTP side waits on a client (`--idle-timeout`,
/// `--body-timeout`).
#[derive(Clone, Copy, Debug)]
pub struct HttpTimeouts {
    /// For the next request head (see [`crate::net::serve`]).
    pub idle: Duration,
    /// For a request body (see [`crate::api::body`]).
    pub body: Duration,
}

impl Default for HttpTimeouts {
    fn default() -> Self {
        HttpTimeouts {
            idle: crate::net::IDLE_TIMEOUT,
            body: crate::api::body::BODY_TIMEOUT,
        }
    }
}

impl ServeArgs {
    /// Checks every flag and builds the node's configuration.
    fn archive_settings(&self) -> Result<Option<crate::archive::archiver::Settings>, CliError> {
        let bad = |flag: &str, msg: String| CliError::Usage(format!("--{flag}: {msg}"));
        let Some(url) = &self.archive_url else {
            return Ok(None);
        };
        if !url.starts_with("s3://") && !url.starts_with("file:///") {
            return Err(bad(
                "archive-url",
                format!("{url}: expected s3://bucket/prefix or file:///absolute/dir"),
            ));
        }
        if self.archive_base_every < Duration::from_secs(60) {
            return Err(bad("archive-base-every", "must be at least 1m".into()));
        }
        if self.archive_flush_every < Duration::from_millis(100)
            || self.archive_flush_every > Duration::from_secs(600)
        {
            return Err(bad(
                "archive-flush-every",
                "must be between 100ms and 10m".into(),
            ));
        }
        let mut settings = crate::archive::archiver::Settings::new(url.clone());
        settings.credentials = self.archive_credentials_file.clone();
        settings.base_every = self.archive_base_every;
        settings.flush_every = self.archive_flush_every;
        settings.takeover_after = self.archive_takeover_after;
        settings.merge_every = match self.archive_merge_every {
            d if d.is_zero() => None,
            d if d < Duration::from_secs(1) || d > Duration::from_secs(24 * 3600) => {
                return Err(bad(
                    "archive-merge-every",
                    "must be 0 (no merging) or between 1s and 24h".into(),
                ));
            }
            d => Some(d),
        };
        settings.tail_bytes = usize::try_from(self.archive_tail_bytes).unwrap_or(usize::MAX);
        Ok(Some(settings))
    }

    /// Loads the certificates the flags name: (client port, peer port).
    #[allow(clippy::type_complexity)]
    fn tls_settings(&self) -> Result<(Option<Arc<Material>>, Option<Arc<Material>>), CliError> {
        let bad = |flag: &str, msg: String| CliError::Usage(format!("--{flag}: {msg}"));
        let client = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => {
                let auth = if self.client_cert_auth {
                    ClientAuth::Required
                } else {
                    ClientAuth::Off
                };
                let paths = TlsPaths {
                    cert: cert.clone(),
                    key: key.clone(),
                    ca: self.tls_ca.clone().filter(|_| self.client_cert_auth),
                    crl: self.tls_crl.clone().filter(|_| self.client_cert_auth),
                };
                let flags = ["tls-cert", "tls-key", "tls-ca", "tls-crl"];
                let kept = crate::tls::kept::path_in(&self.data_dir, "client");
                let loaded = Material::load_keeping(paths, auth, Some(kept));
                Some(loaded.map_err(|e| bad(flag_of_file(&e, flags), e.to_string()))?)
            }
            _ => None,
        };
        let (peer_cert, peer_key, cert_flag) = match (&self.peer_tls_cert, &self.peer_tls_key) {
            (Some(c), Some(k)) => (c, k, "peer-tls-cert"),
            _ => match (&self.tls_cert, &self.tls_key) {
                (Some(c), Some(k)) => (c, k, "tls-cert"),
                _ => {
                    for (flag, given) in [
                        ("peer-tls-ca", self.peer_tls_ca.is_some()),
                        ("tls-crl", self.tls_crl.is_some()),
                        ("peer-cert-allowed-cn", self.peer_cert_allowed_cn.is_some()),
                    ] {
                        if given {
                            return Err(bad(
                                flag,
                                "needs a certificate for the peer port (--peer-tls-cert or \
                                 --tls-cert)"
                                    .into(),
                            ));
                        }
                    }
                    return Ok((client, None));
                }
            },
        };
        let Some(ca) = self.peer_tls_ca.clone().or_else(|| self.tls_ca.clone()) else {
            return Err(bad(
                "peer-tls-ca",
                format!(
                    "required with --{cert_flag}: peers prove who they are with certificates \
                     signed by this CA (or give --tls-ca)"
                ),
            ));
        };
        if self.tls_crl.is_some() && !self.client_cert_auth && self.peer_tls_ca.is_some() {
            return Err(bad(
                "tls-crl",
                "checks nothing here: the client port asks for no certificates without \
                 --client-cert-auth, and peers have --peer-tls-ca (give their lists with \
                 --peer-tls-crl)"
                    .into(),
            ));
        }
        let crl = match &self.peer_tls_ca {
            Some(_) => self.peer_tls_crl.clone(),
            None => self.tls_crl.clone(),
        };
        let paths = TlsPaths {
            cert: peer_cert.clone(),
            key: peer_key.clone(),
            ca: Some(ca),
            crl,
        };
        let auth = match &self.peer_cert_allowed_cn {
            None => ClientAuth::Required,
            Some(name) if name.trim().is_empty() || name.len() > 255 => {
                return Err(bad(
                    "peer-cert-allowed-cn",
                    "give the common name of the peers' certificates (1 to 255 characters)".into(),
                ));
            }
            Some(name) => ClientAuth::RequiredNamed(name.clone()),
        };
        let key_flag = match self.peer_tls_cert {
            Some(_) => "peer-tls-key",
            None => "tls-key",
        };
        let (ca_flag, crl_flag) = match self.peer_tls_ca {
            Some(_) => ("peer-tls-ca", "peer-tls-crl"),
            None => ("tls-ca", "tls-crl"),
        };
        let flags = [cert_flag, key_flag, ca_flag, crl_flag];
        let kept = crate::tls::kept::path_in(&self.data_dir, "peer");
        let peer = Material::load_keeping(paths, auth, Some(kept))
            .map_err(|e| bad(flag_of_file(&e, flags), e.to_string()))?;
        Ok((client, Some(peer)))
    }

    /// The node's name: `--id`, or else the host name (a pod's name).
    fn node_name(&self) -> Result<String, CliError> {
        let bad = |msg: String| CliError::Usage(format!("--id: {msg}"));
        let name = match &self.id {
            Some(n) => n.clone(),
            None => hostname()
                .ok_or_else(|| bad("no node name given and the host name is unknown".into()))?,
        };
        cluster::validate_name(&name).map_err(bad)?;
        Ok(name)
    }

    pub fn validate(&self) -> Result<Validated, CliError> {
        let bad = |flag: &str, msg: String| CliError::Usage(format!("--{flag}: {msg}"));
        let name = self.node_name()?;
        if self.cluster_id.is_empty() {
            return Err(bad("cluster-id", "must not be empty".into()));
        }
        let (client_tls, peer_tls) = self.tls_settings()?;
        let bootstrap = if let Some(spec) = &self.initial_members {
            let m = cluster::parse_initial_members(spec).map_err(|e| bad("initial-members", e))?;
            for member in &m {
                cluster::check_peer_scheme(&member.peer_url, peer_tls.is_some()).map_err(|e| {
                    bad("initial-members", format!("member {:?}: {e}", member.name))
                })?;
            }
            if !m.iter().any(|x| x.name == name) {
                return Err(bad(
                    "initial-members",
                    format!("this node ({name:?}) is not in the list"),
                ));
            }
            m
        } else if let Some(d) = &self.discovery {
            let service = d.strip_prefix("dns:").ok_or_else(|| {
                bad(
                    "discovery",
                    format!("{d:?} is not of the form dns:<headless-service>"),
                )
            })?;
            if service.is_empty() {
                return Err(bad("discovery", "the service name is empty".into()));
            }
            let replicas = self.replicas.unwrap_or(0);
            let scheme = crate::tls::scheme(peer_tls.is_some());
            let initial =
                cluster::dns_members(&name, service, replicas, scheme, self.peer_listen.port())
                    .map_err(|e| bad("discovery", e))?;
            // Pods past the bootstrap count are new members: they start
            // empty and wait to be added, exactly like `--join`.
            if initial.iter().any(|m| m.name == name) {
                initial
            } else {
                Vec::new()
            }
        } else if self.join {
            Vec::new()
        } else {
            return Err(CliError::Usage(
                "one of --initial-members, --discovery dns:<service> or --join is required".into(),
            ));
        };
        if let Some(peer) = &peer_tls {
            // This node's peer URL is known when it is in the bootstrap
            // list; one that joins learns it only when added.
            let own_url = bootstrap
                .iter()
                .find(|m| m.name == name)
                .and_then(|m| reqwest::Url::parse(&m.peer_url).ok());
            let host = own_url.as_ref().and_then(|u| u.host_str());
            let flag = match self.peer_tls_cert {
                Some(_) => "peer-tls-cert",
                None => "tls-cert",
            };
            peer.check_as_peer(host).map_err(|why| {
                bad(
                    flag,
                    format!("{}: this certificate {why}", peer.paths().cert.display()),
                )
            })?;
        }
        let token = match &self.cluster_token_file {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|e| bad("cluster-token-file", format!("{}: {e}", path.display())))?
                .trim()
                .to_string(),
            None => {
                return Err(bad(
                    "cluster-token-file",
                    "required: peers authenticate with this token".into(),
                ));
            }
        };
        if token.len() < 16 {
            return Err(bad(
                "cluster-token-file",
                "the token must be at least 16 characters".into(),
            ));
        }
        check_lease(self.lease).map_err(|m| bad("lease", m))?;
        if self.max_drift_ppm >= 500_000 {
            return Err(bad("max-drift-ppm", "must be below 500000".into()));
        }
        if self.write_timeout < Duration::from_millis(100) {
            return Err(bad("write-timeout", "must be at least 100ms".into()));
        }
        for (flag, d) in [
            ("idle-timeout", self.idle_timeout),
            ("body-timeout", self.body_timeout),
        ] {
            if !HTTP_TIMEOUTS.contains(&d) {
                return Err(bad(flag, "must be between 1s and 1h".into()));
            }
        }
        if self.max_key_bytes == 0 || self.max_key_bytes > 1 << 20 {
            return Err(bad("max-key-bytes", "must be between 1 and 1048576".into()));
        }
        if self.max_value_bytes == 0 || self.max_value_bytes > 64 << 20 {
            return Err(bad(
                "max-value-bytes",
                "must be between 1 and 67108864".into(),
            ));
        }
        if self.max_txn_ops == 0 || self.max_txn_ops > 10_000 {
            return Err(bad("max-txn-ops", "must be between 1 and 10000".into()));
        }
        if self.snapshot_every < 100 {
            return Err(bad("snapshot-every", "must be at least 100".into()));
        }
        if let Some(p) = &self.peer_proxy
            && (reqwest::Proxy::http(p).is_err() || !p.starts_with("http://"))
        {
            return Err(bad(
                "peer-proxy",
                format!("{p:?} is not an http://host:port proxy URL"),
            ));
        }
        if self.listen == self.peer_listen && self.listen.port() != 0 {
            return Err(bad("peer-listen", "must differ from --listen".into()));
        }
        if let Some(m) = self.metrics_listen
            && m.port() != 0
            && (m == self.listen || m == self.peer_listen)
        {
            return Err(bad(
                "metrics-listen",
                "must differ from --listen and --peer-listen".into(),
            ));
        }
        let mut engine = EngineConfig::new(0);
        engine.lease = self.lease;
        engine.max_drift_ppm = self.max_drift_ppm;
        engine.read_mode = self.read_mode.into();
        // Timers scale with the lease so a short lease fails over quickly.
        engine.heartbeat = (self.lease / 10).max(Duration::from_millis(20));
        engine.election_timeout = (self.lease / 5).max(Duration::from_millis(100));
        engine.retry = (self.lease / 10).max(Duration::from_millis(50));
        Ok(Validated {
            node: NodeConfig {
                name,
                cluster_id: self.cluster_id.clone(),
                data_dir: self.data_dir.clone(),
                bootstrap,
                engine,
                limits: Limits {
                    max_key_bytes: self.max_key_bytes,
                    max_value_bytes: self.max_value_bytes,
                    max_txn_ops: self.max_txn_ops,
                },
                quota_bytes: self.quota_bytes,
                disk_reserve_bytes: self.disk_reserve_bytes,
                token,
                write_timeout: self.write_timeout,
                read_timeout: self.write_timeout,
                compact_after: self.snapshot_every,
                compact_after_bytes: self.snapshot_every_bytes,
                peer_proxy: self.peer_proxy.clone(),
                archive: self.archive_settings()?,
                peer_tls,
                auth: self.auth,
                client_cert_identity: self.client_cert_identity,
            },
            client_tls,
            listen: self.listen,
            peer_listen: self.peer_listen,
            metrics_listen: self.metrics_listen,
            http: HttpTimeouts {
                idle: self.idle_timeout,
                body: self.body_timeout,
            },
            log_format: self.log_format,
        })
    }
}

fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|s| s.trim().to_string())
                .filter(|h| !h.is_empty())
        })
}

/// A node with both listeners bound, ready to serve.
#[derive(Debug)]
pub struct Running {
    pub node: Node,
    pub client: tokio::task::JoinHandle<()>,
    pub peer: tokio::task::JoinHandle<()>,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
}

/// Binds both listeners and starts the node; serving stops when `shutdown`
/// resolves, after in-flight requests finish.
pub async fn start(
    cfg: NodeConfig,
    client_tls: Option<Arc<Material>>,
    listen: SocketAddr,
    peer_listen: SocketAddr,
    http: HttpTimeouts,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> Result<Running, CliError> {
    let client_listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| CliError::Usage(format!("--listen {listen}: {e}")))?;
    let peer_listener = tokio::net::TcpListener::bind(peer_listen)
        .await
        .map_err(|e| CliError::Usage(format!("--peer-listen {peer_listen}: {e}")))?;
    let client_addr = client_listener.local_addr().unwrap_or(listen);
    let peer_addr = peer_listener.local_addr().unwrap_or(peer_listen);
    let metrics = Metrics::new();
    let data_dir = cfg.data_dir.clone();
    let peer_tls = cfg.peer_tls.clone();
    let node = Node::start(cfg, metrics.clone()).map_err(|e| {
        CliError::Fatal(format!(
            "cannot start with data directory {}: {e}",
            data_dir.display()
        ))
    })?;
    let mut app = crate::api::public_router(node.clone())
        .layer(axum::Extension(crate::api::body::BodyTimeout(http.body)))
        .layer(axum::middleware::from_fn(telemetry::trace_requests))
        .layer(axum::middleware::from_fn_with_state(
            metrics.clone(),
            telemetry::track_requests,
        ));
    let mut peer_app = crate::node::peer::router(node.clone());
    // Started inside a replica's span (several replicas in one process):
    // everything it does, requests included, names it in the logs.
    let span = tracing::Span::current();
    if !span.is_none() {
        app = app.layer(axum::middleware::from_fn_with_state(
            span.clone(),
            telemetry::in_replica_span,
        ));
        peer_app = peer_app.layer(axum::middleware::from_fn_with_state(
            span.clone(),
            telemetry::in_replica_span,
        ));
    }
    let (closing_node, mut s0) = (node.clone(), shutdown.clone());
    tokio::spawn(
        async move {
            let _ = s0.wait_for(|v| *v).await;
            closing_node.begin_closing();
        }
        .in_current_span(),
    );
    for (port, tls) in [("client", &client_tls), ("peer", &peer_tls)] {
        if let Some(tls) = tls {
            watch_certificate(port, tls.clone(), metrics.clone(), shutdown.clone());
        }
    }
    let client = serve_until(
        client_listener,
        client_tls,
        app,
        shutdown.clone(),
        "client",
        None,
        http.idle,
    )?;
    let peer = serve_until(
        peer_listener,
        peer_tls,
        peer_app,
        shutdown,
        "peer",
        Some(crate::tls::listener::PEER_READ_BUFFER),
        http.idle,
    )?;
    Ok(Running {
        node,
        client,
        peer,
        client_addr,
        peer_addr,
    })
}

/// The store quota when none is given: 2 GiB (keys, values and their
/// bookkeeping), etcd's default backend quota too.
pub const DEFAULT_QUOTA_BYTES: u64 = 2 << 30;

/// The master leases a node takes (`--lease` of `serve` and `dev`): long
/// enough for heartbeats at a tenth of it, short enough to fail over.
pub fn check_lease(lease: Duration) -> Result<(), String> {
    if lease < Duration::from_millis(100) || lease > Duration::from_secs(120) {
        return Err(format!("must be between 100ms and 120s, got {lease:?}"));
    }
    Ok(())
}

/// The default of `--disk-reserve-bytes`: two log segments.
pub const DEFAULT_DISK_RESERVE_BYTES: u64 = 2 * crate::storage::SEGMENT_BYTES;

/// `--snapshot-every-bytes` when none is given: 64 MiB, so that the log
/// stays well inside the memory left beside the store quota the operator
/// derives (a quarter of the memory limit) on its smallest settings.
pub const DEFAULT_SNAPSHOT_EVERY_BYTES: u64 = 64 << 20;

/// An address to listen on: an IP address and a port. A host name is
/// refused with what to write instead (it could resolve to several
/// addresses, or to none at start).
fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        let port = s.rsplit_once(':').map_or("8080", |(_, p)| p);
        if !port.is_empty()
            && port.chars().all(|c| c.is_ascii_digit())
            && port.parse::<u16>().is_err()
        {
            return format!(
                "{s:?}: port {port} is out of range (1 to 65535, or 0 for any free one)"
            );
        }
        let port = if port.parse::<u16>().is_ok() {
            port
        } else {
            "8080"
        };
        format!(
            "{s:?} is not an IP address and port; write 127.0.0.1:{port} for this machine \
             only, 0.0.0.0:{port} for every interface, or [::]:{port} for IPv6"
        )
    })
}

/// A size (see [`super::parse_bytes`]) within `range`, or why not.
fn bytes_in(s: &str, range: std::ops::RangeInclusive<u64>) -> Result<u64, String> {
    let n = super::parse_bytes(s)?;
    if range.contains(&n) {
        return Ok(n);
    }
    Err(format!(
        "{n} bytes is outside {} to {}",
        crate::text::bytes(*range.start()),
        crate::text::bytes(*range.end())
    ))
}

/// What `--snapshot-every-bytes` may be: 1 MiB to 16 GiB.
pub const SNAPSHOT_EVERY_BYTES: std::ops::RangeInclusive<u64> = (1 << 20)..=(16 << 30);

/// What `--idle-timeout` and `--body-timeout` may be: 1s to 1h.
pub const HTTP_TIMEOUTS: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(3600);

/// The flag of the file a TLS error is about, from `flags`: the
/// certificate's, the key's, the CA's and the revocation lists' (the
/// certificate's when the error names no file).
fn flag_of_file(e: &crate::tls::TlsError, flags: [&'static str; 4]) -> &'static str {
    use crate::tls::{FileRole, TlsError};
    let [cert, key, ca, crl] = flags;
    match e {
        TlsError::File {
            role: Some(role), ..
        } => match role {
            FileRole::Cert => cert,
            FileRole::Key => key,
            FileRole::Ca => ca,
            FileRole::Crl => crl,
        },
        _ => cert,
    }
}

/// How often certificate files are looked at besides at each handshake.
const CERTIFICATE_CHECK: Duration = Duration::from_secs(30);

/// Keeps `port`'s expiry metric current and looks at its files every
/// [`CERTIFICATE_CHECK`]: peer connections last for hours, so without this
/// a renewed certificate would wait for the next handshake to be read.
fn watch_certificate(
    port: &'static str,
    tls: Arc<Material>,
    metrics: Metrics,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    tls.observe_expiry(move |t| metrics.set_tls_expiry(port, t));
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(CERTIFICATE_CHECK) => tls.refresh(),
                    _ = shutdown.wait_for(|v| *v) => return,
                }
            }
        }
        .in_current_span(),
    );
}

/// Serves `app` on `listener` (over TLS with `tls`) until `shutdown` turns
/// true, letting requests in flight finish; `what` names the listener in
/// the log; `read_buffer` is the TLS listener's (see
/// `crate::tls::listener`), `idle` the connections' idle timeout.
fn serve_until(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<Material>>,
    app: axum::Router,
    shutdown: tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    read_buffer: Option<usize>,
    idle: Duration,
) -> Result<tokio::task::JoinHandle<()>, CliError> {
    let Some(tls) = tls else {
        return Ok(serve_on(PlainListener(listener), app, idle, None, shutdown));
    };
    let config = tls
        .server_config()
        .map_err(|e| CliError::Fatal(format!("{what} port TLS: {e}")))?;
    let listener = crate::tls::listener::TlsListener::new(listener, config, what, read_buffer)
        .map_err(|e| CliError::Fatal(format!("{what} port: {e}")))?;
    Ok(serve_on(listener, app, idle, Some(tls), shutdown))
}

fn serve_on<L, S>(
    listener: L,
    app: axum::Router,
    idle: Duration,
    tls: Option<Arc<Material>>,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()>
where
    L: axum::serve::Listener<Addr = SocketAddr, Io = crate::net::Lingering<S>>,
    S: crate::net::OverTcp,
{
    tokio::spawn(
        crate::net::serve(listener, app, idle, tls, async move {
            let _ = shutdown.wait_for(|v| *v).await;
        })
        .in_current_span(),
    )
}

/// `phxkv serve`.
pub async fn run(args: ServeArgs) -> Result<(), CliError> {
    // Logging first: loading the TLS files (in `validate`) has warnings
    // to give, such as a certificate that has expired or a revocation list
    // kept from before a restart standing in for an older one.
    let _telemetry = telemetry::init("phxkv", &args.node_name()?, args.log_format)
        .map_err(|e| CliError::Fatal(format!("cannot set up logging: {e}")))?;
    let v = args.validate()?;
    if args.peer_encoding.as_deref() == Some("compact") {
        tracing::warn!(
            "--peer-encoding compact (PHXKV_PEER_ENCODING) is ignored: this version's peers \
             speak JSON only, which measured as fast once messages travel on streams"
        );
    }
    if args.client_cert_auth && args.peer_tls_ca.is_none() && args.peer_cert_allowed_cn.is_none() {
        tracing::warn!(
            "--client-cert-auth without --peer-tls-ca or --peer-cert-allowed-cn: the CA of \
             client certificates also admits callers to the peer port's handshake (they still \
             need the cluster token); give peers a CA of their own with --peer-tls-ca, or \
             admit only their certificates' common name with --peer-cert-allowed-cn"
        );
    }
    let (tx, rx) = tokio::sync::watch::channel(false);
    let name = v.node.name.clone();
    let scheme = crate::tls::scheme(v.client_tls.is_some());
    let peer_scheme = crate::tls::scheme(v.node.peer_tls.is_some());
    // Bound before the node starts, so that a taken address stops the
    // start rather than leaving a replica without its probes.
    let metrics_listener = match v.metrics_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| CliError::Usage(format!("--metrics-listen {addr}: {e}")))?,
        ),
        None => None,
    };
    let keeping: Vec<Arc<Material>> = [v.client_tls.clone(), v.node.peer_tls.clone()]
        .into_iter()
        .flatten()
        .collect();
    let data_dir = v.node.data_dir.clone();
    let running = start(
        v.node,
        v.client_tls,
        v.listen,
        v.peer_listen,
        v.http,
        rx.clone(),
    )
    .await?;
    // The node holds its data directory now (locked, its identity
    // checked): the revocation lists in force may be kept there.
    for material in &keeping {
        material.keep_in_force();
    }
    let metrics_addr = match metrics_listener {
        Some(listener) => {
            let addr = listener.local_addr().ok();
            let app = crate::api::probe_router(running.node.clone());
            serve_on(PlainListener(listener), app, v.http.idle, None, rx);
            addr.map(|a| format!("http://{a}"))
        }
        None => None,
    };
    tracing::info!(
        node = %name,
        client = %format!("{scheme}://{}", running.client_addr),
        peer = %format!("{peer_scheme}://{}", running.peer_addr),
        metrics = metrics_addr.as_deref().unwrap_or("none"),
        "phxkv serving"
    );
    let lost = match crate::storage::Presence::of(&data_dir) {
        Ok(presence) => tokio::select! {
            () = super::wait_for_signal() => None,
            why = watch_data_dir(presence) => Some(why),
        },
        Err(e) => {
            tracing::warn!(
                data_dir = %data_dir.display(),
                error = %e,
                "cannot read the data directory to notice it removed while serving"
            );
            super::wait_for_signal().await;
            None
        }
    };
    if let Some(why) = &lost {
        tracing::error!(
            "{why} while this replica ran; stopping. Start it again: with an empty data \
             directory it comes up as a new incarnation that waits to be replaced \
             (the operator does that; by hand, `phxkv members replace NAME`)"
        );
    }
    tracing::info!("shutting down: handing off mastership, finishing in-flight requests");
    running.node.hand_off(Duration::from_secs(3)).await;
    let _ = tx.send(true);
    // Watches end at once (their clients resume elsewhere); a long-lived
    // exchange that does not end by itself (a keep-alive stream, a long
    // wait for a lock) is cut after the grace, so that a rolling restart
    // never waits on a client.
    let grace_ends = tokio::time::Instant::now() + SHUTDOWN_GRACE;
    for (what, server) in [("client", running.client), ("peer", running.peer)] {
        let abort = server.abort_handle();
        if tokio::time::timeout_at(grace_ends, server).await.is_err() {
            tracing::warn!(
                "{what} connections still open after {} s are closed",
                SHUTDOWN_GRACE.as_secs()
            );
            abort.abort();
        }
    }
    running.node.shutdown();
    tracing::info!("stopped");
    match lost {
        Some(why) => Err(CliError::Fatal(format!(
            "{why} while this replica ran; start it again to have it replaced"
        ))),
        None => Ok(()),
    }
}

/// How long a replica that was told to stop lets requests in flight
/// finish (after handing off mastership) before it closes what is left.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// How often a serving replica checks that its data directory is still
/// the one it opened.
const DATA_DIR_CHECK_EVERY: Duration = Duration::from_secs(1);

/// Returns once the data directory is removed or replaced (see
/// [`crate::storage::Presence`]), with what happened.
async fn watch_data_dir(presence: crate::storage::Presence) -> String {
    let mut tick = tokio::time::interval(DATA_DIR_CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let p = presence.clone();
        // A stat may block on a network file system.
        if let Ok(Some(why)) = tokio::task::spawn_blocking(move || p.lost()).await {
            return why;
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Harness {
        #[command(flatten)]
        args: ServeArgs,
    }

    #[test]
    fn a_listen_address_is_refused_with_what_to_write() {
        assert!(parse_listen("127.0.0.1:8080").is_ok());
        let why = parse_listen("127.0.0.1:99999").expect_err("no such port");
        assert!(why.contains("port 99999 is out of range"), "{why}");
        let why = parse_listen("db-0:8080").expect_err("a host name");
        assert!(why.contains("write 127.0.0.1:8080"), "{why}");
        let why = parse_listen("127.0.0.1:").expect_err("no port");
        assert!(why.contains("write 127.0.0.1:8080"), "{why}");
    }

    #[test]
    fn the_quota_flag_states_the_overhead_the_store_counts_per_key() {
        use clap::CommandFactory as _;
        let help = Harness::command().render_long_help().to_string();
        // Lines are wrapped to the terminal's width.
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let said = format!(
            "plus {} bytes per key",
            crate::kv::store::KEY_OVERHEAD_BYTES
        );
        assert!(help.contains(&said), "--quota-bytes should say {said:?}");
    }

    fn pod(name: &str, token: &std::path::Path) -> Result<Validated, CliError> {
        pod_with(name, token, &[])
    }

    fn pod_with(name: &str, token: &std::path::Path, more: &[&str]) -> Result<Validated, CliError> {
        let token = token.to_string_lossy().into_owned();
        let mut argv = vec![
            "phxkv",
            "--id",
            name,
            "--discovery",
            "dns:kv-peers",
            "--replicas",
            "3",
            "--cluster-token-file",
            &token,
        ];
        argv.extend_from_slice(more);
        Harness::try_parse_from(argv)
            .map_err(|e| CliError::Usage(e.to_string()))?
            .args
            .validate()
    }

    #[test]
    fn http_timeouts_default_to_two_minutes_and_refuse_what_makes_no_sense() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "a-cluster-token-of-some-length").expect("token");
        let v = pod("kv-0", &token).expect("valid");
        assert_eq!(v.http.idle, Duration::from_secs(120));
        assert_eq!(v.http.body, Duration::from_secs(120));
        let v = pod_with(
            "kv-0",
            &token,
            &["--idle-timeout", "5m", "--body-timeout", "30s"],
        )
        .expect("valid");
        assert_eq!(
            (v.http.idle, v.http.body),
            (Duration::from_secs(300), Duration::from_secs(30))
        );
        for (flag, value) in [
            ("--idle-timeout", "0s"),
            ("--idle-timeout", "2h"),
            ("--body-timeout", "500ms"),
        ] {
            let err = pod_with("kv-0", &token, &[flag, value]).expect_err(value);
            assert!(
                err.to_string().contains(&flag[2..])
                    && err.to_string().contains("between 1s and 1h"),
                "{flag} {value}: {err}"
            );
        }
    }

    #[test]
    fn the_metrics_address_is_optional_and_must_be_a_port_of_its_own() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "a-cluster-token-of-some-length").expect("token");
        assert_eq!(pod("kv-0", &token).expect("valid").metrics_listen, None);
        let v = pod_with("kv-0", &token, &["--metrics-listen", "0.0.0.0:8082"]).expect("valid");
        assert_eq!(
            v.metrics_listen,
            Some("0.0.0.0:8082".parse().expect("addr"))
        );
        for taken in ["0.0.0.0:8080", "0.0.0.0:8081"] {
            let err = pod_with("kv-0", &token, &["--metrics-listen", taken]).expect_err(taken);
            assert!(
                err.to_string()
                    .contains("--metrics-listen: must differ from --listen and --peer-listen"),
                "{err}"
            );
        }
        let err = pod_with("kv-0", &token, &["--metrics-listen", "8082"]).expect_err("no host");
        assert!(err.to_string().contains("--metrics-listen"), "{err}");
    }

    /// Certificates made in `dir` and the flags that give them to a node:
    /// `--tls-cert`, `--tls-key` and `--tls-ca`, each with its path.
    fn tls_flags(dir: &std::path::Path) -> Vec<String> {
        let paths = crate::tls::TlsPaths {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
            ca: Some(dir.join("ca.crt")),
            crl: None,
        };
        crate::tls::dev_ca::make(&paths, &["localhost"]).expect("certificates");
        let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
        vec![
            "--tls-cert".into(),
            path(&paths.cert),
            "--tls-key".into(),
            path(&paths.key),
            "--tls-ca".into(),
            path(&dir.join("ca.crt")),
        ]
    }

    #[test]
    fn an_allowed_peer_name_needs_tls_on_the_peer_port_and_a_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "a-cluster-token-of-some-length").expect("token");
        let err = pod_with("kv-0", &token, &["--peer-cert-allowed-cn", "kv.db"])
            .expect_err("no certificate for the peer port");
        assert!(
            err.to_string()
                .contains("--peer-cert-allowed-cn: needs a certificate for the peer port"),
            "{err}"
        );
        let tls = tls_flags(dir.path());
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        let err = pod_with(
            "kv-0",
            &token,
            &[&tls[..], &["--peer-cert-allowed-cn", " "]].concat(),
        )
        .expect_err("an empty name");
        assert!(err.to_string().contains("--peer-cert-allowed-cn"), "{err}");
    }

    #[test]
    fn revocation_lists_are_checked_at_start_and_named_by_their_flag() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "a-cluster-token-of-some-length").expect("token");
        let tls = tls_flags(dir.path());
        let tls: Vec<&str> = tls.iter().map(String::as_str).collect();
        let ca = tls[5];
        let other = crate::tls::issue::new_ca("another CA", Duration::from_secs(3600)).expect("CA");
        let foreign = dir.path().join("foreign.crl");
        let list = crate::tls::issue::revocation_list(&other, &[], 1, Duration::from_secs(3600))
            .expect("CRL");
        std::fs::write(&foreign, list).expect("write CRL");
        let crl = foreign.to_string_lossy().into_owned();
        for auth in [&[][..], &["--client-cert-auth"][..]] {
            let err = pod_with(
                "kv-0",
                &token,
                &[&tls[..], auth, &["--tls-crl", &crl]].concat(),
            )
            .expect_err("a list of another CA");
            let err = err.to_string();
            assert!(err.starts_with("--tls-crl: "), "{err}");
            assert!(err.contains("no revocation list of the CAs in"), "{err}");
        }
        let err = pod_with(
            "kv-0",
            &token,
            &[&tls[..], &["--peer-tls-ca", ca, "--tls-crl", &crl]].concat(),
        )
        .expect_err("a list that applies to nothing");
        assert!(err.to_string().contains("checks nothing here"), "{err}");
        let err = pod_with("kv-0", &token, &["--tls-crl", &crl]).expect_err("a list without a CA");
        assert!(err.to_string().contains("--tls-ca"), "{err}");
    }

    #[test]
    fn pods_past_the_bootstrap_count_start_empty_and_wait_to_be_added() {
        let dir = tempfile::tempdir().expect("temp dir");
        let token = dir.path().join("token");
        std::fs::write(&token, "a-cluster-token-of-some-length").expect("token");

        let bootstrap = pod("kv-2", &token).expect("valid");
        assert_eq!(bootstrap.node.bootstrap.len(), 3);
        assert!(
            bootstrap
                .node
                .bootstrap
                .iter()
                .any(|m| m.name == "kv-2" && m.peer_url == "http://kv-2.kv-peers:8081")
        );

        let joiner = pod("kv-3", &token).expect("valid");
        assert!(joiner.node.bootstrap.is_empty());
    }
}

/// `--read-mode` values (see [`crate::paxos::ReadMode`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadModeArg {
    Lease,
    Quorum,
}

impl From<ReadModeArg> for crate::paxos::ReadMode {
    fn from(a: ReadModeArg) -> Self {
        match a {
            ReadModeArg::Lease => crate::paxos::ReadMode::Lease,
            ReadModeArg::Quorum => crate::paxos::ReadMode::Quorum,
        }
    }
}

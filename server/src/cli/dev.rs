//! `phxkv dev`: a local cluster in one command, for trying phxkv on a laptop.
//! All replicas run in this process, each with its own data directory and
//! its own client and peer listeners on loopback.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use tracing::Instrument as _;

use crate::api::service::Service as _;
use crate::cluster::BootstrapPeer;
use crate::kv::Limits;
use crate::node::{Node, NodeConfig};
use crate::paxos::EngineConfig;
use crate::telemetry::{self, LogFormat};

use super::{CliError, serve};

/// Runs a local cluster. Client ports are PORT, PORT+1, ...; peer ports
/// PEER_PORT (PORT+100 by default), PEER_PORT+1, ...
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of replicas (odd numbers make sense: 1, 3, 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// First client port: replica 1 serves clients on PORT, replica 2 on
    /// PORT+1, and so on.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// First peer port (what replicas call each other on), counted up the
    /// same way [default: PORT+100].
    #[arg(long, value_name = "PORT")]
    pub peer_port: Option<u16>,
    /// Where the replicas keep their data (kept across restarts).
    #[arg(long, default_value = "phxkv-dev")]
    pub data_dir: PathBuf,
    /// Throw the data away on exit (uses a temporary directory).
    #[arg(long, default_value_t = false)]
    pub ephemeral: bool,
    /// Master lease, as for `phxkv serve`.
    #[arg(long, default_value = "1s", value_parser = super::parse_duration)]
    pub lease: Duration,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Serve HTTPS on the client ports and mutual TLS between replicas,
    /// with a private CA made on the first run and kept under
    /// DATA_DIR/tls (clients trust it with `--cacert DATA_DIR/tls/ca.crt`),
    /// and require a token on the client ports (`serve --auth`): the admin
    /// token is DATA_DIR/cluster-token (`--token-file`).
    #[arg(long, default_value_t = false)]
    pub secure: bool,
}

/// Refuses, naming `dev`'s own flag, ports another program holds, given as
/// each replica's name, client port and peer port. (A port taken between
/// this check and the replica's start is still refused then, in `serve`'s
/// words.)
fn check_ports_free(ports: &[(String, u16, u16)]) -> Result<(), CliError> {
    for (name, client, peer) in ports {
        for (what, p) in [("client", client), ("peer", peer)] {
            if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", *p)) {
                return Err(CliError::Usage(format!(
                    "--port: 127.0.0.1:{p} ({name}'s {what} port) cannot be used: {e}; \
                     give another first port with --port (replicas take it and the \
                     ports after it for clients, and 100 above those for peers)"
                )));
            }
        }
    }
    Ok(())
}

/// A secret for a dev cluster, from the OS's randomness.
fn new_token() -> Result<String, CliError> {
    use std::io::Read;
    let mut bytes = [0u8; 24];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| CliError::Fatal(format!("cannot read randomness for a token: {e}")))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub async fn run(args: DevArgs) -> Result<(), CliError> {
    if args.nodes == 0 || args.nodes > 9 {
        return Err(CliError::Usage("--nodes: must be between 1 and 9".into()));
    }
    if args.port == 0 {
        return Err(CliError::Usage(
            "--port: give the first client port, like 8080 (0 would leave clients no port to find)"
                .into(),
        ));
    }
    let peer_port = args.peer_port.map_or(u32::from(args.port) + 100, u32::from);
    if peer_port == 0 {
        return Err(CliError::Usage(
            "--peer-port: give the first peer port, like 8180".into(),
        ));
    }
    for (flag, first) in [("--port", u32::from(args.port)), ("--peer-port", peer_port)] {
        if first + u32::from(args.nodes) > 65_535 {
            return Err(CliError::Usage(format!(
                "{flag}: too high for this many nodes"
            )));
        }
    }
    let (client_range, peer_range) = (
        u32::from(args.port)..u32::from(args.port) + u32::from(args.nodes),
        peer_port..peer_port + u32::from(args.nodes),
    );
    if client_range.start < peer_range.end && peer_range.start < client_range.end {
        return Err(CliError::Usage(format!(
            "--peer-port {peer_port}: the peer ports {}-{} overlap the client ports {}-{}",
            peer_range.start,
            peer_range.end - 1,
            client_range.start,
            client_range.end - 1
        )));
    }
    serve::check_lease(args.lease).map_err(|m| CliError::Usage(format!("--lease: {m}")))?;
    // Checked above: every port fits in a u16.
    let peer_port = peer_port as u16;
    // Replica i listens on port + i for clients and peer_port + i for peers.
    let ports: Vec<(String, u16, u16)> = (0..args.nodes)
        .map(|i| (format!("n{}", i + 1), args.port + i, peer_port + i))
        .collect();
    check_ports_free(&ports)?;
    let _telemetry = telemetry::init_dev("phxkv", args.log_format)
        .map_err(|e| CliError::Fatal(format!("cannot set up logging: {e}")))?;
    // Removed when this function returns, whether it ends well or not.
    let ephemeral = if args.ephemeral {
        Some(Ephemeral(tempdir()?))
    } else {
        None
    };
    let root = match &ephemeral {
        Some(Ephemeral(dir)) => dir.clone(),
        None => args.data_dir.clone(),
    };
    std::fs::create_dir_all(&root)
        .map_err(|e| CliError::Usage(format!("--data-dir {}: {e}", root.display())))?;
    // Printed paths must work from any directory (the banner's exports).
    let root = std::path::absolute(&root)
        .map_err(|e| CliError::Usage(format!("--data-dir {}: {e}", root.display())))?;
    check_mode(&root, args.secure)?;
    let token_path = root.join("cluster-token");
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = new_token()?;
            // The cluster token is the admin credential: its owner's only.
            crate::tls::dev_ca::write_with_mode(&token_path, &t, 0o600)
                .map_err(|e| CliError::Fatal(format!("{}: {e}", token_path.display())))?;
            t
        }
    };
    let (client_tls, peer_tls) = if args.secure {
        let paths = crate::tls::dev_ca::ensure(&root.join("tls"))
            .map_err(|e| CliError::Fatal(e.to_string()))?;
        let load = |auth| {
            crate::tls::Material::load(paths.clone(), auth)
                .map_err(|e| CliError::Fatal(e.to_string()))
        };
        (
            Some(load(crate::tls::ClientAuth::Off)?),
            Some(load(crate::tls::ClientAuth::Required)?),
        )
    } else {
        (None, None)
    };
    let scheme = crate::tls::scheme(args.secure);
    let members: Vec<BootstrapPeer> = ports
        .iter()
        .map(|(name, _, peer)| BootstrapPeer {
            name: name.clone(),
            peer_url: format!("{scheme}://127.0.0.1:{peer}"),
        })
        .collect();
    let started = Instant::now();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let mut running = Vec::new();
    for (name, client, peer) in &ports {
        let mut engine = EngineConfig::new(0);
        engine.lease = args.lease;
        engine.heartbeat = (args.lease / 10).max(Duration::from_millis(20));
        engine.election_timeout = (args.lease / 5).max(Duration::from_millis(100));
        engine.retry = (args.lease / 10).max(Duration::from_millis(50));
        let cfg = NodeConfig {
            name: name.clone(),
            cluster_id: "phxkv-dev".into(),
            data_dir: root.join(name),
            bootstrap: members.clone(),
            engine,
            limits: Limits::default(),
            quota_bytes: super::serve::DEFAULT_QUOTA_BYTES,
            disk_reserve_bytes: super::serve::DEFAULT_DISK_RESERVE_BYTES,
            token: token.clone(),
            write_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            compact_after: 10_000,
            compact_after_bytes: super::serve::DEFAULT_SNAPSHOT_EVERY_BYTES,
            peer_proxy: None,
            peer_tls: peer_tls.clone(),
            archive: None,
            auth: args.secure,
            client_cert_identity: false,
        };
        let listen = ([127, 0, 0, 1], *client).into();
        let peer_listen = ([127, 0, 0, 1], *peer).into();
        let span = telemetry::replica_span(name);
        running.push(
            serve::start(
                cfg,
                client_tls.clone(),
                listen,
                peer_listen,
                serve::HttpTimeouts::default(),
                rx.clone(),
            )
            .instrument(span)
            .await?,
        );
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(_, c, _)| format!("{scheme}://127.0.0.1:{c}"))
        .collect();
    crate::cli::say!(
        "phxkv dev: {}, data in {}{}",
        crate::text::count(u64::from(args.nodes), "replica"),
        root.display(),
        if args.ephemeral {
            " (discarded on exit)"
        } else {
            " (kept across restarts; --ephemeral discards it)"
        }
    );
    for (name, client, peer) in &ports {
        crate::cli::say!(
            "  {name}  client {scheme}://127.0.0.1:{client}  peer {scheme}://127.0.0.1:{peer}"
        );
    }
    let first = &endpoints[0];
    let curl = match &client_tls {
        Some(tls) => {
            let ca = tls.paths().ca.clone().unwrap_or_default();
            crate::cli::say!();
            crate::cli::say!(
                "TLS: certificates signed by the CA in {}; replicas speak mutual TLS",
                ca.display()
            );
            crate::cli::say!(
                "Auth: every request needs a token; the admin token is in {} \
                 (make narrower ones with `phxkv auth token create`)",
                token_path.display()
            );
            format!(
                "curl --cacert {} -H \"Authorization: Bearer $(cat {})\"",
                ca.display(),
                token_path.display()
            )
        }
        None => "curl".to_string(),
    };
    crate::cli::say!();
    crate::cli::say!("Try:");
    crate::cli::say!("  {curl} -X PUT --data-binary 'hello' {first}/v1/kv/greeting");
    crate::cli::say!("  {curl} {first}/v1/kv/greeting");
    crate::cli::say!("  {curl} {first}/v1/cluster");
    crate::cli::say!("  web console: {first}/ui");
    crate::cli::say!("  API docs: {first}/docs");
    crate::cli::say!("  export PHXKV_ENDPOINTS={}", endpoints.join(","));
    if let Some(ca) = client_tls.as_ref().and_then(|t| t.paths().ca.clone()) {
        crate::cli::say!("  export PHXKV_CACERT={}", ca.display());
        crate::cli::say!("  export PHXKV_TOKEN_FILE={}", token_path.display());
    } else {
        // Without auth, membership changes and backups still need it.
        crate::cli::say!(
            "  cluster token (for members and backup): --token-file {}",
            token_path.display()
        );
    }
    crate::cli::say!();
    crate::cli::say!("Ctrl-C stops the cluster.");
    let nodes: Vec<Node> = running.iter().map(|r| r.node.clone()).collect();
    let announce = tokio::spawn(announce_ready(nodes, started));
    super::wait_for_signal().await;
    announce.abort();
    crate::cli::say!("stopping...");
    let _ = tx.send(true);
    for r in running {
        let _ = r.client.await;
        let _ = r.peer.await;
        r.node.shutdown();
    }
    drop(ephemeral);
    if args.ephemeral {
        crate::cli::say!("stopped; its data is discarded");
    } else {
        crate::cli::say!(
            "stopped; its data is kept in {} (phxkv dev{} again starts it where it was)",
            root.display(),
            if args.secure { " --secure" } else { "" }
        );
    }
    Ok(())
}

/// What a dev cluster's directory records of how it was made.
const MODE_FILE: &str = "mode";

/// Refuses a dev cluster's directory made with the other `--secure`
/// setting, and records the setting in a new one. A cluster keeps its
/// replicas' peer URLs (http or https) and auth in its replicated state,
/// so started the other way it would never elect a master.
fn check_mode(root: &std::path::Path, secure: bool) -> Result<(), CliError> {
    let want = if secure { "secure" } else { "plain" };
    let path = root.join(MODE_FILE);
    let had = match std::fs::read_to_string(&path) {
        Ok(mode) => Some(mode.trim().to_string()),
        // Made before the file existed: only `--secure` makes `tls/`.
        Err(_) if root.join("n1").join("identity.json").exists() => Some(
            if root.join("tls").exists() {
                "secure"
            } else {
                "plain"
            }
            .to_string(),
        ),
        Err(_) => None,
    };
    match had {
        Some(mode) if mode == want => {}
        Some(mode) => {
            let (made, run) = if mode == "secure" {
                ("with --secure", "phxkv dev --secure")
            } else {
                ("without --secure", "phxkv dev")
            };
            return Err(CliError::Usage(format!(
                "--data-dir {}: this dev cluster was made {made}, which its replicas keep \
                 (their peer URLs and auth are replicated state): run `{run}` again, or give \
                 another --data-dir (or delete this one) for a new cluster",
                root.display()
            )));
        }
        None => {
            std::fs::write(&path, format!("{want}\n"))
                .map_err(|e| CliError::Fatal(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// How long `phxkv dev` waits for its cluster before saying it is still
/// waiting (it keeps waiting).
const READY_PATIENCE: Duration = Duration::from_secs(30);

/// Prints one line once every replica is ready and they agree on a master,
/// or why not after [`READY_PATIENCE`].
async fn announce_ready(nodes: Vec<Node>, started: Instant) {
    let mut warned = false;
    loop {
        match cluster_ready(&nodes) {
            Ok(master) => {
                crate::cli::say!(
                    "ready: {}, master {master} (after {:.1} s)",
                    crate::text::count(nodes.len() as u64, "replica"),
                    started.elapsed().as_secs_f64()
                );
                return;
            }
            Err(why) if !warned && started.elapsed() > READY_PATIENCE => {
                crate::cli::say!("not ready after {} s: {why}", READY_PATIENCE.as_secs());
                warned = true;
            }
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The master's name once every replica is ready and names the same one.
fn cluster_ready(nodes: &[Node]) -> Result<String, String> {
    let mut master: Option<String> = None;
    for node in nodes {
        let health = node.health();
        if !health.ready {
            let why = health.reason.unwrap_or_else(|| "not ready".into());
            return Err(format!("{}: {why}", node.name()));
        }
        let theirs = node.local_cluster().master;
        match (&master, theirs) {
            (_, None) => return Err(format!("{}: no master is known", node.name())),
            (None, Some(m)) => master = Some(m),
            (Some(a), Some(b)) if *a != b => {
                return Err(format!("replicas name different masters ({a}, {b})"));
            }
            _ => {}
        }
    }
    master.ok_or_else(|| "no replicas".into())
}

/// A directory deleted with everything in it when this is dropped.
#[derive(Debug)]
struct Ephemeral(PathBuf);

impl Drop for Ephemeral {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A new directory of the current user's only, under the system's
/// temporary directory.
fn tempdir() -> Result<PathBuf, CliError> {
    use std::os::unix::fs::DirBuilderExt as _;
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("phxkv-dev-{}-{attempt}", std::process::id()));
        if std::fs::DirBuilder::new().mode(0o700).create(&dir).is_ok() {
            return Ok(dir);
        }
    }
    Err(CliError::Fatal(format!(
        "cannot create a temporary directory in {}",
        base.display()
    )))
}

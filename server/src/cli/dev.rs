//! `phxkv dev`: a local cluster in one command, for trying phxkv on a laptop.
//! All replicas run in this process, each with its own data directory and
//! its own client and peer listeners on loopback.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::cluster::BootstrapPeer;
use crate::kv::Limits;
use crate::node::NodeConfig;
use crate::paxos::EngineConfig;
use crate::telemetry::{self, LogFormat};

use super::{CliError, serve};

/// Runs a local cluster. Client ports are PORT, PORT+1, ...; peer ports
/// PORT+100, PORT+101, ...
#[derive(Args, Debug, Clone)]
pub struct DevArgs {
    /// Number of replicas (odd numbers make sense: 1, 3, 5).
    #[arg(long, default_value_t = 3)]
    pub nodes: u16,
    /// First client port.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
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
    if u32::from(args.port) + 100 + u32::from(args.nodes) > 65_535 {
        return Err(CliError::Usage(
            "--port: too high for this many nodes".into(),
        ));
    }
    let _telemetry = telemetry::init("phxkv", "dev", args.log_format)
        .map_err(|e| CliError::Fatal(format!("cannot set up logging: {e}")))?;
    let tmp;
    let root = if args.ephemeral {
        tmp = tempdir()?;
        tmp.clone()
    } else {
        args.data_dir.clone()
    };
    std::fs::create_dir_all(&root)
        .map_err(|e| CliError::Usage(format!("--data-dir {}: {e}", root.display())))?;
    let token_path = root.join("cluster-token");
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => t.trim().to_string(),
        _ => {
            let t = new_token()?;
            std::fs::write(&token_path, &t)
                .map_err(|e| CliError::Fatal(format!("{}: {e}", token_path.display())))?;
            t
        }
    };
    let mut members = Vec::new();
    let mut ports = Vec::new();
    for i in 0..args.nodes {
        let name = format!("n{}", i + 1);
        let (client, peer) = (args.port + i, args.port + 100 + i);
        members.push(BootstrapPeer {
            name: name.clone(),
            peer_url: format!("http://127.0.0.1:{peer}"),
        });
        ports.push((name, client, peer));
    }
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
            token: token.clone(),
            write_timeout: Duration::from_secs(5),
            read_timeout: Duration::from_secs(5),
            compact_after: 10_000,
            peer_proxy: None,
        };
        let listen = ([127, 0, 0, 1], *client).into();
        let peer_listen = ([127, 0, 0, 1], *peer).into();
        running.push(serve::start(cfg, listen, peer_listen, rx.clone()).await?);
    }
    let endpoints: Vec<String> = ports
        .iter()
        .map(|(_, c, _)| format!("http://127.0.0.1:{c}"))
        .collect();
    println!(
        "phxkv dev: {} replicas, data in {}{}",
        args.nodes,
        root.display(),
        if args.ephemeral {
            " (discarded on exit)"
        } else {
            " (kept across restarts; --ephemeral discards it)"
        }
    );
    for (name, client, peer) in &ports {
        println!("  {name}  client http://127.0.0.1:{client}  peer http://127.0.0.1:{peer}");
    }
    let first = &endpoints[0];
    println!();
    println!("Try:");
    println!("  curl -X PUT --data-binary 'hello' {first}/v1/kv/greeting");
    println!("  curl {first}/v1/kv/greeting");
    println!("  curl {first}/v1/cluster");
    println!("  API docs: {first}/docs");
    println!("  export PHXKV_ENDPOINTS={}", endpoints.join(","));
    println!();
    println!("Ctrl-C stops the cluster.");
    super::wait_for_signal().await;
    println!("stopping...");
    let _ = tx.send(true);
    for r in running {
        let _ = r.client.await;
        let _ = r.peer.await;
        r.node.shutdown();
    }
    if args.ephemeral {
        let _ = std::fs::remove_dir_all(&root);
    }
    println!("stopped");
    Ok(())
}

fn tempdir() -> Result<PathBuf, CliError> {
    let base = std::env::temp_dir();
    for attempt in 0..100u32 {
        let dir = base.join(format!("phxkv-dev-{}-{attempt}", std::process::id()));
        if std::fs::create_dir(&dir).is_ok() {
            return Ok(dir);
        }
    }
    Err(CliError::Fatal(format!(
        "cannot create a temporary directory in {}",
        base.display()
    )))
}

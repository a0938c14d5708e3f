//! `phxkv-operator`: `run` watches `PaxosKV` resources and manages their
//! clusters (on the replica that holds the leader Lease); `crd` prints the
//! CustomResourceDefinition the chart installs; `rbac` prints the API
//! access the operator needs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgAction, Parser, Subcommand};
use kube::runtime::events::{Recorder, Reporter};
use phxkv::telemetry::{self, LogFormat};
use phxkv_operator::access;
use phxkv_operator::controller::{self, Context};
use phxkv_operator::crd::PaxosKV;
use phxkv_operator::leader::{self, Elector, LeaseConfig, Stop};
use phxkv_operator::metrics::{self, OperatorMetrics, Role};
use phxkv_operator::render::Defaults;
use phxkv_operator::run::{self, Leading};

/// Kubernetes operator for phxkv: manages PaxosKV clusters.
#[derive(Parser, Debug)]
#[command(name = "phxkv-operator", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Watch PaxosKV resources and reconcile their clusters.
    Run(RunArgs),
    /// Print the PaxosKV and PaxosKVBackup CustomResourceDefinitions as YAML.
    Crd,
    /// Print the objects the operator would create for a PaxosKV manifest
    /// (for review or offline validation); nothing is sent anywhere.
    Render(RenderArgs),
    /// Print, as JSON, the Kubernetes API access `run` needs with these
    /// settings (the chart's RBAC grants exactly this).
    Rbac(RbacArgs),
}

#[derive(clap::Args, Debug)]
struct RbacArgs {
    /// As `run --lease-name`.
    #[arg(long, default_value = DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// As `run --manage-crd`.
    #[arg(long, default_value_t = true, action = ArgAction::Set)]
    manage_crd: bool,
}

const DEFAULT_LEASE_NAME: &str = "phxkv-operator";

#[derive(clap::Args, Debug)]
struct RenderArgs {
    /// The PaxosKV manifest (YAML or JSON); `-` reads standard input.
    file: std::path::PathBuf,
    /// Image for a spec that names none.
    #[arg(long, default_value = "ghcr.io/phxkv/phxkv:0.1.0")]
    default_image: String,
}

#[derive(clap::Args, Debug)]
struct RunArgs {
    /// Image for clusters whose spec names none.
    #[arg(long, env = "PHXKV_OPERATOR_DEFAULT_IMAGE")]
    default_image: String,
    /// Address of the metrics and probe listener (`/metrics`, `/healthz`,
    /// `/readyz`).
    #[arg(
        long,
        env = "PHXKV_OPERATOR_METRICS_LISTEN",
        default_value = "0.0.0.0:9090"
    )]
    metrics_listen: SocketAddr,
    /// Watch only this namespace (all namespaces when omitted).
    #[arg(long, env = "PHXKV_OPERATOR_NAMESPACE")]
    namespace: Option<String>,
    /// Log format on stderr.
    #[arg(long, env = "PHXKV_OPERATOR_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Re-check interval of a cluster that matches its spec.
    #[arg(long, env = "PHXKV_OPERATOR_RESYNC", default_value = "30s", value_parser = phxkv::cli::parse_duration)]
    resync: Duration,
    /// Elect one leader among the operator's replicas through a Lease
    /// (coordination.k8s.io/v1); only the leader reconciles, the others
    /// wait as standbys and take over when it goes. `false` reconciles at
    /// once: for a single replica only.
    #[arg(long, env = "PHXKV_OPERATOR_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader Lease. Replicas with the same name and namespace
    /// compete for it.
    #[arg(long, env = "PHXKV_OPERATOR_LEASE_NAME", default_value = DEFAULT_LEASE_NAME)]
    lease_name: String,
    /// Namespace of the leader Lease: the operator's own (the chart sets
    /// POD_NAMESPACE from the pod). Default: the client's namespace (in a
    /// pod, its service account's).
    #[arg(long, env = "POD_NAMESPACE")]
    lease_namespace: Option<String>,
    /// This replica's name as lease holder, unique among the replicas: its
    /// pod name (the chart sets POD_NAME from the pod). Default: the host
    /// name.
    #[arg(long, env = "POD_NAME")]
    lease_identity: Option<String>,
    /// How long the lease lasts without a renewal: whole seconds, 3s to 1h.
    /// The leader renews every fifth of it and stops reconciling once two
    /// thirds of it passed without a successful renewal; a standby takes
    /// over after a whole duration without renewals (at once when the
    /// leader released the lease on shutdown).
    #[arg(long, env = "PHXKV_OPERATOR_LEASE_DURATION", default_value = "15s", value_parser = phxkv::cli::parse_duration)]
    lease_duration: Duration,
    /// Apply the PaxosKV CRD this operator was built with whenever it starts
    /// leading (server-side apply, field manager phxkv-operator), so that
    /// `helm upgrade` upgrades the CRD too; a CRD applied by a newer
    /// operator is left alone. `false` never touches CRDs (and needs no RBAC
    /// for them).
    #[arg(long, env = "PHXKV_OPERATOR_MANAGE_CRD", default_value_t = true, action = ArgAction::Set)]
    manage_crd: bool,
    /// Labels of this operator's own pods, as `key=value,key=value` (the
    /// chart passes its selector labels). A cluster whose client port is
    /// restricted (`networkPolicy.clientFrom`) lets in the pods with these
    /// labels in the operator's namespace (POD_NAMESPACE; any namespace when
    /// that is not set), since the operator reads each member's view there.
    #[arg(
        long,
        env = "PHXKV_OPERATOR_POD_LABELS",
        default_value = "app.kubernetes.io/name=phxkv-operator",
        value_parser = phxkv_operator::render::OperatorPods::parse_labels
    )]
    pod_labels: std::collections::BTreeMap<String, String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print(phxkv_operator::crds_yaml().map_err(|e| format!("cannot render the CRDs: {e}")))
        }
        Command::Render(args) => print(render(&args)),
        Command::Rbac(args) => print(
            serde_json::to_string_pretty(&access::rules_json(&access::Settings {
                lease_name: args.lease_name,
                manage_crd: args.manage_crd,
            }))
            .map(|mut json| {
                json.push('\n');
                json
            })
            .map_err(|e| format!("cannot encode the rules: {e}")),
        ),
        Command::Run(args) => {
            let runtime = match tokio::runtime::Runtime::new() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Writes a rendered document to standard output, or the error to standard
/// error. A closed pipe (`| head`) is not an error worth a panic.
fn print(result: Result<String, String>) -> ExitCode {
    use std::io::Write;
    match result {
        Ok(yaml) => {
            let _ = std::io::stdout().write_all(yaml.as_bytes());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn render(args: &RenderArgs) -> Result<String, String> {
    use std::io::Read;
    let mut text = String::new();
    if args.file.as_os_str() == "-" {
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| format!("reading standard input: {e}"))?;
    } else {
        text = std::fs::read_to_string(&args.file)
            .map_err(|e| format!("{}: {e}", args.file.display()))?;
    }
    let pkv: PaxosKV = serde_norway::from_str(&text)
        .map_err(|e| format!("{}: not a PaxosKV: {e}", args.file.display()))?;
    let problems = pkv.spec.problems(&kube::ResourceExt::name_any(&pkv));
    if !problems.is_empty() {
        return Err(format!("invalid PaxosKV: {}", problems.join("; ")));
    }
    let defaults = Defaults {
        image: args.default_image.clone(),
        operator_pods: Default::default(),
    };
    phxkv_operator::render_all(pkv, &defaults).map_err(|e| format!("rendering: {e}"))
}

async fn run(args: RunArgs) -> Result<(), String> {
    if args.default_image.trim().is_empty() {
        return Err("--default-image must name an image".into());
    }
    let identity = match &args.lease_identity {
        Some(id) => id.clone(),
        None => std::env::var("HOSTNAME")
            .unwrap_or_else(|_| format!("phxkv-operator-{:08x}", rand::random::<u32>())),
    };
    let _telemetry = telemetry::init("phxkv-operator", &identity, args.log_format)
        .map_err(|e| format!("telemetry: {e}"))?;

    phxkv_operator::install_crypto_provider();
    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
    let lease = LeaseConfig::new(
        args.lease_name.clone(),
        args.lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_string()),
        identity.clone(),
        args.lease_duration,
    )
    .map_err(|e| e.to_string())?;

    let metrics = OperatorMetrics::new();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .map_err(|e| format!("--metrics-listen {}: {e}", args.metrics_listen))?;
    let served = metrics.clone();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, metrics::router(served)).await {
            tracing::error!(error = %e, "metrics listener stopped");
        }
    });

    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("HTTP client: {e}"))?;
    let ctx = Arc::new(Context {
        client: client.clone(),
        defaults: Defaults {
            image: args.default_image.clone(),
            operator_pods: phxkv_operator::render::OperatorPods {
                namespace: args.lease_namespace.clone(),
                labels: args.pod_labels.clone(),
            },
        },
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "phxkv-operator".into(),
                instance: Some(identity.clone()),
            },
        ),
        http,
        resolver: controller::cluster_dns(),
        metrics: metrics.clone(),
        busy_requeue: Duration::from_secs(3),
        idle_requeue: args.resync,
    });
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        image = %args.default_image,
        identity = %identity,
        leader_election = args.leader_election,
        "phxkv-operator started"
    );

    let leading = Leading {
        ctx,
        namespace: args.namespace.clone(),
        manage_crd: args.manage_crd,
    };
    let lead = |stop: Stop| run::lead(leading.clone(), stop);
    let result = if args.leader_election {
        tracing::info!(
            lease = %lease.name,
            namespace = %lease.namespace,
            duration = ?lease.duration,
            "campaigning for the leader lease"
        );
        let mut elector = Elector::new(client.clone(), lease);
        leader::run_elected(&mut elector, &metrics, shutdown_signal(), lead).await
    } else {
        metrics.set_role(Role::Leading {
            controller_running: false,
        });
        let (raise, stop) = Stop::new();
        tokio::spawn(async move {
            shutdown_signal().await;
            let _ = raise.send(true);
        });
        lead(stop).await
    };
    tracing::info!("phxkv-operator stopped");
    result
}

/// Resolves on SIGTERM (what Kubernetes sends a pod it stops) or Ctrl+C.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    tokio::select! {
        () = terminate => tracing::info!("SIGTERM received"),
        () = interrupt => tracing::info!("interrupted"),
    }
}

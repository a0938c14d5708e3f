//! `phxkv-operator`: `run` watches `PaxosKV` resources and manages their
//! clusters; `crd` prints the CustomResourceDefinition the chart installs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Service;
use kube::api::Api;
use kube::runtime::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::watcher;
use phxkv::telemetry::{self, LogFormat};
use phxkv_operator::controller::{self, Context};
use phxkv_operator::crd::PaxosKV;
use phxkv_operator::metrics::{self, OperatorMetrics};
use phxkv_operator::render::Defaults;

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
    /// Print the PaxosKV CustomResourceDefinition as YAML.
    Crd,
    /// Print the objects the operator would create for a PaxosKV manifest
    /// (for review or offline validation); nothing is sent anywhere.
    Render(RenderArgs),
}

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => {
            print(phxkv_operator::crd_yaml().map_err(|e| format!("cannot render the CRD: {e}")))
        }
        Command::Render(args) => print(render(&args)),
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
    };
    phxkv_operator::render_all(pkv, &defaults).map_err(|e| format!("rendering: {e}"))
}

async fn run(args: RunArgs) -> Result<(), String> {
    if args.default_image.trim().is_empty() {
        return Err("--default-image must name an image".into());
    }
    let instance = std::env::var("HOSTNAME").unwrap_or_else(|_| "phxkv-operator".into());
    let _telemetry = telemetry::init("phxkv-operator", &instance, args.log_format)
        .map_err(|e| format!("telemetry: {e}"))?;

    let client = kube::Client::try_default()
        .await
        .map_err(|e| format!("cannot reach the Kubernetes API: {e}"))?;
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
        },
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "phxkv-operator".into(),
                instance: Some(instance),
            },
        ),
        http,
        resolver: controller::cluster_dns(),
        metrics: metrics.clone(),
        busy_requeue: Duration::from_secs(3),
        idle_requeue: args.resync,
    });

    let (pkvs, sets, services) = match &args.namespace {
        Some(ns) => (
            Api::<PaxosKV>::namespaced(client.clone(), ns),
            Api::<StatefulSet>::namespaced(client.clone(), ns),
            Api::<Service>::namespaced(client.clone(), ns),
        ),
        None => (
            Api::<PaxosKV>::all(client.clone()),
            Api::<StatefulSet>::all(client.clone()),
            Api::<Service>::all(client.clone()),
        ),
    };
    // Fail early and clearly when the CRD is missing or RBAC forbids listing.
    pkvs.list(&kube::api::ListParams::default().limit(1))
        .await
        .map_err(|e| format!("cannot list PaxosKV resources (is the CRD installed?): {e}"))?;
    tracing::info!(
        namespace = args.namespace.as_deref().unwrap_or("<all>"),
        image = %args.default_image,
        "phxkv-operator started"
    );
    metrics.set_ready();

    Controller::new(pkvs, watcher::Config::default())
        .owns(sets, watcher::Config::default())
        .owns(services, watcher::Config::default())
        .shutdown_on_signal()
        .run(controller::reconcile, controller::error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "reconcile did not complete");
            }
        })
        .await;
    tracing::info!("phxkv-operator stopped");
    Ok(())
}

//! Process-wide logging and tracing set-up.
//!
//! A node is started once and keeps one `tracing` subscriber for its whole
//! life, so everything that decides where logs and spans go lives here: the
//! level filter, the log format operators asked for, and the optional export
//! of spans to an OpenTelemetry collector. Keeping it in one function means the
//! binary, tests and tools all get the same behaviour from one call.

use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{Protocol, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::runtime;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use super::replica::{DevFormat, NameReplicas, REPLICA_SPAN};

/// The variable whose presence switches span export on. It is the standard
/// OpenTelemetry name, so collectors' usual deployment recipes work as is.
pub const OTLP_ENDPOINT_VAR: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// How long dropping the guard may wait for the last spans to leave.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Shape of the log lines written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines, for terminals and development.
    #[default]
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// Why [`init`] could not install telemetry.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// A global subscriber is already installed (e.g. `init` was called twice).
    #[error("a global tracing subscriber is already installed")]
    AlreadyInitialized,
    /// `RUST_LOG` holds directives that do not parse.
    #[error("invalid RUST_LOG filter: {0}")]
    Filter(#[from] tracing_subscriber::filter::FromEnvError),
    /// Span export was requested but the OTLP exporter could not be built.
    #[error("cannot build the OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// Span export was requested outside a Tokio runtime, which the batch
    /// exporter needs to run its background task.
    #[error("span export needs a Tokio runtime; call init from inside one")]
    NoRuntime,
}

/// Keeps span export alive; dropping it flushes and shuts the exporter down.
///
/// Hold it in `main` until the node has stopped, so spans of the final
/// requests still reach the collector.
#[derive(Debug)]
#[must_use = "dropping the guard stops span export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// Whether spans are being exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        // Shutting down waits for the batch task, which runs on the Tokio
        // runtime: blocking a runtime thread without telling Tokio could stall
        // that very task, so pick the blocking style the context allows.
        let shutdown = move || {
            if let Err(error) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
                eprintln!("telemetry: span exporter shutdown failed: {error}");
            }
        };
        match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
            Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(shutdown),
            // A single-threaded runtime can only run the batch task once this
            // thread yields, so wait elsewhere rather than deadlock here.
            Ok(_) => drop(std::thread::spawn(shutdown)),
            Err(_) => shutdown(),
        }
    }
}

/// Installs the global `tracing` subscriber for this process.
///
/// - Events are filtered by `RUST_LOG` (default `info`) and written to stderr
///   as text or JSON according to `format`.
/// - When [`OTEL_EXPORTER_OTLP_ENDPOINT`](OTLP_ENDPOINT_VAR) is set, spans are
///   also exported by OTLP over HTTP (protobuf) through a batch exporter on the
///   current Tokio runtime, tagged with `service.name = service_name` and
///   `service.instance.id = node`. Without the variable no exporter, provider
///   or OpenTelemetry layer is created, nothing leaves the process, and the
///   per-request spans are not created at all (see
///   [`exporting_spans`](super::exporting_spans)).
/// - The W3C TraceContext propagator is installed globally in both cases, so
///   [`inject_context`](super::inject_context) and
///   [`extract_context`](super::extract_context) speak `traceparent`.
///
/// Returns [`TelemetryError::AlreadyInitialized`] instead of panicking when a
/// global subscriber exists already.
pub fn init(
    service_name: &str,
    node: &str,
    format: LogFormat,
) -> Result<TelemetryGuard, TelemetryError> {
    install(service_name, node, format, false)
}

/// [`init`] for a process that runs several replicas (`phxkv dev`): text
/// lines start with the replica's name in a colour of its own (see
/// [`DevFormat`]); JSON lines list the replica's span as usual.
pub fn init_dev(service_name: &str, format: LogFormat) -> Result<TelemetryGuard, TelemetryError> {
    install(service_name, "dev", format, true)
}

fn install(
    service_name: &str,
    node: &str,
    format: LogFormat,
    several_replicas: bool,
) -> Result<TelemetryGuard, TelemetryError> {
    // Checked first so a second call does not build an exporter for nothing;
    // `try_init` below still catches a race with another thread.
    if tracing::dispatcher::has_been_set() {
        return Err(TelemetryError::AlreadyInitialized);
    }
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()?;

    let endpoint_set = std::env::var_os(OTLP_ENDPOINT_VAR).is_some_and(|v| !v.is_empty());
    let provider = if endpoint_set {
        Some(tracer_provider(service_name, node)?)
    } else {
        None
    };
    // A replica's span lasts as long as the replica: exported, it would make
    // every request of a dev cluster one endless trace.
    let otel_layer = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("phxkv"))
            .with_filter(filter_fn(|m| m.name() != REPLICA_SPAN))
    });

    let dev = DevFormat::for_stderr();
    let (text, dev_text, json) = match format {
        LogFormat::Text if several_replicas => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(dev.ansi())
                    .event_format(dev)
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    // Colours only for a person at a terminal, not in a
                    // file or a log collector.
                    .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                    .with_writer(std::io::stderr),
            ),
            None,
            None,
        ),
        LogFormat::Json => (
            None,
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .with_writer(std::io::stderr),
            ),
        ),
    };

    tracing_subscriber::registry()
        .with(filter)
        .with(otel_layer)
        .with(several_replicas.then_some(NameReplicas))
        .with(text)
        .with(dev_text)
        .with(json)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInitialized)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    super::set_exporting_spans(provider.is_some());
    Ok(TelemetryGuard { provider })
}

/// Builds the provider that batches spans and ships them by OTLP/HTTP. The
/// exporter reads the endpoint (and the other standard `OTEL_EXPORTER_OTLP_*`
/// settings) from the environment itself.
fn tracer_provider(service_name: &str, node: &str) -> Result<SdkTracerProvider, TelemetryError> {
    // The batch task is spawned on the current runtime; without one Tokio
    // would panic, and the async HTTP client needs it too.
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(TelemetryError::NoRuntime);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()?;
    let resource = Resource::builder()
        .with_service_name(service_name.to_owned())
        .with_attribute(KeyValue::new("service.instance.id", node.to_owned()))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(BatchSpanProcessor::builder(exporter, runtime::Tokio).build())
        .with_resource(resource)
        .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    // This installs the global subscriber of the library's test binary; the
    // only visible effect on other tests is log output on stderr.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn second_init_returns_an_error_instead_of_panicking() {
        let first = init("phxkv-test", "n1", LogFormat::Text);
        let second = init("phxkv-test", "n1", LogFormat::Json);
        assert!(
            matches!(second, Err(TelemetryError::AlreadyInitialized)),
            "second init gave {second:?} (first gave {first:?})"
        );
    }

    #[test]
    fn log_format_parses_from_the_command_line() {
        use clap::ValueEnum as _;
        assert_eq!(LogFormat::from_str("json", true), Ok(LogFormat::Json));
        assert_eq!(LogFormat::from_str("text", true), Ok(LogFormat::Text));
        assert!(LogFormat::from_str("xml", true).is_err());
    }

    #[test]
    fn span_export_outside_a_runtime_is_an_error() {
        let result = tracer_provider("phxkv-test", "n1");
        assert!(
            matches!(result, Err(TelemetryError::NoRuntime)),
            "{result:?}"
        );
    }

    // The collector is most likely absent: the point is that exporting and
    // dropping the guard on a runtime thread neither panics nor deadlocks.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn dropping_the_guard_on_a_runtime_thread_shuts_export_down() {
        let provider = tracer_provider("phxkv-test", "n1").expect("provider");
        let tracer = provider.tracer("test");
        opentelemetry::trace::Tracer::in_span(&tracer, "work", |_| {});
        let guard = TelemetryGuard {
            provider: Some(provider),
        };
        assert!(guard.exporting());
        drop(guard);
    }
}

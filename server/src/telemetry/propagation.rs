//! Carrying trace context across the HTTP hops between nodes.
//!
//! A client write that lands on a follower is forwarded to the master, and
//! peers exchange Paxos messages over HTTP. For such a request to appear as one
//! trace, the caller writes its span context into `traceparent`/`tracestate`
//! headers and the callee parents its request span on them. Both ends use the
//! globally installed propagator (W3C TraceContext, see
//! [`init`](super::init)); until one is installed nothing is written or read.

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::Response;
use opentelemetry::propagation::{Extractor, Injector};
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use super::UNMATCHED_ROUTE;

/// Writes propagation fields into a header map, skipping values that are not
/// valid header text rather than failing the request over telemetry.
struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// Reads propagation fields from a header map.
struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// Adds the current `tracing` span's OpenTelemetry context to outgoing
/// request headers (`traceparent`, and `tracestate` when non-empty).
///
/// Call it while the span that covers the outgoing call is current. Without
/// span export the context is invalid and no header is written.
pub fn inject_context(headers: &mut reqwest::header::HeaderMap) {
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&cx, &mut HeaderInjector(headers));
    });
}

/// Reads the caller's trace context from incoming request headers; an empty
/// context when the caller sent none.
pub fn extract_context(headers: &HeaderMap) -> opentelemetry::Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HeaderExtractor(headers))
    })
}

/// Creates the span covering one incoming request, continuing the caller's
/// trace when the headers carry one.
///
/// `route` should be the route template (e.g. `/v1/kv/{*key}`), not the raw
/// path: it becomes the span name, and trace backends group by span name.
pub fn server_span(method: &Method, route: &str, headers: &HeaderMap) -> tracing::Span {
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{method} {route}"),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
    );
    // Fails only when no OpenTelemetry layer is installed, in which case there
    // is no trace to continue anyway.
    let _ = span.set_parent(extract_context(headers));
    span
}

/// Axum middleware running each request inside a [`server_span`], named after
/// the matched route and recording the response status.
///
/// Install with `Router::layer(axum::middleware::from_fn(trace_requests))` so
/// the matched route is known when it runs.
pub async fn trace_requests(matched: Option<MatchedPath>, req: Request, next: Next) -> Response {
    if !super::exporting_spans() {
        return next.run(req).await;
    }
    let route = matched
        .as_ref()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str);
    let span = server_span(req.method(), route, req.headers());
    let response = next.run(req).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{TraceContextExt as _, TraceId, TracerProvider as _};
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// Runs `f` under a subscriber that gives spans OpenTelemetry contexts
    /// from an SDK provider with no exporter.
    fn with_otel<T>(f: impl FnOnce() -> T) -> T {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, f)
    }

    fn trace_id(span: &tracing::Span) -> TraceId {
        span.context().span().span_context().trace_id()
    }

    #[test]
    fn injected_headers_extract_to_the_same_trace_id() {
        with_otel(|| {
            let span = tracing::info_span!("client");
            let mut headers = reqwest::header::HeaderMap::new();
            span.in_scope(|| inject_context(&mut headers));
            assert!(headers.contains_key("traceparent"), "{headers:?}");

            let extracted = extract_context(&headers);
            let remote = extracted.span().span_context().clone();
            assert!(remote.is_remote());
            assert_eq!(remote.trace_id(), trace_id(&span));
            assert_ne!(remote.trace_id(), TraceId::INVALID);
        });
    }

    #[test]
    fn server_span_continues_the_callers_trace() {
        with_otel(|| {
            let client = tracing::info_span!("forward");
            let mut headers = HeaderMap::new();
            client.in_scope(|| inject_context(&mut headers));

            let server = server_span(&Method::PUT, "/v1/kv/{*key}", &headers);
            assert_eq!(trace_id(&server), trace_id(&client));
        });
    }

    #[test]
    fn server_span_without_headers_starts_a_new_trace() {
        with_otel(|| {
            let client = tracing::info_span!("unrelated");
            let _ = trace_id(&client);
            let server = server_span(&Method::GET, "/v1/kv/{*key}", &HeaderMap::new());
            assert_ne!(trace_id(&server), TraceId::INVALID);
            assert_ne!(trace_id(&server), trace_id(&client));
        });
    }
}

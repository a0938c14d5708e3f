//! Prometheus metrics of a node.
//!
//! Operators need numbers that logs and traces do not give cheaply: request
//! rates and latencies, how well writes batch, how long commits and fsyncs
//! take, and who is master. [`Metrics`] owns its own registry (no global
//! state, so tests and several nodes in one process do not collide) and is
//! rendered in the OpenMetrics text format for a scrape endpoint.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use super::UNMATCHED_ROUTE;

/// Latency buckets for HTTP requests and commits, 100 µs to ~3.3 s doubling.
/// Local reads finish in well under a millisecond while a commit pays a
/// network round trip plus a quorum fsync (single milliseconds on SSDs, tens
/// on slow disks); doubling keeps resolution at both ends, and anything past
/// seconds is an outage rather than a latency worth resolving.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_1, 2.0, 16)
}

/// fsync buckets, 25 µs to ~0.8 s doubling: NVMe drives sync in tens to
/// hundreds of microseconds, SATA SSDs in about a millisecond, spinning and
/// network disks in several; a bucket floor of 1 ms would hide the fast case.
fn fsync_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.000_025, 2.0, 16)
}

/// Commands per batch, 1 to 2048: powers of two show whether batching kicks
/// in under load without pretending to count exactly.
fn batch_command_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(1.0, 2.0, 12)
}

/// Bytes per batch, 64 B to 16 MiB by factors of four.
fn batch_byte_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(64.0, 4.0, 10)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EncodingLabels {
    encoding: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabels {
    port: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// Every value of `phxkv_node_state`'s label, so each series exists from
/// the start and alerts can match `== 1` on any of them.
pub const NODE_STATES: [&str; 4] = ["bootstrapping", "joining", "awaiting_replacement", "member"];

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Debug)]
struct Inner {
    registry: Registry,
    http_requests: Family<RequestLabels, Counter>,
    http_duration: HistogramFamily<RouteLabels>,
    proposals: Counter,
    batch_commands: Histogram,
    batch_bytes: Histogram,
    commit_latency: Histogram,
    fsync: Histogram,
    master_changes: Counter,
    is_master: Gauge,
    lease_remaining: Gauge<f64, AtomicU64>,
    log_entries: Gauge<u64, AtomicU64>,
    commit_index: Gauge<u64, AtomicU64>,
    applied_index: Gauge<u64, AtomicU64>,
    store_bytes: Gauge<u64, AtomicU64>,
    quota_bytes: Gauge<u64, AtomicU64>,
    quota_refusals: Counter,
    disk_free_bytes: Gauge<u64, AtomicU64>,
    disk_full_refusals: Counter,
    snapshots: Family<KindLabels, Counter>,
    forwarded: Counter,
    forwards_sent_again: Counter,
    forgotten_copies: Counter,
    peer_messages: Family<DirectionLabels, Counter>,
    peer_bytes_sent: Family<EncodingLabels, Counter>,
    node_state: Family<StateLabels, Gauge>,
    misaddressed: Counter,
    digest_mismatches: Counter,
    diverged: Gauge,
    anonymous_ops: Gauge,
    watches: Gauge,
    archive_lag_entries: Gauge,
    archive_lag_seconds: Gauge,
    tls_expiry: Family<PortLabels, Gauge>,
    auth_failures: Family<ReasonLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// A node's metrics, all named `phxkv_*`.
///
/// Cloning is cheap and every clone updates the same series, so the node, the
/// HTTP layer and the storage can each hold one.
#[derive(Debug, Clone)]
pub struct Metrics(Arc<Inner>);

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates every series, registered in a fresh registry.
    pub fn new() -> Self {
        let mut inner = Inner {
            registry: Registry::with_prefix("phxkv"),
            http_requests: Family::default(),
            http_duration: Family::new_with_constructor(|| Histogram::new(latency_buckets())),
            proposals: Counter::default(),
            batch_commands: Histogram::new(batch_command_buckets()),
            batch_bytes: Histogram::new(batch_byte_buckets()),
            commit_latency: Histogram::new(latency_buckets()),
            fsync: Histogram::new(fsync_buckets()),
            master_changes: Counter::default(),
            is_master: Gauge::default(),
            lease_remaining: Gauge::default(),
            log_entries: Gauge::default(),
            commit_index: Gauge::default(),
            applied_index: Gauge::default(),
            store_bytes: Gauge::default(),
            quota_bytes: Gauge::default(),
            quota_refusals: Counter::default(),
            disk_free_bytes: Gauge::default(),
            disk_full_refusals: Counter::default(),
            snapshots: Family::default(),
            auth_failures: Family::default(),
            forwarded: Counter::default(),
            forwards_sent_again: Counter::default(),
            forgotten_copies: Counter::default(),
            peer_messages: Family::default(),
            peer_bytes_sent: Family::default(),
            node_state: Family::default(),
            misaddressed: Counter::default(),
            digest_mismatches: Counter::default(),
            diverged: Gauge::default(),
            anonymous_ops: Gauge::default(),
            watches: Gauge::default(),
            archive_lag_entries: Gauge::default(),
            archive_lag_seconds: Gauge::default(),
            tls_expiry: Family::default(),
        };
        // Counters get their `_total` suffix from the encoder.
        let r = &mut inner.registry;
        r.register(
            "http_requests",
            "HTTP requests served",
            inner.http_requests.clone(),
        );
        r.register(
            "http_request_duration_seconds",
            "Time to serve an HTTP request, by route template",
            inner.http_duration.clone(),
        );
        r.register(
            "proposals",
            "Commands proposed to Paxos",
            inner.proposals.clone(),
        );
        r.register(
            "batch_commands",
            "Commands per proposed batch",
            inner.batch_commands.clone(),
        );
        r.register(
            "batch_bytes",
            "Encoded bytes per proposed batch",
            inner.batch_bytes.clone(),
        );
        r.register(
            "commit_latency_seconds",
            "Time from proposing a command to applying it",
            inner.commit_latency.clone(),
        );
        r.register(
            "fsync_duration_seconds",
            "Time to make a write durable",
            inner.fsync.clone(),
        );
        r.register(
            "master_changes",
            "Times the known master changed",
            inner.master_changes.clone(),
        );
        r.register(
            "is_master",
            "1 while this node holds the master lease",
            inner.is_master.clone(),
        );
        r.register(
            "lease_remaining_seconds",
            "Time left on the master lease this node knows of",
            inner.lease_remaining.clone(),
        );
        r.register(
            "log_entries",
            "Entries in the Paxos log",
            inner.log_entries.clone(),
        );
        r.register(
            "commit_index",
            "Highest instance known chosen",
            inner.commit_index.clone(),
        );
        r.register(
            "applied_index",
            "Highest instance applied",
            inner.applied_index.clone(),
        );
        r.register(
            "store_bytes",
            "The store's size as its quota counts it, as applied on this replica: \
             keys, values and a fixed overhead per key for the memory each takes",
            inner.store_bytes.clone(),
        );
        r.register(
            "store_quota_bytes",
            "Largest size (see phxkv_store_bytes) the store may reach before \
             writes are refused (serve --quota-bytes); 0 for no quota",
            inner.quota_bytes.clone(),
        );
        r.register(
            "quota_refusals",
            "Writes refused because they would take the store past its quota",
            inner.quota_refusals.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Bytes free on the file system of this replica's data directory, as last read",
            inner.disk_free_bytes.clone(),
        );
        r.register(
            "disk_full_refusals",
            "Writes refused because this replica's data volume had less free than it \
             keeps for its log and its next snapshot (serve --disk-reserve-bytes)",
            inner.disk_full_refusals.clone(),
        );
        r.register(
            "snapshots",
            "Snapshots taken, sent and installed",
            inner.snapshots.clone(),
        );
        r.register(
            "auth_failures",
            "Requests refused authentication on either port, by reason: missing (no \
             token), invalid (a wrong or revoked token; these count towards the \
             per-address limit), rate_limited (the address is over that limit)",
            inner.auth_failures.clone(),
        );
        r.register(
            "forwarded_writes",
            "Writes forwarded to the master",
            inner.forwarded.clone(),
        );
        r.register(
            "forwards_sent_again",
            "Forwarded writes sent to the master again, under the same request id, \
             after going unanswered for a while (lost on the way, or slow to commit)",
            inner.forwards_sent_again.clone(),
        );
        r.register(
            "forgotten_copies",
            "Writes this node answered 504 because a copy it sent to a new master \
             after a failover arrived after the cluster's request-id table (the last \
             100,000 writes) may have forgotten the first: refused, never applied twice",
            inner.forgotten_copies.clone(),
        );
        r.register(
            "peer_messages",
            "Messages exchanged with peers",
            inner.peer_messages.clone(),
        );
        r.register(
            "peer_message_bytes_sent",
            "Bytes of Paxos message bodies sent to peers, by encoding (json or compact)",
            inner.peer_bytes_sent.clone(),
        );
        r.register(
            "node_state",
            "1 for this node's state: bootstrapping, joining, awaiting_replacement (its volume \
             was lost and the cluster counts another incarnation under its name) or member",
            inner.node_state.clone(),
        );
        r.register(
            "peer_misaddressed_messages",
            "Peer messages refused or sent back because they were meant for another \
             incarnation of the receiving node",
            inner.misaddressed.clone(),
        );
        r.register(
            "digest_mismatches",
            "Times a peer's state digest differed from this replica's at the same log index",
            inner.digest_mismatches.clone(),
        );
        r.register(
            "diverged",
            "1 once this replica's state differs from what a majority of the voters hold; \
             it then serves no reads and must be replaced",
            inner.diverged.clone(),
        );
        r.register(
            "anonymous_ops",
            "1 when this node proposes writes made without a credential as anonymous ops, \
             refused where they are applied once auth is on (every member said it decodes \
             them); 0 while a member has not (a rolling upgrade, or the round trip after \
             this node started)",
            inner.anonymous_ops.clone(),
        );
        r.register(
            "watches",
            "Watches open on this node: each one follows its feed of applied changes until \
             its client goes away",
            inner.watches.clone(),
        );
        r.register(
            "archive_lag_entries",
            "On the master with archiving on: applied log entries not yet shipped to the archive",
            inner.archive_lag_entries.clone(),
        );
        r.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the certificate this node serves on a port (client, peer) expires, in Unix \
             seconds; absent without TLS",
            inner.tls_expiry.clone(),
        );
        r.register(
            "archive_lag_seconds",
            "On the master with archiving on: seconds since the archive last caught up (0 when it is)",
            inner.archive_lag_seconds.clone(),
        );
        for state in NODE_STATES {
            inner
                .node_state
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(0);
        }
        Self(Arc::new(inner))
    }

    /// Records one served HTTP request. `route` must be a route template, not
    /// a raw path, so label values stay bounded.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let (route, method) = (route.to_owned(), method.to_owned());
        self.0
            .http_duration
            .get_or_create(&RouteLabels {
                route: route.clone(),
                method: method.clone(),
            })
            .observe(elapsed.as_secs_f64());
        self.0
            .http_requests
            .get_or_create(&RequestLabels {
                route,
                method,
                status,
            })
            .inc();
    }

    /// Counts commands handed to the Paxos engine.
    pub fn inc_proposals(&self, n: u64) {
        self.0.proposals.inc_by(n);
    }

    /// Records the size of one proposed batch.
    pub fn observe_batch(&self, commands: usize, bytes: usize) {
        self.0.batch_commands.observe(commands as f64);
        self.0.batch_bytes.observe(bytes as f64);
    }

    /// Records the time from proposing a command to applying it.
    pub fn observe_commit_latency(&self, elapsed: Duration) {
        self.0.commit_latency.observe(elapsed.as_secs_f64());
    }

    /// Records the duration of one fsync (or equivalent durable commit).
    pub fn observe_fsync(&self, elapsed: Duration) {
        self.0.fsync.observe(elapsed.as_secs_f64());
    }

    /// Counts a change of the known master.
    pub fn inc_master_changes(&self) {
        self.0.master_changes.inc();
    }

    /// Sets whether this node is master (exported as 1 or 0).
    pub fn set_is_master(&self, is_master: bool) {
        self.0.is_master.set(i64::from(is_master));
    }

    /// Sets the time left on the master lease.
    pub fn set_lease_remaining(&self, remaining: Duration) {
        self.0.lease_remaining.set(remaining.as_secs_f64());
    }

    /// Sets the number of entries in the log.
    pub fn set_log_entries(&self, n: u64) {
        self.0.log_entries.set(n);
    }

    /// Sets the highest instance known to be chosen.
    pub fn set_commit_index(&self, index: u64) {
        self.0.commit_index.set(index);
    }

    /// Sets the highest instance applied to the key-value state.
    pub fn set_applied_index(&self, index: u64) {
        self.0.applied_index.set(index);
    }

    /// Sets the store's size as the quota counts it.
    pub fn set_store_bytes(&self, bytes: u64) {
        self.0.store_bytes.set(bytes);
    }

    /// Sets the store quota (0: none).
    pub fn set_quota_bytes(&self, bytes: u64) {
        self.0.quota_bytes.set(bytes);
    }

    /// Counts a write refused for the store quota.
    pub fn inc_quota_refusals(&self) {
        self.0.quota_refusals.inc();
    }

    /// Bytes free on the data directory's file system, as last read.
    pub fn set_disk_free_bytes(&self, bytes: u64) {
        self.0.disk_free_bytes.set(bytes);
    }

    /// A write refused because the data volume is nearly full.
    pub fn inc_disk_full_refusals(&self) {
        self.0.disk_full_refusals.inc();
    }

    /// Counts a snapshot event; `kind` is one of `taken`, `sent`, `installed`.
    pub fn inc_snapshots(&self, kind: &str) {
        self.0
            .snapshots
            .get_or_create(&KindLabels {
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// Counts a request refused authentication; `reason` is `missing`,
    /// `invalid` or `rate_limited`.
    pub fn inc_auth_failures(&self, reason: &str) {
        self.0
            .auth_failures
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Counts a client write this node forwarded to the master.
    pub fn inc_forwarded(&self) {
        self.0.forwarded.inc();
    }

    /// Counts forwarded writes the engine sent to the master again.
    pub fn inc_forwards_sent_again(&self, n: u64) {
        self.0.forwards_sent_again.inc_by(n);
    }

    /// Counts a write refused as a copy the request-id table may have
    /// forgotten the first of.
    pub fn inc_forgotten_copies(&self) {
        self.0.forgotten_copies.inc();
    }

    /// Counts peer messages; `direction` is `sent` or `received`.
    pub fn inc_peer_messages(&self, direction: &str, n: u64) {
        self.0
            .peer_messages
            .get_or_create(&DirectionLabels {
                direction: direction.to_owned(),
            })
            .inc_by(n);
    }

    /// Counts the bytes of one body of Paxos messages sent in `encoding`.
    pub fn inc_peer_bytes_sent(&self, encoding: &str, n: u64) {
        self.0
            .peer_bytes_sent
            .get_or_create(&EncodingLabels {
                encoding: encoding.to_owned(),
            })
            .inc_by(n);
    }

    /// Sets this node's state (one of [`NODE_STATES`]) to 1, the others to 0.
    pub fn set_node_state(&self, state: &str) {
        for s in NODE_STATES {
            self.0
                .node_state
                .get_or_create(&StateLabels {
                    state: s.to_owned(),
                })
                .set(i64::from(s == state));
        }
    }

    /// Counts a state digest that differed from a peer's.
    pub fn inc_digest_mismatches(&self) {
        self.0.digest_mismatches.inc();
    }

    /// Sets whether anonymous writes are proposed as anonymous ops.
    pub fn set_anonymous_ops(&self, on: bool) {
        self.0.anonymous_ops.set(i64::from(on));
    }

    /// Sets how many watches are open on this node.
    pub fn set_watches(&self, open: usize) {
        self.0.watches.set(i64::try_from(open).unwrap_or(i64::MAX));
    }

    /// Sets whether this replica diverged (exported as 1 or 0).
    pub fn set_diverged(&self, diverged: bool) {
        self.0.diverged.set(i64::from(diverged));
    }

    /// Sets how far the archive is behind this master: applied entries not
    /// archived yet, and seconds since the archive last caught up (0 when it
    /// is caught up).
    pub fn set_archive_lag(&self, entries: u64, seconds: u64) {
        self.0
            .archive_lag_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
        self.0
            .archive_lag_seconds
            .set(i64::try_from(seconds).unwrap_or(i64::MAX));
    }

    /// Records when the certificate served on `port` expires (Unix seconds).
    pub fn set_tls_expiry(&self, port: &str, not_after: i64) {
        self.0
            .tls_expiry
            .get_or_create(&PortLabels {
                port: port.to_owned(),
            })
            .set(not_after);
    }

    /// Counts peer messages meant for another incarnation of their receiver.
    pub fn inc_misaddressed(&self, n: u64) {
        self.0.misaddressed.inc_by(n);
    }

    /// Renders every series in the OpenMetrics text format, `# EOF` included.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, so an error means a series could
        // not be encoded; a truncated exposition would mislead the scraper.
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.0.registry) {
            tracing::error!(%error, "cannot encode metrics");
            out.clear();
        }
        out
    }
}

/// The content type of [`Metrics::render`]'s output.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Axum handler serving [`Metrics::render`], for a `GET /metrics` route.
pub async fn metrics_handler(State(metrics): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
        metrics.render(),
    )
}

/// Axum middleware recording every request in [`Metrics::observe_request`],
/// labelled by matched route template (`unmatched` when no route matched)
/// and by method, with uncommon methods folded into `OTHER`.
///
/// Install with
/// `Router::layer(axum::middleware::from_fn_with_state(metrics, track_requests))`
/// so the matched route is known when it runs.
pub async fn track_requests(
    State(metrics): State<Metrics>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = matched
        .as_ref()
        .map_or(UNMATCHED_ROUTE, MatchedPath::as_str)
        .to_owned();
    let method = method_label(req.method());
    let start = Instant::now();
    let response = next.run(req).await;
    metrics.observe_request(&route, method, response.status().as_u16(), start.elapsed());
    response
}

/// Bounds the method label: clients may send any token as a method.
fn method_label(method: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ];
    KNOWN
        .iter()
        .find(|known| *known == method)
        .map_or("OTHER", |known| known.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::body::Body;
    use axum::routing::put;
    use tower::ServiceExt as _;

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no line starting with {prefix:?} in:\n{text}"))
    }

    #[test]
    fn every_series_is_rendered_with_its_labels_and_counts() {
        let m = Metrics::new();
        m.observe_request("/v1/kv/{*key}", "GET", 200, Duration::from_millis(3));
        m.inc_proposals(5);
        m.observe_batch(5, 300);
        m.observe_commit_latency(Duration::from_millis(2));
        m.observe_fsync(Duration::from_micros(80));
        m.inc_master_changes();
        m.set_is_master(true);
        m.set_lease_remaining(Duration::from_millis(1500));
        m.set_log_entries(42);
        m.set_commit_index(41);
        m.set_applied_index(40);
        m.set_store_bytes(1234);
        m.set_quota_bytes(1 << 31);
        m.inc_quota_refusals();
        m.inc_snapshots("taken");
        m.inc_snapshots("sent");
        m.inc_snapshots("sent");
        m.inc_forwarded();
        m.inc_forwards_sent_again(2);
        m.inc_forgotten_copies();
        m.inc_peer_messages("sent", 3);
        m.inc_peer_messages("received", 4);
        m.inc_peer_bytes_sent("json", 100);
        let text = m.render();

        let expected = [
            r#"phxkv_http_requests_total{route="/v1/kv/{*key}",method="GET",status="200"} 1"#,
            r#"phxkv_http_request_duration_seconds_count{route="/v1/kv/{*key}",method="GET"} 1"#,
            "phxkv_proposals_total 5",
            "phxkv_batch_commands_count 1",
            "phxkv_batch_commands_sum 5.0",
            "phxkv_batch_bytes_count 1",
            "phxkv_batch_bytes_sum 300.0",
            "phxkv_commit_latency_seconds_count 1",
            "phxkv_fsync_duration_seconds_count 1",
            "phxkv_master_changes_total 1",
            "phxkv_is_master 1",
            "phxkv_lease_remaining_seconds 1.5",
            "phxkv_log_entries 42",
            "phxkv_commit_index 41",
            "phxkv_applied_index 40",
            "phxkv_store_bytes 1234",
            "phxkv_store_quota_bytes 2147483648",
            "phxkv_quota_refusals_total 1",
            r#"phxkv_snapshots_total{kind="taken"} 1"#,
            r#"phxkv_snapshots_total{kind="sent"} 2"#,
            "phxkv_forwarded_writes_total 1",
            "phxkv_forwards_sent_again_total 2",
            "phxkv_forgotten_copies_total 1",
            r#"phxkv_peer_messages_total{direction="sent"} 3"#,
            r#"phxkv_peer_messages_total{direction="received"} 4"#,
            r#"phxkv_peer_message_bytes_sent_total{encoding="json"} 100"#,
        ];
        for series in expected {
            assert!(
                text.lines().any(|l| l == series),
                "missing {series:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn sub_millisecond_fsyncs_land_below_the_millisecond_buckets() {
        let m = Metrics::new();
        m.observe_fsync(Duration::from_micros(40));
        let text = m.render();
        // 40 µs fits the 50 µs bucket but not the 25 µs one.
        assert!(
            line(
                &text,
                r#"phxkv_fsync_duration_seconds_bucket{le="0.000025"}"#
            )
            .ends_with(" 0")
        );
        assert!(
            line(
                &text,
                r#"phxkv_fsync_duration_seconds_bucket{le="0.00005"}"#
            )
            .ends_with(" 1")
        );
    }

    #[test]
    fn is_master_drops_back_to_zero() {
        let m = Metrics::new();
        m.set_is_master(true);
        m.set_is_master(false);
        assert!(m.render().lines().any(|l| l == "phxkv_is_master 0"));
    }

    #[tokio::test]
    async fn middleware_labels_requests_by_route_template_not_raw_path() {
        let metrics = Metrics::new();
        let app = Router::new()
            .route("/v1/kv/{*key}", put(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(
                metrics.clone(),
                track_requests,
            ));

        for uri in ["/v1/kv/users/alice", "/v1/kv/users/bob", "/nowhere"] {
            let req = Request::builder()
                .method(Method::PUT)
                .uri(uri)
                .body(Body::empty())
                .expect("request");
            app.clone()
                .oneshot(req)
                .await
                .expect("router is infallible");
        }
        let text = metrics.render();
        let ok = r#"phxkv_http_requests_total{route="/v1/kv/{*key}",method="PUT",status="200"} 2"#;
        let missing = r#"phxkv_http_requests_total{route="unmatched",method="PUT",status="404"} 1"#;
        assert!(text.lines().any(|l| l == ok), "{text}");
        assert!(text.lines().any(|l| l == missing), "{text}");
        assert!(
            !text.contains("alice") && !text.contains("nowhere"),
            "{text}"
        );
    }

    #[test]
    fn unusual_methods_share_one_label() {
        let custom = Method::from_bytes(b"BREW").expect("valid token");
        assert_eq!(method_label(&custom), "OTHER");
        assert_eq!(method_label(&Method::DELETE), "DELETE");
    }

    #[tokio::test]
    async fn handler_serves_openmetrics_text() {
        let metrics = Metrics::new();
        metrics.inc_forwarded();
        let response = metrics_handler(State(metrics)).await.into_response();
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            OPENMETRICS_CONTENT_TYPE
        );
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        let body = String::from_utf8(body.to_vec()).expect("utf-8 body");
        assert!(body.contains("phxkv_forwarded_writes_total 1"), "{body}");
    }
}

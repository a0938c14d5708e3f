//! One client write through a follower is one trace across two nodes: the
//! nodes export spans by OTLP/HTTP to a receiver this test runs, and the
//! follower's forward to the master carries the W3C trace context.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::routing::post;
use common::Cluster;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use prost::Message;

/// Trace ids seen per exporting node (`service.instance.id`).
type Seen = Arc<Mutex<BTreeMap<Vec<u8>, BTreeSet<String>>>>;

async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let store = seen.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let store = store.clone();
            async move {
                if let Ok(req) = ExportTraceServiceRequest::decode(body) {
                    for rs in req.resource_spans {
                        let node = rs
                            .resource
                            .iter()
                            .flat_map(|r| r.attributes.iter())
                            .find(|kv| kv.key == "service.instance.id")
                            .and_then(|kv| kv.value.as_ref()?.value.clone())
                            .map(|v| match v {
                                AnyValue::StringValue(s) => s,
                                other => format!("{other:?}"),
                            })
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for span in ss.spans {
                                if let Ok(mut s) = store.lock() {
                                    s.entry(span.trace_id).or_default().insert(node.clone());
                                }
                            }
                        }
                    }
                }
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_through_a_follower_is_one_trace_across_two_nodes() {
    let (endpoint, seen) = receiver().await;
    let c = Cluster::start_with_env(
        3,
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ],
    )
    .await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let follower = (m + 1) % 3;
    assert_eq!(c.put(follower, "traced", "yes").await.status(), 200);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let joint = seen
            .lock()
            .map(|s| s.values().any(|nodes| nodes.len() >= 2))
            .unwrap_or(false);
        if joint {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no trace spans two nodes; seen: {:?}",
            seen.lock()
                .map(|s| s.values().cloned().collect::<Vec<_>>())
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

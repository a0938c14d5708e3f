//! `--read-mode quorum` on real processes: linearizable reads confirmed by a
//! round trip, failover without waiting out a lease, and a node in the other
//! mode refused by its peers.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, TOKEN};

#[tokio::test(flavor = "multi_thread")]
async fn quorum_mode_serves_linearizable_reads_and_fails_over_without_a_lease() {
    // A long lease: in lease mode the survivors would wait it out (10s)
    // before electing anyone; in quorum mode nobody honours it.
    let mut c = Cluster::start(3, &["--read-mode", "quorum", "--lease", "10s"]).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    for i in 0..3 {
        assert_eq!(c.put(i, &format!("k{i}"), "v1").await.status(), 200);
        // Read back through every node, the master's confirmation included.
        for j in 0..3 {
            let got = c.get(j, &format!("k{i}"), "").await.expect("read");
            assert_eq!(
                (got.0, got.1.as_slice()),
                (200, b"v1".as_slice()),
                "read of k{i} at node {j}"
            );
        }
    }
    let status: serde_json::Value = c
        .http
        .get(format!("{}/v1/cluster", c.url(m)))
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(status["read_mode"], "quorum", "{status}");
    c.kill9(m);
    let killed = Instant::now();
    let other = (m + 1) % 3;
    loop {
        if c.put(other, "after", "v2").await.status() == 200 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(8),
            "no write was acknowledged within 8s of the master's death (lease 10s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = c.get(other, "after", "").await.expect("read");
    assert_eq!((got.0, got.1.as_slice()), (200, b"v2".as_slice()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_in_the_other_read_mode_is_refused() {
    let c = Cluster::start(1, &["--read-mode", "quorum"]).await;
    let http = reqwest::Client::new();
    let url = format!("{}/peer/v1/hello", c.peer_url(0));
    let r = http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("phxkv-read-mode", "lease")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 412);
    let body: serde_json::Value = r.json().await.expect("json");
    assert_eq!(body["error"]["code"], "read_mode_mismatch", "{body}");
    // A request without the header states lease mode, the default.
    let r = http
        .get(&url)
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 412);
    let r = http
        .get(&url)
        .bearer_auth(TOKEN)
        .header("phxkv-read-mode", "quorum")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
}

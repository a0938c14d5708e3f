//! A write answered 504 (outcome unknown) is sent again under the same
//! `Idempotency-Key`, against a stand-in server that answers as phxkv does,
//! so the client's side of the contract is checked without a failover.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use phxkv_client::{Client, Config, Error, PutOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TIMEOUT_504: &str = r#"{"error":{"code":"timeout","message":"the write's outcome is unknown; it may still commit"}}"#;
const WRITTEN: &str = r#"{"revision":7,"version":1}"#;

/// Serves one HTTP/1.1 exchange per connection: records the request's
/// `idempotency-key` and answers with what `answer` gives for the n-th
/// request (from 0).
async fn serve(answer: fn(usize) -> (u16, &'static str)) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(i + 4);
                }
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            };
            let Some(head_end) = head_end else { continue };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| l.strip_prefix(name))
                    .map(|v| v.trim().to_string())
            };
            let length: usize = header("content-length:")
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            while buf.len() < head_end + length {
                match conn.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                }
            }
            let n = {
                let mut keys = seen.lock().expect("lock");
                keys.push(header("idempotency-key:").unwrap_or_default());
                keys.len() - 1
            };
            let (status, body) = answer(n);
            let reason = if status == 200 {
                "OK"
            } else {
                "Gateway Timeout"
            };
            let reply = format!(
                "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes()).await;
            let _ = conn.shutdown().await;
        }
    });
    (format!("http://{addr}"), keys)
}

#[tokio::test]
async fn a_write_answered_504_is_sent_again_under_the_same_key() {
    let (url, keys) = serve(|n| {
        if n < 2 {
            (504, TIMEOUT_504)
        } else {
            (200, WRITTEN)
        }
    })
    .await;
    let client = Client::new(Config::new([url]).timeout(Duration::from_secs(10))).expect("client");
    let written = client
        .put(b"k", b"v".to_vec(), PutOptions::default())
        .await
        .expect("the third attempt's answer");
    assert_eq!((written.revision, written.version), (7, 1));
    let keys = keys.lock().expect("lock").clone();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert!(!keys[0].is_empty(), "{keys:?}");
    assert!(
        keys.iter().all(|k| *k == keys[0]),
        "one key for every attempt: {keys:?}"
    );
}

#[tokio::test]
async fn a_write_still_unknown_after_the_timeout_is_answered_504() {
    let (url, keys) = serve(|_| (504, TIMEOUT_504)).await;
    let client =
        Client::new(Config::new([url]).timeout(Duration::from_millis(500))).expect("client");
    let err = client
        .put(b"k", b"v".to_vec(), PutOptions::default())
        .await
        .expect_err("every attempt was a 504");
    assert!(matches!(&err, Error::Api(_)), "{err:?}");
    assert_eq!(err.code(), Some("timeout"), "{err:?}");
    let keys = keys.lock().expect("lock").clone();
    assert!(keys.len() >= 2, "sent again before giving up: {keys:?}");
    assert!(keys.iter().all(|k| *k == keys[0]), "{keys:?}");
}

#[tokio::test]
async fn a_read_answered_504_is_not_sent_again() {
    let (url, keys) = serve(|_| (504, TIMEOUT_504)).await;
    let client = Client::new(Config::new([url]).timeout(Duration::from_secs(10))).expect("client");
    let err = client.get(b"k").await.expect_err("a 504");
    assert_eq!(err.code(), Some("timeout"), "{err:?}");
    assert_eq!(keys.lock().expect("lock").len(), 1);
}

//! TLS on both ports, over real processes: a cluster whose replicas speak
//! mutual TLS to each other and HTTPS to clients; a peer port that refuses
//! callers without a certificate of the cluster's CA during the handshake;
//! plain HTTP to a TLS port answered with a clear error; certificates
//! replaced on disk served by the next connection without a restart.

mod common;

use std::time::Duration;

use common::Cluster;
use common::pki::{self, Ca, Leaf, TlsFiles};

/// A CA, one certificate for every node (valid for 127.0.0.1), its files.
fn pki_in(dir: &std::path::Path, names: &[&str]) -> (Ca, Leaf, TlsFiles) {
    let ca = Ca::new("phxkv test CA");
    let leaf = ca.issue("phxkv node", names);
    let files = ca.write(dir, "node", &leaf);
    (ca, leaf, files)
}

async fn secured(n: usize) -> (Cluster, Ca, Leaf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, leaf, files) = pki_in(dir.path(), &["127.0.0.1", "localhost"]);
    let http = pki::client(&ca, None);
    let cluster = Cluster::start_tls(n, &[], files, http).await;
    (cluster, ca, leaf, dir)
}

/// The DER of the certificate a fresh connection to `url` is served.
async fn served_certificate(ca: &Ca, url: &str) -> Vec<u8> {
    let r = pki::client(ca, None)
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("https request");
    r.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|i| i.peer_certificate())
        .expect("the server's certificate")
        .to_vec()
}

/// An empty batch of peer messages posted to `url` (a peer port) without
/// the cluster token, presenting `leaf` if given.
async fn post_to_peer_port(
    ca: &Ca,
    leaf: Option<&Leaf>,
    url: &str,
) -> reqwest::Result<reqwest::Response> {
    pki::client(ca, leaf).post(url).body("[]").send().await
}

/// A watch on `prefix` at `url` (a client port), opened with `leaf`.
async fn watch_as(ca: &Ca, leaf: &Leaf, url: &str, prefix: &str) -> reqwest::Response {
    let watch = pki::client(ca, Some(leaf))
        .get(format!("{url}/v1/watch?prefix={prefix}"))
        .timeout(Duration::from_secs(120))
        .send()
        .await
        .expect("watch");
    assert_eq!(watch.status(), 200);
    watch
}

/// Whether the server ends `stream` within 30 s.
async fn ends(mut stream: reqwest::Response) -> bool {
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(_)) = stream.chunk().await {}
    })
    .await
    .is_ok()
}

fn der_of(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("PEM body")
}

#[tokio::test]
async fn replicas_speaking_mutual_tls_elect_a_master_and_serve_writes_over_https() {
    let (c, _ca, _leaf, _dir) = secured(3).await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let r = c.put(m, "tls/k", "v").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);
    // A write is chosen by a majority: the peers reached each other.
    for i in 0..3 {
        let (status, body) = c.get(i, "tls/k", "").await.expect("get");
        assert_eq!(status, 200);
        assert_eq!(body, b"v");
    }
}

#[tokio::test]
async fn the_peer_port_refuses_callers_without_a_certificate_of_the_cluster_ca() {
    let (c, ca, leaf, _dir) = secured(3).await;
    let url = format!("{}/peer/v1/messages", c.peer_url(0));

    let anonymous = post_to_peer_port(&ca, None, &url).await;
    assert!(anonymous.is_err(), "no certificate: {anonymous:?}");

    let stranger_ca = Ca::new("another CA");
    let stranger = stranger_ca.issue("stranger", &["127.0.0.1"]);
    let foreign = post_to_peer_port(&ca, Some(&stranger), &url).await;
    assert!(foreign.is_err(), "certificate of another CA: {foreign:?}");

    // The cluster's own certificate gets through the handshake, so the
    // refusals above were the certificates' doing; without the cluster
    // token the handler then says no.
    let member = post_to_peer_port(&ca, Some(&leaf), &url)
        .await
        .expect("a handshake with the cluster's certificate");
    assert_eq!(member.status(), 401);
}

/// `--peer-cert-allowed-cn`: replicas whose certificates carry the name
/// form a cluster; a client certificate of the same CA, which names its
/// holder, is refused during the peer port's handshake; a replica whose own
/// certificate names something else is refused at start, naming the flag.
#[tokio::test]
async fn with_peer_cert_allowed_cn_client_certificates_of_the_ca_stay_off_the_peer_port() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, leaf, files) = pki_in(dir.path(), &["127.0.0.1", "localhost"]);
    let c = Cluster::start_tls(
        3,
        &["--peer-cert-allowed-cn", "phxkv node"],
        files.clone(),
        pki::client(&ca, None),
    )
    .await;
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let r = c.put(m, "tls/cn", "v").await;
    assert_eq!(r.status(), 200, "{:?}", r.text().await);

    let url = format!("{}/peer/v1/messages", c.peer_url(0));
    let app = ca.issue("app", &["127.0.0.1"]);
    let refused = post_to_peer_port(&ca, Some(&app), &url)
        .await
        .expect_err("a client certificate of the same CA");
    let reason = phxkv::tls::failure_reason(&refused).unwrap_or_default();
    assert!(reason.contains("AccessDenied"), "{refused:?}");
    // The replicas' certificate passes the handshake; the handler then
    // wants the cluster token.
    let member = post_to_peer_port(&ca, Some(&leaf), &url)
        .await
        .expect("a handshake with the replicas' certificate");
    assert_eq!(member.status(), 401);

    let token = dir.path().join("token");
    std::fs::write(&token, "a-cluster-token-of-some-length").expect("token");
    let path = |p: &std::path::Path| p.to_string_lossy().into_owned();
    let (cert, key, ca_file, token) = (
        path(&files.cert),
        path(&files.key),
        path(&files.ca),
        path(&token),
    );
    let (code, _, err) = common::run_phxkv(
        &[
            "serve",
            "--id",
            "a",
            "--initial-members",
            "a=https://127.0.0.1:1",
            "--cluster-token-file",
            &token,
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-ca",
            &ca_file,
            "--peer-cert-allowed-cn",
            "kv.db",
        ],
        &[],
    );
    assert_ne!(code, 0, "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("phxkv:")).collect();
    assert_eq!(lines.len(), 1, "one readable line: {err}");
    assert!(
        lines[0].contains("--peer-cert-allowed-cn") && lines[0].contains("names \"phxkv node\""),
        "{err}"
    );
}

#[tokio::test]
async fn plain_http_to_a_tls_port_gets_a_json_error_saying_to_use_https() {
    let (c, _ca, _leaf, _dir) = secured(1).await;
    let plain = reqwest::Client::new();
    for port in [c.procs[0].client_port, c.procs[0].peer_port] {
        let r = plain
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("an answer, not a stalled handshake");
        assert_eq!(r.status(), 400);
        let body: serde_json::Value = r.json().await.expect("JSON body");
        assert_eq!(body["error"]["code"], "tls_required");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("https://")),
            "{body}"
        );
    }
}

#[tokio::test]
async fn certificates_replaced_on_disk_are_served_by_the_next_connection() {
    let (c, ca, leaf, _dir) = secured(3).await;
    let files = c.tls.clone().expect("TLS files");
    let url = c.url(0);
    assert_eq!(served_certificate(&ca, &url).await, der_of(&leaf.cert));

    // A connection opened before the rotation.
    let kept = pki::client(&ca, None);
    let before = kept
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("request");
    assert!(before.status().is_success());

    // Key first, then certificate: in between the pair does not match, and
    // the node keeps serving the old one rather than failing handshakes.
    let renewed = ca.issue("phxkv node (renewed)", &["127.0.0.1", "localhost"]);
    pki::replace(&files.key, &renewed.key);
    assert_eq!(served_certificate(&ca, &url).await, der_of(&leaf.cert));
    pki::replace(&files.cert, &renewed.cert);
    assert_eq!(served_certificate(&ca, &url).await, der_of(&renewed.cert));
    let log = c.log_of(0);
    assert!(
        log.lines()
            .any(|l| l.contains("TLS files reloaded") && l.contains("changed=certificate, key")),
        "{log}"
    );

    // Nothing was dropped: the old connection still answers, and the
    // cluster, whose peers now present the renewed certificate, still
    // chooses writes.
    let after = kept
        .get(format!("{url}/healthz"))
        .send()
        .await
        .expect("request");
    assert!(after.status().is_success());
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    let r = c.put(m, "tls/after-rotation", "v").await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_node_whose_certificate_its_peers_would_refuse_does_not_start() {
    // Valid for "localhost" only, while peer URLs name 127.0.0.1: every
    // peer call would fail verification, so the node says so and stops
    // instead of running without ever reaching a peer. (A node that
    // joins, whose peer URL it does not know, meets the same check in
    // each handshake: `tls::tests`.)
    let dir = tempfile::tempdir().expect("temp dir");
    let (_ca, _leaf, files) = pki_in(dir.path(), &["localhost"]);
    let c = Cluster::start_later_tls(3, &[], files.clone());
    let out = c.command(0).output().expect("run phxkv serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--tls-cert"), "{err}");
    assert!(
        err.contains("does not name 127.0.0.1, the host of this node's peer URL"),
        "{err}"
    );

    // A certificate made for a web server only (no clientAuth): the peer
    // ports of the others would refuse it.
    let ca = pki::Ca::new("phxkv test CA");
    let server_only = ca.issue_with_usages("phxkv node", &["127.0.0.1"], &["serverAuth"]);
    std::fs::write(&files.cert, &server_only.cert).expect("write");
    std::fs::write(&files.key, &server_only.key).expect("write");
    std::fs::write(&files.ca, ca.cert_pem()).expect("write");
    let out = c.command(0).output().expect("run phxkv serve");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("lacks clientAuth"), "{err}");
}

#[tokio::test]
async fn the_command_line_trusts_the_cluster_ca_with_cacert_and_says_so_without_it() {
    let (c, _ca, _leaf, _dir) = secured(3).await;
    let files = c.tls.clone().expect("TLS files");
    let m = c.wait_for_master(Duration::from_secs(20)).await;
    assert_eq!(c.put(m, "cli/k", "hello").await.status(), 200);
    let endpoint = c.url(0);
    let ca = files.ca.to_string_lossy().into_owned();

    let (code, out, err) = common::run_phxkv(
        &["get", "cli/k", "--endpoints", &endpoint, "--cacert", &ca],
        &[],
    );
    assert_eq!((code, out.trim()), (0, "hello"), "{err}");

    // Without the CA: the system's roots do not know the cluster's CA.
    let (code, _, err) = common::run_phxkv(&["get", "cli/k", "--endpoints", &endpoint], &[]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("--cacert"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    // http:// to the TLS port: the node's own answer says what to do.
    let plain = endpoint.replace("https://", "http://");
    let (code, _, err) = common::run_phxkv(&["get", "cli/k", "--endpoints", &plain], &[]);
    assert_ne!(code, 0);
    assert!(err.contains("https://"), "{err}");

    // A CA file that is not one.
    let (code, _, err) = common::run_phxkv(
        &[
            "get",
            "cli/k",
            "--endpoints",
            &endpoint,
            "--cacert",
            "/nonexistent/ca.crt",
        ],
        &[],
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--cacert"), "{err}");
}

#[tokio::test]
async fn each_port_reports_when_its_certificate_expires() {
    let (c, _ca, _leaf, _dir) = secured(1).await;
    let text = c.metrics_text(0).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64();
    for port in ["client", "peer"] {
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("phxkv_tls_certificate_expiry_timestamp_seconds{")
                    && l.contains(&format!("port=\"{port}\""))
            })
            .unwrap_or_else(|| panic!("no expiry for the {port} port in\n{text}"));
        let value: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("a number");
        assert!(value > now, "{line}");
    }
}

#[tokio::test]
async fn dev_secure_serves_https_with_a_ca_it_keeps_in_the_data_directory() {
    let dir = tempfile::tempdir().expect("dir");
    let port = loop {
        let p = common::free_port();
        if p < 65_000 && std::net::TcpListener::bind(("127.0.0.1", p + 100)).is_ok() {
            break p;
        }
    };
    let mut dev = std::process::Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args([
            "dev",
            "--secure",
            "--nodes",
            "1",
            "--port",
            &port.to_string(),
        ])
        .arg("--data-dir")
        .arg(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("phxkv dev");
    let ca = dir.path().join("tls").join("ca.crt");
    let url = format!("https://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Ok(pem) = std::fs::read(&ca) {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .tls_certs_only([reqwest::Certificate::from_pem(&pem).expect("CA")])
                .build()
                .expect("client");
            // --secure turns auth on too: the admin token is the cluster
            // token it keeps beside the CA; without it the answer is 401.
            let token =
                std::fs::read_to_string(dir.path().join("cluster-token")).unwrap_or_default();
            if let Ok(r) = client.get(format!("{url}/v1/kv/secure")).send().await
                && r.status() != 503
            {
                assert_eq!(r.status(), 401, "a request without a token");
            }
            if let Ok(r) = client
                .put(format!("{url}/v1/kv/secure"))
                .bearer_auth(token.trim())
                .body("yes")
                .send()
                .await
                && r.status() != 503
            {
                break r.status();
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dev --secure never answered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = dev.kill();
    let out = dev.wait_with_output().expect("output");
    assert_eq!(status, 200);
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(dir.path().join("cluster-token"))
        .expect("token")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o077,
        0,
        "the admin token is readable by its owner only"
    );
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        printed.contains(&format!("--cacert {}", ca.display())),
        "{printed}"
    );
    assert!(printed.contains(&url), "{printed}");

    // The same directory without --secure would never elect a master (its
    // peer URLs and auth are replicated state): refused, saying how to run.
    let plain = std::process::Command::new(env!("CARGO_BIN_EXE_phxkv"))
        .args(["dev", "--nodes", "1", "--port", &port.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .output()
        .expect("phxkv dev");
    assert_eq!(plain.status.code(), Some(2));
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        err.contains("made with --secure") && err.contains("phxkv dev --secure"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[tokio::test]
async fn with_client_cert_auth_the_client_port_wants_a_certificate_of_the_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, leaf, files) = pki_in(dir.path(), &["127.0.0.1"]);
    let user = ca.issue("app", &["app.example"]);
    let c = Cluster::start_tls(
        1,
        &["--client-cert-auth"],
        files,
        pki::client(&ca, Some(&leaf)),
    )
    .await;
    let url = format!("{}/v1/kv/mtls", c.url(0));

    let anonymous = pki::client(&ca, None).put(&url).body("x").send().await;
    assert!(anonymous.is_err(), "no certificate: {anonymous:?}");
    let stranger = Ca::new("another CA").issue("stranger", &["127.0.0.1"]);
    let foreign = pki::client(&ca, Some(&stranger))
        .put(&url)
        .body("x")
        .send()
        .await;
    assert!(foreign.is_err(), "another CA's certificate: {foreign:?}");

    let r = pki::client(&ca, Some(&user))
        .put(&url)
        .body("x")
        .send()
        .await
        .expect("a certificate of the cluster's CA");
    assert_eq!(r.status(), 200);

    // The CLI presents one too, on the commands that name a key as well.
    let mine = ca.write(dir.path(), "app", &user);
    let (endpoint, ca_file) = (c.url(0), mine.ca.to_string_lossy().into_owned());
    let (cert, key) = (
        mine.cert.to_string_lossy().into_owned(),
        mine.key.to_string_lossy().into_owned(),
    );
    let tls = ["--endpoints", &endpoint, "--cacert", &ca_file];
    let mtls = ["--cert", cert.as_str(), "--key", key.as_str()];
    let with = |args: &[&'static str]| -> Vec<&str> { [args, &tls[..], &mtls[..]].concat() };
    let (code, _, err) = common::run_phxkv(&with(&["put", "mtls", "from-cli"]), &[]);
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = common::run_phxkv(&with(&["get", "mtls"]), &[]);
    assert_eq!((code, out.as_str()), (0, "from-cli"), "{err}");
    let env = [("PHXKV_CERT", cert.clone()), ("PHXKV_KEY", key.clone())];
    let (code, _, err) = common::run_phxkv(&[&["delete", "mtls"][..], &tls[..]].concat(), &env);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = common::run_phxkv(&[&["get", "mtls"][..], &tls[..]].concat(), &[]);
    assert_ne!(code, 0, "no certificate, no answer: {err}");
}

/// Replacing a leaked CA on disk shuts out the connections its
/// certificates opened, a watch stream among them, not only their next
/// handshakes.
#[tokio::test]
async fn a_replaced_ca_closes_the_connections_its_certificates_opened() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, leaf, files) = pki_in(dir.path(), &["127.0.0.1"]);
    let user = ca.issue("app", &["app.example"]);
    let c = Cluster::start_tls(
        1,
        &["--client-cert-auth"],
        files.clone(),
        pki::client(&ca, Some(&leaf)),
    )
    .await;
    let watch = watch_as(&ca, &user, &c.url(0), "rotated/").await;

    let new_ca = Ca::new("phxkv test CA, replaced");
    let node = new_ca.issue("phxkv node", &["127.0.0.1"]);
    pki::replace(&files.key, &node.key);
    pki::replace(&files.cert, &node.cert);
    pki::replace(&files.ca, &new_ca.cert_pem());
    // The next handshake reads the new files (one that comes while they
    // are half replaced may fail).
    let fresh = pki::client(&new_ca, Some(&new_ca.issue("app", &["app.example"])));
    let url = format!("{}/healthz", c.url(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fresh.get(&url).send().await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new files were not taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The watch, open with a certificate of the old CA, ends.
    assert!(ends(watch).await, "the old CA's watch stream is still open");
    assert!(
        c.log_of(0)
            .contains("no longer admitted by the reloaded CA"),
        "{}",
        c.log_of(0)
    );
    // And its certificate gets no new connection.
    let refused = pki::client(&new_ca, Some(&user)).get(&url).send().await;
    assert!(refused.is_err(), "the old CA's certificate: {refused:?}");
}

/// `--tls-crl`: a client certificate put on the revocation list loses the
/// connections it has open and gets no new one, also after a restart
/// beside an older list; other certificates of the CA are untouched.
#[tokio::test]
async fn a_certificate_put_on_the_revocation_list_is_shut_out() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, leaf, files) = pki_in(dir.path(), &["127.0.0.1"]);
    let crl = dir.path().join("ca.crl");
    std::fs::write(&crl, ca.revocation_list(&[], 1)).expect("write CRL");
    let crl_arg = crl.to_string_lossy().into_owned();
    let c = Cluster::start_tls(
        1,
        &["--client-cert-auth", "--tls-crl", &crl_arg],
        files,
        pki::client(&ca, Some(&leaf)),
    )
    .await;
    let (leaked, kept) = (
        ca.issue("leaked", &["app.example"]),
        ca.issue("kept", &["app.example"]),
    );
    let watch = watch_as(&ca, &leaked, &c.url(0), "revoked/").await;

    pki::replace(&crl, &ca.revocation_list(&[&leaked], 2));
    // The next handshake reads the new list.
    let url = format!("{}/v1/kv/revoked/x", c.url(0));
    let r = pki::client(&ca, Some(&kept))
        .put(&url)
        .body("v")
        .send()
        .await
        .expect("a certificate the list does not name");
    assert_eq!(r.status(), 200);
    assert!(
        ends(watch).await,
        "the revoked certificate's watch is still open"
    );
    refused_as_revoked(&ca, &leaked, &url).await;
    assert!(
        c.log_of(0).contains("no longer admitted"),
        "{}",
        c.log_of(0)
    );

    // The list from before the revocation put back while the node is
    // down: it starts on the newer list it kept, and says so.
    let mut c = c;
    c.kill9(0);
    pki::replace(&crl, &ca.revocation_list(&[], 1));
    c.spawn(0);
    c.wait_for_master(Duration::from_secs(20)).await;
    let r = pki::client(&ca, Some(&kept))
        .get(&url)
        .send()
        .await
        .expect("a certificate no list names");
    assert_eq!(r.status(), 200);
    refused_as_revoked(&ca, &leaked, &url).await;
    assert!(
        c.log_of(0).contains("had in force before it stopped"),
        "{}",
        c.log_of(0)
    );
}

/// Asserts that a call to `url` with `leaf`'s certificate fails because
/// the certificate is revoked.
async fn refused_as_revoked(ca: &pki::Ca, leaf: &pki::Leaf, url: &str) {
    let refused = pki::client(ca, Some(leaf)).get(url).send().await;
    let err = refused.expect_err("a revoked certificate");
    assert!(format!("{err:?}").contains("CertificateRevoked"), "{err:?}");
}

/// `--metrics-listen` serves the probes and metrics in plain HTTP beside a
/// client port that wants certificates, and nothing else.
#[tokio::test]
async fn with_metrics_listen_probes_need_no_certificate_and_the_api_is_not_there() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, leaf, files) = pki_in(dir.path(), &["127.0.0.1"]);
    let port = common::free_port();
    let listen = format!("127.0.0.1:{port}");
    let c = Cluster::start_tls(
        1,
        &["--client-cert-auth", "--metrics-listen", &listen],
        files,
        pki::client(&ca, Some(&leaf)),
    )
    .await;
    c.wait_for_master(Duration::from_secs(20)).await;
    let plain = reqwest::Client::new();
    let metrics = format!("http://{listen}");
    for path in ["/healthz", "/readyz"] {
        let r = plain
            .get(format!("{metrics}{path}"))
            .send()
            .await
            .expect("a probe over plain HTTP");
        assert_eq!(r.status(), 200, "{path}");
    }
    let r = plain
        .get(format!("{metrics}/metrics"))
        .send()
        .await
        .expect("metrics over plain HTTP");
    assert_eq!(r.status(), 200);
    let text = r.text().await.expect("metrics body");
    assert!(text.contains("phxkv_"), "{text}");

    let r = plain
        .put(format!("{metrics}/v1/kv/k"))
        .body("v")
        .send()
        .await
        .expect("an answer");
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.expect("a JSON error");
    assert_eq!(body["error"]["code"], "not_found", "{body}");

    // The client port still refuses a caller without a certificate.
    let anonymous = pki::client(&ca, None)
        .get(format!("{}/healthz", c.url(0)))
        .send()
        .await;
    assert!(anonymous.is_err(), "no certificate: {anonymous:?}");
}

/// With `--client-cert-identity`, a client certificate stands for the API
/// token whose id is its common name, on every replica, until that token
/// is revoked; a certificate naming no token gets 401.
#[tokio::test(flavor = "multi_thread")]
async fn with_client_cert_identity_a_certificate_acts_as_the_token_it_names() {
    use serde_json::{Value, json};
    let dir = tempfile::tempdir().expect("temp dir");
    let (ca, leaf, files) = pki_in(dir.path(), &["127.0.0.1"]);
    let flags = ["--auth", "--client-cert-auth", "--client-cert-identity"];
    let admin = pki::client(&ca, Some(&leaf));
    let c = Cluster::start_tls(3, &flags, files, admin.clone()).await;
    let as_admin = |method: reqwest::Method, path: &str, body: Value| {
        admin
            .request(method, format!("{}{path}", c.url(0)))
            .bearer_auth(common::TOKEN)
            .json(&body)
            .send()
    };
    let perms = json!({"permissions": [{"prefix": "app/", "read": true}]});
    let r = as_admin(reqwest::Method::PUT, "/v1/auth/roles/app-reader", perms)
        .await
        .expect("role");
    assert_eq!(r.status(), 200);
    let made = json!({"name": "app-client", "roles": ["app-reader"]});
    let r = as_admin(reqwest::Method::POST, "/v1/auth/tokens", made)
        .await
        .expect("token");
    assert_eq!(r.status(), 201);
    let id = r.json::<Value>().await.expect("json")["id"]
        .as_str()
        .expect("an id")
        .to_owned();
    for key in ["app/x", "other/x"] {
        assert_eq!(c.put(0, key, "v").await.status(), 200);
    }

    let app = pki::client(&ca, Some(&ca.issue(&id, &["app.example"])));
    let stranger = pki::client(&ca, Some(&ca.issue("nobody", &["x.example"])));
    let status = |client: &reqwest::Client, method: reqwest::Method, url: String| {
        let request = client.request(method, url).body("w");
        async move { request.send().await.expect("https request").status() }
    };
    for i in 0..3 {
        let (app_x, other_x) = (
            format!("{}/v1/kv/app/x", c.url(i)),
            format!("{}/v1/kv/other/x", c.url(i)),
        );
        assert_eq!(status(&app, reqwest::Method::GET, app_x.clone()).await, 200);
        assert_eq!(status(&app, reqwest::Method::PUT, app_x.clone()).await, 403);
        assert_eq!(status(&app, reqwest::Method::GET, other_x).await, 403);
        assert_eq!(status(&stranger, reqwest::Method::GET, app_x).await, 401);
    }

    // The CLI needs no token then: its certificate is the credential.
    let mine = ca.write(dir.path(), "app", &ca.issue(&id, &["app.example"]));
    let (endpoint, ca_file) = (c.url(1), mine.ca.to_string_lossy().into_owned());
    let (cert, key) = (
        mine.cert.to_string_lossy().into_owned(),
        mine.key.to_string_lossy().into_owned(),
    );
    let args = [
        "get",
        "app/x",
        "--endpoints",
        &endpoint,
        "--cacert",
        &ca_file,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    let (code, out, err) = common::run_phxkv(&args, &[]);
    assert_eq!((code, out.as_str()), (0, "v"), "{err}");

    // Revoked at node 0: the certificate is refused everywhere right after.
    let r = as_admin(
        reqwest::Method::DELETE,
        &format!("/v1/auth/tokens/{id}"),
        Value::Null,
    )
    .await
    .expect("revoke");
    assert!(r.status().is_success(), "{}", r.status());
    for i in 0..3 {
        let url = format!("{}/v1/kv/app/x", c.url(i));
        assert_eq!(
            status(&app, reqwest::Method::GET, url).await,
            401,
            "node {i}"
        );
    }
}

#[tokio::test]
async fn a_silent_connection_to_a_tls_port_is_closed_within_seconds() {
    use tokio::io::AsyncReadExt as _;
    let (c, _ca, _leaf, _dir) = secured(1).await;
    let mut idle = tokio::net::TcpStream::connect(("127.0.0.1", c.procs[0].peer_port))
        .await
        .expect("connect");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(8), idle.read(&mut buf))
        .await
        .expect("closed by the node, not left open");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
}

#[tokio::test]
async fn a_member_with_an_http_peer_url_is_refused_when_peers_speak_tls() {
    let (c, _ca, _leaf, _dir) = secured(1).await;
    let r = c
        .http
        .post(format!("{}/v1/cluster/members", c.url(0)))
        .bearer_auth(common::TOKEN)
        .json(&serde_json::json!({"name": "n9", "peer_url": "http://127.0.0.1:1"}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.expect("JSON");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("https://"), "{body}");
}

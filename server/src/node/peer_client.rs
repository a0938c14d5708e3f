//! The HTTP client this node calls its peers with, renewed when its TLS
//! files are reloaded.
//!
//! One `reqwest::Client` serves every call to peers, and its pool keeps
//! their connections open. A TLS handshake checks the peer's certificate
//! against the CA and revocation lists loaded at that moment; a pooled
//! connection is never checked again. So a reload that changes what the
//! files hold (a new revocation list, a new CA, this node's own
//! certificate renewed; see [`crate::tls::Material::reloads`]) builds a
//! new client,
//! with an empty pool, and announces it: the peer streams end cleanly
//! (what a stream was handed is still sent, unless its peer does not
//! answer within a few seconds; Paxos resends what is lost) and reopen
//! through the new client (see [`super::transport`]). From then on every
//! connection this node makes to a peer was checked against what is
//! loaded now; calls already under way finish on the connections they
//! have. Without TLS nothing is ever renewed.

use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tracing::Instrument as _;

use crate::tls::Material;

use super::wire;

/// What a peer client is built from.
#[derive(Clone, Debug)]
pub struct Settings {
    /// This node's read mode, sent with every call (peers in another mode
    /// refuse them).
    pub read_mode: &'static str,
    /// An HTTP proxy for every call; none means direct.
    pub proxy: Option<String>,
    /// Mutual TLS with peers; none means plain HTTP.
    pub tls: Option<Arc<Material>>,
}

/// The current client to call peers with (see the module doc).
#[derive(Debug)]
pub struct PeerClient {
    current: RwLock<reqwest::Client>,
    renewed: watch::Sender<u64>,
}

impl PeerClient {
    /// Builds the client and, with TLS, a task that renews it after each
    /// reload of the files. The task ends at the first reload after the
    /// client is dropped, or when the files are (the client's own TLS
    /// configuration keeps them, so not before the client): one parked
    /// task per node that holds no memory. Must be called inside a tokio
    /// runtime when `settings` has TLS.
    pub fn new(settings: &Settings) -> Result<Arc<PeerClient>, String> {
        // Subscribed before the client is built: a reload from here on
        // renews it.
        let reloads = settings.tls.as_ref().map(|tls| tls.reloads());
        let client = Arc::new(PeerClient {
            current: RwLock::new(build(settings)?),
            renewed: watch::channel(0).0,
        });
        if let (Some(tls), Some(reloads)) = (&settings.tls, reloads) {
            let plain = Settings {
                tls: None,
                ..settings.clone()
            };
            tokio::spawn(
                renew_on_reload(Arc::downgrade(&client), Arc::downgrade(tls), reloads, plain)
                    .in_current_span(),
            );
        }
        Ok(client)
    }

    /// The client to make a call with now.
    pub fn get(&self) -> reqwest::Client {
        match self.current.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Changes each time the client is renewed: what holds a connection
    /// open for long (a peer stream) ends it then, and calls again.
    pub fn renewals(&self) -> watch::Receiver<u64> {
        self.renewed.subscribe()
    }

    /// Puts `client` in place of the current one and announces it.
    pub(crate) fn renew(&self, client: reqwest::Client) {
        match self.current.write() {
            Ok(mut c) => *c = client,
            Err(poisoned) => *poisoned.into_inner() = client,
        }
        self.renewed.send_modify(|n| *n += 1);
    }
}

/// Renews `client` after every reload of `tls` (`reloads`); `settings` is
/// the rest of what it is built from.
async fn renew_on_reload(
    client: Weak<PeerClient>,
    tls: Weak<Material>,
    mut reloads: watch::Receiver<u64>,
    settings: Settings,
) {
    // `changed` fails once the files' owner is gone.
    while reloads.changed().await.is_ok() {
        let (Some(client), Some(tls)) = (client.upgrade(), tls.upgrade()) else {
            return;
        };
        let settings = Settings {
            tls: Some(tls),
            ..settings.clone()
        };
        match build(&settings) {
            Ok(new) => {
                client.renew(new);
                tracing::info!(
                    "TLS files reloaded: new connections to peers are checked against them, \
                     and open peer streams are reopened"
                );
            }
            // Building fails only on what the start checked already; the
            // old client keeps working.
            Err(e) => tracing::warn!(error = %e, "cannot renew the client for peers"),
        }
    }
}

/// A client for calls to peers, as `settings` say.
fn build(settings: &Settings) -> Result<reqwest::Client, String> {
    let mut own_headers = reqwest::header::HeaderMap::new();
    own_headers.insert(
        wire::READ_MODE_HEADER,
        reqwest::header::HeaderValue::from_static(settings.read_mode),
    );
    let mut builder = reqwest::Client::builder()
        .default_headers(own_headers)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2));
    // Every peer call goes through the proxy: plain HTTP as requests in
    // absolute form, https through a CONNECT tunnel (TLS stays end to
    // end: the proxy sees only encrypted bytes).
    builder = match &settings.proxy {
        Some(url) => {
            builder.proxy(reqwest::Proxy::all(url).map_err(|e| format!("--peer-proxy {url}: {e}"))?)
        }
        None => builder.no_proxy(),
    };
    if let Some(tls) = &settings.tls {
        let config = tls.client_config().map_err(|e| format!("peer TLS: {e}"))?;
        // Never plain HTTP to a peer once peers speak TLS, whatever URL
        // a configuration names.
        builder = builder.tls_backend_preconfigured(config).https_only(true);
    }
    builder
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::tls::{ClientAuth, TlsPaths, issue};

    const HOUR: Duration = Duration::from_secs(3600);

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// Serves `GET /` over TLS with `material` on a loopback port.
    async fn serve(material: &Arc<Material>) -> u16 {
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = tcp.local_addr().expect("address").port();
        let listener = crate::tls::listener::TlsListener::new(
            tcp,
            material.server_config().expect("config"),
            "test",
            None,
        )
        .expect("listener");
        let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        port
    }

    /// A peer whose certificate a reloaded revocation list names is not
    /// called again over the connection the pool kept from before.
    #[tokio::test]
    async fn after_a_reload_no_call_reuses_a_connection_checked_before_it() {
        let dir = tempfile::tempdir().expect("dir");
        let d = dir.path();
        let ca = issue::new_ca("peer CA", HOUR).expect("CA");
        let names = ["localhost".to_owned()];
        let peer = issue::issue(&ca, "peer", &names, HOUR).expect("peer");
        let own = issue::issue(&ca, "own", &names, HOUR).expect("own");
        let ca_file = write(d, "ca.crt", &ca.cert_pem);
        let peer_side = Material::load(
            TlsPaths {
                cert: write(d, "peer.crt", &peer.cert_pem),
                key: write(d, "peer.key", &peer.key_pem),
                ca: Some(ca_file.clone()),
                crl: None,
            },
            ClientAuth::Off,
        )
        .expect("peer's files");
        let port = serve(&peer_side).await;
        let list = |revoked: &[&str], number| {
            issue::revocation_list(&ca, revoked, number, HOUR).expect("list")
        };
        let crl = write(d, "ca.crl", &list(&[], 1));
        let own_side = Material::load(
            TlsPaths {
                cert: write(d, "own.crt", &own.cert_pem),
                key: write(d, "own.key", &own.key_pem),
                ca: Some(ca_file),
                crl: Some(crl.clone()),
            },
            ClientAuth::Required,
        )
        .expect("own files");
        let client = PeerClient::new(&Settings {
            read_mode: "lease",
            proxy: None,
            tls: Some(own_side.clone()),
        })
        .expect("client");
        let url = format!("https://localhost:{port}/");
        let call = |c: reqwest::Client| {
            let url = url.clone();
            async move { c.get(url).send().await.map(|r| r.status()) }
        };
        let before = client.get();
        assert_eq!(call(before.clone()).await.expect("called"), 200);

        let mut renewals = client.renewals();
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&crl, list(&[&peer.cert_pem], 2)).expect("revoke");
        own_side.refresh();
        tokio::time::timeout(Duration::from_secs(5), renewals.changed())
            .await
            .expect("renewed in time")
            .expect("renewed");

        let err = call(client.get())
            .await
            .expect_err("a revoked peer is not called");
        let why = crate::tls::failure_reason(&err).unwrap_or_else(|| format!("{err:?}"));
        assert!(why.to_lowercase().contains("revoked"), "{why}");
        // What the renewal is for: the client from before still has the
        // connection it checked before the list, and would go on using it.
        assert_eq!(
            call(before).await.expect("the pooled connection"),
            200,
            "the old client's pool kept its connection"
        );
    }
}

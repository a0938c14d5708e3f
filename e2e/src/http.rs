//! A lean HTTP/1.1 client: one keep-alive connection per benchmark client,
//! driven by hyper's low-level connection API (no pool, no redirects, no
//! proxy lookup), so the generator spends as little CPU per request as it can
//! and exactly the same machinery is used for every target.
//!
//! `https://` endpoints go through rustls (aws-lc-rs, the provider the
//! server uses), trusting only the CA given with `--cacert` and optionally
//! presenting a client certificate; the handshake happens once per
//! connection, so a run measures TLS's cost per request, not per handshake.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::HeaderValue;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// One endpoint, parsed once: where to connect and what to send as `Host`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The URL as given (for reports).
    pub url: String,
    /// `host:port` to connect to and to send as the `Host` header.
    pub authority: String,
    /// For `https://`: the name the server's certificate must carry (a DNS
    /// name or an IP address, sent as SNI when it is a name).
    pub tls_name: Option<ServerName<'static>>,
}

impl Endpoint {
    /// Accepts `http://host:port` or `https://host:port` (a trailing `/` is
    /// ignored; an IPv6 host goes in brackets).
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let (rest, tls) = if let Some(rest) = url.strip_prefix("http://") {
            (rest, false)
        } else if let Some(rest) = url.strip_prefix("https://") {
            (rest, true)
        } else {
            return Err(format!(
                "{url:?}: give an http:// or https:// URL like http://127.0.0.1:8080"
            ));
        };
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "{url:?}: give a base URL like http://127.0.0.1:8080 (no path)"
            ));
        }
        let host = match authority.strip_prefix('[') {
            // [v6]:port
            Some(v6) => match v6.split_once("]:") {
                Some((host, port)) if !port.is_empty() => host,
                _ => return Err(format!("{url:?}: the port is missing")),
            },
            None => match authority.rsplit_once(':') {
                Some((host, port)) if !port.is_empty() && !host.contains(':') => host,
                _ => return Err(format!("{url:?}: the port is missing")),
            },
        };
        let tls_name = if tls {
            Some(
                ServerName::try_from(host.to_string())
                    .map_err(|e| format!("{url:?}: {host:?} is not a host name: {e}"))?,
            )
        } else {
            None
        };
        Ok(Endpoint {
            url: url.trim_end_matches('/').to_string(),
            authority: authority.to_string(),
            tls_name,
        })
    }
}

/// What every connection shares: the TLS client configuration (for
/// `https://` endpoints) and the `Authorization` header to send, if any.
/// Cheap to clone.
#[derive(Clone, Default)]
pub struct Transport {
    pub tls: Option<TlsConnector>,
    pub authorization: Option<HeaderValue>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("tls", &self.tls.is_some())
            .field("authorization", &self.authorization)
            .finish()
    }
}

impl Transport {
    /// Trusts the CA certificates in `ca` (PEM) and, with `identity`,
    /// presents that certificate chain and key (PEM) to servers that ask for
    /// one. ALPN offers http/1.1 only, which is all this client speaks. The
    /// suites are offered in phxkv's own order (AES-128-GCM first), the one
    /// its peers and clients use. phxkv's servers follow the client's order;
    /// etcd's (Go's TLS) pick AES-128-GCM on their own on hardware with AES,
    /// so both systems are measured with the same suite.
    pub fn with_tls(mut self, ca: &Path, identity: Option<(&Path, &Path)>) -> Result<Self, String> {
        let provider = phxkv::tls::provider();
        let mut roots = rustls::RootCertStore::empty();
        for cert in read_certs(ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: not a usable CA certificate: {e}", ca.display()))?;
        }
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots);
        let mut config = match identity {
            None => builder.with_no_client_auth(),
            Some((cert, key)) => {
                let chain = read_certs(cert)?;
                let key = PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("{}: no private key in PEM form ({e})", key.display()))?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| format!("{}: {e}", cert.display()))?
            }
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.tls = Some(TlsConnector::from(Arc::new(config)));
        Ok(self)
    }

    /// Sends `Authorization: Bearer <token>` with every request.
    pub fn with_bearer_token(mut self, token: &str) -> Result<Self, String> {
        let token = token.trim();
        if token.is_empty() {
            return Err("the token is empty".into());
        }
        let mut value = HeaderValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "the token holds characters a header cannot carry".to_string())?;
        value.set_sensitive(true);
        self.authorization = Some(value);
        Ok(self)
    }
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not PEM certificates: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// Why a request did not get an answer.
#[derive(Debug)]
pub enum Failure {
    Connect(String),
    Io(String),
    Timeout,
}

impl Failure {
    /// A short, stable label for error counts.
    pub fn kind(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Io(_) => "io",
            Failure::Timeout => "timeout",
        }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(e) => write!(f, "connect: {e}"),
            Failure::Io(e) => write!(f, "i/o: {e}"),
            Failure::Timeout => write!(f, "timed out"),
        }
    }
}

/// A keep-alive connection to one endpoint, reopened after any failure.
#[derive(Debug)]
pub struct Conn {
    endpoint: Endpoint,
    transport: Transport,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(endpoint: Endpoint, transport: Transport) -> Conn {
        Conn {
            endpoint,
            transport,
            sender: None,
        }
    }

    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>, Failure> {
        if self.sender.as_ref().is_some_and(|s| s.is_closed()) {
            self.sender = None;
        }
        if self.sender.is_some() {
            return self.sender.as_mut().ok_or(Failure::Timeout);
        }
        let stream = TcpStream::connect(&self.endpoint.authority)
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let sender = match &self.endpoint.tls_name {
            None => handshake(stream).await?,
            Some(name) => {
                let connector = self.transport.tls.as_ref().ok_or_else(|| {
                    Failure::Connect("an https:// endpoint needs a CA (--cacert)".into())
                })?;
                let stream = connector
                    .connect(name.clone(), stream)
                    .await
                    .map_err(|e| Failure::Connect(format!("TLS: {e}")))?;
                handshake(stream).await?
            }
        };
        Ok(self.sender.insert(sender))
    }

    /// Sends one request and reads the whole answer. Any failure drops the
    /// connection, so the next request starts on a fresh one.
    pub async fn request(
        &mut self,
        method: Method,
        path_and_query: &str,
        content_type: Option<&'static str>,
        body: Bytes,
        timeout: Duration,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let result = tokio::time::timeout(timeout, async {
            let authority = self.endpoint.authority.clone();
            let authorization = self.transport.authorization.clone();
            let sender = self.connect().await?;
            sender
                .ready()
                .await
                .map_err(|e| Failure::Io(e.to_string()))?;
            let mut req = Request::builder()
                .method(method)
                .uri(path_and_query)
                .header(hyper::header::HOST, authority);
            if let Some(ct) = content_type {
                req = req.header(hyper::header::CONTENT_TYPE, ct);
            }
            if let Some(auth) = authorization {
                req = req.header(hyper::header::AUTHORIZATION, auth);
            }
            let req = req
                .body(Full::new(body))
                .map_err(|e| Failure::Io(e.to_string()))?;
            let resp = sender
                .send_request(req)
                .await
                .map_err(|e| Failure::Io(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| Failure::Io(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        })
        .await;
        let result = result.unwrap_or(Err(Failure::Timeout));
        if result.is_err() {
            self.sender = None;
        }
        result
    }
}

/// HTTP/1.1 over an open stream (TCP or TLS); the connection's task ends
/// when it closes, and its errors show up on the sender.
async fn handshake<T>(io: T) -> Result<SendRequest<Full<Bytes>>, Failure>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::atomic::{AtomicUsize, Ordering};

    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::TlsAcceptor;

    #[test]
    fn endpoints_parse_base_urls_and_refuse_the_rest() {
        let e = Endpoint::parse("http://127.0.0.1:8080/").expect("valid");
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.url, "http://127.0.0.1:8080");
        assert!(e.tls_name.is_none());
        let e = Endpoint::parse("https://127.0.0.1:8080").expect("valid");
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert!(matches!(e.tls_name, Some(ServerName::IpAddress(_))));
        let e = Endpoint::parse("https://kv.example:8443").expect("valid");
        assert_eq!(
            e.tls_name.map(|n| n.to_str().into_owned()),
            Some("kv.example".into())
        );
        let e = Endpoint::parse("https://[::1]:8443").expect("valid");
        assert_eq!(e.authority, "[::1]:8443");
        assert!(matches!(e.tls_name, Some(ServerName::IpAddress(_))));
        assert!(Endpoint::parse("http://127.0.0.1").is_err());
        assert!(Endpoint::parse("https://[::1]").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:8080/v1").is_err());
        assert!(Endpoint::parse("127.0.0.1:8080").is_err());
        assert!(Endpoint::parse("ftp://127.0.0.1:21").is_err());
    }

    #[test]
    fn tokens_become_a_sensitive_bearer_header() {
        let t = Transport::default()
            .with_bearer_token(" phxkv_1_secret\n")
            .expect("valid");
        let h = t.authorization.expect("header");
        assert_eq!(h, "Bearer phxkv_1_secret");
        assert!(h.is_sensitive());
        assert!(Transport::default().with_bearer_token(" \n").is_err());
        assert!(Transport::default().with_bearer_token("a\u{7}b").is_err());
    }

    /// A CA, a certificate it signed for 127.0.0.1 (server and client use),
    /// written as PEM files.
    struct Pki {
        dir: tempfile::TempDir,
        server: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut ca = CertificateParams::new(Vec::<String>::new()).expect("ca params");
            ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca =
                CertifiedIssuer::self_signed(ca, KeyPair::generate().expect("key")).expect("ca");
            let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).expect("leaf");
            leaf.extended_key_usages = vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().expect("key");
            let cert = leaf.signed_by(&key, &ca).expect("leaf");
            std::fs::write(dir.path().join("ca.crt"), ca.pem()).expect("write");
            std::fs::write(dir.path().join("node.crt"), cert.pem()).expect("write");
            std::fs::write(dir.path().join("node.key"), key.serialize_pem()).expect("write");
            let server = (
                vec![cert.der().clone()],
                PrivateKeyDer::try_from(key.serialize_der()).expect("key der"),
            );
            Pki { dir, server }
        }

        fn path(&self, name: &str) -> std::path::PathBuf {
            self.dir.path().join(name)
        }

        fn identity(&self) -> (std::path::PathBuf, std::path::PathBuf) {
            (self.path("node.crt"), self.path("node.key"))
        }
    }

    /// An HTTPS server that answers every request on a connection with the
    /// connection's number, the negotiated ALPN, whether the client showed
    /// a certificate and the `Authorization` header it sent. With
    /// `require_client_cert`, only clients with a certificate signed by the
    /// CA get through the handshake.
    async fn https_server(pki: &Pki, require_client_cert: bool) -> u16 {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("versions");
        let builder = if require_client_cert {
            let mut roots = rustls::RootCertStore::empty();
            for c in read_certs(&pki.path("ca.crt")).expect("ca") {
                roots.add(c).expect("root");
            }
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots.into(), provider)
                    .build()
                    .expect("verifier");
            builder.with_client_cert_verifier(verifier)
        } else {
            builder.with_no_client_auth()
        };
        let (chain, key) = (pki.server.0.clone(), pki.server.1.clone_key());
        let mut config = builder.with_single_cert(chain, key).expect("server config");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let conns = Arc::new(AtomicUsize::new(0));
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                let n = conns.fetch_add(1, Ordering::Relaxed) + 1;
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let (_, session) = tls.get_ref();
                    let alpn = String::from_utf8_lossy(session.alpn_protocol().unwrap_or(b"-"))
                        .into_owned();
                    let client_cert = session.peer_certificates().is_some();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        // Requests without a body: a head ends the request.
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            let auth = head
                                .lines()
                                .find_map(|l| l.strip_prefix("authorization: "))
                                .unwrap_or("-");
                            let body = format!(
                                "conn={n} alpn={alpn} client_cert={client_cert} auth={auth}"
                            );
                            let resp = format!(
                                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                                body.len()
                            );
                            if tls.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(k) => buf.extend_from_slice(&chunk[..k]),
                        }
                    }
                });
            }
        });
        port
    }

    async fn get(conn: &mut Conn) -> Result<String, Failure> {
        let (status, body) = conn
            .request(Method::GET, "/", None, Bytes::new(), Duration::from_secs(5))
            .await?;
        assert_eq!(status, StatusCode::OK);
        Ok(String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn https_endpoints_are_verified_against_the_ca_and_keep_their_connection() {
        let pki = Pki::new();
        let port = https_server(&pki, false).await;
        let transport = Transport::default()
            .with_tls(&pki.path("ca.crt"), None)
            .expect("tls")
            .with_bearer_token("t0ken")
            .expect("token");
        let ep = Endpoint::parse(&format!("https://127.0.0.1:{port}")).expect("endpoint");
        let mut conn = Conn::new(ep.clone(), transport.clone());
        let first = get(&mut conn).await.expect("first request");
        assert_eq!(
            first,
            "conn=1 alpn=http/1.1 client_cert=false auth=Bearer t0ken"
        );
        // Keep-alive: the second request goes over the same TLS session.
        assert_eq!(get(&mut conn).await.expect("second request"), first);

        // The same certificate, under a name it does not carry.
        let other = Endpoint::parse(&format!("https://localhost:{port}")).expect("endpoint");
        let err = get(&mut Conn::new(other, transport.clone()))
            .await
            .expect_err("wrong name");
        assert!(err.to_string().contains("not valid for name"), "{err}");

        // A CA that did not sign the server's certificate.
        let stranger = Pki::new();
        let t = Transport::default()
            .with_tls(&stranger.path("ca.crt"), None)
            .expect("tls");
        let err = get(&mut Conn::new(ep.clone(), t))
            .await
            .expect_err("unknown CA");
        assert!(
            err.to_string().contains("invalid peer certificate"),
            "{err}"
        );

        // https without a CA configured.
        let err = get(&mut Conn::new(ep, Transport::default()))
            .await
            .expect_err("no CA");
        assert!(err.to_string().contains("--cacert"), "{err}");
    }

    #[tokio::test]
    async fn a_client_certificate_is_presented_when_given() {
        let pki = Pki::new();
        let port = https_server(&pki, true).await;
        let ep = Endpoint::parse(&format!("https://127.0.0.1:{port}")).expect("endpoint");
        let without = Transport::default()
            .with_tls(&pki.path("ca.crt"), None)
            .expect("tls");
        assert!(get(&mut Conn::new(ep.clone(), without)).await.is_err());
        let (cert, key) = pki.identity();
        let with = Transport::default()
            .with_tls(&pki.path("ca.crt"), Some((&cert, &key)))
            .expect("tls");
        let body = get(&mut Conn::new(ep, with)).await.expect("request");
        assert!(body.contains("client_cert=true"), "{body}");
    }

    #[test]
    fn unusable_pem_files_are_refused_with_their_path() {
        let pki = Pki::new();
        let err = Transport::default()
            .with_tls(&pki.path("node.key"), None)
            .expect_err("a key is not a CA");
        assert!(err.contains("node.key"), "{err}");
        let err = Transport::default()
            .with_tls(&pki.path("missing.crt"), None)
            .expect_err("missing");
        assert!(err.contains("missing.crt"), "{err}");
        let (cert, _) = pki.identity();
        let err = Transport::default()
            .with_tls(&pki.path("ca.crt"), Some((&cert, &cert)))
            .expect_err("a certificate is not a key");
        assert!(err.contains("node.crt"), "{err}");
    }
}

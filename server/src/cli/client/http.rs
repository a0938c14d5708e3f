//! The HTTP side of the client commands: one keep-alive connection pool, a
//! list of endpoints to fail over between, and the mapping from the API's
//! error bodies to the CLI's exit codes.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::{RequestBuilder, Response, StatusCode, Url};
use serde::Deserialize;

use super::ConnectArgs;
use crate::cli::CliError;

/// A connection to a cluster through any of its endpoints.
pub struct Client {
    http: reqwest::Client,
    endpoints: Vec<String>,
    timeout: Duration,
    token: Option<String>,
    /// The endpoint that answered last. Later requests start there, so a
    /// dead first endpoint costs one failed connect rather than one per
    /// request (which matters in the shell and when listing many pages).
    preferred: AtomicUsize,
}

// By hand: an atomic is not `Clone`. A clone starts at the endpoint that
// answered last.
impl Clone for Client {
    fn clone(&self) -> Client {
        Client {
            http: self.http.clone(),
            endpoints: self.endpoints.clone(),
            timeout: self.timeout,
            token: self.token.clone(),
            preferred: AtomicUsize::new(self.preferred.load(Ordering::Relaxed)),
        }
    }
}

// By hand, so that debugging output never shows the cluster token.
impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.endpoints)
            .field("timeout", &self.timeout)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Client {
    pub fn new(args: &ConnectArgs) -> Result<Client, CliError> {
        let mut endpoints = Vec::new();
        for raw in &args.endpoints {
            let raw = raw.trim();
            if raw.is_empty() {
                continue;
            }
            // `host:port` is the common shorthand; assume plain HTTP.
            let with_scheme = if raw.contains("://") {
                raw.to_string()
            } else {
                format!("http://{raw}")
            };
            let url = Url::parse(&with_scheme)
                .map_err(|e| CliError::Usage(format!("--endpoints: {raw:?}: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(CliError::Usage(format!(
                    "--endpoints: {raw:?}: only http and https URLs are supported"
                )));
            }
            endpoints.push(with_scheme.trim_end_matches('/').to_string());
        }
        if endpoints.is_empty() {
            return Err(CliError::Usage("--endpoints: no endpoint given".into()));
        }
        // No overall request timeout on the client itself: a watch stream
        // lasts as long as the user wants. Ordinary requests set one each.
        let mut builder = reqwest::Client::builder().connect_timeout(args.timeout);
        if let Some(path) = &args.cacert {
            let pem = std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("--cacert {}: {e}", path.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .ok()
                .filter(|c| !c.is_empty())
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "--cacert {}: holds no PEM certificate",
                        path.display()
                    ))
                })?;
            builder = builder.tls_certs_only(certs);
        }
        match (&args.cert, &args.key) {
            (Some(_), None) => {
                return Err(CliError::Usage(
                    "--cert needs --key (its private key)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(CliError::Usage(
                    "--key needs --cert (its certificate)".into(),
                ));
            }
            _ => {}
        }
        if let (Some(cert), Some(key)) = (&args.cert, &args.key) {
            let read = |flag: &str, p: &std::path::Path| {
                std::fs::read(p)
                    .map_err(|e| CliError::Usage(format!("--{flag} {}: {e}", p.display())))
            };
            let mut pem = read("cert", cert)?;
            pem.push(b'\n');
            pem.extend(read("key", key)?);
            let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                CliError::Usage(format!(
                    "--cert {} with --key {}: not a PEM certificate and key ({})",
                    cert.display(),
                    key.display(),
                    describe(&e, args.timeout)
                ))
            })?;
            builder = builder.identity(identity);
        }
        let http = builder
            .build()
            .map_err(|e| CliError::Fatal(format!("cannot set up HTTP: {e}")))?;
        Ok(Client {
            http,
            endpoints,
            timeout: args.timeout,
            token: args.bearer()?,
            preferred: AtomicUsize::new(0),
        })
    }

    /// Sends a request built by `build` (given the client and an endpoint's
    /// base URL), trying each endpoint in turn while they are unreachable or
    /// answer 503. Any other answer, error or not, is returned.
    pub async fn send<F>(&self, build: F) -> Result<Response, CliError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        self.send_inner(build, Some(self.timeout)).await
    }

    /// Like [`Client::send`], for a write: every attempt carries one
    /// `Idempotency-Key`, so a write that reached a node before the
    /// connection failed is not applied a second time by the next endpoint.
    pub async fn send_write<F>(&self, build: F) -> Result<Response, CliError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        let key = idempotency_key();
        self.send(|h, base| build(h, base).header("idempotency-key", key.as_str()))
            .await
    }

    /// Like [`Client::send`] but without a deadline for the whole answer,
    /// for streams; connecting is still bounded by the timeout.
    pub async fn send_streaming<F>(&self, build: F) -> Result<Response, CliError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        self.send_inner(build, None).await
    }

    async fn send_inner<F>(&self, build: F, timeout: Option<Duration>) -> Result<Response, CliError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        let n = self.endpoints.len();
        let start = self.preferred.load(Ordering::Relaxed) % n;
        let mut failures = Vec::new();
        for i in 0..n {
            let idx = (start + i) % n;
            let base = &self.endpoints[idx];
            let mut req = build(&self.http, base);
            if let Some(t) = timeout {
                req = req.timeout(t);
            }
            if let Some(token) = &self.token {
                req = req.bearer_auth(token);
            }
            match req.send().await {
                Ok(resp) if resp.status() == StatusCode::SERVICE_UNAVAILABLE => {
                    let failure = ApiFailure::read(resp).await;
                    failures.push(format!("{base}: unavailable: {}", failure.message));
                }
                Ok(resp) => {
                    self.preferred.store(idx, Ordering::Relaxed);
                    return Ok(resp);
                }
                Err(e) => failures.push(format!("{base}: {}", describe(&e, self.timeout))),
            }
        }
        Err(CliError::Unavailable(format!(
            "no endpoint answered ({})",
            failures.join("; ")
        )))
    }
}

/// A short, one-line reason for a failed request, without reqwest's
/// nested "error sending request for url (...)" wrapping.
pub fn describe(e: &reqwest::Error, timeout: Duration) -> String {
    if e.is_timeout() {
        return format!("timed out after {timeout:?}");
    }
    let mut innermost = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            let text = match io.kind() {
                ErrorKind::ConnectionRefused => "connection refused".to_string(),
                ErrorKind::ConnectionReset => "connection reset".to_string(),
                ErrorKind::TimedOut => format!("timed out after {timeout:?}"),
                _ => io.to_string(),
            };
            return one_line(&text);
        }
        innermost = s.to_string();
        source = s.source();
    }
    one_line(&innermost)
}

fn one_line(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    // rustls' reasons are exact but say nothing of what to do.
    if line.contains("invalid peer certificate") || line.contains("UnknownIssuer") {
        format!(
            "{line} (the server's certificate is not signed by a CA this command trusts: \
             give the cluster's CA with --cacert)"
        )
    } else if line.contains("CertificateRequired") || line.contains("certificate required") {
        format!("{line} (the server requires a client certificate: give --cert and --key)")
    } else {
        line
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
    message: String,
    #[serde(default)]
    current_version: Option<u64>,
}

/// An error answer from the API.
#[derive(Debug, Clone)]
pub struct ApiFailure {
    pub status: StatusCode,
    /// The API's machine-readable code (`key_not_found`, ...); empty when
    /// the body was not an API error (a proxy's page, say).
    pub code: String,
    pub message: String,
    pub current_version: Option<u64>,
}

impl ApiFailure {
    /// Reads the error body of a response.
    pub async fn read(resp: Response) -> ApiFailure {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        match serde_json::from_slice::<ErrorBody>(&body) {
            Ok(b) => ApiFailure {
                status,
                code: b.error.code,
                message: one_line(&b.error.message),
                current_version: b.error.current_version,
            },
            Err(_) => {
                let text = String::from_utf8_lossy(&body);
                let text: String = one_line(&text).chars().take(200).collect();
                ApiFailure {
                    status,
                    code: String::new(),
                    message: if text.is_empty() {
                        format!("HTTP {status}")
                    } else {
                        format!("HTTP {status}: {text}")
                    },
                    current_version: None,
                }
            }
        }
    }

    /// The CLI error (and so the exit code) this answer means.
    pub fn into_cli_error(self) -> CliError {
        // Without an API error code something else answered (a proxy, a
        // wrong port): its 404 says nothing about the key.
        if self.code.is_empty() {
            return CliError::Fatal(format!("not a phxkv answer: {}", self.message));
        }
        match self.status.as_u16() {
            401 => CliError::Usage(format!(
                "not authenticated ({}); pass --token-file FILE or set PHXKV_TOKEN \
                 (an API token, or the cluster token for admin work)",
                self.message
            )),
            403 => CliError::Usage(format!(
                "permission denied ({}); ask an admin for a role that grants it \
                 (phxkv auth role put / phxkv auth token roles)",
                self.message
            )),
            429 => CliError::Fatal(format!(
                "{}; check the token (phxkv auth whoami) before trying again",
                self.message
            )),
            404 => CliError::NotFound(self.message),
            409 if self.code == "compare_failed" => CliError::NotFound(format!(
                "compare failed: current version {}",
                self.current_version.unwrap_or(0)
            )),
            400 | 413 => CliError::Usage(self.message),
            _ => CliError::Fatal(self.message),
        }
    }
}

/// Passes a successful response through; turns any other into its error.
pub async fn check(resp: Response) -> Result<Response, CliError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(ApiFailure::read(resp).await.into_cli_error())
    }
}

/// Reads a successful response's JSON body.
pub async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, CliError> {
    let resp = check(resp).await?;
    resp.json()
        .await
        .map_err(|e| CliError::Fatal(format!("unexpected answer from the server: {e}")))
}

/// A fresh random key for one write and its retries.
fn idempotency_key() -> String {
    use rand::TryRngCore;
    let mut bytes = [0u8; 16];
    // Without OS randomness, a key from the clock and the process still
    // differs from every other write's.
    if rand::rngs::OsRng.try_fill_bytes(&mut bytes).is_err() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        bytes[..16].copy_from_slice(&(now ^ u128::from(std::process::id())).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(endpoints: &[&str]) -> ConnectArgs {
        ConnectArgs {
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            timeout: Duration::from_secs(1),
            cacert: None,
            cert: None,
            key: None,
            token_file: None,
            token: None,
        }
    }

    #[test]
    fn a_client_certificate_without_its_key_is_a_usage_error() {
        let mut a = args(&["https://127.0.0.1:1"]);
        a.cert = Some("client.crt".into());
        assert!(matches!(Client::new(&a), Err(CliError::Usage(m)) if m.contains("--key")));
        let mut a = args(&["https://127.0.0.1:1"]);
        a.key = Some("client.key".into());
        assert!(matches!(Client::new(&a), Err(CliError::Usage(m)) if m.contains("--cert")));
    }

    #[test]
    fn endpoints_are_normalised_and_validated() {
        let c = Client::new(&args(&["127.0.0.1:1", " http://h:2/ ", ""])).expect("valid");
        assert_eq!(c.endpoints, vec!["http://127.0.0.1:1", "http://h:2"]);
        assert!(Client::new(&args(&["ftp://h"])).is_err());
        assert!(Client::new(&args(&[""])).is_err());
    }
}

//! A lean HTTP/1.1 client: one keep-alive connection per benchmark client,
//! driven by hyper's low-level connection API (no pool, no redirects, no
//! proxy lookup), so the generator spends as little CPU per request as it can
//! and exactly the same machinery is used for every target.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// One endpoint, parsed once: where to connect and what to send as `Host`.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// The URL as given (for reports).
    pub url: String,
    /// `host:port` to connect to and to send as the `Host` header.
    pub authority: String,
}

impl Endpoint {
    /// Accepts `http://host:port` (a trailing `/` is ignored); https is not
    /// supported because both systems are benchmarked over plain loopback.
    pub fn parse(url: &str) -> Result<Endpoint, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?}: only http:// endpoints are supported"))?;
        let authority = rest.trim_end_matches('/');
        if authority.is_empty() || authority.contains('/') {
            return Err(format!(
                "{url:?}: give a base URL like http://127.0.0.1:8080 (no path)"
            ));
        }
        if !authority.contains(':') {
            return Err(format!("{url:?}: the port is missing"));
        }
        Ok(Endpoint {
            url: url.trim_end_matches('/').to_string(),
            authority: authority.to_string(),
        })
    }
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
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Conn {
    pub fn new(endpoint: Endpoint) -> Conn {
        Conn {
            endpoint,
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
        let (sender, conn) = http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Failure::Connect(e.to_string()))?;
        tokio::spawn(async move {
            // Ends when the connection closes; errors show up on the sender.
            let _ = conn.await;
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_base_urls_and_refuse_the_rest() {
        let e = Endpoint::parse("http://127.0.0.1:8080/").expect("valid");
        assert_eq!(e.authority, "127.0.0.1:8080");
        assert_eq!(e.url, "http://127.0.0.1:8080");
        assert!(Endpoint::parse("https://127.0.0.1:8080").is_err());
        assert!(Endpoint::parse("http://127.0.0.1").is_err());
        assert!(Endpoint::parse("http://127.0.0.1:8080/v1").is_err());
        assert!(Endpoint::parse("127.0.0.1:8080").is_err());
    }
}

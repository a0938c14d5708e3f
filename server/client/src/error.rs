//! What a call can fail with.

use reqwest::{Response, StatusCode};
use serde::Deserialize;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The client was set up wrong (a bad endpoint URL, an unreadable
    /// certificate) or a call was given input the API cannot take (an
    /// empty key). Nothing was sent.
    #[error("{0}")]
    Config(String),
    /// No endpoint answered: each was unreachable or answered 503 (no
    /// master elected) for the whole retry window. A write may or may not
    /// have been applied; retrying it with the same idempotency key is safe.
    /// The message says which: "no endpoint answered (...)" when any was
    /// unreachable, "every endpoint answered 503: ..." when all answered.
    #[error("{0}")]
    Unavailable(String),
    /// The API answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// The answer was not what the API documents.
    #[error("unexpected answer from the server: {0}")]
    Decode(String),
}

impl Error {
    /// The API's error code (`key_not_found`, `compare_failed`, ...), when
    /// the API answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Api(a) if !a.code.is_empty() => Some(&a.code),
            _ => None,
        }
    }

    /// Whether the API said the thing asked for does not exist (HTTP 404).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Api(a) if a.status == StatusCode::NOT_FOUND && !a.code.is_empty())
    }
}

/// An error answer from the API: `{"error": {"code", "message", ...}}`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// The API's machine-readable code (`key_not_found`, ...); empty when
    /// the body was not an API error (a proxy's page, say).
    pub code: String,
    pub message: String,
    /// With `compare_failed`: the key's version now.
    pub current_version: Option<u64>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ErrorDetail,
}

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default)]
    pub current_version: Option<u64>,
}

/// How much of a body that is not an API error a message quotes.
const QUOTE: usize = 200;

impl ApiError {
    /// Reads the error body of a response.
    pub async fn read(resp: Response) -> ApiError {
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        ApiError::from_body(status, &body)
    }

    pub(crate) fn from_body(status: StatusCode, body: &[u8]) -> ApiError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(b) => ApiError::from_detail(status, b.error),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text: String = one_line(&text).chars().take(QUOTE).collect();
                ApiError {
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

    pub(crate) fn from_detail(status: StatusCode, d: ErrorDetail) -> ApiError {
        ApiError {
            status,
            code: d.code,
            message: one_line(&d.message),
            current_version: d.current_version,
        }
    }
}

/// A short, one-line reason for a failed request, without reqwest's
/// nested "error sending request for url (...)" wrapping.
pub fn describe(e: &reqwest::Error, timeout: std::time::Duration) -> String {
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

/// Folds whitespace to one line, and says what to do about the TLS
/// failures whose reasons (rustls') are exact but not helpful.
pub fn one_line(s: &str) -> String {
    let line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.contains("UnsupportedCertVersion") {
        format!(
            "{line} (an X.509 version 1 certificate: TLS here takes version 3, which \
             `openssl x509 -req` makes when given an extension, e.g. -extfile with \
             extendedKeyUsage=clientAuth for a client)"
        )
    } else if line.contains("NotValidForName") || line.contains("not valid for name") {
        format!(
            "{line} (the server's certificate does not name the host of this endpoint: \
             call it by a name or address the certificate holds)"
        )
    } else if line.contains("invalid peer certificate") || line.contains("UnknownIssuer") {
        format!(
            "{line} (the server's certificate is not signed by a CA this client trusts: \
             give the cluster's CA with --cacert)"
        )
    } else if line.contains("CertificateRequired") || line.contains("certificate required") {
        format!("{line} (the server requires a client certificate: give --cert and --key)")
    } else if line.contains("alert: UnsupportedCertificate") {
        format!(
            "{line} (the server refused the client certificate (--cert) for its use: a client \
             certificate needs extendedKeyUsage clientAuth)"
        )
    } else if line.contains("alert: UnknownCA") || line.contains("alert: BadCertificate") {
        format!(
            "{line} (the server does not trust the CA that signed the client certificate \
             (--cert): use one of the cluster's client CA; and is this the client port?)"
        )
    } else if line.contains("alert: CertificateRevoked") {
        format!("{line} (the client certificate (--cert) was revoked: ask for a new one)")
    } else if line.contains("InvalidContentType") {
        // What rustls says when the answer to its hello is not TLS.
        format!("{line} (the server does not speak TLS there: use http:// for this endpoint)")
    } else {
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_failures_say_what_to_do() {
        let plain = one_line("received corrupt message of type InvalidContentType");
        assert!(plain.contains("use http://"), "{plain}");
        let unknown = one_line("invalid peer certificate: UnknownIssuer");
        assert!(unknown.contains("--cacert"), "{unknown}");
        let v1 = one_line("invalid peer certificate: Other(OtherError(UnsupportedCertVersion))");
        assert!(v1.contains("version 3") && !v1.contains("--cacert"), "{v1}");
        let name = one_line("invalid peer certificate: NotValidForName");
        assert!(
            name.contains("does not name the host") && !name.contains("--cacert"),
            "{name}"
        );
        assert_eq!(one_line("connection\n  refused"), "connection refused");
        for (alert, hint) in [
            ("UnsupportedCertificate", "clientAuth"),
            ("UnknownCA", "client CA"),
            ("CertificateRevoked", "was revoked"),
        ] {
            let said = one_line(&format!("received fatal alert: {alert}"));
            assert!(said.contains(hint), "{said}");
        }
    }

    #[test]
    fn api_errors_and_other_bodies_are_told_apart() {
        let a = ApiError::from_body(
            StatusCode::CONFLICT,
            br#"{"error":{"code":"compare_failed","message":"version\n 3","current_version":3}}"#,
        );
        assert_eq!(
            (a.code.as_str(), a.message.as_str(), a.current_version),
            ("compare_failed", "version 3", Some(3))
        );
        let p = ApiError::from_body(StatusCode::BAD_GATEWAY, b"<html>\n bad gateway</html>");
        assert!(p.code.is_empty());
        assert_eq!(p.message, "HTTP 502 Bad Gateway: <html> bad gateway</html>");
        let e = ApiError::from_body(StatusCode::NOT_FOUND, b"");
        assert_eq!(e.message, "HTTP 404 Not Found");
        assert!(!Error::Api(e).is_not_found(), "a bare 404 is not the API's");
    }
}

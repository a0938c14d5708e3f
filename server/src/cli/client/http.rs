//! The command line's side of the API client (`phxkv-client`): built from
//! the connection flags, with the API's errors mapped to the CLI's exit
//! codes and messages.

use reqwest::{RequestBuilder, Response};

pub use phxkv_client::ApiError as ApiFailure;

use super::ConnectArgs;
use crate::cli::CliError;

/// A connection to a cluster through any of its endpoints: the typed
/// client ([`Client::api`]) and raw requests for the commands the typed
/// client does not cover.
#[derive(Clone, Debug)]
pub struct Client {
    api: phxkv_client::Client,
}

/// How long the CLI keeps retrying while every endpoint answers that no
/// master is elected: about one election, bounded by --timeout.
const RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(5);

impl Client {
    pub fn new(args: &ConnectArgs) -> Result<Client, CliError> {
        if args.timeout.is_zero() {
            return Err(CliError::Usage(
                "--timeout: must be longer than 0, like 500ms or 10s".into(),
            ));
        }
        let mut config = phxkv_client::Config::new(args.endpoints.iter().cloned())
            .timeout(args.timeout)
            .retry_for(RETRY_FOR.min(args.timeout))
            .token(args.bearer()?);
        if let Some(path) = &args.cacert {
            let pem = std::fs::read(path)
                .map_err(|e| CliError::Usage(format!("--cacert {}: {e}", path.display())))?;
            if reqwest::Certificate::from_pem_bundle(&pem).map_or(true, |c| c.is_empty()) {
                return Err(CliError::Usage(format!(
                    "--cacert {}: holds no PEM certificate",
                    path.display()
                )));
            }
            config = config.ca_pem(pem);
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
            (Some(cert), Some(key)) => {
                let read = |flag: &str, p: &std::path::Path| {
                    std::fs::read(p)
                        .map_err(|e| CliError::Usage(format!("--{flag} {}: {e}", p.display())))
                };
                let mut pem = read("cert", cert)?;
                pem.push(b'\n');
                pem.extend(read("key", key)?);
                config = config.identity_pem(pem);
            }
            (None, None) => {}
        }
        Ok(Client {
            api: phxkv_client::Client::new(config)?,
        })
    }

    /// The typed client.
    pub fn api(&self) -> &phxkv_client::Client {
        &self.api
    }

    /// See [`phxkv_client::Client::send`].
    pub async fn send<F>(&self, build: F) -> Result<Response, CliError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        Ok(self.api.send(build).await?)
    }

    /// See [`phxkv_client::Client::send_write`].
    pub async fn send_write<F>(&self, build: F) -> Result<Response, CliError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        Ok(self.api.send_write(build).await?)
    }

    /// See [`phxkv_client::Client::send_streaming`].
    pub async fn send_streaming<F>(&self, build: F) -> Result<Response, CliError>
    where
        F: Fn(&reqwest::Client, &str) -> RequestBuilder,
    {
        Ok(self.api.send_streaming(build).await?)
    }
}

impl From<phxkv_client::Error> for CliError {
    fn from(e: phxkv_client::Error) -> CliError {
        use phxkv_client::Error as E;
        match e {
            E::Config(m) => CliError::Usage(m),
            e @ E::Unavailable(_) => CliError::Unavailable(e.to_string()),
            E::Api(a) => a.into_cli_error(),
            e @ E::Decode(_) => CliError::Fatal(e.to_string()),
        }
    }
}

/// How the server's answer for a route that does not exist begins (see
/// [`crate::api::error::not_found`]).
const NO_ROUTE: &str = "no route for ";

/// The CLI error (and so the exit code) an API error answer means.
pub trait IntoCliError {
    fn into_cli_error(self) -> CliError;
}

impl IntoCliError for ApiFailure {
    fn into_cli_error(self) -> CliError {
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
            403 if self.message.contains(crate::kv::lease::HELD_BY_ANOTHER) => {
                CliError::Usage(format!(
                    "permission denied ({}); use the token that granted the lease, or an \
                     admin's",
                    self.message
                ))
            }
            403 => CliError::Usage(format!(
                "permission denied ({}); ask an admin for a role that grants it \
                 (phxkv auth role put / phxkv auth token roles)",
                self.message
            )),
            429 => CliError::Fatal(format!(
                "{}; wait that long, then check the token sent (--token-file, \
                 PHXKV_TOKEN_FILE or PHXKV_TOKEN) before trying again (each replica counts \
                 the failures it saw)",
                self.message
            )),
            // No such route: the endpoint is wrong (a path after the
            // address, say), which says nothing about the key either. (A
            // missing role or token is `not_found` too, and says so.)
            // A replica's peer port: the endpoint is wrong, not the key.
            404 if self.code == "not_found" && self.message.starts_with("no such peer route") => {
                CliError::Usage(format!(
                    "{}; give --endpoints the client port's address",
                    self.message
                ))
            }
            404 if self.code == "not_found" && self.message.starts_with(NO_ROUTE) => {
                CliError::Usage(format!(
                    "{}; check --endpoints: give each node's address only, like \
                     http://127.0.0.1:8080, without a path",
                    self.message
                ))
            }
            404 => CliError::NotFound(self.message),
            409 if self.code == "compare_failed" => CliError::NotFound(format!(
                "compare failed: current version {}",
                self.current_version.unwrap_or(0)
            )),
            // A lock or election still held when the wait ended.
            409 if self.code == "lock_held" => CliError::NotFound(self.message),
            400 | 413 => CliError::Usage(self.message),
            _ => CliError::Fatal(self.message),
        }
    }
}

/// Passes a successful response through; turns any other into its error.
pub async fn check(resp: Response) -> Result<Response, CliError> {
    Ok(phxkv_client::check(resp).await?)
}

/// Reads a successful response's JSON body.
pub async fn json<T: serde::de::DeserializeOwned>(resp: Response) -> Result<T, CliError> {
    Ok(phxkv_client::json(resp).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

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
    fn a_zero_timeout_is_a_usage_error() {
        let mut a = args(&["http://127.0.0.1:1"]);
        a.timeout = Duration::ZERO;
        assert!(matches!(Client::new(&a), Err(CliError::Usage(m)) if m.contains("--timeout")));
    }

    #[test]
    fn a_missing_route_points_at_the_endpoints_and_a_missing_role_does_not() {
        let failure = |message: &str| ApiFailure {
            status: reqwest::StatusCode::NOT_FOUND,
            code: "not_found".into(),
            message: message.into(),
            current_version: None,
        };
        let route = crate::api::error::not_found(
            axum::http::Method::GET,
            axum::http::Uri::from_static("/x/v1/kv/a"),
        );
        let route = futures_util::FutureExt::now_or_never(route).expect("ready");
        let route = failure(&route.into_detail().message).into_cli_error();
        assert!(
            matches!(&route, CliError::Usage(m) if m.contains("--endpoints")),
            "{route:?}"
        );
        let peer = failure(crate::node::peer::NO_PEER_ROUTE).into_cli_error();
        assert!(
            matches!(&peer, CliError::Usage(m) if m.contains("client port")),
            "{peer:?}"
        );
        let role = failure("no role \"nosuch\"").into_cli_error();
        assert!(
            matches!(&role, CliError::NotFound(m) if m == "no role \"nosuch\""),
            "{role:?}"
        );
    }

    #[test]
    fn bad_endpoints_are_usage_errors() {
        assert!(matches!(
            Client::new(&args(&["ftp://h"])),
            Err(CliError::Usage(_))
        ));
        assert!(matches!(Client::new(&args(&[""])), Err(CliError::Usage(_))));
    }
}

//! Query-string parameters as raw bytes.
//!
//! Prefixes and continuation keys in the query are binary like keys, so the
//! query is decoded by hand instead of through a UTF-8-only deserializer.
//! Parameters are checked strictly: an unknown or repeated one is refused,
//! because a misspelt `if_version` silently ignored would turn a
//! compare-and-swap into a blind write.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::api::encoding::percent_decode;
use crate::api::error::ApiError;
use crate::api::service::Consistency;

/// The values of the `consistency` query parameter, for the API document.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReadConsistency {
    /// Reflects every write acknowledged before the read began (default).
    /// How the master confirms it is still master is the cluster's
    /// `--read-mode` (see `read_mode` in `/v1/cluster`): `lease` answers
    /// without a round trip and assumes clock rates within
    /// `--max-drift-ppm` and no process paused between checking its lease
    /// and answering; `quorum` confirms with a majority first and assumes
    /// nothing of clocks.
    Linearizable,
    /// Served by the answering replica at once, possibly stale; with
    /// `min_revision`, waits until the replica has applied that revision.
    Local,
}

/// The request's query parameters, each percent-decoded to bytes.
///
/// Handlers take the parameters they know and then call
/// [`QueryParams::finish`], which refuses whatever is left.
#[derive(Debug, Default)]
pub struct QueryParams {
    params: Vec<(String, Vec<u8>)>,
    /// The names the handler asked for, to list when refusing the rest.
    known: Vec<String>,
}

impl QueryParams {
    /// Parses a raw query string (`a=1&b=%FF`); `+` means a space, as in
    /// HTML forms, so a literal plus must be sent as `%2B`.
    pub fn parse(raw: &str) -> Result<QueryParams, ApiError> {
        let mut params: Vec<(String, Vec<u8>)> = Vec::new();
        for pair in raw.split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let name = String::from_utf8(decode_component(name)?)
                .map_err(|_| ApiError::invalid("query parameter names must be UTF-8"))?;
            if params.iter().any(|(n, _)| *n == name) {
                return Err(ApiError::invalid(format!(
                    "query parameter {} is given more than once",
                    crate::text::quoted(&name)
                )));
            }
            params.push((name, decode_component(value)?));
        }
        Ok(QueryParams {
            params,
            known: Vec::new(),
        })
    }

    /// Removes and returns the bytes of parameter `name`.
    pub fn bytes(&mut self, name: &str) -> Option<Vec<u8>> {
        if !self.known.iter().any(|k| k == name) {
            self.known.push(name.to_string());
        }
        let at = self.params.iter().position(|(n, _)| n == name)?;
        Some(self.params.remove(at).1)
    }

    /// Removes and returns parameter `name` as text.
    pub fn text(&mut self, name: &str) -> Result<Option<String>, ApiError> {
        self.bytes(name)
            .map(|b| {
                String::from_utf8(b).map_err(|_| {
                    ApiError::invalid(format!("query parameter \"{name}\" must be UTF-8"))
                })
            })
            .transpose()
    }

    /// Removes and returns parameter `name` as an unsigned integer.
    pub fn u64(&mut self, name: &str) -> Result<Option<u64>, ApiError> {
        self.text(name)?
            .map(|t| {
                t.parse::<u64>().map_err(|e| {
                    let what = match e.kind() {
                        std::num::IntErrorKind::PosOverflow => "an integer of at most 2^64 - 1",
                        _ => "a non-negative integer",
                    };
                    ApiError::invalid(format!(
                        "query parameter \"{name}\" must be {what}, got {}",
                        crate::text::quoted(&t)
                    ))
                })
            })
            .transpose()
    }

    /// Removes `consistency` and `min_revision` and returns the read level
    /// they ask for; linearizable unless `consistency=local`.
    pub fn consistency(&mut self) -> Result<Consistency, ApiError> {
        let min_revision = self.u64("min_revision")?;
        match self.text("consistency")?.as_deref() {
            None | Some("linearizable") if min_revision.is_some() => Err(ApiError::invalid(
                "min_revision only applies to consistency=local; linearizable reads are never stale",
            )),
            None | Some("linearizable") => Ok(Consistency::Linearizable),
            Some("local") => Ok(Consistency::Local { min_revision }),
            Some(other) => Err(ApiError::invalid(format!(
                "consistency must be \"linearizable\" or \"local\", got {}",
                crate::text::quoted(other)
            ))),
        }
    }

    /// Refuses any parameter the handler did not take.
    /// The `limit` of a listing: `default` when absent, else 1 to `max`.
    pub fn page_limit(&mut self, default: u64, max: u64) -> Result<usize, ApiError> {
        let limit = self.u64("limit")?.unwrap_or(default);
        if !(1..=max).contains(&limit) {
            return Err(ApiError::invalid(format!(
                "limit must be between 1 and {max}, got {limit}"
            )));
        }
        // At most `max`, a small number: it fits any usize.
        Ok(limit as usize)
    }

    pub fn finish(self) -> Result<(), ApiError> {
        let Some((name, _)) = self.params.first() else {
            return Ok(());
        };
        let takes = if self.known.is_empty() {
            "this route takes none".to_string()
        } else {
            format!("this route takes {}", self.known.join(", "))
        };
        Err(ApiError::invalid(format!(
            "unknown query parameter {}; {takes}",
            crate::text::quoted(name)
        )))
    }
}

fn decode_component(raw: &str) -> Result<Vec<u8>, ApiError> {
    percent_decode(&raw.replace('+', " "))
}

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        QueryParams::parse(parts.uri.query().unwrap_or(""))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_decode_to_bytes_and_leftovers_are_refused() {
        let mut q = QueryParams::parse("prefix=a%FF+b&limit=5&x").expect("parses");
        assert_eq!(q.bytes("prefix"), Some(b"a\xff b".to_vec()));
        assert_eq!(q.u64("limit").expect("a number"), Some(5));
        // A parameter asked for but absent still counts as one the route takes.
        assert_eq!(q.bytes("after"), None);
        let refused = q.finish().map_err(|e| e.into_detail().message);
        assert_eq!(
            refused,
            Err("unknown query parameter \"x\"; this route takes prefix, limit, after".into())
        );
        let q = QueryParams::parse("x=1").expect("parses");
        let refused = q.finish().map_err(|e| e.into_detail().message);
        assert_eq!(
            refused,
            Err("unknown query parameter \"x\"; this route takes none".into())
        );
    }

    #[test]
    fn repeated_and_malformed_parameters_are_refused() {
        assert!(QueryParams::parse("a=1&a=2").is_err());
        let mut q = QueryParams::parse("if_version=-1").expect("parses");
        assert!(q.u64("if_version").is_err());
    }

    #[test]
    fn consistency_levels() {
        let level = |raw: &str| QueryParams::parse(raw).expect("parses").consistency();
        assert_eq!(level("").expect("default"), Consistency::Linearizable);
        assert_eq!(
            level("consistency=local&min_revision=4").expect("local"),
            Consistency::Local {
                min_revision: Some(4)
            }
        );
        assert!(level("consistency=eventual").is_err());
        assert!(level("min_revision=4").is_err());
    }
}

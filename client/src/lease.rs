//! Leases: grant, keep alive (once, or in the background), revoke,
//! inspect.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::kv::decode_b64;
use crate::{Client, Error, json};

/// A lease just granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Granted {
    pub id: u64,
    pub ttl_secs: u64,
    /// The revision of the grant.
    pub revision: u64,
}

/// A live lease, as the master counts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    pub id: u64,
    pub ttl_secs: u64,
    /// Milliseconds before the master may expire it.
    pub remaining_ms: u64,
    pub granted_revision: u64,
    /// With `keys`: the keys attached (base64), at most 1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
}

impl LeaseStatus {
    /// The attached keys, decoded (empty unless asked for).
    pub fn key_bytes(&self) -> Result<Vec<Vec<u8>>, Error> {
        self.keys
            .iter()
            .flatten()
            .map(|k| decode_b64("key", k))
            .collect()
    }
}

/// A lease revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    /// The revision at which the lease and its keys were deleted.
    pub revision: u64,
    /// How many keys were deleted with it.
    pub deleted: u64,
}

/// The outcome of one keep-alive for several leases.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeepAliveAnswer {
    pub leases: Vec<LeaseStatus>,
    /// Leases that no longer exist or already expired.
    pub missing: Vec<u64>,
}

/// One lease in a listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseEntry {
    pub id: u64,
    pub ttl_secs: u64,
    pub granted_revision: u64,
}

/// A page of leases, by id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseList {
    pub leases: Vec<LeaseEntry>,
    /// More follow: ask again with `after` = the last id.
    pub more: bool,
}

/// At most this many leases per keep-alive request (the API's bound).
pub const MAX_KEEPALIVE_IDS: usize = 1000;

impl Client {
    /// Grants a lease of `ttl_secs` (2 to 604800), with id `id` or a
    /// random one. Retried safely: a retry gets the same lease.
    pub async fn grant(&self, ttl_secs: u64, id: Option<u64>) -> Result<Granted, Error> {
        let body = serde_json::json!({ "ttl_secs": ttl_secs, "id": id });
        let resp = self
            .send_write(|h, base| h.post(format!("{base}/v1/leases")).json(&body))
            .await?;
        json(resp).await
    }

    /// Renews lease `id` once; `lease_not_found` when it is gone.
    pub async fn keep_alive_once(&self, id: u64) -> Result<LeaseStatus, Error> {
        let resp = self
            .send(|h, base| h.post(format!("{base}/v1/leases/{id}/keepalive")))
            .await?;
        json(resp).await
    }

    /// Renews up to 1000 leases in one request.
    pub async fn keep_alive_many(&self, ids: &[u64]) -> Result<KeepAliveAnswer, Error> {
        if ids.len() > MAX_KEEPALIVE_IDS {
            return Err(Error::Config(format!(
                "at most {MAX_KEEPALIVE_IDS} leases per keep-alive, not {}",
                ids.len()
            )));
        }
        let body = serde_json::json!({ "ids": ids });
        let resp = self
            .send(|h, base| h.post(format!("{base}/v1/leases/keepalive")).json(&body))
            .await?;
        json(resp).await
    }

    /// Revokes lease `id` now; its keys are deleted with it.
    pub async fn revoke(&self, id: u64) -> Result<Revoked, Error> {
        let resp = self
            .send(|h, base| h.delete(format!("{base}/v1/leases/{id}")))
            .await?;
        json(resp).await
    }

    /// A lease's TTL and time left, with its keys when `keys`.
    pub async fn lease(&self, id: u64, keys: bool) -> Result<LeaseStatus, Error> {
        let query = if keys { "?keys=true" } else { "" };
        let resp = self
            .send(|h, base| h.get(format!("{base}/v1/leases/{id}{query}")))
            .await?;
        json(resp).await
    }

    /// One page of up to `limit` leases with ids above `after`.
    pub async fn leases(&self, after: u64, limit: u64) -> Result<LeaseList, Error> {
        let resp = self
            .send(|h, base| h.get(format!("{base}/v1/leases?limit={limit}&after={after}")))
            .await?;
        json(resp).await
    }

    /// Keeps `leases` (id and TTL each, at most 1000) alive in the
    /// background, all in one request every third of the shortest TTL,
    /// until the returned handle is dropped. When one is gone, or could
    /// not be renewed for two thirds of its TTL (so it may expire in the
    /// third left), [`KeepAlive::lost`] says so and
    /// the others stop being renewed too: the caller decides what next.
    pub fn keep_alive(&self, leases: &[(u64, u64)]) -> KeepAlive {
        let (tx, rx) = watch::channel(None);
        let task = tokio::spawn(renew_until_lost(self.clone(), leases.to_vec(), tx));
        KeepAlive { lost: rx, task }
    }
}

/// Leases kept alive in the background; dropping it stops the renewals
/// (the leases then expire after their TTL unless revoked).
#[derive(Debug)]
pub struct KeepAlive {
    lost: watch::Receiver<Option<String>>,
    task: tokio::task::JoinHandle<()>,
}

impl KeepAlive {
    /// Waits until a lease is lost, and says why. Never returns while all
    /// live.
    pub async fn lost(&mut self) -> String {
        match self.lost.wait_for(Option::is_some).await {
            Ok(why) => why.clone().unwrap_or_default(),
            Err(_) => std::future::pending().await,
        }
    }

    /// Why a lease was lost, if one was.
    pub fn lost_now(&self) -> Option<String> {
        self.lost.borrow().clone()
    }
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The pause after a failed renewal before the next try.
const RETRY: Duration = Duration::from_millis(500);

async fn renew_until_lost(
    client: Client,
    leases: Vec<(u64, u64)>,
    lost: watch::Sender<Option<String>>,
) {
    let Some(shortest) = leases.iter().map(|(_, ttl)| *ttl).min() else {
        return;
    };
    if leases.len() > MAX_KEEPALIVE_IDS {
        let _ = lost.send(Some(format!(
            "at most {MAX_KEEPALIVE_IDS} leases per keep-alive, not {}",
            leases.len()
        )));
        return;
    }
    let ids: Vec<u64> = leases.iter().map(|(id, _)| *id).collect();
    let interval = Duration::from_millis(shortest.saturating_mul(1000) / 3);
    // The master counts a lease's TTL from when it got the keep-alive,
    // which is after it was sent. So a lease renewed by a request sent at
    // `t` lives at least until `t + TTL`, and calling it lost at
    // `t + 2/3 TTL` leaves the holder a third of the TTL to stop before
    // anyone else can take what the lease holds.
    let give_up = Duration::from_millis(shortest.saturating_mul(2000) / 3);
    let mut last_ok = Instant::now();
    loop {
        let sent = Instant::now();
        match client.keep_alive_many(&ids).await {
            Ok(answer) if !answer.missing.is_empty() => {
                let gone: Vec<String> = answer.missing.iter().map(u64::to_string).collect();
                let _ = lost.send(Some(format!(
                    "lease {} is gone (expired or revoked)",
                    gone.join(", ")
                )));
                return;
            }
            Ok(_) => {
                last_ok = sent;
                tokio::time::sleep(interval).await;
            }
            Err(e) => {
                if last_ok.elapsed() >= give_up {
                    let _ = lost.send(Some(format!(
                        "lease {} could not be renewed for two thirds of its TTL ({e}); it may expire",
                        ids.first().copied().unwrap_or(0)
                    )));
                    return;
                }
                tracing::debug!(error = %e, "keep-alive failed; retrying");
                tokio::time::sleep(RETRY.min(interval)).await;
            }
        }
    }
}

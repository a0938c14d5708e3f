//! Locks and leader elections, on leases.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde::Deserialize;

use crate::kv::decode_b64;
use crate::{ApiError, Client, Error, Watch, WatchOptions, json};

/// A lock held.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Locked {
    /// The holder's key: it exists exactly while this holder has the lock.
    pub key: Vec<u8>,
    pub lease: u64,
    /// A revision at which this holder held the lock; every later holder
    /// of the same lock gets a larger one.
    pub fencing_token: u64,
}

#[derive(Debug, Deserialize)]
struct LockedWire {
    key: String,
    lease: u64,
    fencing_token: u64,
}

/// A lock released or an election resigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Released {
    /// The revision after the release.
    pub revision: u64,
    /// Whether this lease held or waited for it.
    pub released: bool,
}

/// An election's leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// The leader's key under `{name}/`.
    pub key: Vec<u8>,
    /// What the leader announced (its address, say).
    pub value: Vec<u8>,
    /// The leader's lease.
    pub lease: u64,
    /// The revision at which it became leader: it grows with every new
    /// leader, so it fences like a lock's token.
    pub term_revision: u64,
}

#[derive(Debug, Deserialize)]
struct LeaderWire {
    key: String,
    value: String,
    lease: u64,
    term_revision: u64,
}

impl TryFrom<LeaderWire> for Leader {
    type Error = Error;
    fn try_from(w: LeaderWire) -> Result<Leader, Error> {
        Ok(Leader {
            key: decode_b64("key", &w.key)?,
            value: decode_b64("value", &w.value)?,
            lease: w.lease,
            term_revision: w.term_revision,
        })
    }
}

/// How long one lock or campaign request waits on the server before the
/// client asks again, unless [`crate::Config::lock_poll`] says otherwise
/// (the server allows ten minutes; shorter requests get through proxies
/// with idle timeouts).
pub(crate) const DEFAULT_POLL: Duration = Duration::from_secs(30);

/// A lock's or election's name as a URL path: percent-encoded, `/` kept.
pub fn path_name(name: &[u8]) -> Result<String, Error> {
    if name.is_empty() {
        return Err(Error::Config("the name must not be empty".into()));
    }
    // `kv/` + name is a valid key path exactly when name is a valid name.
    let path = crate::key_path(name)?;
    Ok(path.trim_start_matches("/v1/kv/").to_string())
}

impl Client {
    /// Takes lock `name` for `lease`, waiting up to `wait` (for ever when
    /// `None`); `lock_held` when the wait ends first. Hold the lease alive
    /// ([`Client::keep_alive`]) for as long as the lock is needed.
    pub async fn lock(
        &self,
        name: &[u8],
        lease: u64,
        wait: Option<Duration>,
    ) -> Result<Locked, Error> {
        let path = format!("/v1/lock/{}", path_name(name)?);
        let w: LockedWire = self
            .wait_in_queue(
                &path,
                lease,
                wait,
                |wait_ms| serde_json::json!({ "lease": lease, "wait_ms": wait_ms }),
            )
            .await?;
        Ok(Locked {
            key: decode_b64("key", &w.key)?,
            lease: w.lease,
            fencing_token: w.fencing_token,
        })
    }

    /// Releases lock `name` held (or waited for) by `lease`.
    pub async fn unlock(&self, name: &[u8], lease: u64) -> Result<Released, Error> {
        let path = format!("/v1/lock/{}?lease={lease}", path_name(name)?);
        let resp = self
            .send(|h, base| h.delete(format!("{base}{path}")))
            .await?;
        json(resp).await
    }

    /// Campaigns in election `name` with `lease`, announcing `value`;
    /// returns once this candidate leads, or `lock_held` when `wait` ends
    /// first (for ever when `None`).
    pub async fn campaign(
        &self,
        name: &[u8],
        lease: u64,
        value: &[u8],
        wait: Option<Duration>,
    ) -> Result<Leader, Error> {
        let path = format!("/v1/election/{}", path_name(name)?);
        let value_b64 = crate::kv::encode_b64(value);
        let w: LeaderWire = self
            .wait_in_queue(&path, lease, wait, |wait_ms| {
                serde_json::json!({ "lease": lease, "value_b64": value_b64, "wait_ms": wait_ms })
            })
            .await?;
        Leader::try_from(w)
    }

    /// Election `name`'s leader now, if it has one.
    pub async fn leader(&self, name: &[u8]) -> Result<Option<Leader>, Error> {
        let path = format!("/v1/election/{}", path_name(name)?);
        let resp = self.send(|h, base| h.get(format!("{base}{path}"))).await?;
        if resp.status().is_success() {
            return Leader::try_from(json::<LeaderWire>(resp).await?).map(Some);
        }
        let failure = ApiError::read(resp).await;
        if failure.code == "key_not_found" {
            return Ok(None);
        }
        Err(Error::Api(failure))
    }

    /// Announces a new `value` as the leader `lease`; `not_leader` when
    /// it does not lead.
    pub async fn proclaim(&self, name: &[u8], lease: u64, value: &[u8]) -> Result<Leader, Error> {
        let path = format!("/v1/election/{}", path_name(name)?);
        let body = serde_json::json!({ "lease": lease, "value_b64": crate::kv::encode_b64(value) });
        let resp = self
            .send_write(|h, base| h.put(format!("{base}{path}")).json(&body))
            .await?;
        Leader::try_from(json::<LeaderWire>(resp).await?)
    }

    /// Leaves election `name` (leader or candidate).
    pub async fn resign(&self, name: &[u8], lease: u64) -> Result<Released, Error> {
        let path = format!("/v1/election/{}?lease={lease}", path_name(name)?);
        let resp = self
            .send(|h, base| h.delete(format!("{base}{path}")))
            .await?;
        json(resp).await
    }

    /// Follows election `name`: [`Observe::next`] gives its leader now,
    /// then each change of leader or of its value.
    pub async fn observe(&self, name: &[u8]) -> Result<Observe, Error> {
        path_name(name)?;
        let mut prefix = name.to_vec();
        prefix.push(b'/');
        // The watch starts first, so no change between it and the first
        // read of the leader is missed.
        let watch = self
            .watch(WatchOptions {
                prefix,
                start_revision: None,
            })
            .await?;
        Ok(Observe {
            client: self.clone(),
            name: name.to_vec(),
            watch,
            shown: None,
        })
    }

    /// Posts to a lock or election queue until it answers with anything
    /// but "still waiting" or `wait` is over.
    ///
    /// Every request but the last asks the server to keep `lease`'s place
    /// in line when it answers "still waiting" (`keep_place`), so a long
    /// wait is served in the order of arrival rather than rejoining at the
    /// back at each [`crate::Config::lock_poll`]. When the wait ends
    /// without the lock, the place is given up here, explicitly, so the
    /// lease never holds the lock later without its owner knowing. If that
    /// last request cannot reach the cluster, the place goes with the
    /// lease (revoke it, or let it expire). A server of an earlier version
    /// refuses `keep_place` as an unknown field; against one, each request
    /// rejoins the line, as before.
    async fn wait_in_queue<T, B>(
        &self,
        path: &str,
        lease: u64,
        wait: Option<Duration>,
        body: B,
    ) -> Result<T, Error>
    where
        T: serde::de::DeserializeOwned,
        B: Fn(u64) -> serde_json::Value,
    {
        let started = Instant::now();
        let mut server_keeps = true;
        // Whether a request asked the server to keep the place.
        let mut kept = false;
        let outcome = loop {
            let left = wait.map(|w| w.saturating_sub(started.elapsed()));
            let step = left.map_or(self.lock_poll, |l| l.min(self.lock_poll));
            let last = left.is_some_and(|l| l <= step);
            let keep = server_keeps && !last;
            let mut body = body(step.as_millis() as u64);
            if keep {
                body["keep_place"] = serde_json::Value::Bool(true);
                kept = true;
            }
            // No deadline for the whole answer: the server holds it while
            // it waits.
            let resp = match self
                .send_streaming(|h, base| h.post(format!("{base}{path}")).json(&body))
                .await
            {
                Ok(resp) => resp,
                Err(e) => break Err(e),
            };
            if resp.status().is_success() {
                break json(resp).await;
            }
            let failure = ApiError::read(resp).await;
            if keep
                && failure.status == StatusCode::BAD_REQUEST
                && failure.message.contains("keep_place")
            {
                server_keeps = false;
                continue;
            }
            if failure.code != "lock_held" || last {
                break Err(Error::Api(failure));
            }
        };
        if kept && outcome.is_err() {
            let leave = format!("{path}?lease={lease}");
            if let Err(e) = self
                .send(|h, base| h.delete(format!("{base}{leave}")))
                .await
            {
                tracing::debug!(error = %e, "leaving the queue failed; the place goes with the lease");
            }
        }
        outcome
    }
}

/// An election followed; see [`Client::observe`].
#[derive(Debug)]
pub struct Observe {
    client: Client,
    name: Vec<u8>,
    watch: Watch,
    shown: Option<Option<Leader>>,
}

impl Observe {
    /// The leader (`None`: no leader) when it differs from the last one
    /// given; waits for a change as long as it takes.
    pub async fn next(&mut self) -> Result<Option<Leader>, Error> {
        loop {
            if self.shown.is_some() {
                self.watch.next().await?;
            }
            let now = self.client.leader(&self.name).await?;
            if self.shown.as_ref() != Some(&now) {
                self.shown = Some(now.clone());
                return Ok(now);
            }
        }
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease, so the operator can
//! run as several replicas of which exactly one reconciles: the others wait
//! as standbys and take over within seconds when the leader goes.
//!
//! The rules (those of client-go's leader election):
//!
//! - **Expiry is judged on the candidate's own clock.** A standby remembers
//!   when it first saw each version (`resourceVersion`) of the Lease; the
//!   lease has expired once no new version appeared for the holder's
//!   `leaseDurationSeconds`. Clocks of different nodes are never compared,
//!   so skew between them plays no part (only their rates must roughly
//!   agree), and a fresh standby waits a whole duration before it takes a
//!   lease over.
//! - **Every write is guarded.** Taking, renewing and releasing are updates
//!   carrying the `resourceVersion` that was read, so of two candidates
//!   racing for one expired lease exactly one wins; the other gets a 409
//!   Conflict and stays a standby. A missing Lease is created; of two
//!   creates one fails with AlreadyExists.
//! - **The leader steps down before anyone may take over.** It renews every
//!   `retry_period`. When no renewal succeeded for `renew_deadline` (counted
//!   from the moment the last successful one was *sent*, so before any
//!   standby could have seen it), [`run_elected`] stops the work and waits at
//!   most half of `duration - renew_deadline` for it to end; a standby
//!   cannot take over earlier than `duration` after it saw that renewal.
//! - **Release on shutdown.** A leader that stops cleanly clears
//!   `holderIdentity`; a standby takes a lease without a holder at its next
//!   try, so a rolling update or a drained node hands over within
//!   `retry_period`, not a whole lease duration.
//!
//! Why not a crate: kube-lease-manager 0.13 supports kube 5, but its watch
//! loop keeps reporting leadership while renewals fail (errors are retried
//! with a backoff and the leader flag stays set), and it compares the
//! holder's `renewTime` with the local wall clock. The operator needs a
//! leader that stops reconciling once it cannot renew, which is the whole
//! point of electing one.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::metrics::{OperatorMetrics, Role};

/// Where the lease is and how it is held. See [`LeaseConfig::new`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Name of the Lease object.
    pub name: String,
    /// Its namespace (the operator's own).
    pub namespace: String,
    /// This replica's identity as holder (its pod name).
    pub identity: String,
    /// How long a lease lasts after its last renewal (`leaseDurationSeconds`).
    pub duration: Duration,
    /// How long the leader goes on without a successful renewal before it
    /// steps down; shorter than `duration`.
    pub renew_deadline: Duration,
    /// How often the leader renews and a standby tries.
    pub retry_period: Duration,
}

/// A lease setting that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// The duration is not whole seconds, or too short to renew within.
    #[error(
        "--lease-duration must be a whole number of seconds from 3s to 1h (it is written to the Lease in seconds), not {0:?}"
    )]
    Duration(Duration),
    /// An empty name, namespace or identity.
    #[error("{0} must not be empty")]
    Empty(&'static str),
}

impl LeaseConfig {
    /// A lease of `duration`, renewed every fifth of it; the leader gives up
    /// after two thirds of it without a successful renewal. With the default
    /// 15 s: renewals every 3 s, step down after 10 s, a dead leader is
    /// replaced after 15 to 18 s, a released lease is taken within 3 s.
    pub fn new(
        name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
        duration: Duration,
    ) -> Result<Self, ConfigError> {
        let (name, namespace, identity) = (name.into(), namespace.into(), identity.into());
        if name.is_empty() {
            return Err(ConfigError::Empty("--lease-name"));
        }
        if namespace.is_empty() {
            return Err(ConfigError::Empty("--lease-namespace"));
        }
        if identity.is_empty() {
            return Err(ConfigError::Empty("--lease-identity"));
        }
        if duration.subsec_nanos() != 0 || !(3..=3600).contains(&duration.as_secs()) {
            return Err(ConfigError::Duration(duration));
        }
        Ok(LeaseConfig {
            name,
            namespace,
            identity,
            duration,
            renew_deadline: duration * 2 / 3,
            retry_period: duration / 5,
        })
    }

    fn duration_seconds(&self) -> i32 {
        // new() bounds it to an hour.
        i32::try_from(self.duration.as_secs()).unwrap_or(i32::MAX)
    }
}

/// What one try found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// This replica holds the lease (it just took or renewed it).
    Leading,
    /// Another holds it (`None`: another candidate won a race just now).
    Following(Option<String>),
}

/// Why a leader stopped leading.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Another replica holds the lease now.
    TakenBy(Option<String>),
    /// No renewal succeeded within the renew deadline; the last error.
    DeadlinePassed(String),
}

impl std::fmt::Display for Lost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Lost::TakenBy(Some(h)) => write!(f, "the lease is held by {h} now"),
            Lost::TakenBy(None) => write!(f, "another replica took the lease"),
            Lost::DeadlinePassed(e) => write!(f, "no renewal succeeded in time: {e}"),
        }
    }
}

/// A version of the Lease and when this replica first saw it.
#[derive(Clone, Debug)]
struct Observed {
    lease: Lease,
    at: Instant,
}

/// One candidate for the lease.
pub struct Elector {
    api: Api<Lease>,
    config: LeaseConfig,
    observed: Option<Observed>,
    /// When the last successful take or renewal was sent.
    renewed: Option<Instant>,
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

fn holder_of(lease: &Lease) -> Option<String> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.clone())
        .filter(|h| !h.is_empty())
}

fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.is_conflict() || s.is_already_exists())
}

impl Elector {
    /// A candidate that has seen nothing yet.
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        Elector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: None,
            renewed: None,
        }
    }

    /// The settings.
    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// The holder as last seen (this replica included).
    pub fn holder(&self) -> Option<String> {
        self.observed.as_ref().and_then(|o| holder_of(&o.lease))
    }

    fn observe(&mut self, lease: Lease) {
        let same = self.observed.as_ref().is_some_and(|o| {
            o.lease.metadata.resource_version.is_some()
                && o.lease.metadata.resource_version == lease.metadata.resource_version
        });
        if same {
            return;
        }
        self.observed = Some(Observed {
            lease,
            at: Instant::now(),
        });
    }

    /// Whether the observed lease is free to take: no holder, or no new
    /// version of it for as long as its holder promised to renew within.
    fn expired(&self, now: Instant) -> bool {
        let Some(o) = &self.observed else {
            return false;
        };
        let spec = o.lease.spec.clone().unwrap_or_default();
        if holder_of(&o.lease).is_none() {
            return true;
        }
        let promised = spec
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .map(Duration::from_secs)
            .unwrap_or(self.config.duration);
        now >= o.at + promised
    }

    fn spec(&self, previous: Option<&LeaseSpec>, ours: bool) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(self.config.duration_seconds()),
            acquire_time: if ours {
                previous
                    .and_then(|s| s.acquire_time.clone())
                    .or(Some(now.clone()))
            } else {
                Some(now.clone())
            },
            renew_time: Some(now),
            lease_transitions: Some(if ours || previous.is_none() {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..previous.cloned().unwrap_or_default()
        }
    }

    /// One try: reads the Lease; creates it if missing, takes it if it has
    /// no holder or has expired, renews it if this replica holds it.
    pub async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let current = self.api.get_opt(&self.config.name).await?;
        let Some(current) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.config.name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, false)),
            };
            let sent = Instant::now();
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(created);
                    self.renewed = Some(sent);
                    Ok(Attempt::Leading)
                }
                Err(e) if conflict(&e) => Ok(Attempt::Following(None)),
                Err(e) => Err(e),
            };
        };
        self.observe(current.clone());
        let holder = holder_of(&current);
        let ours = holder.as_deref() == Some(self.config.identity.as_str());
        if !ours && !self.expired(Instant::now()) {
            return Ok(Attempt::Following(holder));
        }
        let mut lease = current;
        lease.spec = Some(self.spec(lease.spec.as_ref(), ours));
        let sent = Instant::now();
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                if !ours {
                    tracing::info!(
                        lease = %self.config.name,
                        previous = holder.as_deref().unwrap_or("<none>"),
                        "took the lease"
                    );
                }
                self.observe(updated);
                self.renewed = Some(sent);
                Ok(Attempt::Leading)
            }
            // Someone wrote in between: read again next time.
            Err(e) if conflict(&e) => Ok(Attempt::Following(if ours { None } else { holder })),
            Err(e) => Err(e),
        }
    }

    /// Gives the lease up if this replica holds it (as last seen), so a
    /// standby takes it at its next try. Returns whether it did.
    pub async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(observed) = &self.observed else {
            return Ok(false);
        };
        if holder_of(&observed.lease).as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        let mut lease = observed.lease.clone();
        let now = MicroTime(Timestamp::now());
        let previous = lease.spec.unwrap_or_default();
        lease.spec = Some(LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            ..previous
        });
        self.renewed = None;
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(updated) => {
                self.observe(updated);
                Ok(true)
            }
            // A newer version: it is no longer ours to release.
            Err(e) if conflict(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Tries every `retry_period` until this replica leads, reporting what
    /// it sees to `metrics`.
    pub async fn acquire(&mut self, metrics: &OperatorMetrics) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(Attempt::Leading) => return,
                Ok(Attempt::Following(holder)) => {
                    metrics.set_role(Role::Standby {
                        holder,
                        lease_readable: true,
                    });
                }
                Err(e) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "cannot read or take the lease");
                    metrics.set_role(Role::Standby {
                        holder: self.holder(),
                        lease_readable: false,
                    });
                }
            }
            tokio::time::sleep(self.config.retry_period).await;
        }
    }

    /// As the leader: renews every `retry_period` and returns once
    /// leadership is lost, at the latest `renew_deadline` after the last
    /// successful renewal was sent.
    pub async fn keep_leading(&mut self) -> Lost {
        let mut last_error = String::from("no renewal was tried");
        loop {
            let renewed = self.renewed.unwrap_or_else(Instant::now);
            let deadline = renewed + self.config.renew_deadline;
            let next = (Instant::now() + self.config.retry_period).min(deadline);
            tokio::time::sleep_until(next).await;
            if Instant::now() >= deadline {
                return Lost::DeadlinePassed(last_error);
            }
            match tokio::time::timeout_at(deadline, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => {}
                Ok(Ok(Attempt::Following(holder))) => {
                    self.renewed = None;
                    return Lost::TakenBy(holder);
                }
                Ok(Err(e)) => {
                    tracing::warn!(lease = %self.config.name, error = %e, "cannot renew the lease");
                    last_error = e.to_string();
                }
                Err(_) => {
                    self.renewed = None;
                    return Lost::DeadlinePassed(format!(
                        "a renewal did not finish within the {:?} deadline",
                        self.config.renew_deadline
                    ));
                }
            }
        }
    }
}

/// Tells the work running under a lease to stop; cheap to clone.
#[derive(Clone, Debug)]
pub struct Stop(watch::Receiver<bool>);

impl Stop {
    /// A signal and the handle that raises it.
    pub fn new() -> (watch::Sender<bool>, Stop) {
        let (tx, rx) = watch::channel(false);
        (tx, Stop(rx))
    }

    /// Whether it was raised.
    pub fn is_stopped(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once it is raised (or its sender is gone).
    pub fn stopped(&self) -> impl Future<Output = ()> + Send + Sync + 'static {
        let mut rx = self.0.clone();
        async move {
            // An error means the sender is gone: stop as well.
            let _ = rx.wait_for(|stop| *stop).await;
        }
    }
}

/// Runs `lead` whenever this replica holds the lease, until `shutdown`.
///
/// Campaigns; once leader, calls `lead` with a [`Stop`] and renews while
/// it runs. When leadership is lost the stop is raised and `lead` gets half
/// of `duration - renew_deadline` to finish before it is dropped; then the
/// replica campaigns again. On `shutdown` the same, and the lease is
/// released. An error from `lead` (or `lead` ending by itself) releases the
/// lease and is returned.
pub async fn run_elected<S, F, Fut>(
    elector: &mut Elector,
    metrics: &OperatorMetrics,
    shutdown: S,
    mut lead: F,
) -> Result<(), String>
where
    S: Future<Output = ()>,
    F: FnMut(Stop) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    tokio::pin!(shutdown);
    let grace = (elector.config.duration - elector.config.renew_deadline) / 2;
    loop {
        tokio::select! {
            () = elector.acquire(metrics) => {}
            () = &mut shutdown => return Ok(()),
        }
        tracing::info!(lease = %elector.config.name, identity = %elector.config.identity, "leading");
        metrics.set_role(Role::Leading {
            controller_running: false,
        });
        let (raise, stop) = Stop::new();
        let work = lead(stop);
        tokio::pin!(work);
        enum Outcome {
            Ended(Result<(), String>),
            Lost(Lost),
            Shutdown,
        }
        let outcome = tokio::select! {
            result = &mut work => Outcome::Ended(result),
            lost = elector.keep_leading() => Outcome::Lost(lost),
            () = &mut shutdown => Outcome::Shutdown,
        };
        match outcome {
            Outcome::Ended(result) => {
                metrics.set_role(Role::Starting);
                release(elector).await;
                return match result {
                    Ok(()) => Err("the controller stopped by itself".into()),
                    Err(e) => Err(e),
                };
            }
            Outcome::Lost(why) => {
                tracing::warn!(lease = %elector.config.name, reason = %why, "lost the lease: stopping the controller");
                metrics.set_role(Role::Standby {
                    holder: elector.holder(),
                    lease_readable: false,
                });
                let _ = raise.send(true);
                if tokio::time::timeout(grace, &mut work).await.is_err() {
                    tracing::warn!("the controller did not stop in time; abandoning it");
                }
            }
            Outcome::Shutdown => {
                tracing::info!("shutting down: stopping the controller, then releasing the lease");
                let _ = raise.send(true);
                if tokio::time::timeout(grace, &mut work).await.is_err() {
                    tracing::warn!("the controller did not stop in time; abandoning it");
                }
                metrics.set_role(Role::Starting);
                release(elector).await;
                return Ok(());
            }
        }
    }
}

async fn release(elector: &mut Elector) {
    match elector.release().await {
        Ok(true) => tracing::info!(lease = %elector.config.name, "released the lease"),
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(lease = %elector.config.name, error = %e, "could not release the lease; a standby takes over once it expires")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timings_derive_from_the_duration() {
        let c = LeaseConfig::new("l", "ns", "me", Duration::from_secs(15)).expect("valid");
        assert_eq!(c.renew_deadline, Duration::from_secs(10));
        assert_eq!(c.retry_period, Duration::from_secs(3));
        assert!(c.renew_deadline < c.duration);
    }

    #[test]
    fn a_duration_that_cannot_be_written_or_renewed_is_refused() {
        for bad in [
            Duration::from_millis(1500),
            Duration::from_secs(2),
            Duration::from_secs(7200),
        ] {
            let err = LeaseConfig::new("l", "ns", "me", bad).expect_err("refused");
            assert!(err.to_string().contains("--lease-duration"), "{err}");
        }
        assert_eq!(
            LeaseConfig::new("l", "", "me", Duration::from_secs(15)),
            Err(ConfigError::Empty("--lease-namespace"))
        );
    }
}

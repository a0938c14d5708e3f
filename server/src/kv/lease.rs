//! Leases: keys that are deleted when their owner stops renewing them.
//!
//! A lease has an id and a TTL. Puts (and transactions) may attach keys to
//! it; revoking it, or its expiry, deletes every attached key in one
//! revision. Two halves, kept apart on purpose:
//!
//! - **The replicated half** lives in the state machine as records under
//!   [`LEASE_PREFIX`], written only by applying ops, so snapshots, backups,
//!   archives and the replicas' digest comparison carry leases with no
//!   format of their own (as the auth records do). A lease's record holds
//!   its TTL; each attached key has a record under the lease (to find its
//!   keys) and one under the key (to find its lease).
//! - **The clock half** ([`LeaseTimers`]) lives only on the master. Renewals
//!   (keep-alives) never go through the log: they move a deadline in the
//!   master's memory. When a deadline passes, the master proposes the
//!   lease's expiry, and every replica deletes the same keys at the same
//!   revision when it applies it.
//!
//! ## The guarantee, and why it holds
//!
//! *A lease's keys are not deleted before its TTL has elapsed, in real time,
//! since the client sent its grant or its latest successful keep-alive*,
//! as long as clocks keep to the engine's drift bound. Only an explicit
//! revoke deletes them sooner.
//!
//! - A keep-alive is answered only by a master that holds a valid master
//!   lease and has applied the whole log up to a read index (the path of a
//!   linearizable read), so it sees every expiry chosen before it. It moves
//!   the deadline to `now + TTL * (1 + drift)` on the master's clock, where
//!   `now` is after the client sent it, and the drift factor makes that at
//!   least `TTL` of real time.
//! - The master proposes an expiry only once the deadline has passed, and
//!   a renewal that arrives after the deadline is refused: both happen on
//!   the engine's thread, so one of them comes first and the other sees it.
//! - A new master starts every deadline afresh at
//!   `now + TTL * (1 + drift) + extension` when it takes over (it never saw its predecessor's
//!   keep-alives). The predecessor's lease ended before the new master's
//!   began (master leases never overlap), so every keep-alive acknowledged
//!   before was received before `now`. Remaining TTLs are therefore
//!   extended across a change of master, never shortened.
//! - An expiry names the revision that granted the lease, and applies only
//!   to that grant: a stale expiry chosen late cannot delete a lease that
//!   was revoked and granted again under the same id.
//!
//! ## Fences: an expiry outlives the master that decided it
//!
//! The points above say when a master *decides* an expiry, but an op is
//! applied where it is *chosen*, and Paxos may choose a master's proposal
//! long after that master is gone: a master cut off in a minority (its
//! master lease still valid) proposes an expiry that only the minority
//! accepts; the majority elects a new master, which starts every deadline
//! afresh and acknowledges keep-alives; that master fails before its own
//! value for the instance reaches a quorum, and the next one finds the old
//! expiry among its promises and gets it chosen, after keep-alives it knew
//! nothing of. So every mastership first puts a **fence** in the log:
//!
//! - [`LeaseOp::Fence`] names the master's ballot. Applying it adds one to
//!   the fence number kept in the state machine and records the ballot
//!   (in a record clients never see, at no revision of its own).
//! - A master answers no keep-alive and decides no expiry until it has
//!   applied a fence that names its own ballot, and it proposes
//!   [`LeaseOp::ExpireFenced`] carrying the number that fence gave. A
//!   fenced expiry takes effect only where the fence number is still the
//!   one it carries; anywhere else it changes nothing. Once any fence
//!   exists, an unfenced [`LeaseOp::Expire`] changes nothing either.
//!
//! Why that is enough: say master M (ballot `b`) acknowledges a keep-alive
//! for a grant, having applied the log up to position `a`, where the last
//! fence names `b`; and an expiry of that grant, decided by master X,
//! takes effect at position `j`. Each fence adds one to the number, so
//! the fence the expiry carries is the last fence before `j`, and X had
//! applied it, and found its own ballot in it, when it decided.
//!
//! - If `j` is at or before `a`, M had applied the expiry and found the
//!   grant gone: it acknowledged nothing.
//! - Otherwise, if the last fence before `j` names `b`, X is M (one
//!   ballot, one mastership), and M's own timers order its keep-alives and
//!   its expiries, as above.
//! - Otherwise that fence comes after `a`, so X had applied M's fence, a
//!   value a majority accepted at a ballot of at least `b`, and still held
//!   a valid master lease. A master with a lower ballot cannot: its lease
//!   was chosen at its own ballot by acceptors that then refuse every
//!   other proposer's prepare until the lease ends, so a majority promised
//!   `b` only after it ended, and no lease at the lower ballot can be
//!   chosen past that majority. So X's ballot is above `b`: X took over
//!   after M's lease ended and started every deadline afresh after M's
//!   last acknowledgement.
//!
//! A stale fence chosen late just moves the number on: the master whose
//! fence it is no longer decides anything, and the current master, no
//! longer finding its own ballot in the record, stops answering and
//! fences again. Fences need every member to decode them (the
//! `lease_fence` peer feature); until a fence exists, a master whose
//! members do not all say so decides as before, without one. Once one
//! exists, a replica of an earlier version would apply an unfenced expiry
//! that this version ignores: rolling back, or adding a member of an
//! earlier version, is then not supported. (A fence is proposed ahead of
//! every queued write, so a master under load still gets one.)
//!
//! The simulator runs both: a quarter of its runs start mid-upgrade
//! (`crate::sim::world::WorldOptions::fences_from`), every node restarting
//! in turn while a lease runs out. Expiries decided before the last is
//! back are exempt from the TTL check, since the flaw above is theirs
//! until then, but none may take effect past the start of a mastership
//! that opened after it, which an unfenced expiry applied after a fence
//! would do.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::kv::{OpResult, Store};
use crate::paxos::Ballot;

/// Where the lease records live (inside the store's reserved prefix).
pub const LEASE_PREFIX: &[u8] = b"\0phxkv/lease/";
/// A lease: `l` + id (8 bytes, big-endian) -> TTL in seconds (8 bytes).
const RECORD: u8 = b'l';
/// A key attached to a lease: `k` + lease id + key -> empty.
const OWNED: u8 = b'k';
/// The lease a key is attached to: `a` + key -> lease id.
const ATTACHED: u8 = b'a';
/// The API token that holds a lease: `o` + lease id -> the token's id.
/// Only for leases granted with [`LeaseOp::GrantOwned`].
const OWNER: u8 = b'o';
/// The latest fence (see the module doc): `f` -> its number, then the
/// round and the node of the ballot it names (8 bytes each, big-endian).
const FENCE: u8 = b'f';
/// What a refusal by [`Store::may_hold_lease`] says, for clients (and the
/// CLI's advice) to recognise.
pub const HELD_BY_ANOTHER: &str = "is held by another token";
/// The longest owner a lease records: token ids are 16 hex digits.
pub const MAX_OWNER_BYTES: usize = 64;

/// The shortest TTL a lease may have, in seconds: shorter than a master
/// change, a lease could not be kept alive across one.
pub const MIN_TTL_SECS: u64 = 2;
/// The longest TTL, in seconds (seven days).
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// Most leases at once: the master keeps a timer for each.
pub const MAX_LEASES: usize = 100_000;
/// Lease ids are `1..=MAX_LEASE_ID`, so that every JSON parser reads them
/// exactly (2^53 - 1, the largest integer a double holds exactly).
pub const MAX_LEASE_ID: u64 = (1 << 53) - 1;

/// A change to the leases, as proposed and chosen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum LeaseOp {
    /// Creates lease `id` with a TTL in seconds.
    Grant { id: u64, ttl_secs: u64 },
    /// Ends lease `id` now and deletes its keys.
    Revoke { id: u64 },
    /// Proposed by the master when lease `id`, granted at revision
    /// `granted`, was not renewed in time: ends it and deletes its keys.
    /// Applies to that grant only.
    Expire { id: u64, granted: u64 },
    /// Creates lease `id` as [`LeaseOp::Grant`] does, held by the API
    /// token `owner` (its id): with auth on, no other token but an admin's
    /// may renew it, revoke it or attach keys to it (see
    /// [`Store::may_hold_lease`]), and a token lists only the leases it
    /// holds. Proposed for a token's grant once every member said it
    /// decodes it (the `lease_owner` peer feature). (Last, so that logs
    /// written before it existed decode unchanged.)
    GrantOwned {
        id: u64,
        ttl_secs: u64,
        owner: String,
    },
    /// Proposed by a master when it takes over, before it answers any
    /// lease question: adds one to the fence number the state machine
    /// keeps, and records `ballot`, the master's own. Proposed once every
    /// member said it decodes it (the `lease_fence` peer feature).
    Fence { ballot: Ballot },
    /// The expiry of lease `id`, granted at revision `granted`, decided by
    /// the master whose fence made the fence number `fence`: it ends the
    /// lease and deletes its keys only while the fence number is still
    /// `fence`, and changes nothing where a later fence came first. (Once
    /// any fence exists, an `expire` changes nothing either.)
    ExpireFenced { id: u64, granted: u64, fence: u64 },
}

impl LeaseOp {
    /// Whether only the cluster itself (its master) proposes this op:
    /// never a client, nor an op made on a caller's behalf.
    pub fn is_the_clusters(&self) -> bool {
        matches!(
            self,
            LeaseOp::Expire { .. } | LeaseOp::ExpireFenced { .. } | LeaseOp::Fence { .. }
        )
    }
}

/// The latest fence applied (see the module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseFence {
    /// How many fences were applied, this one included.
    pub number: u64,
    /// The ballot of the master that proposed it.
    pub ballot: Ballot,
}

/// A lease as the state machine holds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseInfo {
    pub id: u64,
    pub ttl_secs: u64,
    /// The revision of its grant.
    pub granted: u64,
}

fn record_key(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(LEASE_PREFIX.len() + 9);
    k.extend_from_slice(LEASE_PREFIX);
    k.push(RECORD);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn owner_key(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(LEASE_PREFIX.len() + 9);
    k.extend_from_slice(LEASE_PREFIX);
    k.push(OWNER);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn owned_prefix(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(LEASE_PREFIX.len() + 9);
    k.extend_from_slice(LEASE_PREFIX);
    k.push(OWNED);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn owned_key(id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = owned_prefix(id);
    k.extend_from_slice(key);
    k
}

fn fence_key() -> Vec<u8> {
    let mut k = LEASE_PREFIX.to_vec();
    k.push(FENCE);
    k
}

fn attached_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(LEASE_PREFIX.len() + 1 + key.len());
    k.extend_from_slice(LEASE_PREFIX);
    k.push(ATTACHED);
    k.extend_from_slice(key);
    k
}

fn u64_of(bytes: &[u8]) -> u64 {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        // Only this module writes these records, always 8 bytes; a record
        // of another length reads as 0 (no lease) rather than panicking.
        .unwrap_or(0)
}

/// Whether `key` is one of the lease records.
pub fn is_lease_key(key: &[u8]) -> bool {
    key.starts_with(LEASE_PREFIX)
}

/// Why `id` cannot name a lease.
pub fn check_id(id: u64) -> Result<(), String> {
    if (1..=MAX_LEASE_ID).contains(&id) {
        Ok(())
    } else {
        Err(format!(
            "a lease id must be between 1 and {MAX_LEASE_ID}, got {id}"
        ))
    }
}

/// Why `owner` cannot hold a lease: a token's id, never empty, and short.
fn check_owner(owner: &str) -> Result<(), String> {
    if owner.is_empty() || owner.len() > MAX_OWNER_BYTES {
        return Err(format!(
            "a lease's owner is a token id of 1 to {MAX_OWNER_BYTES} bytes, got {} bytes",
            owner.len()
        ));
    }
    Ok(())
}

/// Why a lease cannot be granted as asked (held by `owner`, when given),
/// before it is proposed.
pub fn check_grant(id: u64, ttl_secs: u64, owner: Option<&str>) -> Result<(), String> {
    check_id(id)?;
    if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&ttl_secs) {
        return Err(format!(
            "a lease's TTL must be between {MIN_TTL_SECS} and {MAX_TTL_SECS} seconds, got {ttl_secs}"
        ));
    }
    owner.map_or(Ok(()), check_owner)
}

impl Store {
    /// Lease `id`, if it exists.
    pub fn lease(&self, id: u64) -> Option<LeaseInfo> {
        let key = record_key(id);
        self.kvs.get(key.as_slice()).map(|slot| LeaseInfo {
            id,
            ttl_secs: u64_of(&slot.value),
            granted: slot.create_revision,
        })
    }

    /// Every lease, by id.
    pub fn leases(&self) -> Vec<LeaseInfo> {
        self.leases_from(0).collect()
    }

    /// The leases with an id of at least `first`, by id, read in place (a
    /// page of a listing costs its own length, not the number of leases).
    pub fn leases_from(&self, first: u64) -> impl Iterator<Item = LeaseInfo> + '_ {
        let start = record_key(first);
        let mut end = LEASE_PREFIX.to_vec();
        end.push(RECORD + 1);
        let id_at = start.len() - 8;
        self.kvs
            .range::<[u8], _>((
                Bound::Included(start.as_slice()),
                Bound::Excluded(end.as_slice()),
            ))
            .map(move |(k, slot)| LeaseInfo {
                id: u64_of(&k[id_at..]),
                ttl_secs: u64_of(&slot.value),
                granted: slot.create_revision,
            })
    }

    /// The latest fence applied, if any (see the module doc).
    pub fn lease_fence(&self) -> Option<LeaseFence> {
        let slot = self.kvs.get(fence_key().as_slice())?;
        let v = &slot.value;
        // Only this module writes the record, always 24 bytes; a record of
        // another length reads as fence 0 of no master, which no master's
        // ballot matches, so the master fences again.
        let part = |i: usize| v.get(i * 8..(i + 1) * 8).map_or(0, u64_of);
        Some(LeaseFence {
            number: part(0),
            ballot: Ballot {
                round: part(1),
                node: part(2),
            },
        })
    }

    /// How many leases exist.
    pub fn lease_count(&self) -> usize {
        self.lease_count
    }

    /// A number that changes whenever a lease is granted or ends, and at
    /// every restore: the master's timers re-read the leases when it moves.
    /// Local, never replicated.
    pub fn lease_generation(&self) -> u64 {
        self.lease_generation
    }

    /// The keys attached to lease `id`, in byte order, at most `limit`.
    pub fn lease_keys(&self, id: u64, limit: usize) -> Vec<Vec<u8>> {
        let prefix = owned_prefix(id);
        let mut end = LEASE_PREFIX.to_vec();
        end.push(OWNED);
        end.extend_from_slice(&(id.wrapping_add(1)).to_be_bytes());
        let end = if id == u64::MAX {
            Bound::Unbounded
        } else {
            Bound::Excluded(end.as_slice())
        };
        self.kvs
            .range::<[u8], _>((Bound::Included(prefix.as_slice()), end))
            .take(limit)
            .map(|(k, _)| k[prefix.len()..].to_vec())
            .collect()
    }

    /// The API token (its id) that holds lease `id`, if it was granted to
    /// one ([`LeaseOp::GrantOwned`]).
    pub fn lease_owner(&self, id: u64) -> Option<&str> {
        self.kvs
            .get(owner_key(id).as_slice())
            .and_then(|slot| std::str::from_utf8(&slot.value).ok())
    }

    /// Whether API token `token` may renew lease `lease`, revoke it or
    /// attach keys to it, as far as who holds it goes: a lease granted to
    /// a token is for that token and admins only. A lease granted without
    /// one (by the cluster token, with auth off, or before every member
    /// knew owners) is open to any token, as in etcd, and guarded by the
    /// rights to its keys alone. A lease that does not exist passes here
    /// (the op then finds no lease).
    pub fn may_hold_lease(&self, token: &str, lease: u64) -> Result<(), crate::auth::Refusal> {
        match self.lease_owner(lease) {
            Some(owner) if owner != token => {
                if self
                    .auth()
                    .authorize(token, crate::auth::Need::Admin)
                    .is_ok()
                {
                    return Ok(());
                }
                Err(crate::auth::Refusal::new(
                    crate::auth::RefusalKind::PermissionDenied,
                    format!(
                        "lease {lease} {HELD_BY_ANOTHER} ({owner}): only that token and \
                         admins may use it"
                    ),
                ))
            }
            _ => Ok(()),
        }
    }

    /// The lease `key` is attached to, if any.
    pub fn lease_of(&self, key: &[u8]) -> Option<u64> {
        self.kvs
            .get(attached_key(key).as_slice())
            .map(|slot| u64_of(&slot.value))
            .filter(|id| *id != 0)
    }

    /// Recounts the leases; every restore ends here.
    pub(super) fn reload_leases(&mut self) {
        self.lease_count = self.leases().len();
        self.lease_generation = next_lease_generation();
    }

    pub(super) fn apply_lease(&mut self, op: &LeaseOp) -> OpResult {
        match *op {
            LeaseOp::Grant { id, ttl_secs } => self.grant(id, ttl_secs, None),
            LeaseOp::GrantOwned {
                id,
                ttl_secs,
                ref owner,
            } => self.grant(id, ttl_secs, Some(owner)),
            LeaseOp::Revoke { id } => self.end_lease(id, None),
            // Decided without a fence: stale once any fence exists.
            LeaseOp::Expire { id, .. } if self.lease_fence().is_some() => {
                OpResult::LeaseNotFound { id }
            }
            LeaseOp::Expire { id, granted } => self.end_lease(id, Some(granted)),
            LeaseOp::ExpireFenced { id, granted, fence } => {
                if self.lease_fence().is_some_and(|f| f.number == fence) {
                    self.end_lease(id, Some(granted))
                } else {
                    OpResult::LeaseNotFound { id }
                }
            }
            LeaseOp::Fence { ballot } => self.fence(ballot),
        }
    }

    /// Applies a fence for the master at `ballot` (see the module doc).
    ///
    /// It takes no revision of its own: clients see neither the record nor
    /// an event for it, and a change of master does not move the revision
    /// they count. (Its record still goes into snapshots and the digest.)
    fn fence(&mut self, ballot: Ballot) -> OpResult {
        let number = self.lease_fence().map_or(0, |f| f.number) + 1;
        let mut record = Vec::with_capacity(24);
        for part in [number, ballot.round, ballot.node] {
            record.extend_from_slice(&part.to_be_bytes());
        }
        let revision = self.revision;
        self.write(&fence_key(), &record, revision);
        OpResult::LeaseFenced { number, revision }
    }

    /// Creates lease `id`, held by the token `owner` when there is one.
    fn grant(&mut self, id: u64, ttl_secs: u64, owner: Option<&str>) -> OpResult {
        if let Err(message) = check_grant(id, ttl_secs, owner) {
            return OpResult::Refused(crate::auth::Refusal::new(
                crate::auth::RefusalKind::Invalid,
                message,
            ));
        }
        if self.lease(id).is_some() {
            return OpResult::LeaseIdTaken { id };
        }
        if self.lease_count >= MAX_LEASES {
            return OpResult::Refused(crate::auth::Refusal::new(
                crate::auth::RefusalKind::Invalid,
                format!("the cluster holds the most leases it may ({MAX_LEASES})"),
            ));
        }
        let revision = self.revision + 1;
        self.write(&record_key(id), &ttl_secs.to_be_bytes(), revision);
        match owner {
            Some(owner) => {
                self.write(&owner_key(id), owner.as_bytes(), revision);
            }
            // A holder left behind by a replica of an earlier version,
            // which ends leases without removing it, is not this lease's.
            None if self.kvs.contains_key(owner_key(id).as_slice()) => {
                self.remove(&owner_key(id), revision);
            }
            None => {}
        }
        self.revision = revision;
        self.lease_count += 1;
        self.lease_generation = next_lease_generation();
        OpResult::LeaseGranted {
            id,
            ttl_secs,
            revision,
        }
    }

    /// Deletes lease `id` (only the grant at `granted`, when given) and
    /// every key attached to it, all at one new revision.
    fn end_lease(&mut self, id: u64, granted: Option<u64>) -> OpResult {
        let Some(info) = self.lease(id) else {
            return OpResult::LeaseNotFound { id };
        };
        if granted.is_some_and(|g| g != info.granted) {
            return OpResult::LeaseNotFound { id };
        }
        let revision = self.revision + 1;
        let keys = self.lease_keys(id, usize::MAX);
        for key in &keys {
            // Removing a user key detaches it, which removes both of its
            // attachment records.
            self.remove(key, revision);
        }
        self.remove(&record_key(id), revision);
        if self.kvs.contains_key(owner_key(id).as_slice()) {
            self.remove(&owner_key(id), revision);
        }
        self.revision = revision;
        self.lease_count = self.lease_count.saturating_sub(1);
        self.lease_generation = next_lease_generation();
        OpResult::LeaseRevoked {
            id,
            revision,
            deleted: keys.len() as u64,
        }
    }

    /// Attaches `key` (a client key just written) to `lease`, or detaches
    /// it when `lease` is 0, at `revision`.
    pub(super) fn set_lease_of(&mut self, key: &[u8], lease: u64, revision: u64) {
        let current = self.lease_of(key).unwrap_or(0);
        if current == lease {
            return;
        }
        if current != 0 {
            self.remove(&owned_key(current, key), revision);
        }
        let attached = attached_key(key);
        if lease == 0 {
            self.remove(&attached, revision);
        } else {
            self.write(&owned_key(lease, key), &[], revision);
            self.write(&attached, &lease.to_be_bytes(), revision);
        }
    }
}

/// Lease generations are drawn from one counter for the whole process, like
/// auth generations, so a restored store never repeats one.
static LEASE_GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_lease_generation() -> u64 {
    LEASE_GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

/// Why a keep-alive was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RenewError {
    /// No such lease (never granted, revoked, or its expiry applied).
    NotFound,
    /// Its deadline passed: its expiry is proposed or about to be.
    Expired,
    /// This master may not answer yet (see [`LeaseTimers::gate`]).
    NotReady,
}

#[derive(Clone, Copy, Debug)]
struct Timer {
    granted: u64,
    ttl_secs: u64,
    deadline: Duration,
    /// When its expiry was last proposed, to propose it again if that
    /// proposal was lost.
    proposed: Option<Duration>,
}

/// Whether a master may answer lease questions now (see
/// [`LeaseTimers::gate`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Gate {
    /// It may: renew, and propose the expiries [`LeaseTimers::due`] names.
    Open,
    /// Not until its fence is applied. Propose the op given, if any (its
    /// fence, first or again), and ask again later.
    Closed(Option<LeaseOp>),
}

/// The master's deadlines for every lease (the clock half; see the module
/// doc). Times are the node's monotonic clock, as the engine's are.
#[derive(Debug)]
pub struct LeaseTimers {
    /// The mastership the deadlines belong to; another one starts afresh.
    ballot: Option<Ballot>,
    /// The number of this mastership's fence, once applied: its expiries
    /// carry it. `None` while it has none (not yet, or none needed).
    fence: Option<u64>,
    /// When this mastership last proposed its fence.
    fence_proposed: Option<Duration>,
    /// Whether [`LeaseTimers::gate`] last said open.
    open: bool,
    /// The store's [`Store::lease_generation`] last read.
    generation: u64,
    timers: BTreeMap<u64, Timer>,
    /// Added to every deadline when a mastership starts.
    extension: Duration,
    max_drift_ppm: u32,
}

/// How long before an expiry proposal that was not applied is made again.
const REPROPOSE_AFTER: Duration = Duration::from_secs(1);

impl LeaseTimers {
    /// `extension`: how much longer than its TTL a lease lives across a
    /// change of master (the election time is the right amount);
    /// `max_drift_ppm`: the engine's clock drift bound.
    pub fn new(extension: Duration, max_drift_ppm: u32) -> LeaseTimers {
        LeaseTimers {
            ballot: None,
            fence: None,
            fence_proposed: None,
            open: false,
            generation: 0,
            timers: BTreeMap::new(),
            extension,
            max_drift_ppm,
        }
    }

    /// `ttl` stretched by the drift bound: at least `ttl` of real time on a
    /// clock that runs fast by up to the bound.
    fn stretched(&self, ttl_secs: u64) -> Duration {
        let ttl = Duration::from_secs(ttl_secs);
        ttl + ttl * self.max_drift_ppm / 1_000_000
    }

    /// Timers for a node running `engine`: leases live across a change of
    /// master for the time an election takes (a lease, then up to two
    /// election timeouts), and the drift bound is the engine's.
    pub fn for_engine(engine: &crate::paxos::EngineConfig) -> LeaseTimers {
        LeaseTimers::new(
            engine.lease + engine.election_timeout * 2,
            engine.max_drift_ppm,
        )
    }

    /// Forgets everything: this node is not master.
    pub fn step_down(&mut self) {
        self.ballot = None;
        self.fence = None;
        self.fence_proposed = None;
        self.open = false;
        self.timers.clear();
    }

    /// Whether the master at `ballot`, which may act on the whole log
    /// (its lease valid, everything committed applied), may answer lease
    /// questions at `now`, its timers brought in line with `store`.
    /// `fences`: every member decodes [`LeaseOp::Fence`]. It may once
    /// `store` holds its own fence; without fences, also while `store`
    /// holds none at all (as before fences existed). Otherwise it is told
    /// to propose its fence, again after [`REPROPOSE_AFTER`] if that is
    /// not applied by then.
    pub fn gate(&mut self, now: Duration, ballot: Ballot, store: &Store, fences: bool) -> Gate {
        self.sync(now, ballot, store);
        let gate = match store.lease_fence() {
            Some(f) if f.ballot == ballot => {
                self.fence = Some(f.number);
                Gate::Open
            }
            None if !fences => {
                self.fence = None;
                Gate::Open
            }
            _ => {
                let again = self
                    .fence_proposed
                    .is_none_or(|p| now >= p + REPROPOSE_AFTER);
                if again {
                    self.fence_proposed = Some(now);
                    Gate::Closed(Some(LeaseOp::Fence { ballot }))
                } else {
                    Gate::Closed(None)
                }
            }
        };
        self.open = gate == Gate::Open;
        gate
    }

    /// Brings the timers in line with `store` for the mastership `ballot`,
    /// at `now`. A new mastership starts every deadline afresh, with the
    /// extension; a lease seen for the first time starts at `now`; a lease
    /// gone from the store is forgotten.
    fn sync(&mut self, now: Duration, ballot: Ballot, store: &Store) {
        let fresh = self.ballot != Some(ballot);
        if fresh {
            self.ballot = Some(ballot);
            self.fence = None;
            self.fence_proposed = None;
            self.open = false;
            self.timers.clear();
        }
        if !fresh && self.generation == store.lease_generation() {
            return;
        }
        self.generation = store.lease_generation();
        let extension = if fresh {
            self.extension
        } else {
            Duration::ZERO
        };
        let mut next = BTreeMap::new();
        for info in store.leases() {
            let timer = match self.timers.remove(&info.id) {
                Some(t) if t.granted == info.granted => t,
                _ => Timer {
                    granted: info.granted,
                    ttl_secs: info.ttl_secs,
                    deadline: now + self.stretched(info.ttl_secs) + extension,
                    proposed: None,
                },
            };
            next.insert(info.id, timer);
        }
        self.timers = next;
    }

    /// A keep-alive for `id` at `now`, after [`LeaseTimers::gate`] said
    /// open: the TTL it now has, in seconds.
    pub fn renew(&mut self, id: u64, now: Duration) -> Result<u64, RenewError> {
        if !self.open {
            return Err(RenewError::NotReady);
        }
        let stretched = |t: &Timer| self.stretched(t.ttl_secs);
        let timer = self.timers.get(&id).ok_or(RenewError::NotFound)?;
        if timer.deadline <= now || timer.proposed.is_some() {
            return Err(RenewError::Expired);
        }
        let deadline = now + stretched(timer);
        let timer = self.timers.get_mut(&id).ok_or(RenewError::NotFound)?;
        timer.deadline = timer.deadline.max(deadline);
        Ok(timer.ttl_secs)
    }

    /// Lease `id`'s time left at `now`, as this master counts it (at least
    /// what the client may count on).
    pub fn remaining(&self, id: u64, now: Duration) -> Option<Duration> {
        self.timers.get(&id).map(|t| t.deadline.saturating_sub(now))
    }

    /// The leases whose deadline passed by `now` and whose expiry is not
    /// already proposed recently, after [`LeaseTimers::gate`] said open
    /// (none otherwise): each is marked proposed, and comes with the op
    /// that ends it (fenced when this mastership has a fence), for the
    /// caller to propose.
    pub fn due(&mut self, now: Duration) -> Vec<(u64, LeaseOp)> {
        if !self.open {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (&id, t) in &mut self.timers {
            let again = t.proposed.is_none_or(|p| now >= p + REPROPOSE_AFTER);
            if t.deadline <= now && again {
                t.proposed = Some(now);
                let granted = t.granted;
                let op = match self.fence {
                    Some(fence) => LeaseOp::ExpireFenced { id, granted, fence },
                    None => LeaseOp::Expire { id, granted },
                };
                out.push((id, op));
            }
        }
        out
    }

    /// How many leases have a timer.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// Whether no lease has a timer.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testutil::{del, put, run};
    use crate::kv::{EventKind, Op, Txn, TxnOp};

    fn grant(id: u64, ttl_secs: u64) -> Op {
        Op::Lease(LeaseOp::Grant { id, ttl_secs })
    }

    fn leased(lease: u64, op: Op) -> Op {
        Op::Leased {
            lease,
            op: Box::new(op),
        }
    }

    fn store_with_lease(id: u64) -> Store {
        let mut s = Store::new();
        assert!(matches!(
            run(&mut s, &grant(id, 10)),
            OpResult::LeaseGranted { ttl_secs: 10, .. }
        ));
        s
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_at_one_revision_and_leaves_the_others() {
        let mut s = store_with_lease(7);
        run(&mut s, &leased(7, put(b"a", b"1")));
        run(&mut s, &leased(7, put(b"b", b"2")));
        run(&mut s, &put(b"c", b"3"));
        assert_eq!(s.lease_of(b"a"), Some(7));
        assert_eq!(s.lease_keys(7, 10), vec![b"a".to_vec(), b"b".to_vec()]);
        let before = s.revision();
        let result = run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 7 }));
        assert_eq!(
            result,
            OpResult::LeaseRevoked {
                id: 7,
                revision: before + 1,
                deleted: 2
            }
        );
        assert_eq!((s.get(b"a"), s.get(b"b")), (None, None));
        assert!(s.get(b"c").is_some());
        assert_eq!(
            (s.lease(7), s.lease_count(), s.lease_of(b"a")),
            (None, 0, None)
        );
        // Watchers see two deletes at the same revision, and nothing of the
        // records.
        let events = s.events_since(before + 1, b"", 100).expect("history");
        let deletes: Vec<_> = events
            .iter()
            .filter(|e| !crate::auth::is_system_key(&e.kv.key))
            .map(|e| (e.kind, e.kv.key.clone(), e.revision))
            .collect();
        assert_eq!(
            deletes,
            vec![
                (EventKind::Delete, b"a".to_vec(), before + 1),
                (EventKind::Delete, b"b".to_vec(), before + 1)
            ]
        );
        // Only the records are left behind: nothing of the lease remains.
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_leases_holder_is_recorded_with_it_and_goes_with_it() {
        let owned = |id: u64, owner: &str| {
            Op::Lease(LeaseOp::GrantOwned {
                id,
                ttl_secs: 10,
                owner: owner.into(),
            })
        };
        let mut s = Store::new();
        let granted = run(&mut s, &owned(3, "0123456789abcdef"));
        assert!(matches!(granted, OpResult::LeaseGranted { id: 3, .. }));
        assert_eq!(s.lease_owner(3), Some("0123456789abcdef"));
        assert_eq!(s.leases().len(), 1, "the holder's record is no lease");
        run(&mut s, &leased(3, put(b"a", b"1")));
        // Expired: nothing of it is left, its holder included.
        let info = s.lease(3).expect("granted");
        let expire = LeaseOp::Expire {
            id: 3,
            granted: info.granted,
        };
        assert!(matches!(
            run(&mut s, &Op::Lease(expire)),
            OpResult::LeaseRevoked { deleted: 1, .. }
        ));
        assert_eq!((s.lease_owner(3), s.len()), (None, 0));
        // Revoked: the same; and one without a holder records none.
        run(&mut s, &owned(4, "0123456789abcdef"));
        run(&mut s, &grant(5, 10));
        assert_eq!(s.lease_owner(5), None);
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 4 }));
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 5 }));
        assert_eq!(s.len(), 0);
        // A holder's record that outlived its lease (an earlier version
        // ends leases without removing it) is not taken over by a grant
        // without one.
        let revision = s.revision() + 1;
        s.write(&owner_key(8), b"0123456789abcdef", revision);
        run(&mut s, &grant(8, 10));
        assert_eq!(s.lease_owner(8), None);
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 8 }));
        assert_eq!(s.len(), 0);
        // A holder is a token id: never empty, and short.
        for owner in [String::new(), "x".repeat(MAX_OWNER_BYTES + 1)] {
            assert!(matches!(
                run(&mut s, &owned(6, &owner)),
                OpResult::Refused(r) if r.kind == crate::auth::RefusalKind::Invalid
            ));
        }
        assert_eq!(s.lease(6), None);
    }

    #[test]
    fn a_put_without_the_lease_detaches_the_key_and_a_delete_forgets_it() {
        let mut s = store_with_lease(1);
        run(&mut s, &leased(1, put(b"a", b"1")));
        run(&mut s, &put(b"a", b"2"));
        assert_eq!(s.lease_of(b"a"), None);
        assert!(s.lease_keys(1, 10).is_empty());
        run(&mut s, &leased(1, put(b"b", b"1")));
        run(&mut s, &del(b"b"));
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 1 }));
        // The detached key outlives the lease.
        assert_eq!(s.get(b"a").map(|kv| kv.value), Some(b"2".to_vec()));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_key_moves_from_one_lease_to_another() {
        let mut s = store_with_lease(1);
        run(&mut s, &grant(2, 5));
        run(&mut s, &leased(1, put(b"a", b"1")));
        run(&mut s, &leased(2, put(b"a", b"2")));
        assert_eq!(s.lease_keys(1, 10), Vec::<Vec<u8>>::new());
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 1 }));
        assert!(s.get(b"a").is_some());
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 2 }));
        assert!(s.get(b"a").is_none());
    }

    #[test]
    fn a_transaction_attaches_the_keys_its_branch_puts() {
        let mut s = store_with_lease(3);
        let txn = Op::Txn(Txn {
            compare: Vec::new(),
            success: vec![
                TxnOp::Put {
                    key: b"x".to_vec(),
                    value: b"1".to_vec(),
                },
                TxnOp::Put {
                    key: b"y".to_vec(),
                    value: b"1".to_vec(),
                },
            ],
            failure: Vec::new(),
        });
        run(&mut s, &leased(3, txn));
        assert_eq!(s.lease_keys(3, 10), vec![b"x".to_vec(), b"y".to_vec()]);
    }

    #[test]
    fn ops_on_a_missing_lease_change_nothing() {
        let mut s = Store::new();
        let digest = s.digest();
        assert_eq!(
            run(&mut s, &leased(9, put(b"a", b"1"))),
            OpResult::LeaseNotFound { id: 9 }
        );
        assert_eq!(
            run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 9 })),
            OpResult::LeaseNotFound { id: 9 }
        );
        assert_eq!((s.digest(), s.revision()), (digest, 0));
        run(&mut s, &grant(9, 10));
        assert_eq!(run(&mut s, &grant(9, 20)), OpResult::LeaseIdTaken { id: 9 });
        assert!(matches!(
            run(&mut s, &grant(10, 1)),
            OpResult::Refused(r) if r.kind == crate::auth::RefusalKind::Invalid
        ));
        assert!(matches!(
            run(&mut s, &leased(9, del(b"a"))),
            OpResult::Refused(_)
        ));
    }

    #[test]
    fn an_expiry_applies_only_to_the_grant_it_names() {
        let mut s = store_with_lease(4);
        let first = s.lease(4).expect("granted").granted;
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 4 }));
        run(&mut s, &grant(4, 10));
        run(&mut s, &leased(4, put(b"k", b"v")));
        let stale = Op::Lease(LeaseOp::Expire {
            id: 4,
            granted: first,
        });
        assert_eq!(run(&mut s, &stale), OpResult::LeaseNotFound { id: 4 });
        assert!(s.get(b"k").is_some());
        let current = s.lease(4).expect("granted again").granted;
        let expire = Op::Lease(LeaseOp::Expire {
            id: 4,
            granted: current,
        });
        assert!(matches!(
            run(&mut s, &expire),
            OpResult::LeaseRevoked { deleted: 1, .. }
        ));
        assert!(s.get(b"k").is_none());
    }

    fn fence(ballot: Ballot) -> Op {
        Op::Lease(LeaseOp::Fence { ballot })
    }

    fn expire_fenced(s: &Store, id: u64, fence: u64) -> Op {
        let granted = s.lease(id).expect("granted").granted;
        Op::Lease(LeaseOp::ExpireFenced { id, granted, fence })
    }

    #[test]
    fn an_expiry_decided_before_a_later_masters_fence_changes_nothing() {
        let mut s = store_with_lease(4);
        run(&mut s, &leased(4, put(b"k", b"v")));
        assert_eq!(s.lease_fence(), None);
        let before = s.revision();
        assert_eq!(
            run(&mut s, &fence(B1)),
            OpResult::LeaseFenced {
                number: 1,
                revision: before
            }
        );
        assert_eq!(s.revision(), before, "a fence takes no revision");
        // The master at B1 decides an expiry; the master at B2 fences
        // before it is chosen.
        let decided = expire_fenced(&s, 4, 1);
        run(&mut s, &fence(B2));
        assert_eq!(
            s.lease_fence(),
            Some(LeaseFence {
                number: 2,
                ballot: B2
            })
        );
        assert_eq!(run(&mut s, &decided), OpResult::LeaseNotFound { id: 4 });
        // An expiry decided without a fence is stale once one exists.
        let unfenced = Op::Lease(LeaseOp::Expire {
            id: 4,
            granted: s.lease(4).expect("kept").granted,
        });
        assert_eq!(run(&mut s, &unfenced), OpResult::LeaseNotFound { id: 4 });
        assert!(s.get(b"k").is_some(), "the key outlives both");
        // A stale fence chosen late moves the number on, so the current
        // master's expiry decided before it changes nothing either.
        let current = expire_fenced(&s, 4, 2);
        run(&mut s, &fence(B1));
        assert_eq!(run(&mut s, &current), OpResult::LeaseNotFound { id: 4 });
        // One decided under the latest fence takes effect.
        let latest = expire_fenced(&s, 4, 3);
        assert!(matches!(
            run(&mut s, &latest),
            OpResult::LeaseRevoked { deleted: 1, .. }
        ));
        assert!(s.get(b"k").is_none());
    }

    #[test]
    fn only_the_cluster_expires_leases_and_fences_them() {
        let mut s = store_with_lease(3);
        let ops = [
            fence(B1),
            Op::Lease(LeaseOp::Expire { id: 3, granted: 1 }),
            expire_fenced(&s, 3, 1),
        ];
        for op in ops {
            for wrapped in [
                Op::As {
                    token: "0000000000000001".into(),
                    op: Box::new(op.clone()),
                },
                Op::Anonymous {
                    op: Box::new(op.clone()),
                },
            ] {
                assert!(
                    matches!(run(&mut s, &wrapped), OpResult::Refused(_)),
                    "{wrapped:?}"
                );
            }
        }
        assert!(s.lease(3).is_some());
        assert_eq!(s.lease_fence(), None);
    }

    #[test]
    fn leases_survive_a_snapshot_and_replicas_agree_on_the_digest() {
        let mut s = store_with_lease(5);
        run(&mut s, &leased(5, put(b"a", b"1")));
        run(&mut s, &fence(B2));
        let mut restored =
            Store::restore(StoreSnapshot::decode(&s.snapshot().encode()).expect("decodes"));
        assert_eq!(restored.digest(), s.digest());
        assert_eq!(
            (restored.lease_count(), restored.lease_of(b"a")),
            (1, Some(5))
        );
        assert_ne!(restored.lease_generation(), s.lease_generation());
        assert_eq!(restored.lease_fence(), s.lease_fence());
        run(&mut restored, &Op::Lease(LeaseOp::Revoke { id: 5 }));
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 5 }));
        assert_eq!(restored.digest(), s.digest());
        assert!(restored.get(b"a").is_none());
    }

    #[test]
    fn clients_cannot_name_the_lease_records() {
        let mut s = store_with_lease(6);
        let mut record = LEASE_PREFIX.to_vec();
        record.push(b'a');
        record.extend_from_slice(b"k");
        assert!(matches!(
            run(&mut s, &put(&record, b"x")),
            OpResult::Refused(_)
        ));
        assert!(
            s.range(&crate::kv::RangeRequest::default()).kvs.is_empty(),
            "listings never show lease records"
        );
    }

    use crate::kv::StoreSnapshot;

    const SEC: Duration = Duration::from_secs(1);
    const B1: Ballot = Ballot { round: 1, node: 1 };
    const B2: Ballot = Ballot { round: 2, node: 2 };

    #[test]
    fn a_lease_expires_only_after_its_ttl_without_renewal() {
        let s = store_with_lease(1);
        let mut t = LeaseTimers::new(Duration::ZERO, 0);
        assert_eq!(t.gate(Duration::ZERO, B1, &s, false), Gate::Open);
        assert!(t.due(9 * SEC).is_empty());
        assert_eq!(t.renew(1, 9 * SEC), Ok(10));
        assert!(t.due(18 * SEC).is_empty());
        let granted = s.lease(1).expect("lease").granted;
        let expire = vec![(1, LeaseOp::Expire { id: 1, granted })];
        assert_eq!(t.due(19 * SEC), expire);
        // Proposed once; again only if it was not applied a while later.
        assert!(t.due(19 * SEC + SEC / 2).is_empty());
        assert_eq!(t.due(20 * SEC), expire);
        // Too late to renew once the deadline passed.
        assert_eq!(t.renew(1, 20 * SEC), Err(RenewError::Expired));
        assert_eq!(t.renew(2, 20 * SEC), Err(RenewError::NotFound));
    }

    #[test]
    fn a_new_master_extends_every_lease_and_drift_lengthens_the_ttl() {
        let s = store_with_lease(1);
        let mut t = LeaseTimers::new(3 * SEC, 100_000);
        assert_eq!(t.gate(Duration::ZERO, B1, &s, false), Gate::Open);
        // 10 s stretched by 10% drift, plus the extension of a new master.
        assert_eq!(t.remaining(1, Duration::ZERO), Some(14 * SEC));
        assert!(t.due(13 * SEC).is_empty());
        // Another mastership starts afresh, even after the deadline passed.
        assert_eq!(t.gate(20 * SEC, B2, &s, false), Gate::Open);
        assert!(t.due(20 * SEC).is_empty());
        assert_eq!(t.remaining(1, 20 * SEC), Some(14 * SEC));
        assert_eq!(t.renew(1, 21 * SEC), Ok(10));
        assert_eq!(
            t.remaining(1, 21 * SEC),
            Some(13 * SEC),
            "a renewal never shortens"
        );
        t.step_down();
        assert!(t.is_empty());
    }

    #[test]
    fn a_master_answers_only_once_its_own_fence_is_applied() {
        let mut s = store_with_lease(1);
        let granted = s.lease(1).expect("lease").granted;
        let mut t = LeaseTimers::new(Duration::ZERO, 0);
        let propose = Gate::Closed(Some(LeaseOp::Fence { ballot: B1 }));
        assert_eq!(t.gate(Duration::ZERO, B1, &s, true), propose);
        // Proposed once; again only if it was not applied a while later.
        assert_eq!(t.gate(SEC / 2, B1, &s, true), Gate::Closed(None));
        assert_eq!(t.renew(1, SEC / 2), Err(RenewError::NotReady));
        assert!(t.due(20 * SEC).is_empty(), "no expiry before the fence");
        assert_eq!(t.gate(SEC, B1, &s, true), propose);
        run(&mut s, &fence(B1));
        assert_eq!(t.gate(SEC, B1, &s, true), Gate::Open);
        assert_eq!(t.renew(1, SEC), Ok(10));
        assert_eq!(
            t.due(11 * SEC),
            vec![(
                1,
                LeaseOp::ExpireFenced {
                    id: 1,
                    granted,
                    fence: 1
                }
            )]
        );
        // Another fence applied (a later master's, or a stale one chosen
        // late): this master stops answering and fences again.
        run(&mut s, &fence(B2));
        assert_eq!(t.gate(12 * SEC, B1, &s, true), propose);
        assert_eq!(t.renew(1, 12 * SEC), Err(RenewError::NotReady));
        run(&mut s, &fence(B1));
        assert_eq!(t.gate(12 * SEC, B1, &s, true), Gate::Open);
        let expire = t.due(13 * SEC);
        assert!(
            matches!(expire[..], [(1, LeaseOp::ExpireFenced { fence: 3, .. })]),
            "{expire:?}"
        );
    }

    #[test]
    fn without_fences_a_master_decides_as_before_until_one_exists() {
        let mut s = store_with_lease(1);
        let granted = s.lease(1).expect("lease").granted;
        let mut t = LeaseTimers::new(Duration::ZERO, 0);
        // Some member does not decode fences, and none is in the log.
        assert_eq!(t.gate(Duration::ZERO, B1, &s, false), Gate::Open);
        assert_eq!(
            t.due(10 * SEC),
            vec![(1, LeaseOp::Expire { id: 1, granted })]
        );
        // Once a fence is in the log, every master needs its own.
        run(&mut s, &fence(B2));
        assert_eq!(
            t.gate(10 * SEC, B1, &s, false),
            Gate::Closed(Some(LeaseOp::Fence { ballot: B1 }))
        );
    }

    #[test]
    fn timers_follow_grants_and_revokes() {
        let mut s = store_with_lease(1);
        let mut t = LeaseTimers::new(Duration::ZERO, 0);
        assert_eq!(t.gate(Duration::ZERO, B1, &s, false), Gate::Open);
        run(&mut s, &grant(2, 5));
        assert_eq!(t.gate(4 * SEC, B1, &s, false), Gate::Open);
        assert_eq!((t.len(), t.remaining(2, 4 * SEC)), (2, Some(5 * SEC)));
        assert_eq!(t.remaining(1, 4 * SEC), Some(6 * SEC), "kept its deadline");
        run(&mut s, &Op::Lease(LeaseOp::Revoke { id: 1 }));
        assert_eq!(t.gate(5 * SEC, B1, &s, false), Gate::Open);
        assert_eq!((t.len(), t.remaining(1, 5 * SEC)), (1, None));
    }
}

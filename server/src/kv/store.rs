//! The key-value state machine that chosen ops are applied to.
//!
//! Every replica applies the same ops in the same order and must end in the
//! same state with the same results, so nothing here depends on clocks,
//! randomness, I/O or hash order. Revisions follow etcd: one cluster-wide
//! counter that moves once per op that changes something, which gives
//! clients a cheap way to order writes and to resume watches.

use std::collections::BTreeMap;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use crate::auth::{AuthChange, AuthState, Refusal, RefusalKind};
use crate::kv::dedup::{DEFAULT_DEDUP_CAPACITY, DedupTable, IDEMPOTENT_BIT};
use crate::kv::watch::{DEFAULT_HISTORY_BYTES, DEFAULT_HISTORY_EVENTS, Event, EventKind, History};
use crate::kv::{Compare, CompareOp, CompareTarget, Expect, Op, Txn, TxnOp};
use crate::paxos::types::RequestId;

/// How many keys a range returns when the request leaves the limit at `0`.
pub const DEFAULT_RANGE_LIMIT: usize = 1000;

/// Key and value bytes after which a range's page ends (with `more`),
/// whatever its limit; a page holds at least one key. Without it a page of
/// 1000 keys with 1 MiB values would be a gigabyte, copied under the
/// store's lock, and more than twice that as JSON.
pub const MAX_RANGE_BYTES: usize = 4 << 20;

/// A stored key with its value and bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KeyValue {
    #[serde(with = "crate::kv::bytes")]
    #[schema(value_type = String, format = Byte)]
    pub key: Vec<u8>,
    #[serde(with = "crate::kv::bytes")]
    #[schema(value_type = String, format = Byte)]
    pub value: Vec<u8>,
    /// Writes since the key was (re)created; `1` right after creation.
    pub version: u64,
    /// The revision that created the key.
    pub create_revision: u64,
    /// The revision of the last write to the key.
    pub mod_revision: u64,
}

/// What applying an op did, as reported to the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OpResult {
    /// The put happened at `revision`; the key is now at `version`.
    Put { revision: u64, version: u64 },
    /// `deleted` is false when the key did not exist, in which case
    /// `revision` is the unchanged current revision.
    Delete { revision: u64, deleted: bool },
    /// A put's or delete's `expect` did not hold; nothing changed. Missing
    /// keys report `0` for both.
    CompareFailed {
        current_version: u64,
        current_mod_revision: u64,
    },
    /// Which branch ran and what each of its operations returned, in order.
    /// `revision` is the store revision after the transaction.
    Txn {
        succeeded: bool,
        revision: u64,
        responses: Vec<TxnResponse>,
    },
    /// The write came with an idempotency key already used, recently, for a
    /// different write; nothing changed. (After the others, so that
    /// results encoded before it existed decode unchanged.)
    IdempotencyKeyReused,
    /// An auth change was applied at `revision`.
    AuthChanged { revision: u64 },
    /// Refused by the auth rules in force where the op was chosen, or
    /// because it names a reserved key; nothing changed.
    Refused(crate::auth::Refusal),
    /// Lease `id` was granted at `revision`. (This and the lease results
    /// below come after the others, so that results encoded before leases
    /// existed decode unchanged.)
    LeaseGranted {
        id: u64,
        ttl_secs: u64,
        revision: u64,
    },
    /// Lease `id` ended at `revision` and its `deleted` keys with it.
    LeaseRevoked {
        id: u64,
        revision: u64,
        deleted: u64,
    },
    /// No lease `id` exists (any more); nothing changed.
    LeaseNotFound { id: u64 },
    /// A lease `id` exists already; nothing changed.
    LeaseIdTaken { id: u64 },
    /// A prefix delete removed `deleted` keys at `revision` (the unchanged
    /// current revision when it found none); `more` when keys under the
    /// prefix are left because it reached its limit.
    PrefixDeleted {
        revision: u64,
        deleted: u64,
        more: bool,
    },
    /// A master's lease fence was applied, making the fence number
    /// `number`; `revision` is the unchanged current revision (a fence
    /// takes none of its own).
    LeaseFenced { number: u64, revision: u64 },
    /// A copy of an [`Op::Once`] write that the request-id table does not
    /// remember, when it may have forgotten an earlier copy: nothing
    /// changed, and whether an earlier copy was applied is not known here
    /// (see [`crate::kv::dedup`]). Never remembered in the table.
    Forgotten,
    /// The store is on timeline `id` (see [`crate::kv::timeline`]): the
    /// one just given, or the one it had. No revision of its own.
    Timeline { id: String },
}

/// The outcome of one operation inside a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TxnResponse {
    Put {
        revision: u64,
    },
    Delete {
        deleted: bool,
    },
    /// Sees the writes made earlier in the same branch.
    Get {
        kv: Option<KeyValue>,
    },
}

/// A scan over keys sharing a prefix, in byte order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeRequest {
    /// Only keys starting with this; empty means all keys.
    pub prefix: Vec<u8>,
    /// Continue a previous scan: only keys strictly greater than this.
    pub after: Option<Vec<u8>>,
    /// Most keys to return; `0` means [`DEFAULT_RANGE_LIMIT`].
    pub limit: usize,
}

/// The answer to a [`RangeRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// More keys match beyond the last one returned.
    pub more: bool,
    /// The store revision the scan reflects.
    pub revision: u64,
}

/// Capacities of the store's bounded tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreConfig {
    /// Request ids remembered for deduplication. This changes results, so it
    /// must be the same on every replica.
    pub dedup_capacity: usize,
    /// Most events kept for watches. Local only: it may differ per replica.
    pub history_max_events: usize,
    /// Most key and value bytes kept in the watch history, so that large
    /// values cannot make the history unbounded in memory.
    pub history_max_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            dedup_capacity: DEFAULT_DEDUP_CAPACITY,
            history_max_events: DEFAULT_HISTORY_EVENTS,
            history_max_bytes: DEFAULT_HISTORY_BYTES,
        }
    }
}

/// What a key costs the store in memory besides its bytes, as the quota
/// counts it ([`Store::size_bytes`]): its [`Slot`], its share of the map's
/// nodes and the allocator's rounding of its two byte strings. Measured on
/// x86-64 with a million keys (`tests/store_memory.rs`): 129 to 150 bytes
/// per key for keys of 8 to 64 bytes and values of 0 to 1,000. Without it
/// a store of small keys held about eight times its quota in memory (a
/// million 14-byte keys with 8-byte values: 22 MB counted, 173 MB held).
pub const KEY_OVERHEAD_BYTES: usize = 144;

/// A key's value and bookkeeping as the store holds it: the key lives only
/// in the map, and both byte strings are boxed slices (no spare capacity),
/// so a stored key costs its bytes plus [`KEY_OVERHEAD_BYTES`], not twice
/// its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Slot {
    pub(super) value: Box<[u8]>,
    pub(super) version: u64,
    pub(super) create_revision: u64,
    pub(super) mod_revision: u64,
}

/// A lease's expiry wrapped for a client (on behalf of a token, or
/// without a credential): only the master proposes expiries, unwrapped.
fn only_the_cluster() -> OpResult {
    OpResult::Refused(Refusal::new(
        RefusalKind::PermissionDenied,
        "only the cluster itself expires leases and fences them",
    ))
}

impl Slot {
    pub(super) fn to_kv(&self, key: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: self.value.to_vec(),
            version: self.version,
            create_revision: self.create_revision,
            mod_revision: self.mod_revision,
        }
    }
}

impl Slot {
    /// This key's share of [`Store::digest`]: XXH3-128 (a fixed algorithm,
    /// so every replica and version agrees) of the key, its value and its
    /// bookkeeping, each length-prefixed so no two keys can collide by
    /// shifting bytes between fields.
    pub(super) fn digest(&self, key: &[u8]) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&(key.len() as u64).to_le_bytes());
        h.update(key);
        h.update(&self.version.to_le_bytes());
        h.update(&self.create_revision.to_le_bytes());
        h.update(&self.mod_revision.to_le_bytes());
        h.update(&(self.value.len() as u64).to_le_bytes());
        h.update(&self.value);
        h.digest128()
    }
}

/// The digest of a store's replicated state: the sum (mod 2^128) of every
/// key's digest, which changes by two hashes per write instead of a walk
/// over the data, and is the same whatever order the keys were written in.
pub(super) fn digest_of(kvs: &BTreeMap<Box<[u8]>, Slot>) -> u128 {
    kvs.iter()
        .fold(0u128, |acc, (k, slot)| acc.wrapping_add(slot.digest(k)))
}

/// The replicated key-value state machine.
#[derive(Clone, Debug)]
pub struct Store {
    pub(super) kvs: BTreeMap<Box<[u8]>, Slot>,
    /// [`digest_of`] the keys, kept up to date by every write and delete.
    pub(super) digest: u128,
    pub(super) revision: u64,
    pub(super) applied_index: u64,
    pub(super) data_bytes: usize,
    pub(super) dedup: DedupTable,
    pub(super) history: History,
    /// The snapshots in progress (see [`super::snapshot_stream`]).
    pub(super) snapshots: super::snapshot_stream::InProgress,
    /// The auth records under [`crate::auth::AUTH_PREFIX`], decoded; kept
    /// in step by [`Store::apply`] and rebuilt by every restore.
    pub(super) auth: AuthState,
    /// Changes whenever `auth` may have: local, never replicated (see
    /// [`Store::auth_generation`]).
    pub(super) auth_generation: u64,
    /// How many leases the records hold (see [`super::lease`]).
    pub(super) lease_count: usize,
    /// Changes whenever a lease may have come or gone: local.
    pub(super) lease_generation: u64,
}

/// Auth generations are drawn from one counter for the whole process, so a
/// store restored from a snapshot never repeats the generation of the one
/// it replaces.
static AUTH_GENERATIONS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_auth_generation() -> u64 {
    AUTH_GENERATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store at revision 0 with the default capacities.
    pub fn new() -> Store {
        Store::with_config(StoreConfig::default())
    }

    /// An empty store at revision 0.
    pub fn with_config(config: StoreConfig) -> Store {
        Store {
            kvs: BTreeMap::new(),
            digest: 0,
            revision: 0,
            applied_index: 0,
            data_bytes: 0,
            dedup: DedupTable::new(config.dedup_capacity),
            history: History::new(&config, 1),
            snapshots: Default::default(),
            auth: AuthState::default(),
            auth_generation: 0,
            lease_count: 0,
            lease_generation: 0,
        }
    }

    /// Applies a chosen op. A request id seen recently gets its first result
    /// back and changes nothing, so retries are applied at most once.
    ///
    /// Called for each command of log instance `applied_index + 1`, in
    /// order: every caller applies instances in order and records each with
    /// [`Store::set_applied_index`] before the next, so that index is where
    /// an [`Op::Once`] write is marked as applied (see [`crate::kv::dedup`]).
    pub fn apply(&mut self, id: RequestId, op: &Op) -> OpResult {
        if let Some(result) = self.dedup.get(&id) {
            return result.clone();
        }
        let (op, mark) = match op {
            // Not remembered, and an earlier copy applied above `after` may
            // have been forgotten: not applied, and not remembered either,
            // so every later copy is told the same.
            Op::Once { after, .. } if self.dedup.may_have_forgotten(*after) => {
                return OpResult::Forgotten;
            }
            Op::Once { op, .. } => (&**op, Some(self.applied_index + 1)),
            op => (op, None),
        };
        // An idempotency key reused for a different write: neither applied
        // again nor mistaken for the first.
        if id.client & IDEMPOTENT_BIT != 0 && self.dedup.of_client(id.client).is_some() {
            return OpResult::IdempotencyKeyReused;
        }
        let result = self.apply_op(op);
        self.dedup.insert_marked(id, result.clone(), mark);
        result
    }

    fn apply_op(&mut self, op: &Op) -> OpResult {
        // Only auth changes write the store's own keys: a client op naming
        // one is refused here too, not just by the API, so that the auth
        // records and their decoded copy cannot drift apart.
        if crate::auth::touches_system_key(op) {
            return OpResult::Refused(Refusal::new(
                RefusalKind::Invalid,
                "keys starting with \\0phxkv/ are reserved",
            ));
        }
        match op {
            Op::Put { key, value, expect } => self.apply_put(key, value, expect.as_ref(), 0),
            Op::Delete { key, expect } => self.apply_delete(key, expect.as_ref()),
            Op::DeletePrefix { prefix, limit } => self.apply_delete_prefix(prefix, *limit),
            Op::Txn(txn) => self.apply_txn(txn, 0),
            Op::Auth(change) => self.apply_auth(change),
            Op::Lease(change) => self.apply_lease(change),
            Op::Timeline { id } => self.apply_timeline(id),
            // A put or transaction whose written keys are attached to
            // `lease`, which must exist when it is applied.
            Op::Leased { lease, op } => {
                if self.lease(*lease).is_none() {
                    return OpResult::LeaseNotFound { id: *lease };
                }
                match &**op {
                    Op::Put { key, value, expect } => {
                        self.apply_put(key, value, expect.as_ref(), *lease)
                    }
                    Op::Txn(txn) => self.apply_txn(txn, *lease),
                    _ => OpResult::Refused(Refusal::new(
                        RefusalKind::Invalid,
                        "a lease attaches to puts and transactions only",
                    )),
                }
            }
            // The check that makes revocation exact: a token's op chosen
            // after its token or grant was removed is refused on every
            // replica alike, whatever the replica that took it had seen.
            Op::As { token, op } => match &**op {
                Op::As { .. } => OpResult::Refused(Refusal::new(
                    RefusalKind::Invalid,
                    "an op on behalf of a token cannot nest another",
                )),
                // Only the master decides that a lease expired.
                Op::Lease(lease) if lease.is_the_clusters() => only_the_cluster(),
                Op::Anonymous { .. } => OpResult::Refused(Refusal::new(
                    RefusalKind::Invalid,
                    "an op on behalf of a token cannot be anonymous",
                )),
                inner => match self.authorize_as(token, inner) {
                    Ok(()) => self.apply_op(inner),
                    Err(refusal) => OpResult::Refused(refusal),
                },
            },
            // The check that makes `auth enable` exact for writes: one taken
            // without a credential by a replica that had not applied the
            // enable yet is refused wherever the enable precedes it in the
            // log, on every replica alike.
            Op::Anonymous { op } => match &**op {
                Op::As { .. } | Op::Anonymous { .. } => OpResult::Refused(Refusal::new(
                    RefusalKind::Invalid,
                    "an anonymous op cannot nest another wrapper",
                )),
                Op::Lease(lease) if lease.is_the_clusters() => only_the_cluster(),
                _ if self.auth.enabled() => OpResult::Refused(crate::auth::anonymous_refusal()),
                inner => self.apply_op(inner),
            },
            // Unwrapped by `Store::apply`; anywhere else it is malformed.
            Op::Once { .. } => OpResult::Refused(Refusal::new(
                RefusalKind::Invalid,
                "an op sent at most once is only ever the outermost",
            )),
        }
    }

    /// Whether token `id` may make `op` here: what the op names; for a
    /// revoke, every key it would delete (as etcd asks); and for a revoke
    /// or keys attached to a lease, that the lease is not another token's.
    /// A token grants leases only to itself.
    ///
    /// Checked here, where the op is applied, so that every replica
    /// decides alike however the lease changed after the op was admitted
    /// (revoked and granted again under the same id to another token,
    /// say). Replicas of an earlier version, which know no holders, apply
    /// the same ops without this check during a rolling upgrade; they
    /// still decide alike, because a holder is recorded only by
    /// [`LeaseOp::GrantOwned`](crate::kv::LeaseOp::GrantOwned), which is
    /// proposed only once every member said it decodes it: until then no
    /// lease has a holder and the check passes on every replica.
    fn authorize_as(&self, id: &str, op: &Op) -> Result<(), Refusal> {
        self.auth.authorize_op(id, op)?;
        match op {
            Op::Lease(crate::kv::LeaseOp::Revoke { id: lease }) => {
                self.may_hold_lease(id, *lease)?;
                for key in self.lease_keys(*lease, usize::MAX) {
                    self.auth.authorize(id, crate::auth::Need::Write(&key))?;
                }
            }
            Op::Leased { lease, .. } => self.may_hold_lease(id, *lease)?,
            // Only this version proposes it, so it may be checked more
            // closely than a grant an earlier version also applies: by a
            // token that still exists, for itself.
            Op::Lease(crate::kv::LeaseOp::GrantOwned { owner, .. }) => {
                self.auth.signed_in(id)?;
                if owner != id {
                    return Err(Refusal::new(
                        crate::auth::RefusalKind::PermissionDenied,
                        "a token may grant leases to itself only",
                    ));
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn apply_auth(&mut self, change: &AuthChange) -> OpResult {
        let writes = match self.auth.plan(change) {
            Ok(writes) => writes,
            Err(refusal) => return OpResult::Refused(refusal),
        };
        let revision = self.revision + 1;
        for (key, value) in writes {
            match &value {
                Some(value) => {
                    self.write(&key, value, revision);
                }
                None => {
                    self.remove(&key, revision);
                }
            }
            self.auth.note(&key, value.as_deref());
        }
        self.revision = revision;
        self.auth_generation = next_auth_generation();
        OpResult::AuthChanged { revision }
    }

    /// The auth rules this state holds.
    pub fn auth(&self) -> &AuthState {
        &self.auth
    }

    /// A number that changes whenever [`Store::auth`] may have changed: at
    /// every auth change applied and every restore (a snapshot installed).
    /// Long-lived streams compare it to re-check a caller's rights.
    pub fn auth_generation(&self) -> u64 {
        self.auth_generation
    }

    /// Rebuilds [`Store::auth`] from the records; every restore ends here.
    pub(super) fn reload_auth(&mut self) {
        let end = prefix_end(crate::auth::AUTH_PREFIX);
        let end = end.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        self.auth = AuthState::load(
            self.kvs
                .range::<[u8], _>((Bound::Included(crate::auth::AUTH_PREFIX), end))
                .map(|(k, slot)| (&**k, &*slot.value)),
        );
        self.auth_generation = next_auth_generation();
    }

    /// A digest of the replicated state: the keys with their values and
    /// bookkeeping (order-independent) and the revision. Replicas that
    /// applied the same log agree on it; one whose data was damaged does
    /// not. (The request-id table has its own, [`Store::requests_digest`];
    /// the watch history is not covered.)
    pub fn digest(&self) -> u128 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        h.update(&self.digest.to_le_bytes());
        h.update(&self.revision.to_le_bytes());
        h.update(&(self.kvs.len() as u64).to_le_bytes());
        h.digest128()
    }

    /// A digest of the request-id table: what decides whether a copy of a
    /// write is applied (see [`crate::kv::dedup`]). Kept apart from
    /// [`Store::digest`] so that replicas of versions without it still
    /// compare the keys' digest with this version's.
    pub fn requests_digest(&self) -> u128 {
        self.dedup.digest()
    }

    /// Records the log instance this state reflects.
    pub fn set_applied_index(&mut self, index: u64) {
        self.applied_index = index;
    }

    /// The log instance this state reflects.
    pub fn applied_index(&self) -> u64 {
        self.applied_index
    }

    /// The current value of `key`, if it exists.
    pub fn get(&self, key: &[u8]) -> Option<KeyValue> {
        self.kvs.get(key).map(|slot| slot.to_kv(key))
    }

    /// What `key` and its value count in [`Store::size_bytes`] now (0 when
    /// it is absent): what a write that replaces or deletes it frees.
    pub fn held_bytes(&self, key: &[u8]) -> usize {
        self.kvs
            .get(key)
            .map_or(0, |slot| key.len() + slot.value.len() + KEY_OVERHEAD_BYTES)
    }

    /// The revision of the last change.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.kvs.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.kvs.is_empty()
    }

    /// Total bytes of all keys and values.
    pub fn data_bytes(&self) -> usize {
        self.data_bytes
    }

    /// What the store takes in memory, as the store quota counts it: its
    /// keys and values, and [`KEY_OVERHEAD_BYTES`] for each key.
    pub fn size_bytes(&self) -> usize {
        self.data_bytes
            .saturating_add(self.kvs.len().saturating_mul(KEY_OVERHEAD_BYTES))
    }

    /// The client keys (not the store's own) starting with `prefix`, in
    /// byte order; with `after`, only those strictly greater than it.
    fn client_keys_under<'a>(
        &'a self,
        prefix: &'a [u8],
        after: Option<&'a [u8]>,
    ) -> impl Iterator<Item = (&'a Box<[u8]>, &'a Slot)> {
        let start = match after {
            Some(after) if after >= prefix => Bound::Excluded(after),
            _ => Bound::Included(prefix),
        };
        // The keys under a prefix are contiguous in byte order: they end at
        // the first key that does not start with it.
        self.kvs
            .range::<[u8], _>((start, Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .filter(|(key, _)| !crate::auth::is_system_key(key))
    }

    /// Each client key under `prefix` with its create revision, in byte
    /// order, without copying anything: how a lock's or an election's
    /// queue is read (its order is by create revision).
    pub fn created_under<'a>(&'a self, prefix: &'a [u8]) -> impl Iterator<Item = (&'a [u8], u64)> {
        self.client_keys_under(prefix, None)
            .map(|(key, slot)| (&key[..], slot.create_revision))
    }

    /// Keys matching `req` in byte order, at most `req.limit` of them.
    pub fn range(&self, req: &RangeRequest) -> RangeResult {
        let limit = match req.limit {
            0 => DEFAULT_RANGE_LIMIT,
            n => n,
        };
        let matches = self.client_keys_under(&req.prefix, req.after.as_deref());
        let (mut kvs, mut bytes, mut more) = (Vec::new(), 0, false);
        for (key, slot) in matches {
            let size = key.len() + slot.value.len();
            if kvs.len() >= limit || (!kvs.is_empty() && bytes + size > MAX_RANGE_BYTES) {
                more = true;
                break;
            }
            bytes += size;
            kvs.push(slot.to_kv(key));
        }
        RangeResult {
            kvs,
            more,
            revision: self.revision,
        }
    }

    /// A put; `lease` is the lease to attach the key to (0: none, which
    /// detaches it from any, as in etcd).
    fn apply_put(
        &mut self,
        key: &[u8],
        value: &[u8],
        expect: Option<&Expect>,
        lease: u64,
    ) -> OpResult {
        if let Some(failed) = self.check_expect(key, expect) {
            return failed;
        }
        let revision = self.revision + 1;
        let version = self.write(key, value, revision);
        self.set_lease_of(key, lease, revision);
        self.revision = revision;
        OpResult::Put { revision, version }
    }

    fn apply_delete(&mut self, key: &[u8], expect: Option<&Expect>) -> OpResult {
        if let Some(failed) = self.check_expect(key, expect) {
            return failed;
        }
        let deleted = self.remove(key, self.revision + 1);
        if deleted {
            self.revision += 1;
        }
        OpResult::Delete {
            revision: self.revision,
            deleted,
        }
    }

    /// Deletes the first `limit` client keys under `prefix`, at one
    /// revision. The store's own keys sort first (`\0phxkv/`) and are
    /// skipped, never deleted: an empty prefix empties the store of client
    /// keys only. `limit` is applied as chosen: its bound
    /// ([`crate::kv::MAX_DELETE_PREFIX`]) is checked where the op is
    /// admitted, never here, so that replicas of versions with different
    /// bounds still apply a chosen op alike.
    fn apply_delete_prefix(&mut self, prefix: &[u8], limit: u32) -> OpResult {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let (doomed, more) = {
            let mut keys = self.client_keys_under(prefix, None).map(|(k, _)| k);
            let doomed: Vec<Vec<u8>> = keys.by_ref().take(limit).map(|k| k.to_vec()).collect();
            (doomed, keys.next().is_some())
        };
        let revision = self.revision + 1;
        for key in &doomed {
            self.remove(key, revision);
        }
        if !doomed.is_empty() {
            self.revision = revision;
        }
        OpResult::PrefixDeleted {
            revision: self.revision,
            deleted: doomed.len() as u64,
            more,
        }
    }

    fn apply_txn(&mut self, txn: &Txn, lease: u64) -> OpResult {
        let succeeded = txn.compare.iter().all(|c| self.holds(c));
        let branch = if succeeded {
            &txn.success
        } else {
            &txn.failure
        };
        // All writes of one transaction share the next revision, which only
        // becomes current if something actually changed.
        let revision = self.revision + 1;
        let mut changed = false;
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(match op {
                TxnOp::Put { key, value } => {
                    self.write(key, value, revision);
                    self.set_lease_of(key, lease, revision);
                    changed = true;
                    TxnResponse::Put { revision }
                }
                TxnOp::Delete { key } => {
                    let deleted = self.remove(key, revision);
                    changed |= deleted;
                    TxnResponse::Delete { deleted }
                }
                TxnOp::Get { key } => TxnResponse::Get { kv: self.get(key) },
            });
        }
        if changed {
            self.revision = revision;
        }
        OpResult::Txn {
            succeeded,
            revision: self.revision,
            responses,
        }
    }

    /// `Some(CompareFailed)` when `expect` does not hold for `key`.
    fn check_expect(&self, key: &[u8], expect: Option<&Expect>) -> Option<OpResult> {
        let expect = expect?;
        let (version, mod_revision) = self
            .kvs
            .get(key)
            .map_or((0, 0), |kv| (kv.version, kv.mod_revision));
        let holds = match expect {
            Expect::Version(v) => *v == version,
            Expect::ModRevision(r) => *r == mod_revision,
        };
        (!holds).then_some(OpResult::CompareFailed {
            current_version: version,
            current_mod_revision: mod_revision,
        })
    }

    fn holds(&self, cmp: &Compare) -> bool {
        let kv = self.kvs.get(cmp.key.as_slice());
        let number = |f: fn(&Slot) -> u64| kv.map_or(0, f);
        let ordering = match &cmp.target {
            CompareTarget::Value(target) => match kv {
                Some(kv) => kv.value.as_ref().cmp(target.as_slice()),
                // A missing key has no value to order, so only "differs" holds.
                None => return cmp.op == CompareOp::NotEqual,
            },
            CompareTarget::Version(n) => number(|kv| kv.version).cmp(n),
            CompareTarget::ModRevision(n) => number(|kv| kv.mod_revision).cmp(n),
            CompareTarget::CreateRevision(n) => number(|kv| kv.create_revision).cmp(n),
        };
        match cmp.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        }
    }

    /// Writes `value` at `revision` and returns the key's new version.
    pub(super) fn write(&mut self, key: &[u8], value: &[u8], revision: u64) -> u64 {
        self.note_change(key);
        let kv = match self.kvs.get_mut(key) {
            Some(slot) => {
                self.digest = self.digest.wrapping_sub(slot.digest(key));
                self.data_bytes = self.data_bytes + value.len() - slot.value.len();
                slot.value = value.into();
                slot.version += 1;
                slot.mod_revision = revision;
                self.digest = self.digest.wrapping_add(slot.digest(key));
                slot.to_kv(key)
            }
            None => {
                self.data_bytes += key.len() + value.len();
                let slot = Slot {
                    value: value.into(),
                    version: 1,
                    create_revision: revision,
                    mod_revision: revision,
                };
                self.digest = self.digest.wrapping_add(slot.digest(key));
                let kv = slot.to_kv(key);
                self.kvs.insert(key.into(), slot);
                kv
            }
        };
        let version = kv.version;
        self.history.push(Event {
            revision,
            kind: EventKind::Put,
            kv,
        });
        version
    }

    /// Removes `key` at `revision`; false if it did not exist.
    pub(super) fn remove(&mut self, key: &[u8], revision: u64) -> bool {
        self.note_change(key);
        let Some(old) = self.kvs.remove(key) else {
            return false;
        };
        if !crate::auth::is_system_key(key) {
            self.set_lease_of(key, 0, revision);
        }
        self.digest = self.digest.wrapping_sub(old.digest(key));
        self.data_bytes -= key.len() + old.value.len();
        self.history.push(Event {
            revision,
            kind: EventKind::Delete,
            kv: KeyValue {
                key: key.to_vec(),
                value: Vec::new(),
                version: 0,
                create_revision: 0,
                mod_revision: revision,
            },
        });
        true
    }
}

/// The smallest key greater than every key starting with `prefix`, or `None`
/// when no such key exists (empty or all-`0xff` prefix).
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let last = prefix.iter().rposition(|&b| b != 0xff)?;
    let mut end = prefix[..=last].to_vec();
    end[last] += 1;
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::testutil::{del, del_if, fresh_id, put, put_if, run};

    fn cmp(key: &[u8], op: CompareOp, target: CompareTarget) -> Compare {
        Compare {
            key: key.to_vec(),
            op,
            target,
        }
    }

    fn get(key: &[u8]) -> TxnOp {
        TxnOp::Get { key: key.to_vec() }
    }

    fn tput(key: &[u8], value: &[u8]) -> TxnOp {
        TxnOp::Put {
            key: key.to_vec(),
            value: value.to_vec(),
        }
    }

    fn tdel(key: &[u8]) -> TxnOp {
        TxnOp::Delete { key: key.to_vec() }
    }

    /// Runs a txn whose only compare is `c` and reports which branch ran.
    fn compare_holds(store: &mut Store, c: Compare) -> bool {
        let txn = Op::Txn(Txn {
            compare: vec![c],
            ..Txn::default()
        });
        match run(store, &txn) {
            OpResult::Txn { succeeded, .. } => succeeded,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn keys(result: &RangeResult) -> Vec<&[u8]> {
        result.kvs.iter().map(|kv| kv.key.as_slice()).collect()
    }

    #[test]
    fn put_creates_then_updates_with_versions_and_revisions() {
        let mut s = Store::new();
        assert_eq!(
            run(&mut s, &put(b"a", b"1")),
            OpResult::Put {
                revision: 1,
                version: 1
            }
        );
        run(&mut s, &put(b"b", b"1"));
        assert_eq!(
            run(&mut s, &put(b"a", b"22")),
            OpResult::Put {
                revision: 3,
                version: 2
            }
        );
        let a = s.get(b"a").expect("a exists");
        assert_eq!((a.version, a.create_revision, a.mod_revision), (2, 1, 3));
        assert_eq!(a.value, b"22");
        assert_eq!(s.revision(), 3);
        assert_eq!((s.len(), s.data_bytes()), (2, 5));
    }

    #[test]
    fn recreated_key_starts_again_at_version_one() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        run(&mut s, &put(b"a", b"2"));
        run(&mut s, &del(b"a"));
        run(&mut s, &put(b"a", b"3"));
        let a = s.get(b"a").expect("a exists");
        assert_eq!((a.version, a.create_revision, a.mod_revision), (1, 4, 4));
    }

    #[test]
    fn cas_by_version_succeeds_only_on_match() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        assert_eq!(
            run(&mut s, &put_if(b"a", b"x", Expect::Version(2))),
            OpResult::CompareFailed {
                current_version: 1,
                current_mod_revision: 1
            }
        );
        assert_eq!(s.revision(), 1);
        assert_eq!(s.get(b"a").map(|kv| kv.value), Some(b"1".to_vec()));
        assert_eq!(
            run(&mut s, &put_if(b"a", b"2", Expect::Version(1))),
            OpResult::Put {
                revision: 2,
                version: 2
            }
        );
    }

    #[test]
    fn version_zero_means_must_not_exist() {
        let mut s = Store::new();
        assert_eq!(
            run(&mut s, &put_if(b"a", b"1", Expect::Version(0))),
            OpResult::Put {
                revision: 1,
                version: 1
            }
        );
        assert_eq!(
            run(&mut s, &put_if(b"a", b"2", Expect::Version(0))),
            OpResult::CompareFailed {
                current_version: 1,
                current_mod_revision: 1
            }
        );
        assert_eq!(s.get(b"a").map(|kv| kv.value), Some(b"1".to_vec()));
    }

    #[test]
    fn cas_by_mod_revision() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        run(&mut s, &put(b"b", b"1"));
        assert!(matches!(
            run(&mut s, &put_if(b"a", b"2", Expect::ModRevision(2))),
            OpResult::CompareFailed {
                current_mod_revision: 1,
                ..
            }
        ));
        assert!(matches!(
            run(&mut s, &put_if(b"a", b"2", Expect::ModRevision(1))),
            OpResult::Put { revision: 3, .. }
        ));
        assert!(matches!(
            run(&mut s, &put_if(b"c", b"1", Expect::ModRevision(0))),
            OpResult::Put { revision: 4, .. }
        ));
        assert!(matches!(
            run(&mut s, &put_if(b"c", b"2", Expect::ModRevision(0))),
            OpResult::CompareFailed { .. }
        ));
    }

    #[test]
    fn delete_existing_bumps_revision_and_missing_does_not() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        assert_eq!(
            run(&mut s, &del(b"a")),
            OpResult::Delete {
                revision: 2,
                deleted: true
            }
        );
        assert_eq!(s.get(b"a"), None);
        assert_eq!((s.len(), s.data_bytes()), (0, 0));
        assert_eq!(
            run(&mut s, &del(b"a")),
            OpResult::Delete {
                revision: 2,
                deleted: false
            }
        );
        assert_eq!(s.revision(), 2);
    }

    #[test]
    fn delete_with_expect() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        assert_eq!(
            run(&mut s, &del_if(b"a", Expect::Version(3))),
            OpResult::CompareFailed {
                current_version: 1,
                current_mod_revision: 1
            }
        );
        assert!(s.get(b"a").is_some());
        assert_eq!(
            run(&mut s, &del_if(b"a", Expect::ModRevision(1))),
            OpResult::Delete {
                revision: 2,
                deleted: true
            }
        );
        assert_eq!(
            run(&mut s, &del_if(b"a", Expect::Version(1))),
            OpResult::CompareFailed {
                current_version: 0,
                current_mod_revision: 0
            }
        );
    }

    #[test]
    fn txn_success_branch_writes_atomically_at_one_revision() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        run(&mut s, &put(b"gone", b"1"));
        let txn = Op::Txn(Txn {
            compare: vec![cmp(b"a", CompareOp::Equal, CompareTarget::Version(1))],
            success: vec![tput(b"a", b"2"), tput(b"b", b"2"), tdel(b"gone"), get(b"a")],
            failure: vec![tput(b"never", b"x")],
        });
        let OpResult::Txn {
            succeeded,
            revision,
            responses,
        } = run(&mut s, &txn)
        else {
            panic!("not a txn result");
        };
        assert!(succeeded);
        assert_eq!(revision, 3);
        assert_eq!(s.revision(), 3);
        assert_eq!(
            responses[..3],
            [
                TxnResponse::Put { revision: 3 },
                TxnResponse::Put { revision: 3 },
                TxnResponse::Delete { deleted: true },
            ]
        );
        let TxnResponse::Get { kv: Some(a) } = &responses[3] else {
            panic!("get saw nothing");
        };
        assert_eq!(
            (a.value.as_slice(), a.version, a.mod_revision),
            (&b"2"[..], 2, 3)
        );
        assert_eq!(s.get(b"b").map(|kv| kv.mod_revision), Some(3));
        assert_eq!(s.get(b"gone"), None);
        assert_eq!(s.get(b"never"), None);
    }

    #[test]
    fn txn_failure_branch_runs_when_any_compare_fails() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        let txn = Op::Txn(Txn {
            compare: vec![
                cmp(b"a", CompareOp::Equal, CompareTarget::Version(1)),
                cmp(
                    b"a",
                    CompareOp::Equal,
                    CompareTarget::Value(b"other".to_vec()),
                ),
            ],
            success: vec![tput(b"a", b"success")],
            failure: vec![tput(b"b", b"failure")],
        });
        assert_eq!(
            run(&mut s, &txn),
            OpResult::Txn {
                succeeded: false,
                revision: 2,
                responses: vec![TxnResponse::Put { revision: 2 }],
            }
        );
        assert_eq!(s.get(b"a").map(|kv| kv.value), Some(b"1".to_vec()));
        assert_eq!(s.get(b"b").map(|kv| kv.value), Some(b"failure".to_vec()));
    }

    #[test]
    fn txn_that_changes_nothing_keeps_the_revision() {
        let mut s = Store::new();
        run(&mut s, &put(b"a", b"1"));
        let txn = Op::Txn(Txn {
            success: vec![get(b"a"), get(b"missing"), tdel(b"missing")],
            ..Txn::default()
        });
        let expected_a = s.get(b"a");
        assert_eq!(
            run(&mut s, &txn),
            OpResult::Txn {
                succeeded: true,
                revision: 1,
                responses: vec![
                    TxnResponse::Get { kv: expected_a },
                    TxnResponse::Get { kv: None },
                    TxnResponse::Delete { deleted: false },
                ],
            }
        );
        assert_eq!(s.revision(), 1);
        // The next write takes the revision the no-op txn did not use.
        assert!(matches!(
            run(&mut s, &put(b"b", b"1")),
            OpResult::Put { revision: 2, .. }
        ));
    }

    #[test]
    fn value_compare_on_missing_key_only_holds_for_not_equal() {
        let mut s = Store::new();
        let v = || CompareTarget::Value(Vec::new());
        assert!(!compare_holds(&mut s, cmp(b"x", CompareOp::Equal, v())));
        assert!(!compare_holds(&mut s, cmp(b"x", CompareOp::Less, v())));
        assert!(!compare_holds(&mut s, cmp(b"x", CompareOp::Greater, v())));
        assert!(compare_holds(&mut s, cmp(b"x", CompareOp::NotEqual, v())));
    }

    #[test]
    fn value_compare_orders_bytes() {
        let mut s = Store::new();
        run(&mut s, &put(b"k", b"m"));
        let v = |b: &[u8]| CompareTarget::Value(b.to_vec());
        assert!(compare_holds(&mut s, cmp(b"k", CompareOp::Equal, v(b"m"))));
        assert!(compare_holds(&mut s, cmp(b"k", CompareOp::Less, v(b"z"))));
        assert!(compare_holds(
            &mut s,
            cmp(b"k", CompareOp::Greater, v(b"a"))
        ));
        assert!(!compare_holds(
            &mut s,
            cmp(b"k", CompareOp::NotEqual, v(b"m"))
        ));
    }

    #[test]
    fn numeric_compares_treat_missing_key_as_zero() {
        let mut s = Store::new();
        for target in [
            CompareTarget::Version(0),
            CompareTarget::ModRevision(0),
            CompareTarget::CreateRevision(0),
        ] {
            assert!(compare_holds(
                &mut s,
                cmp(b"x", CompareOp::Equal, target.clone())
            ));
        }
        assert!(compare_holds(
            &mut s,
            cmp(b"x", CompareOp::Less, CompareTarget::Version(1))
        ));
        assert!(!compare_holds(
            &mut s,
            cmp(b"x", CompareOp::Greater, CompareTarget::Version(0))
        ));
    }

    #[test]
    fn numeric_compares_read_the_right_field() {
        let mut s = Store::new();
        run(&mut s, &put(b"other", b"1"));
        run(&mut s, &put(b"k", b"1"));
        run(&mut s, &put(b"k", b"2"));
        run(&mut s, &put(b"k", b"3"));
        // k: version 3, create_revision 2, mod_revision 4.
        let eq = |t| cmp(b"k", CompareOp::Equal, t);
        assert!(compare_holds(&mut s, eq(CompareTarget::Version(3))));
        assert!(compare_holds(&mut s, eq(CompareTarget::CreateRevision(2))));
        assert!(compare_holds(&mut s, eq(CompareTarget::ModRevision(4))));
        assert!(!compare_holds(&mut s, eq(CompareTarget::ModRevision(3))));
        assert!(compare_holds(
            &mut s,
            cmp(b"k", CompareOp::Greater, CompareTarget::CreateRevision(1))
        ));
        assert!(compare_holds(
            &mut s,
            cmp(b"k", CompareOp::NotEqual, CompareTarget::Version(2))
        ));
    }

    #[test]
    fn duplicate_request_id_returns_cached_result_and_changes_nothing() {
        let mut s = Store::new();
        let id = fresh_id();
        let first = s.apply(id, &put(b"a", b"1"));
        run(&mut s, &put(b"b", b"1"));
        // Even a different op under the same id is not applied again.
        assert_eq!(s.apply(id, &put(b"a", b"changed")), first);
        assert_eq!(s.apply(id, &del(b"b")), first);
        assert_eq!(s.revision(), 2);
        assert_eq!(s.get(b"a").map(|kv| kv.version), Some(1));
        assert!(s.get(b"b").is_some());
    }

    #[test]
    fn an_idempotency_key_applies_its_write_once_and_refuses_other_writes() {
        let mut s = Store::new();
        let op = put(b"a", b"1");
        let id = crate::kv::dedup::idempotent_id("key-1", &op);
        let first = s.apply(id, &op);
        // A retry, wherever it was proposed, derives the same id.
        let again = crate::kv::dedup::idempotent_id("key-1", &op);
        assert_eq!(s.apply(again, &op), first);
        let other = put(b"a", b"2");
        let reused = crate::kv::dedup::idempotent_id("key-1", &other);
        assert_eq!(s.apply(reused, &other), OpResult::IdempotencyKeyReused);
        assert_eq!(s.revision(), 1);
        assert_eq!(s.get(b"a").map(|kv| kv.value.clone()), Some(b"1".to_vec()));
        // Another key is another write.
        let fresh = crate::kv::dedup::idempotent_id("key-2", &other);
        assert!(matches!(
            s.apply(fresh, &other),
            OpResult::Put { version: 2, .. }
        ));
    }

    fn del_prefix(prefix: &[u8], limit: u32) -> Op {
        Op::DeletePrefix {
            prefix: prefix.to_vec(),
            limit,
        }
    }

    #[test]
    fn a_prefix_delete_removes_the_first_keys_under_it_at_one_revision() {
        let mut s = Store::new();
        for key in [&b"ap"[..], b"app/a", b"app/b", b"app/c", b"apq", b"b"] {
            run(&mut s, &put(key, b"v"));
        }
        let r = s.revision();
        assert_eq!(
            run(&mut s, &del_prefix(b"app/", 2)),
            OpResult::PrefixDeleted {
                revision: r + 1,
                deleted: 2,
                more: true
            }
        );
        assert_eq!((s.get(b"app/a"), s.get(b"app/b")), (None, None));
        assert!(s.get(b"app/c").is_some() && s.get(b"apq").is_some());
        // Both deletes are events of the one revision, in key order.
        let events = s.events_since(r + 1, b"", 0).expect("events");
        let deleted: Vec<_> = events
            .iter()
            .map(|e| (e.revision, e.kind, e.kv.key.clone()))
            .collect();
        assert_eq!(
            deleted,
            [
                (r + 1, EventKind::Delete, b"app/a".to_vec()),
                (r + 1, EventKind::Delete, b"app/b".to_vec())
            ]
        );
        assert_eq!(
            run(&mut s, &del_prefix(b"app/", 2)),
            OpResult::PrefixDeleted {
                revision: r + 2,
                deleted: 1,
                more: false
            }
        );
        // Nothing under it: the revision stays.
        assert_eq!(
            run(&mut s, &del_prefix(b"app/", 2)),
            OpResult::PrefixDeleted {
                revision: r + 2,
                deleted: 0,
                more: false
            }
        );
        assert_eq!(s.digest, digest_of(&s.kvs));
        assert_eq!((s.len(), s.data_bytes()), (3, 2 + 3 + 1 + 3));
    }

    #[test]
    fn an_empty_prefix_deletes_every_client_key_and_keeps_the_auth_records() {
        let mut s = Store::new();
        let role = crate::auth::Role {
            permissions: vec![],
            admin: true,
        };
        run(
            &mut s,
            &Op::Auth(AuthChange::PutRole {
                name: "ops".into(),
                role,
            }),
        );
        run(&mut s, &put(b"a", b"1"));
        run(&mut s, &put(b"\xff", b"2"));
        let roles = s.auth().roles().clone();
        assert!(!roles.is_empty());
        assert!(matches!(
            run(&mut s, &del_prefix(b"", 10)),
            OpResult::PrefixDeleted {
                deleted: 2,
                more: false,
                ..
            }
        ));
        assert_eq!(s.range(&RangeRequest::default()).kvs, vec![]);
        assert_eq!(s.auth().roles(), &roles, "the auth records stay");
        // The reserved prefix itself is refused, as a key of it is.
        let reserved = run(&mut s, &del_prefix(crate::auth::AUTH_PREFIX, 10));
        assert!(matches!(reserved, OpResult::Refused(_)), "{reserved:?}");
        // A chosen op's limit applies as it is, past the bound that
        // admission holds new ones to: a replica of another version, with
        // another bound, must delete the same keys.
        let past = crate::kv::MAX_DELETE_PREFIX + 1;
        for i in 0..=past {
            run(&mut s, &put(format!("k{i:05}").as_bytes(), b""));
        }
        assert!(matches!(
            run(&mut s, &del_prefix(b"k", past)),
            OpResult::PrefixDeleted {
                deleted,
                more: true,
                ..
            } if deleted == u64::from(past)
        ));
    }

    #[test]
    fn the_digest_follows_every_change_and_not_the_order_of_writes() {
        let mut a = Store::new();
        let mut b = Store::new();
        // The same keys and values written in another order, with a delete.
        run(&mut a, &put(b"x", b"1"));
        run(&mut a, &put(b"y", b"2"));
        run(&mut a, &put(b"z", b"3"));
        run(&mut a, &del(b"z"));
        run(&mut b, &put(b"y", b"2"));
        run(&mut b, &put(b"z", b"3"));
        run(&mut b, &del(b"z"));
        run(&mut b, &put(b"x", b"1"));
        // Same revision, same bookkeeping? Not quite: create revisions
        // differ, so the digests must differ too.
        assert_ne!(a.digest(), b.digest());
        // The kept sum always equals a fresh walk over the data.
        assert_eq!(a.digest, digest_of(&a.kvs));
        assert_eq!(b.digest, digest_of(&b.kvs));
        // A restored copy agrees; a damaged one does not.
        let copy = Store::restore(a.snapshot());
        assert_eq!(copy.digest(), a.digest());
        let mut snap = a.snapshot();
        snap.kvs[0].value = b"damaged".to_vec();
        assert_ne!(Store::restore(snap).digest(), a.digest());
        // Replaying the same ops gives the same digest.
        let mut c = Store::new();
        run(&mut c, &put(b"x", b"1"));
        run(&mut c, &put(b"y", b"2"));
        run(&mut c, &put(b"z", b"3"));
        run(&mut c, &del(b"z"));
        assert_eq!(c.digest(), a.digest());
        // An empty store at another revision differs from a fresh one.
        run(&mut c, &del(b"x"));
        run(&mut c, &del(b"y"));
        assert_ne!(c.digest(), Store::new().digest());
    }

    #[test]
    fn dedup_table_is_bounded_and_forgets_oldest_first() {
        let mut s = Store::with_config(StoreConfig {
            dedup_capacity: 3,
            ..StoreConfig::default()
        });
        let ids: Vec<_> = (0..5).map(|_| fresh_id()).collect();
        for id in &ids {
            s.apply(*id, &put(b"a", b"x"));
        }
        assert_eq!(s.dedup.entries().count(), 3);
        // The newest ids are still deduplicated...
        s.apply(ids[4], &put(b"a", b"x"));
        assert_eq!(s.revision(), 5);
        // ...but the oldest was forgotten, so it applies again.
        s.apply(ids[0], &put(b"a", b"x"));
        assert_eq!(s.revision(), 6);
    }

    /// The case the table's bound used to let through (see
    /// `crate::kv::dedup`): a copy chosen after more writes than the table
    /// holds. Marked with where its write stood, it is refused, not applied
    /// a second time; a write whose mark is past everything forgotten is
    /// applied as usual.
    #[test]
    fn a_copy_of_a_once_write_is_applied_once_however_late_it_comes() {
        let mut s = Store::with_config(StoreConfig {
            dedup_capacity: 3,
            ..StoreConfig::default()
        });
        s.set_applied_index(100);
        let once = |after: u64, op: Op| Op::Once {
            after,
            op: Box::new(op),
        };
        let first = fresh_id();
        let write = once(100, put(b"a", b"x"));
        let applied = s.apply(first, &write);
        assert!(matches!(applied, OpResult::Put { revision: 1, .. }));
        s.set_applied_index(101);
        // A copy while the table remembers it: the first result.
        assert_eq!(s.apply(first, &write), applied);
        for index in 102..=105 {
            s.apply(fresh_id(), &once(index - 1, put(b"b", b"y")));
            s.set_applied_index(index);
        }
        assert_eq!(s.apply(first, &write), OpResult::Forgotten);
        assert_eq!(s.revision(), 5, "the late copy changed nothing");
        assert_eq!(s.get(b"a").map(|kv| kv.version), Some(1));
        // And it is told the same every time, on every replica alike: a
        // refusal is not remembered as a result.
        assert_eq!(s.apply(first, &write), OpResult::Forgotten);
        // A write that reached its replica after everything forgotten was
        // chosen is applied.
        let fresh = s.apply(fresh_id(), &once(104, put(b"a", b"z")));
        assert!(matches!(fresh, OpResult::Put { revision: 6, .. }));
        // Without the mark the same late copy would be applied again: what
        // an `Idempotency-Key` retry past the table's bound meets.
        let plain = fresh_id();
        s.apply(plain, &put(b"c", b"1"));
        for _ in 0..3 {
            run(&mut s, &put(b"d", b"1"));
        }
        assert!(matches!(
            s.apply(plain, &put(b"c", b"1")),
            OpResult::Put { version: 2, .. }
        ));
    }

    #[test]
    fn a_once_op_anywhere_but_outermost_is_refused() {
        let mut s = Store::new();
        let nested = Op::Once {
            after: 0,
            op: Box::new(Op::Once {
                after: 0,
                op: Box::new(put(b"a", b"x")),
            }),
        };
        assert!(matches!(run(&mut s, &nested), OpResult::Refused(_)));
        assert_eq!(s.revision(), 0);
    }

    #[test]
    fn failed_compare_is_remembered_too() {
        let mut s = Store::new();
        let id = fresh_id();
        let failed = s.apply(id, &put_if(b"a", b"1", Expect::Version(1)));
        assert!(matches!(failed, OpResult::CompareFailed { .. }));
        run(&mut s, &put(b"a", b"1"));
        assert_eq!(s.apply(id, &put_if(b"a", b"1", Expect::Version(1))), failed);
    }

    fn store_with(keys: &[&[u8]]) -> Store {
        let mut s = Store::new();
        for k in keys {
            run(&mut s, &put(k, b"v"));
        }
        s
    }

    #[test]
    fn range_returns_prefix_matches_in_byte_order() {
        let s = store_with(&[b"b/2", b"a", b"b/1", b"b", b"c", b"b/10"]);
        let r = s.range(&RangeRequest {
            prefix: b"b/".to_vec(),
            ..RangeRequest::default()
        });
        assert_eq!(keys(&r), [&b"b/1"[..], b"b/10", b"b/2"]);
        assert!(!r.more);
        assert_eq!(r.revision, 6);
        let all = s.range(&RangeRequest::default());
        assert_eq!(all.kvs.len(), 6);
    }

    #[test]
    fn a_range_page_ends_after_its_byte_bound_and_holds_at_least_one_key() {
        let mut s = Store::new();
        let big = vec![b'x'; MAX_RANGE_BYTES / 3];
        for k in [b"k1", b"k2", b"k3", b"k4"] {
            run(&mut s, &put(k, &big));
        }
        let mut req = RangeRequest {
            prefix: b"k".to_vec(),
            after: None,
            limit: 1000,
        };
        let first = s.range(&req);
        assert_eq!(
            keys(&first),
            [&b"k1"[..], b"k2"],
            "three would pass the bound"
        );
        assert!(first.more);
        req.after = Some(b"k2".to_vec());
        let second = s.range(&req);
        assert_eq!(keys(&second), [&b"k3"[..], b"k4"]);
        assert!(!second.more);
        let mut s = Store::new();
        let huge = vec![b'x'; MAX_RANGE_BYTES + 1];
        run(&mut s, &put(b"h1", &huge));
        run(&mut s, &put(b"h2", &huge));
        let one = s.range(&RangeRequest::default());
        assert_eq!(
            keys(&one),
            [&b"h1"[..]],
            "a key larger than the bound still comes"
        );
        assert!(one.more);
    }

    #[test]
    fn range_limit_and_continuation_page_through_all_keys() {
        let s = store_with(&[b"p1", b"p2", b"p3", b"p4", b"p5", b"q"]);
        let mut req = RangeRequest {
            prefix: b"p".to_vec(),
            after: None,
            limit: 2,
        };
        let mut pages = Vec::new();
        loop {
            let r = s.range(&req);
            assert!(r.kvs.len() <= 2);
            pages.push(keys(&r).iter().map(|k| k.to_vec()).collect::<Vec<_>>());
            if !r.more {
                break;
            }
            req.after = r.kvs.last().map(|kv| kv.key.clone());
        }
        assert_eq!(
            pages,
            vec![
                vec![b"p1".to_vec(), b"p2".to_vec()],
                vec![b"p3".to_vec(), b"p4".to_vec()],
                vec![b"p5".to_vec()],
            ]
        );
    }

    #[test]
    fn range_limit_zero_uses_default_cap() {
        let mut s = Store::new();
        for i in 0..(DEFAULT_RANGE_LIMIT + 1) {
            run(&mut s, &put(format!("k{i:05}").as_bytes(), b""));
        }
        let r = s.range(&RangeRequest::default());
        assert_eq!(r.kvs.len(), DEFAULT_RANGE_LIMIT);
        assert!(r.more);
    }

    #[test]
    fn range_after_outside_prefix_is_clamped() {
        let s = store_with(&[b"a", b"b1", b"b2", b"c"]);
        let before = s.range(&RangeRequest {
            prefix: b"b".to_vec(),
            after: Some(b"a".to_vec()),
            limit: 10,
        });
        assert_eq!(keys(&before), [&b"b1"[..], b"b2"]);
        let beyond = s.range(&RangeRequest {
            prefix: b"b".to_vec(),
            after: Some(b"zz".to_vec()),
            limit: 10,
        });
        assert!(beyond.kvs.is_empty() && !beyond.more);
        // `after` equal to the prefix's end must not build an empty range.
        let at_end = s.range(&RangeRequest {
            prefix: b"b".to_vec(),
            after: Some(b"c".to_vec()),
            limit: 10,
        });
        assert!(at_end.kvs.is_empty());
    }

    #[test]
    fn range_prefix_ending_in_0xff() {
        let s = store_with(&[
            b"a\xfe",
            b"a\xff",
            b"a\xff\x00",
            b"a\xff\xff",
            b"b",
            b"\xff",
            b"\xff\xff",
        ]);
        let r = s.range(&RangeRequest {
            prefix: b"a\xff".to_vec(),
            ..RangeRequest::default()
        });
        assert_eq!(keys(&r), [&b"a\xff"[..], b"a\xff\x00", b"a\xff\xff"]);
        let all_ff = s.range(&RangeRequest {
            prefix: b"\xff".to_vec(),
            ..RangeRequest::default()
        });
        assert_eq!(keys(&all_ff), [&b"\xff"[..], b"\xff\xff"]);
        assert_eq!(prefix_end(b"a\xff\xff"), Some(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), None);
        assert_eq!(prefix_end(b""), None);
    }

    #[test]
    fn data_bytes_tracks_puts_overwrites_and_deletes() {
        let mut s = Store::new();
        run(&mut s, &put(b"ab", b"1234"));
        run(&mut s, &put(b"c", b"1"));
        assert_eq!(s.data_bytes(), 8);
        assert_eq!(s.size_bytes(), 8 + 2 * KEY_OVERHEAD_BYTES);
        run(&mut s, &put(b"ab", b"1"));
        assert_eq!(s.data_bytes(), 5);
        assert_eq!(s.size_bytes(), 5 + 2 * KEY_OVERHEAD_BYTES);
        run(&mut s, &del(b"c"));
        assert_eq!(s.data_bytes(), 3);
        assert_eq!(s.size_bytes(), 3 + KEY_OVERHEAD_BYTES);
        assert!(!s.is_empty());
    }

    #[test]
    fn applied_index_is_recorded() {
        let mut s = Store::new();
        assert_eq!(s.applied_index(), 0);
        s.set_applied_index(42);
        assert_eq!(s.applied_index(), 42);
    }

    mod auth {
        use super::*;
        use crate::auth::{Permission, Role, TokenRecord};

        const ID: &str = "0123456789abcdef";

        fn as_token(op: Op) -> Op {
            as_other(ID, op)
        }

        fn refusal(result: OpResult) -> RefusalKind {
            match result {
                OpResult::Refused(r) => r.kind,
                other => panic!("not refused: {other:?}"),
            }
        }

        /// A store with a role writing `app/` and a token holding it.
        fn with_writer() -> Store {
            let mut s = Store::new();
            let role = Role {
                permissions: vec![Permission {
                    prefix: "app/".into(),
                    read: true,
                    write: true,
                }],
                admin: false,
            };
            let token = TokenRecord {
                name: "ci".into(),
                roles: vec!["w".into()],
                secret_sha256: "a".repeat(64),
            };
            for change in [
                AuthChange::PutRole {
                    name: "w".into(),
                    role,
                },
                AuthChange::CreateToken {
                    id: ID.into(),
                    token,
                },
            ] {
                assert!(matches!(
                    run(&mut s, &Op::Auth(change)),
                    OpResult::AuthChanged { .. }
                ));
            }
            s
        }

        #[test]
        fn a_tokens_op_is_checked_where_it_is_applied() {
            let mut s = with_writer();
            assert!(matches!(
                run(&mut s, &as_token(put(b"app/x", b"1"))),
                OpResult::Put { .. }
            ));
            let revision = s.revision();
            let denied = run(&mut s, &as_token(put(b"other/x", b"1")));
            assert_eq!(refusal(denied), RefusalKind::PermissionDenied);
            assert_eq!(s.revision(), revision, "a refused op changes nothing");
            assert_eq!(s.get(b"other/x"), None);
            // The revocation is chosen first: the op after it is refused,
            // whatever the replica that took it had seen.
            run(&mut s, &Op::Auth(AuthChange::DeleteToken { id: ID.into() }));
            let late = run(&mut s, &as_token(put(b"app/y", b"1")));
            assert_eq!(refusal(late), RefusalKind::Unauthenticated);
            assert_eq!(s.get(b"app/y"), None);
        }

        /// Another token, `id`, holding the role `role` (which need not
        /// exist).
        fn add_token(s: &mut Store, id: &str, role: &str) {
            let token = TokenRecord {
                name: id.into(),
                roles: vec![role.into()],
                secret_sha256: "b".repeat(64),
            };
            let change = AuthChange::CreateToken {
                id: id.into(),
                token,
            };
            assert!(matches!(
                run(s, &Op::Auth(change)),
                OpResult::AuthChanged { .. }
            ));
        }

        fn as_other(id: &str, op: Op) -> Op {
            Op::As {
                token: id.into(),
                op: Box::new(op),
            }
        }

        #[test]
        fn a_lease_granted_to_a_token_is_for_that_token_and_admins_only() {
            use crate::kv::LeaseOp;
            const HOLDER: &str = "fedcba9876543210";
            const ADMIN: &str = "00000000000000ad";
            let mut s = with_writer();
            add_token(&mut s, HOLDER, "w");
            let admin_role = Role {
                permissions: Vec::new(),
                admin: true,
            };
            let change = AuthChange::PutRole {
                name: "admin".into(),
                role: admin_role,
            };
            run(&mut s, &Op::Auth(change));
            add_token(&mut s, ADMIN, "admin");
            let grant = |id: u64, owner: &str| {
                Op::Lease(LeaseOp::GrantOwned {
                    id,
                    ttl_secs: 10,
                    owner: owner.into(),
                })
            };
            let revoke = |id: u64| Op::Lease(LeaseOp::Revoke { id });
            let leased = |lease: u64, key: &[u8]| Op::Leased {
                lease,
                op: Box::new(put(key, b"v")),
            };
            // A token grants leases to itself only.
            let for_another = run(&mut s, &as_token(grant(1, HOLDER)));
            assert_eq!(refusal(for_another), RefusalKind::PermissionDenied);
            assert!(matches!(
                run(&mut s, &as_other(HOLDER, grant(1, HOLDER))),
                OpResult::LeaseGranted { .. }
            ));
            assert_eq!(s.lease_owner(1), Some(HOLDER));
            // Another token may write app/, but not use the holder's lease.
            let revision = s.revision();
            let attach = run(&mut s, &as_token(leased(1, b"app/x")));
            assert_eq!(refusal(attach), RefusalKind::PermissionDenied);
            let revoked = run(&mut s, &as_token(revoke(1)));
            assert_eq!(refusal(revoked), RefusalKind::PermissionDenied);
            assert_eq!(s.revision(), revision, "a refused op changes nothing");
            assert_eq!(
                s.may_hold_lease(ID, 1).map_err(|r| r.kind),
                Err(RefusalKind::PermissionDenied)
            );
            // The holder and an admin may.
            assert!(matches!(
                run(&mut s, &as_other(HOLDER, leased(1, b"app/x"))),
                OpResult::Put { .. }
            ));
            assert_eq!(s.may_hold_lease(ADMIN, 1), Ok(()));
            assert!(matches!(
                run(&mut s, &as_other(ADMIN, leased(1, b"app/y"))),
                OpResult::Put { .. }
            ));
            assert!(matches!(
                run(&mut s, &as_other(ADMIN, revoke(1))),
                OpResult::LeaseRevoked { deleted: 2, .. }
            ));
            assert_eq!(s.lease_owner(1), None, "the holder goes with the lease");
            // A lease granted without a holder is open to any token that
            // may write its keys, as in etcd.
            run(
                &mut s,
                &Op::Lease(LeaseOp::Grant {
                    id: 2,
                    ttl_secs: 10,
                }),
            );
            assert_eq!(s.lease_owner(2), None);
            assert!(matches!(
                run(&mut s, &as_token(leased(2, b"app/z"))),
                OpResult::Put { .. }
            ));
            assert!(matches!(
                run(&mut s, &as_other(HOLDER, revoke(2))),
                OpResult::LeaseRevoked { deleted: 1, .. }
            ));
        }

        fn anonymous(op: Op) -> Op {
            Op::Anonymous { op: Box::new(op) }
        }

        #[test]
        fn an_anonymous_write_chosen_after_auth_enable_is_refused_where_it_is_applied() {
            let mut s = Store::new();
            assert!(matches!(
                run(&mut s, &anonymous(put(b"app/x", b"1"))),
                OpResult::Put { .. }
            ));
            // A replica that had not applied the enable took the next one:
            // the enable is before it in the log, so it is refused.
            run(&mut s, &Op::Auth(AuthChange::Enable));
            let revision = s.revision();
            let late = run(&mut s, &anonymous(put(b"app/x", b"2")));
            assert_eq!(refusal(late), RefusalKind::Unauthenticated);
            let late = run(&mut s, &anonymous(Op::Auth(AuthChange::Disable)));
            assert_eq!(refusal(late), RefusalKind::Unauthenticated);
            assert!(s.auth().enabled());
            assert_eq!(s.revision(), revision, "a refused op changes nothing");
            assert_eq!(
                s.get(b"app/x").map(|kv| kv.value.clone()),
                Some(b"1".to_vec())
            );
            // Off again: anonymous writes apply.
            run(&mut s, &Op::Auth(AuthChange::Disable));
            assert!(matches!(
                run(&mut s, &anonymous(put(b"app/x", b"3"))),
                OpResult::Put { .. }
            ));
            // Nothing nests in it, and it reserves what a plain op does.
            let nested = anonymous(as_token(put(b"app/x", b"4")));
            assert_eq!(refusal(run(&mut s, &nested)), RefusalKind::Invalid);
            let nested = as_token(anonymous(put(b"app/x", b"4")));
            assert_eq!(refusal(run(&mut s, &nested)), RefusalKind::Invalid);
            let system = anonymous(put(b"\0phxkv/auth/enabled", b"{}"));
            assert_eq!(refusal(run(&mut s, &system)), RefusalKind::Invalid);
        }

        #[test]
        fn an_anonymous_write_has_the_idempotency_id_of_the_write_it_wraps() {
            let op = put(b"app/x", b"1");
            assert_eq!(
                crate::kv::dedup::idempotent_id("k", &anonymous(op.clone())),
                crate::kv::dedup::idempotent_id("k", &op)
            );
        }

        #[test]
        fn only_auth_changes_write_the_reserved_prefix() {
            let mut s = with_writer();
            let key = b"\0phxkv/auth/role/w";
            assert_eq!(refusal(run(&mut s, &del(key))), RefusalKind::Invalid);
            assert_eq!(
                refusal(run(&mut s, &as_token(put(key, b"{}")))),
                RefusalKind::Invalid
            );
            assert!(s.auth().roles().contains_key("w"));
            assert_eq!(
                put(key, b"x").validate(&crate::kv::Limits::default()),
                Err(crate::kv::KvError::ReservedKey)
            );
            // Listings never show the records.
            run(&mut s, &put(b"a", b"1"));
            let all = s.range(&RangeRequest::default());
            assert_eq!(all.kvs.len(), 1);
        }

        #[test]
        fn a_restored_store_has_the_same_rules_and_digest() {
            let s = with_writer();
            let restored = Store::restore(s.snapshot());
            assert_eq!(restored.auth(), s.auth());
            assert_eq!(restored.digest(), s.digest());
            let streamed =
                Store::restore_from_reader(s.encode_snapshot().as_slice(), StoreConfig::default())
                    .expect("restores");
            assert_eq!(streamed.auth(), s.auth());
        }
    }
}

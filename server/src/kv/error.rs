//! Why a key-value request was refused.
//!
//! Oversized or malformed ops are refused before they are proposed, so one bad
//! request never costs a Paxos round; watch requests that reach past the
//! retained history are refused so a client learns it has missed events
//! instead of silently skipping them.

use thiserror::Error;

/// Every way the key-value layer can refuse a request.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KvError {
    /// A key is longer than [`Limits::max_key_bytes`](crate::kv::Limits).
    #[error("key is {len} bytes long, the limit is {max} bytes")]
    KeyTooLarge { len: usize, max: usize },
    /// A value is longer than [`Limits::max_value_bytes`](crate::kv::Limits).
    #[error("value is {len} bytes long, the limit is {max} bytes")]
    ValueTooLarge { len: usize, max: usize },
    /// A transaction has more compares and operations than
    /// [`Limits::max_txn_ops`](crate::kv::Limits).
    #[error("transaction has {len} compares and operations, the limit is {max}")]
    TooManyTxnOps { len: usize, max: usize },
    /// Keys must be at least one byte long.
    #[error("key is empty; keys must be at least one byte long")]
    EmptyKey,
    /// Keys starting with [`crate::auth::SYSTEM_PREFIX`] are the store's own.
    #[error("keys starting with \\0phxkv/ (a zero byte, then phxkv/) are reserved")]
    ReservedKey,
    /// A watch asked for events older than the retained history.
    #[error(
        "revision {requested} has been compacted; the oldest revision still available is {oldest}"
    )]
    Compacted { requested: u64, oldest: u64 },
    /// A snapshot's bytes are not a valid encoded snapshot.
    #[error("snapshot could not be decoded: {0}")]
    SnapshotDecode(#[source] postcard::Error),
    /// A lease op out of bounds (see [`crate::kv::lease`]).
    #[error("{0}")]
    InvalidLease(String),
    /// One branch of a transaction writes (puts or deletes) a key twice,
    /// which etcd refuses too: the key's version would move twice at one
    /// revision.
    #[error("key {0:?} is written more than once in one branch of the transaction")]
    DuplicateTxnKey(String),
    /// A prefix delete's limit out of bounds.
    #[error("a prefix delete's limit must be between 1 and {max}, got {limit}")]
    DeleteLimit { limit: u32, max: u32 },
    /// A snapshot could not be read from where it is streamed from.
    #[error("snapshot could not be read: {0}")]
    SnapshotRead(String),
}

//! Why storage refused or failed.
//!
//! These errors end up in front of an operator, usually at start-up, so each
//! message says what is wrong and where, in words, rather than echoing a code.

use std::path::PathBuf;

/// A failure of a [`LogStore`](super::LogStore) operation.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file system refused an operation on the data directory.
    #[error("cannot use data directory {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    /// The database file of the older layout could not be opened
    /// (unreadable, not a database, ...).
    #[error("cannot open database {}: {source}", path.display())]
    Open {
        path: PathBuf,
        source: redb::DatabaseError,
    },

    /// Another process has the data directory open.
    #[error(
        "data directory {} is in use by another process (is another phxkv running on it?)",
        dir.display()
    )]
    Locked { dir: PathBuf },

    /// The database of the older layout failed while being read.
    #[error("database error: {0}")]
    Database(#[from] redb::Error),

    /// A stored record could not be decoded; the data on disk is damaged or
    /// was written by an incompatible version.
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),

    /// The data directory was initialised by a different node of the cluster.
    #[error(
        "data directory {} belongs to node {found:?} of cluster {cluster:?}, not node {expected:?}; refusing to start",
        dir.display()
    )]
    WrongNode {
        dir: PathBuf,
        cluster: String,
        expected: String,
        found: String,
    },

    /// The operating system could not supply randomness for a new
    /// directory's incarnation id.
    #[error("cannot draw a random incarnation id for a new data directory: {0}")]
    Random(String),

    /// The data directory was initialised by a node of a different cluster.
    #[error(
        "data directory {} belongs to cluster {found:?}, not cluster {expected:?}; refusing to start",
        dir.display()
    )]
    WrongCluster {
        dir: PathBuf,
        expected: String,
        found: String,
    },
}

// redb reports each phase (transaction, table, commit...) with its own error
// type; they all fold into its umbrella `Error`, which is what we keep.
macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Database(e.into())
            }
        }
    )*};
}

from_redb!(
    redb::StorageError,
    redb::TransactionError,
    redb::TableError,
    redb::CommitError,
    redb::SetDurabilityError
);

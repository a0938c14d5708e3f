//! The key-value state machine that chosen commands are applied to.

pub mod bytes;
pub mod dedup;
pub mod error;
pub mod lease;
pub mod limits;
pub mod op;
pub mod snapshot;
pub mod snapshot_stream;
pub mod store;
pub mod timeline;
pub mod watch;

#[cfg(test)]
mod testutil;

pub use dedup::DEFAULT_DEDUP_CAPACITY;
pub use error::KvError;
pub use lease::{LeaseInfo, LeaseOp, LeaseTimers};
pub use limits::Limits;
pub use op::*;
pub use snapshot::StoreSnapshot;
pub use snapshot_stream::{SnapshotAbandoned, SnapshotStart};
pub use store::{
    DEFAULT_RANGE_LIMIT, KeyValue, OpResult, RangeRequest, RangeResult, Store, StoreConfig,
    TxnResponse,
};
pub use watch::{Event, EventKind};

//! Shorthands shared by the store's tests.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::kv::{Expect, Op, OpResult, Store};
use crate::paxos::types::RequestId;

/// A request id no other test uses, so tests never trip deduplication by accident.
pub(crate) fn fresh_id() -> RequestId {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    RequestId {
        client: 1,
        seq: NEXT.fetch_add(1, Ordering::Relaxed),
    }
}

pub(crate) fn put(key: &[u8], value: &[u8]) -> Op {
    Op::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        expect: None,
    }
}

pub(crate) fn put_if(key: &[u8], value: &[u8], expect: Expect) -> Op {
    Op::Put {
        key: key.to_vec(),
        value: value.to_vec(),
        expect: Some(expect),
    }
}

pub(crate) fn del(key: &[u8]) -> Op {
    Op::Delete {
        key: key.to_vec(),
        expect: None,
    }
}

pub(crate) fn del_if(key: &[u8], expect: Expect) -> Op {
    Op::Delete {
        key: key.to_vec(),
        expect: Some(expect),
    }
}

/// Applies `op` under a fresh request id.
pub(crate) fn run(store: &mut Store, op: &Op) -> OpResult {
    store.apply(fresh_id(), op)
}

//! What the store's per-key overhead ([`phxkv::kv::store::KEY_OVERHEAD_BYTES`])
//! stands for, measured: the store quota counts each key's bytes plus that
//! constant so that it bounds memory, which it only does while the constant
//! is close to what a key really costs. This fills a store with a million
//! small keys (where the overhead dominates) and compares the growth of
//! this process's resident memory with what the quota counted.
//!
//! Alone in its file, so that it runs in a process of its own: other tests'
//! allocations would blur the measurement.

use phxkv::kv::{Op, Store, StoreConfig};
use phxkv::paxos::types::RequestId;

/// Resident memory of this process, in bytes; `None` where `/proc` is not.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

#[test]
fn the_quota_counts_about_what_small_keys_take_in_memory() {
    let Some(before) = resident_bytes() else {
        eprintln!("SKIPPED: no /proc/self/statm to measure memory with");
        return;
    };
    // A history and a deduplication table too small to matter, so that
    // only the keys themselves grow.
    let mut store = Store::with_config(StoreConfig {
        dedup_capacity: 16,
        history_max_events: 16,
        history_max_bytes: 1 << 16,
    });
    let keys = 1_000_000u64;
    for i in 0..keys {
        let op = Op::Put {
            key: format!("key/{i:010}").into_bytes(),
            value: format!("{i:08}").into_bytes(),
            expect: None,
        };
        store.apply(
            RequestId {
                client: 1,
                seq: i + 1,
            },
            &op,
        );
    }
    let after = resident_bytes().unwrap_or(before);
    let held = after.saturating_sub(before);
    let counted = store.size_bytes() as u64;
    let ratio = held as f64 / counted as f64;
    eprintln!(
        "{keys} keys: {} bytes of keys and values, counted {counted}, resident growth {held} \
         ({ratio:.2} of counted)",
        store.data_bytes()
    );
    // Without the overhead the count was an eighth of the memory held.
    assert!(
        (0.7..=1.4).contains(&ratio),
        "the store holds {held} bytes for {counted} counted: KEY_OVERHEAD_BYTES no longer \
         says what a key costs"
    );
}

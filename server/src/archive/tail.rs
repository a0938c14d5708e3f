//! The latest applied log entries, kept for the archiver.
//!
//! The driver pushes every entry it applies, in index order, while it holds
//! the state machine's lock; so a snapshot begun at applied index `b` is
//! followed in the tail by `b+1`, `b+2`, … (unless the tail loses them, which
//! [`Tail::from`] reports). The tail only ever holds consecutive indexes: an
//! entry that does not follow the last one (a snapshot was installed, the
//! node restarted) starts it afresh. It is bounded in bytes; the oldest
//! entries go first.

use std::collections::VecDeque;
use std::sync::Mutex;

use super::segment::Entry;

#[derive(Debug)]
pub struct Tail {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    entries: VecDeque<Entry>,
    bytes: usize,
    cap: usize,
}

/// What [`Tail::from`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Slice {
    /// Entries from the index asked for, in order (possibly none yet).
    Entries(Vec<Entry>),
    /// The index asked for is no longer (or not yet known to be) here: the
    /// oldest entry held is `oldest` (`None`: the tail is empty and the
    /// index is below what was last dropped).
    Gone { oldest: Option<u64> },
}

impl Slice {
    /// Without the entries past `index`.
    pub fn up_to(self, index: u64) -> Slice {
        match self {
            Slice::Entries(mut entries) => {
                entries.retain(|e| e.index <= index);
                Slice::Entries(entries)
            }
            gone => gone,
        }
    }
}

impl Tail {
    pub fn new(cap_bytes: usize) -> Tail {
        Tail {
            inner: Mutex::new(Inner {
                cap: cap_bytes.max(1),
                ..Inner::default()
            }),
        }
    }

    /// Appends an applied entry.
    pub fn push(&self, entry: Entry) {
        let Ok(mut t) = self.inner.lock() else {
            return;
        };
        if t.entries
            .back()
            .is_some_and(|last| last.index + 1 != entry.index)
        {
            t.entries.clear();
            t.bytes = 0;
        }
        t.bytes += entry.size_hint();
        t.entries.push_back(entry);
        while t.bytes > t.cap && t.entries.len() > 1 {
            if let Some(old) = t.entries.pop_front() {
                t.bytes -= old.size_hint();
            }
        }
    }

    /// Copies of the entries from `index` on, up to about `max_bytes`.
    /// `applied` is the node's applied index: when nothing after `index - 1`
    /// was applied yet, the answer is an empty list, not a gap.
    pub fn from(&self, index: u64, max_bytes: usize, applied: u64) -> Slice {
        let Ok(t) = self.inner.lock() else {
            return Slice::Gone { oldest: None };
        };
        // Not applied here yet (a new master still applying what the old
        // one archived): it will be pushed when it is.
        if applied < index {
            return Slice::Entries(Vec::new());
        }
        let oldest = t.entries.front().map(|e| e.index);
        match oldest {
            Some(first) if first <= index => {
                let skip = (index - first) as usize;
                let mut out = Vec::new();
                let mut bytes = 0;
                for e in t.entries.iter().skip(skip) {
                    if bytes > max_bytes && !out.is_empty() {
                        break;
                    }
                    bytes += e.size_hint();
                    out.push(e.clone());
                }
                if out.is_empty() {
                    // Applied, yet not here: the tail started afresh after.
                    return Slice::Gone { oldest };
                }
                Slice::Entries(out)
            }
            _ => Slice::Gone { oldest },
        }
    }

    /// A copy of the entry at `index`, if it is still held.
    pub fn entry_at(&self, index: u64) -> Option<Entry> {
        let t = self.inner.lock().ok()?;
        let first = t.entries.front()?.index;
        let at = usize::try_from(index.checked_sub(first)?).ok()?;
        t.entries.get(at).cloned()
    }

    /// Drops the entries the archive holds, now that it ends at `end`,
    /// except the one at `end` itself: a master that lists the archive
    /// again (after an error, say) checks the archive's end against it
    /// (see `archiver::ours_at_end`), and without it would have to take a
    /// new base.
    pub fn release_archived(&self, end: u64) {
        let Ok(mut t) = self.inner.lock() else {
            return;
        };
        while t.entries.front().is_some_and(|e| e.index < end) {
            if let Some(old) = t.entries.pop_front() {
                t.bytes -= old.size_hint();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |t| t.entries.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::paxos::Value;

    fn e(index: u64) -> Entry {
        Entry {
            index,
            time_ms: index,
            value: Value::Noop,
            revision: 0,
            revisions: vec![],
        }
    }

    fn indexes(s: Slice) -> Vec<u64> {
        match s {
            Slice::Entries(v) => v.into_iter().map(|e| e.index).collect(),
            Slice::Gone { oldest } => panic!("gone, oldest {oldest:?}"),
        }
    }

    #[test]
    fn entries_come_back_from_any_held_index_and_release_drops_all_but_the_end() {
        let t = Tail::new(1 << 20);
        for i in 5..10 {
            t.push(e(i));
        }
        assert_eq!(indexes(t.from(7, usize::MAX, 9)), vec![7, 8, 9]);
        assert_eq!(indexes(t.from(10, usize::MAX, 9)), Vec::<u64>::new());
        assert_eq!(t.from(4, usize::MAX, 9), Slice::Gone { oldest: Some(5) });
        t.release_archived(8);
        assert_eq!(indexes(t.from(9, usize::MAX, 9)), vec![9]);
        assert_eq!(
            t.entry_at(8).map(|e| e.index),
            Some(8),
            "the archive's end is kept"
        );
        assert_eq!(t.from(7, usize::MAX, 9), Slice::Gone { oldest: Some(8) });
    }

    #[test]
    fn a_jump_starts_afresh_and_the_cap_drops_the_oldest() {
        let t = Tail::new(1 << 20);
        t.push(e(1));
        t.push(e(2));
        t.push(e(10));
        assert_eq!(t.from(2, usize::MAX, 10), Slice::Gone { oldest: Some(10) });
        let small = Tail::new(e(1).size_hint() * 3);
        for i in 1..=10 {
            small.push(e(i));
        }
        assert_eq!(small.len(), 3);
        assert_eq!(indexes(small.from(8, usize::MAX, 10)), vec![8, 9, 10]);
    }

    #[test]
    fn an_index_not_applied_yet_is_empty_not_gone() {
        let t = Tail::new(1 << 20);
        assert_eq!(indexes(t.from(1, usize::MAX, 0)), Vec::<u64>::new());
        assert_eq!(t.from(1, usize::MAX, 5), Slice::Gone { oldest: None });
        t.push(e(3));
        assert_eq!(indexes(t.from(4, usize::MAX, 3)), Vec::<u64>::new());
        // The archive is ahead of what this node applied: wait, no gap.
        assert_eq!(indexes(t.from(6, usize::MAX, 3)), Vec::<u64>::new());
        // Applied but not held (the tail restarted at 3 after a jump).
        assert_eq!(t.from(2, usize::MAX, 3), Slice::Gone { oldest: Some(3) });
    }
}

//! Merging the archive's small log segments into larger ones.
//!
//! The master uploads what it applied every `--archive-flush-every` (a
//! second by default), so a cluster that writes a little all the time adds
//! 86,400 objects a day to its archive, and one that keeps 30 days holds
//! millions: every whole listing pages through them a thousand at a time,
//! and the object store bills each request. So the master merges them:
//! the segments whose last entry was applied in one window of
//! `--archive-merge-every` (an hour by default, aligned to the epoch) become
//! one segment (or several, of at most [`MAX_MERGED_BYTES`] and
//! [`MAX_MEMBERS`] segments each), once the window has been over for a
//! sixth of its length (late uploads, a deposed master's, are in by then).
//! A window is merged once, when a pass first finds it settled (a new
//! master's first pass lists every segment, and may merge further what a
//! run left in pieces). A light cluster's month is then some 720 objects.
//!
//! **Why no recoverable point is lost.**
//! - A merged segment holds exactly its run's entries: each member is
//!   downloaded and decoded (its checksum checked), must be of this cluster
//!   and hold what its name says (first and last index, consecutive
//!   entries), and where members overlap their entries must agree
//!   (revision and value); only then are the entries concatenated and
//!   encoded like any segment. Restores read it like any other: segments
//!   may overlap, and replay skips what it has (see [`super`]).
//! - A segment is deleted only after the merged segment covering its whole
//!   range was uploaded (the PUT returned; S3 reads after writes are
//!   consistent), and [`DELETE_AFTER`] later: a listing is not a snapshot,
//!   and one that passed the merged segment's key just before it was
//!   uploaded must not then find its members gone, or it would see a gap
//!   that is not there. A merge cut short before the deletion leaves both,
//!   which restores read alike, and a later pass or retention removes them.
//! - A segment inside a run's range that is not one of its members (the
//!   same range uploaded twice) is downloaded and checked too: it must hold
//!   the same entries, or the run is left alone.
//! - Merges that run at once (a deposed master that does not know it yet)
//!   each delete only what their own upload covers. A segment one deletes
//!   is covered by the one it uploaded; that one can be deleted only by a
//!   merge that listed it, so after it was uploaded, and that uploaded a
//!   later segment covering it first. Following that chain forward in time
//!   ends at a segment nobody deleted, so every range stays covered.
//!   Retention deletes only segments that end at or before the oldest base,
//!   which no restore reads, and merges leave those alone.
//! - A restore that planned on a segment deleted meanwhile lists the
//!   archive again and continues from where it stands, and one whose plan
//!   ran out before its target lists again too; one that still ends before
//!   a point it had listed fails rather than restore less
//!   ([`super::restore::replay`]).
//! - Passes stop at the first segment of a window not settled yet; a
//!   master whose clock ran far ahead would hold them up until that window
//!   settles (clocks are assumed within bounds, as for leases).
//!
//! Memory: a merge holds its members' bytes and entries and the merged
//! segment's bytes, a few times [`MAX_MERGED_BYTES`] at most.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::StreamExt as _;
use object_store::ObjectStoreExt as _;

use super::segment::{self, Entry};
use super::{Base, Location, Segment};

/// The largest merged segment, in bytes as stored (the sum of its members').
pub const MAX_MERGED_BYTES: u64 = 16 << 20;
/// The most segments merged into one: an hour of one-second uploads.
pub const MAX_MEMBERS: usize = 3600;
/// Merged segments made in one pass at most; a pass that leaves more says
/// so, and the next comes at once.
const MERGES_PER_PASS: usize = 8;
/// Segments downloaded at once during a merge.
const DOWNLOADS_AT_ONCE: usize = 16;

/// How merging is set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The window whose segments become one (`--archive-merge-every`).
    pub window: Duration,
    pub max_bytes: u64,
    pub max_members: usize,
}

impl Limits {
    pub fn new(window: Duration) -> Limits {
        Limits {
            window,
            max_bytes: MAX_MERGED_BYTES,
            max_members: MAX_MEMBERS,
        }
    }

    fn window_ms(&self) -> u64 {
        (self.window.as_millis() as u64).max(1)
    }

    /// The window a segment belongs to: the one its last entry was applied in.
    fn window_of(&self, seg: &Segment) -> u64 {
        seg.time_ms / self.window_ms()
    }

    /// Whether the window a segment belongs to is over, and has been for a
    /// sixth of its length, at `now_ms`.
    fn settled(&self, seg: &Segment, now_ms: u64) -> bool {
        let end = (self.window_of(seg) + 1).saturating_mul(self.window_ms());
        end.saturating_add(self.window_ms() / 6) <= now_ms
    }

    /// How long after a merge its members are deleted.
    fn delete_after_ms(&self) -> u64 {
        DELETE_AFTER.min(self.window).as_millis() as u64
    }

    /// How often the master looks for windows to merge.
    pub fn pass_every(&self) -> Duration {
        (self.window / 6).clamp(Duration::from_secs(1), Duration::from_secs(300))
    }
}

/// What one pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Merged segments uploaded.
    pub merged: usize,
    /// Segments deleted that merged ones cover (merged in earlier passes).
    pub removed: usize,
    /// Runs left as they were, for a reason logged (a member that could
    /// not be read, or disagrees with another).
    pub skipped: usize,
    /// Runs wait that this pass left for the next.
    pub more: bool,
}

/// A segment as listed, with its size.
#[derive(Clone, Debug)]
struct Listed {
    seg: Segment,
    bytes: u64,
}

/// Segments that become one.
#[derive(Debug)]
struct Run {
    /// Downloaded and concatenated, in index order; each goes past the last.
    members: Vec<Segment>,
    /// Inside the run's range already (a duplicate upload): read to check
    /// they hold the same entries, and deleted with the members.
    contained: Vec<Segment>,
}

/// How long merged segments' members stay after the merged segment is
/// uploaded (or the window, when shorter). A listing is not a snapshot: one
/// that passed the merged segment's key just before it was uploaded, and
/// reached its members after they were deleted, would see a gap that is not
/// there. With the delay, that takes a listing that spends more than a
/// minute between the two: on S3, whose listings come in key order and put
/// a merged segment's members right after it, a page held up that long
/// (retries); on a store that lists out of order (a file system, a
/// directory bucket), a whole listing that long, so a very large archive's.
/// Restores guard against it too: see [`super::restore::replay`].
pub const DELETE_AFTER: Duration = Duration::from_secs(60);
/// Passes in a row that cannot download a member of the same run before
/// it is left alone (one the store will not give: moved to a cold storage
/// class, say). A store that fails uploads or deletions holds merging up
/// until it no longer does: merging without deleting would only add
/// objects.
const FAILURES_BEFORE_SKIPPING: u32 = 3;

/// What a master's merging carries from one pass to the next.
#[derive(Debug, Default)]
pub struct State {
    /// The first index the next pass lists from: everything before it was
    /// merged or left for good. `None`: list from the start.
    pub resume_at: Option<u64>,
    /// Members of merged segments, and when they may be deleted (ms since
    /// the epoch): see [`DELETE_AFTER`]. Kept when the node stops being
    /// master (deleting them is safe whoever does it); lost if it stops.
    /// What they then leave behind is merged again with its merged segment
    /// by a later master's first pass where that fits in the limits, and
    /// otherwise stays, duplicating entries the merged segment holds, until
    /// retention deletes it.
    pending: VecDeque<(u64, Vec<String>)>,
    /// The last index of the run that the last passes failed at, and how
    /// many did.
    failing: Option<(u64, u32)>,
}

/// Merges what is due in the archive at `loc` (of `cluster_id`) at the
/// time `clock` gives (ms since the epoch), listing
/// segments from `state.resume_at` on, and deletes the members of earlier
/// merges once [`DELETE_AFTER`] has passed. `keep_going` is asked before
/// each merge (false once the node is no longer master, or stops). An
/// error (the store did not answer) leaves the rest for the next pass, from
/// the same place; a member that cannot be downloaded
/// [`FAILURES_BEFORE_SKIPPING`] passes in a row, or segments that cannot be
/// merged (one that does not decode, two that disagree), leave their run
/// as it is, with a warning in the log.
pub async fn pass(
    loc: &Location,
    cluster_id: &str,
    limits: Limits,
    state: &mut State,
    clock: &(dyn Fn() -> u64 + Send + Sync),
    keep_going: &(dyn Fn() -> bool + Send + Sync),
) -> Result<Pass, String> {
    let mut done = Pass::default();
    let now_ms = clock();
    while let Some((due, keys)) = state.pending.front() {
        if *due > now_ms {
            break;
        }
        loc.delete_all(keys).await?;
        done.removed += keys.len();
        state.pending.pop_front();
    }
    // Segments that end by the oldest base are retention's to delete, and
    // without a base nothing is restorable to merge for.
    let Some(oldest) = oldest_base(loc).await? else {
        return Ok(done);
    };
    let due = settled_segments(loc, limits, state.resume_at, now_ms, oldest).await?;
    let listed = &due.segments;
    let mut at = 0;
    while at < listed.len() {
        let (run, next) = run_from(listed, at, limits);
        if run.members.len() < 2 && run.contained.is_empty() {
            at = next;
            continue;
        }
        if done.merged + done.skipped >= MERGES_PER_PASS || !keep_going() {
            state.resume_at = Some(listed[at].seg.first);
            done.more = true;
            return Ok(done);
        }
        let run_last = run.members.last().map_or(0, |s| s.last);
        match merge(loc, cluster_id, &run).await {
            Ok(gone) => {
                done.merged += 1;
                // Counted from the upload, which a long pass made well
                // after it began.
                let due = clock().saturating_add(limits.delete_after_ms());
                state.pending.push_back((due, gone));
                state.failing = None;
            }
            Err(Unmerged::Skip(why)) => {
                tracing::warn!(url = %loc.url, error = %why, "a run of log segments was not \
                               merged; its segments stay as they are");
                done.skipped += 1;
            }
            Err(Unmerged::Fail(why)) => {
                state.resume_at = Some(listed[at].seg.first);
                return Err(why);
            }
            Err(Unmerged::Unreadable(why)) => {
                let failed = match state.failing {
                    Some((last, n)) if last == run_last => n + 1,
                    _ => 1,
                };
                if failed < FAILURES_BEFORE_SKIPPING {
                    state.failing = Some((run_last, failed));
                    state.resume_at = Some(listed[at].seg.first);
                    return Err(why);
                }
                tracing::warn!(url = %loc.url, error = %why, "a run of log segments failed to \
                               merge {failed} times; its segments stay as they are");
                state.failing = None;
                done.skipped += 1;
            }
        }
        at = next;
    }
    // Everything listed is done: the next pass starts where this listing
    // stopped, or after the last segment it saw.
    state.resume_at = due
        .stopped_at
        .or_else(|| listed.iter().map(|l| l.seg.last + 1).max())
        .or(state.resume_at);
    done.more = due.budget_spent;
    Ok(done)
}

/// Why a run was not merged.
#[derive(Debug)]
enum Unmerged {
    /// Its segments cannot be merged as they are; they stay.
    Skip(String),
    /// A member could not be downloaded: try again later, and leave the
    /// run alone if that goes on.
    Unreadable(String),
    /// The store failed: try again later.
    Fail(String),
}

/// The index of the archive's oldest base.
async fn oldest_base(loc: &Location) -> Result<Option<u64>, String> {
    let mut listing = loc.store.list(Some(&loc.path("base")));
    let mut oldest: Option<u64> = None;
    while let Some(item) = listing.next().await {
        let meta = item.map_err(|e| format!("listing archive {}: {e}", loc.url))?;
        if let Some(b) = meta
            .location
            .filename()
            .and_then(|f| f.strip_suffix(".backup"))
            .and_then(|n| Base::parse(n, meta.size))
        {
            oldest = Some(oldest.map_or(b.index, |o| o.min(b.index)));
        }
    }
    Ok(oldest)
}

/// Segments a pass keeps from its listing at most, so that its memory is
/// bounded on an archive with a long backlog.
fn listing_budget(limits: Limits) -> usize {
    MERGES_PER_PASS.saturating_mul(limits.max_members) + 1
}

/// What a pass may merge.
#[derive(Debug, Default)]
struct Due {
    /// Segments whose window is settled and that a restore may read, by
    /// first index.
    segments: Vec<Listed>,
    /// The first index from which segments were not taken (not settled yet,
    /// or past the listing budget): the next pass lists from there.
    stopped_at: Option<u64>,
    /// The listing stopped at its budget: more is due.
    budget_spent: bool,
}

/// The segments from `resume_at` on that a pass may merge.
async fn settled_segments(
    loc: &Location,
    limits: Limits,
    resume_at: Option<u64>,
    now_ms: u64,
    oldest_base: u64,
) -> Result<Due, String> {
    let wal = loc.path("wal");
    // `wal/<first:020>` sorts before every segment that starts there.
    let mut listing = match resume_at {
        Some(first) => loc
            .store
            .list_with_offset(Some(&wal), &loc.path(&format!("wal/{first:020}"))),
        None => loc.store.list(Some(&wal)),
    };
    let in_order = loc.lists_in_order();
    let mut due = Due::default();
    let stop_at = |due: &mut Due, first: u64| {
        due.stopped_at = Some(due.stopped_at.map_or(first, |s| s.min(first)));
    };
    while let Some(item) = listing.next().await {
        let meta = item.map_err(|e| format!("listing archive {}: {e}", loc.url))?;
        let Some(seg) = meta.location.filename().and_then(Segment::parse) else {
            continue;
        };
        if resume_at.is_some_and(|r| seg.first < r) {
            continue;
        }
        if !limits.settled(&seg, now_ms) {
            stop_at(&mut due, seg.first);
            // In key order, later segments start later and are newer (but
            // for a deposed master's late one, which a later pass finds).
            if in_order {
                break;
            }
            continue;
        }
        if seg.last <= oldest_base {
            continue;
        }
        if in_order && due.segments.len() >= listing_budget(limits) {
            stop_at(&mut due, seg.first);
            due.budget_spent = true;
            break;
        }
        due.segments.push(Listed {
            bytes: meta.size,
            seg,
        });
        // Out of order, the whole listing is read, but only the budget's
        // worth of the lowest segments is kept.
        if !in_order && due.segments.len() >= 2 * listing_budget(limits) {
            keep_lowest(&mut due, listing_budget(limits));
        }
    }
    keep_lowest(&mut due, listing_budget(limits));
    // What starts at or after the stop is listed again by the next pass
    // (segments that start at one index are never split between two).
    if let Some(stop) = due.stopped_at {
        due.segments.retain(|l| l.seg.first < stop);
    }
    Ok(due)
}

/// Sorts the segments by first index and keeps the `budget` lowest; the
/// listing then stops at the first one dropped.
fn keep_lowest(due: &mut Due, budget: usize) {
    due.segments.sort_by(|a, b| {
        (a.seg.first, a.seg.last, &a.seg.key).cmp(&(b.seg.first, b.seg.last, &b.seg.key))
    });
    if let Some(first_dropped) = due.segments.get(budget).map(|l| l.seg.first) {
        due.segments.truncate(budget);
        due.stopped_at = Some(
            due.stopped_at
                .map_or(first_dropped, |s| s.min(first_dropped)),
        );
        due.budget_spent = true;
    }
}

/// The run that starts at `listed[at]`, and where the next one starts:
/// segments of one window that continue each other without a gap, within
/// the limits.
fn run_from(listed: &[Listed], at: usize, limits: Limits) -> (Run, usize) {
    let head = &listed[at];
    let window = limits.window_of(&head.seg);
    let mut run = Run {
        members: vec![head.seg.clone()],
        contained: Vec::new(),
    };
    let mut end = head.seg.last;
    let mut bytes = head.bytes;
    let mut next = at + 1;
    while let Some(l) = listed.get(next) {
        if l.seg.last <= end {
            // Sorted by first index: it starts inside the run too.
            run.contained.push(l.seg.clone());
        } else if l.seg.first > end + 1
            || limits.window_of(&l.seg) != window
            || bytes.saturating_add(l.bytes) > limits.max_bytes
            || run.members.len() >= limits.max_members
        {
            break;
        } else {
            end = l.seg.last;
            bytes += l.bytes;
            run.members.push(l.seg.clone());
        }
        next += 1;
    }
    (run, next)
}

/// Merges one run: downloads and checks its members and the segments it
/// contains, and uploads the merged segment. The keys of the segments it
/// covers, to delete.
async fn merge(loc: &Location, cluster_id: &str, run: &Run) -> Result<Vec<String>, Unmerged> {
    // The contained come last: every entry they hold is in the members'
    // range, so `append` only checks that it is the same.
    let downloads: Vec<_> = run
        .members
        .iter()
        .chain(&run.contained)
        .map(|seg| download(loc, seg.clone()))
        .collect();
    let mut downloads = futures_util::stream::iter(downloads).buffered(DOWNLOADS_AT_ONCE);
    let mut entries: Vec<Entry> = Vec::new();
    while let Some(got) = downloads.next().await {
        let (seg, bytes) = got?;
        let skip = |why: String| Unmerged::Skip(format!("{}: {why}", seg.key));
        let (from, theirs) = segment::decode(&bytes).map_err(skip)?;
        if from != cluster_id {
            return Err(skip(format!("a segment of cluster {from}")));
        }
        let (Some(first), Some(last)) = (theirs.first(), theirs.last()) else {
            return Err(skip("an empty segment".into()));
        };
        let says = (seg.first, seg.last, seg.revision, seg.time_ms);
        if (first.index, last.index, last.revision, last.time_ms) != says {
            return Err(skip(format!(
                "holds entries {}..={} at revision {}, not what its name says",
                first.index, last.index, last.revision
            )));
        }
        append(&mut entries, theirs).map_err(skip)?;
    }
    let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
        return Err(Unmerged::Skip("nothing to merge".into()));
    };
    let key = Segment::object_name(first.index, last.index, last.revision, last.time_ms);
    let count = entries.len();
    let body = segment::encode(cluster_id, entries).map_err(Unmerged::Skip)?;
    let size = body.len();
    loc.store
        .put(&loc.path(&key), body.into())
        .await
        .map_err(|e| Unmerged::Fail(format!("uploading {key} to {}: {e}", loc.url)))?;
    // Only now, with the merged segment in the store, may its members go.
    let gone: Vec<String> = run
        .members
        .iter()
        .chain(&run.contained)
        .map(|s| s.key.clone())
        .filter(|k| *k != key)
        .collect();
    tracing::debug!(url = %loc.url, merged = %key, entries = count, bytes = size,
                    segments = gone.len(), "merged log segments");
    Ok(gone)
}

/// A member's bytes.
async fn download(loc: &Location, seg: Segment) -> Result<(Segment, axum::body::Bytes), Unmerged> {
    let got = match loc.store.get(&loc.path(&seg.key)).await {
        Ok(got) => got,
        // Merged or deleted by another pass meanwhile (a deposed master's,
        // or retention's).
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Unmerged::Skip(format!("{} is gone", seg.key)));
        }
        Err(e) => {
            return Err(Unmerged::Unreadable(format!(
                "downloading {}: {e}",
                seg.key
            )));
        }
    };
    let bytes = got
        .bytes()
        .await
        .map_err(|e| Unmerged::Unreadable(format!("downloading {}: {e}", seg.key)))?;
    Ok((seg, bytes))
}

/// Appends `more` (consecutive entries) to `entries`: the ones it already
/// holds must be the same, the rest must continue it.
fn append(entries: &mut Vec<Entry>, more: Vec<Entry>) -> Result<(), String> {
    for e in more {
        let Some(last) = entries.last() else {
            entries.push(e);
            continue;
        };
        if e.index > last.index + 1 {
            return Err(format!(
                "starts at entry {}, after a gap from {}",
                e.index, last.index
            ));
        }
        if e.index == last.index + 1 {
            entries.push(e);
            continue;
        }
        let held = last
            .index
            .checked_sub(e.index)
            .and_then(|back| entries.len().checked_sub(1 + back as usize))
            .and_then(|at| entries.get(at));
        match held {
            Some(h) if h.index == e.index && h.revision == e.revision && h.value == e.value => {}
            _ => {
                return Err(format!(
                    "its entry {} differs from the one another segment holds",
                    e.index
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(first: u64, last: u64, time_ms: u64, bytes: u64) -> Listed {
        let name = Segment::object_name(first, last, last, time_ms);
        Listed {
            seg: Segment::parse(name.trim_start_matches("wal/")).expect("parse"),
            bytes,
        }
    }

    fn limits() -> Limits {
        Limits {
            window: Duration::from_millis(100),
            max_bytes: 100,
            max_members: 3,
        }
    }

    fn runs(listed: &[Listed]) -> Vec<(Vec<u64>, Vec<u64>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < listed.len() {
            let (run, next) = run_from(listed, at, limits());
            out.push((
                run.members.iter().map(|s| s.first).collect(),
                run.contained.iter().map(|s| s.first).collect(),
            ));
            at = next;
        }
        out
    }

    #[test]
    fn runs_stop_at_gaps_windows_and_limits_and_take_duplicates_along() {
        let listed = vec![
            listed(1, 5, 10, 10),
            listed(1, 5, 11, 10), // the same range uploaded twice
            listed(4, 8, 20, 10), // overlaps the run's end
            listed(9, 9, 30, 10),
            listed(10, 12, 40, 10), // a fourth member: over the count
            listed(13, 14, 50, 10),
            listed(16, 20, 60, 10),  // after a gap
            listed(21, 22, 150, 10), // another window
            listed(23, 24, 160, 95), // over the bytes
        ];
        assert_eq!(
            runs(&listed),
            vec![
                (vec![1, 4, 9], vec![1]),
                (vec![10, 13], vec![]),
                (vec![16], vec![]),
                (vec![21], vec![]),
                (vec![23], vec![]),
            ]
        );
    }

    #[test]
    fn a_window_is_settled_a_sixth_of_it_after_it_ends() {
        let l = limits();
        let seg = listed(1, 2, 150, 1).seg;
        assert!(!l.settled(&seg, 200));
        assert!(!l.settled(&seg, 215));
        assert!(l.settled(&seg, 216));
        assert_eq!(
            Limits::new(Duration::from_secs(3600)).pass_every(),
            Duration::from_secs(300)
        );
    }

    fn entry(index: u64, revision: u64) -> Entry {
        Entry {
            index,
            time_ms: index,
            value: crate::paxos::Value::Noop,
            revision,
            revisions: vec![],
        }
    }

    /// An archive in a temporary directory with a base at index 1.
    async fn archive() -> (tempfile::TempDir, Location) {
        let dir = tempfile::tempdir().expect("tempdir");
        let loc = Location::open(&format!("file://{}", dir.path().display()), None).expect("open");
        let base = format!("base/{}.backup", Base::object_name(1, 1, 1));
        loc.store
            .put(&loc.path(&base), b"x".to_vec().into())
            .await
            .expect("put");
        (dir, loc)
    }

    /// Uploads a segment of entries `first..=last` applied at `time_ms`,
    /// each at the revision of its index plus `shift` (0: this history).
    async fn upload_shifted(
        loc: &Location,
        first: u64,
        last: u64,
        time_ms: u64,
        shift: u64,
    ) -> String {
        let entries: Vec<Entry> = (first..=last)
            .map(|i| Entry {
                time_ms,
                ..entry(i, i + shift)
            })
            .collect();
        let key = Segment::object_name(first, last, last + shift, time_ms);
        let body = segment::encode("c", entries).expect("encode");
        loc.store
            .put(&loc.path(&key), body.into())
            .await
            .expect("put");
        key
    }

    /// Uploads a segment of this history's entries `first..=last`.
    async fn upload(loc: &Location, first: u64, last: u64, time_ms: u64) -> String {
        upload_shifted(loc, first, last, time_ms, 0).await
    }

    async fn keys(loc: &Location) -> Vec<String> {
        let mut keys: Vec<String> = super::super::Catalog::list(loc)
            .await
            .expect("list")
            .segments
            .into_iter()
            .map(|s| s.key)
            .collect();
        keys.sort();
        keys
    }

    fn hour() -> Limits {
        Limits::new(Duration::from_secs(3600))
    }

    #[tokio::test]
    async fn a_run_with_an_unreadable_member_is_left_as_it_is() {
        let (_dir, loc) = archive().await;
        upload(&loc, 2, 3, 10).await;
        let bad = upload(&loc, 4, 5, 10).await;
        upload(&loc, 6, 7, 10).await;
        let mut bytes = loc
            .store
            .get(&loc.path(&bad))
            .await
            .expect("get")
            .bytes()
            .await
            .expect("bytes")
            .to_vec();
        let at = bytes.len() / 2;
        bytes[at] ^= 1;
        loc.store
            .put(&loc.path(&bad), bytes.into())
            .await
            .expect("put");
        let before = keys(&loc).await;
        let pass = pass_of(&loc, "c").await;
        assert_eq!((pass.merged, pass.skipped, pass.removed), (0, 1, 0));
        assert_eq!(keys(&loc).await, before);
        // A member of another cluster is left alone the same way.
        let pass = pass_of(&loc, "other").await;
        assert_eq!((pass.merged, pass.skipped), (0, 1));
        assert_eq!(keys(&loc).await, before);
    }

    /// A pass from the start, and a second once members may be deleted.
    async fn pass_of(loc: &Location, cluster: &str) -> Pass {
        let mut state = State::default();
        let now = 10_000_000;
        let mut done = pass(loc, cluster, hour(), &mut state, &|| now, &|| true)
            .await
            .expect("pass");
        let later = now + DELETE_AFTER.as_millis() as u64;
        let then = pass(loc, cluster, hour(), &mut state, &|| later, &|| true)
            .await
            .expect("pass");
        done.removed += then.removed;
        done
    }

    #[tokio::test]
    async fn members_that_disagree_are_left_as_they_are() {
        let (_dir, loc) = archive().await;
        upload(&loc, 2, 5, 10).await;
        // Entries 4 and 5 again, with other revisions: not the same history.
        upload_shifted(&loc, 4, 8, 10, 100).await;
        let before = keys(&loc).await;
        let pass = pass_of(&loc, "c").await;
        assert_eq!((pass.merged, pass.skipped), (0, 1));
        assert_eq!(keys(&loc).await, before);
    }

    #[tokio::test]
    async fn windows_not_settled_wait_and_the_next_pass_resumes_there() {
        let (_dir, loc) = archive().await;
        let hour_ms = 3_600_000;
        // Three segments in the first hour, two in the second.
        for (first, time) in [
            (2, 10),
            (4, 20),
            (6, 30),
            (8, hour_ms + 10),
            (10, hour_ms + 20),
        ] {
            upload(&loc, first, first + 1, time).await;
        }
        // Ten minutes after the first hour: only it has settled.
        let now = hour_ms + hour_ms / 6;
        let mut state = State::default();
        let first = pass(&loc, "c", hour(), &mut state, &|| now, &|| true)
            .await
            .expect("pass");
        assert_eq!((first.merged, first.removed), (1, 0));
        assert_eq!(state.resume_at, Some(8));
        let merged = Segment::object_name(2, 7, 7, 30);
        assert_eq!(keys(&loc).await.len(), 6, "the members are still there");
        // Not yet settled: nothing moves, and the members stay a while.
        let second = pass(&loc, "c", hour(), &mut state, &|| now + 1000, &|| true)
            .await
            .expect("pass");
        assert_eq!((second.merged, second.removed), (0, 0));
        assert_eq!(state.resume_at, Some(8));
        let later = 2 * hour_ms + hour_ms / 6;
        // A node no longer master stops before merging; the members of the
        // merge before go all the same.
        let stopped = pass(&loc, "c", hour(), &mut state, &|| later, &|| false)
            .await
            .expect("pass");
        assert_eq!(
            (stopped.merged, stopped.removed, stopped.more),
            (0, 3, true)
        );
        assert_eq!(
            keys(&loc).await,
            vec![
                merged.clone(),
                Segment::object_name(8, 9, 9, hour_ms + 10),
                Segment::object_name(10, 11, 11, hour_ms + 20),
            ]
        );
        let third = pass(&loc, "c", hour(), &mut state, &|| later, &|| true)
            .await
            .expect("pass");
        assert_eq!((third.merged, third.removed), (1, 0));
        assert_eq!(state.resume_at, Some(12));
        let fourth = pass(&loc, "c", hour(), &mut state, &|| later + 60_000, &|| true)
            .await
            .expect("pass");
        assert_eq!(fourth.removed, 2);
        assert_eq!(
            keys(&loc).await,
            vec![merged, Segment::object_name(8, 11, 11, hour_ms + 20)]
        );
    }

    #[tokio::test]
    async fn members_stay_a_minute_after_the_upload_however_long_the_pass_took() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let (_dir, loc) = archive().await;
        upload(&loc, 2, 3, 10).await;
        upload(&loc, 4, 5, 10).await;
        // The pass begins at 10,000 s; its upload ends 100 s later.
        let start = 10_000_000;
        let calls = AtomicU64::new(0);
        let slow = || start + 100_000 * calls.fetch_add(1, Ordering::SeqCst).min(1);
        let mut state = State::default();
        let first = pass(&loc, "c", hour(), &mut state, &slow, &|| true)
            .await
            .expect("pass");
        assert_eq!(first.merged, 1);
        let uploaded = start + 100_000;
        let early = uploaded + DELETE_AFTER.as_millis() as u64 - 1;
        let kept = pass(&loc, "c", hour(), &mut state, &|| early, &|| true)
            .await
            .expect("pass");
        assert_eq!(
            kept.removed, 0,
            "a minute after the pass began is too early"
        );
        let due = pass(&loc, "c", hour(), &mut state, &|| early + 1, &|| true)
            .await
            .expect("pass");
        assert_eq!(due.removed, 2);
    }

    #[tokio::test]
    async fn a_duplicate_inside_a_run_is_checked_and_goes_with_it() {
        let (_dir, loc) = archive().await;
        upload(&loc, 2, 4, 10).await;
        upload(&loc, 5, 7, 10).await;
        // Entries 5 to 6 again (a retried upload), the same ones.
        upload(&loc, 5, 6, 10).await;
        let pass = pass_of(&loc, "c").await;
        assert_eq!((pass.merged, pass.removed), (1, 3));
        assert_eq!(keys(&loc).await, vec![Segment::object_name(2, 7, 7, 10)]);

        // The same range, with entries of another history: left alone.
        let (_dir, loc) = archive().await;
        upload(&loc, 2, 4, 10).await;
        upload(&loc, 5, 7, 10).await;
        upload_shifted(&loc, 5, 6, 10, 50).await;
        let before = keys(&loc).await;
        let pass = pass_of(&loc, "c").await;
        assert_eq!((pass.merged, pass.skipped), (0, 1));
        assert_eq!(keys(&loc).await, before);
    }

    #[test]
    fn overlapping_members_must_agree_and_continue() {
        let mut entries = vec![entry(1, 1), entry(2, 2), entry(3, 3)];
        append(&mut entries, vec![entry(2, 2), entry(3, 3), entry(4, 4)]).expect("agrees");
        assert_eq!(
            entries.iter().map(|e| e.index).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        let err = append(&mut entries.clone(), vec![entry(3, 9)]).expect_err("disagrees");
        assert!(err.contains("entry 3 differs"), "{err}");
        let err = append(&mut entries, vec![entry(6, 6)]).expect_err("a gap");
        assert!(err.contains("after a gap"), "{err}");
    }
}

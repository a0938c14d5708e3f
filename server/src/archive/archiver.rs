//! The archiver: while its node is master, ships log segments and periodic
//! base snapshots to the archive.
//!
//! Each round (every `flush_every`) it works out where the archive ends
//! (listing it when it does not know: after starting, after losing
//! mastership, after an error) and then either
//! - uploads the entries after that end from the [`Tail`], in segments of at
//!   most `segment_bytes`, until it has caught up; or
//! - when the tail no longer holds the entry after the end (or the archive
//!   has no base yet), takes a new base snapshot and continues from it.
//!
//! A base is also taken every `base_every`, so that a restore replays a
//! bounded log. Nothing here decides what is chosen: it only copies chosen
//! entries (see the guarantee in [`super`]). A node that lost mastership but
//! does not know it yet may upload a segment the new master also uploads;
//! both hold the same entries.

use object_store::ObjectStoreExt as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use object_store::WriteMultipart;

use super::segment;
use super::tail::{Slice, Tail};
use super::{Base, Catalog, Claimed, Location, Point, Segment, claim, now_ms, write_marker};
use crate::api::service::BackupStream;
use crate::kv::timeline::Timeline;
use crate::paxos::Value;
use crate::storage::backup_file::{Encoder, FORMAT_VERSION, Header};

/// Segments uploaded in one round at most.
const MAX_SEGMENTS_PER_ROUND: usize = 64;
/// How often an idle cluster (only leases and no-ops applied) uploads.
const IDLE_FLUSH_MS: u64 = 30_000;
/// How long a master behind the archive's end waits before it says so, as
/// an error (in the log and `backup list`): a new master still applying
/// what the old one archived gets there within moments.
const BEHIND_QUIETLY_MS: u64 = 10_000;
/// How often a master whose cluster has no timeline yet (a member's
/// features not known yet, say) tries again to give it one.
const TIMELINE_RETRY_MS: u64 = 60_000;

/// How archiving is set up (`phxkv serve --archive-*`).
#[derive(Clone, Debug)]
pub struct Settings {
    pub url: String,
    pub credentials: Option<PathBuf>,
    /// How often the master takes a base snapshot.
    pub base_every: Duration,
    /// How often the master ships what was applied since the last round.
    pub flush_every: Duration,
    /// The most memory the tail of applied entries may hold.
    pub tail_bytes: usize,
    /// The largest segment (before encoding).
    pub segment_bytes: usize,
    /// How long an archive must have had no new object before a cluster
    /// restored from its end takes it over (see [`claim`]).
    pub takeover_after: Duration,
    /// The window whose segments the master merges into one (see
    /// [`super::merge`]); `None` merges nothing.
    pub merge_every: Option<Duration>,
}

impl Settings {
    pub fn new(url: String) -> Settings {
        Settings {
            url,
            credentials: None,
            base_every: Duration::from_secs(6 * 3600),
            flush_every: Duration::from_secs(1),
            tail_bytes: 64 << 20,
            segment_bytes: 4 << 20,
            takeover_after: Duration::from_secs(120),
            merge_every: Some(Duration::from_secs(3600)),
        }
    }
}

/// Where the archiver stands, for `GET /v1/admin/backups` and metrics.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The archive's end as this node last knew it (while master).
    pub archived_index: Option<u64>,
    pub last_base_ms: Option<u64>,
    /// The last round that left the archive caught up with what was
    /// applied, in ms since the epoch.
    pub last_success_ms: Option<u64>,
    /// The last segment uploaded, in ms since the epoch.
    pub last_upload_ms: Option<u64>,
    pub error: Option<String>,
    /// Since when this master has been behind the archive's end.
    pub behind_since_ms: Option<u64>,
    /// When this master last tried to give its cluster a timeline.
    pub timeline_tried_ms: Option<u64>,
}

/// A node's archive: its location, tail and progress.
#[derive(Debug)]
pub struct Archive {
    pub location: Location,
    pub tail: Tail,
    pub settings: Settings,
    /// The catalog the backup routes and a follower's watch read.
    pub catalog: super::CatalogCache,
    progress: Mutex<Progress>,
}

impl Archive {
    pub fn open(settings: Settings) -> Result<Archive, String> {
        let location = Location::open(&settings.url, settings.credentials.as_deref())?;
        Ok(Archive {
            location,
            tail: Tail::new(settings.tail_bytes),
            settings,
            catalog: super::CatalogCache::default(),
            progress: Mutex::new(Progress::default()),
        })
    }

    pub fn progress(&self) -> Progress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    fn update(&self, f: impl FnOnce(&mut Progress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(&mut p);
        }
    }
}

/// What the archiver needs from its node.
pub trait Source: Send + Sync + 'static {
    /// False once the node is gone: the archiver stops.
    fn alive(&self) -> bool;
    fn cluster_id(&self) -> String;
    fn is_master(&self) -> bool;
    fn applied_index(&self) -> u64;
    /// A consistent snapshot, as for a backup.
    fn snapshot(&self) -> impl Future<Output = Result<BackupStream, String>> + Send;
    fn set_archive_lag(&self, entries: u64, seconds: u64);
    /// The timeline the node's store is on, if it has one yet (see
    /// [`crate::kv::timeline`]).
    fn timeline(&self) -> Option<Timeline>;
    /// Gives the cluster its first timeline through the log, or says why
    /// it cannot yet (a member that does not decode it, no master).
    fn start_timeline(&self) -> impl Future<Output = Result<Timeline, String>> + Send;
}

/// Uploads a base snapshot from `stream`; memory stays bounded (a few
/// multipart chunks) whatever the store's size.
pub async fn upload_base(
    loc: &Location,
    cluster_id: &str,
    mut stream: BackupStream,
) -> Result<Base, String> {
    // After the snapshot began: every entry it holds was applied before.
    let created_ms = now_ms();
    let header = Header {
        format_version: FORMAT_VERSION,
        cluster_id: cluster_id.to_string(),
        revision: stream.revision,
        index: stream.index,
        created_at: created_ms / 1000,
    };
    let name = Base::object_name(stream.index, stream.revision, created_ms);
    let key = format!("base/{name}.backup");
    let path = loc.path(&key);
    let (mut encoder, head) = Encoder::start(&header)?;
    let upload = loc
        .store
        .put_multipart(&path)
        .await
        .map_err(|e| format!("uploading {key} to {}: {e}", loc.url))?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, 8 << 20);
    let mut bytes = head.len() as u64;
    writer.write(&head);
    let outcome: Result<(), String> = async {
        loop {
            match stream.pieces.recv().await {
                Some(Ok(Some(piece))) => {
                    writer
                        .wait_for_capacity(2)
                        .await
                        .map_err(|e| format!("uploading {key}: {e}"))?;
                    let framed = encoder.data(&piece);
                    bytes += framed.len() as u64;
                    writer.write(&framed);
                }
                Some(Ok(None)) => return Ok(()),
                Some(Err(e)) => return Err(format!("taking the snapshot: {e}")),
                None => return Err("the snapshot ended early".into()),
            }
        }
    }
    .await;
    if let Err(e) = outcome {
        let _ = writer.abort().await;
        return Err(e);
    }
    let end = encoder.finish();
    bytes += end.len() as u64;
    writer.write(&end);
    writer
        .finish()
        .await
        .map_err(|e| format!("uploading {key} to {}: {e}", loc.url))?;
    Ok(Base {
        name,
        revision: header.revision,
        index: header.index,
        created_at: header.created_at,
        bytes,
        created_ms,
    })
}

/// Takes and uploads a base now (a one-off backup, or the archiver's).
/// The caller has claimed the archive (see [`claim`]).
pub async fn take_base(archive: &Archive, source: &impl Source) -> Result<Base, String> {
    let cluster_id = source.cluster_id();
    let stream = source.snapshot().await?;
    let base = upload_base(&archive.location, &cluster_id, stream).await?;
    archive.update(|p| p.last_base_ms = Some(base.created_ms));
    tracing::info!(
        base = %base.name,
        revision = base.revision,
        index = base.index,
        bytes = base.bytes,
        "uploaded a base snapshot to the archive"
    );
    Ok(base)
}

/// Whether the archive ends in this cluster's history: the entry at its
/// end, as this node applied it, must be the one archived there (same
/// value, same revision after it). Another history under the same cluster
/// id (a cluster recreated, or restored to an earlier point under its old
/// name) is an error, never continued: segments of one history after a
/// base of another would restore to a state that never existed. `false`
/// when this node no longer holds that entry and cannot tell: a new base
/// is then taken rather than continuing unchecked.
///
/// When the archive ends at a base, only the revision can be compared
/// (the base is not downloaded for it).
async fn ours_at_end(archive: &Archive, catalog: &Catalog, point: Point) -> Result<bool, String> {
    let loc = &archive.location;
    let Some(here) = archive.tail.entry_at(point.index) else {
        return Ok(false);
    };
    let another = |what: &str| {
        format!(
            "the archive at {} ends at index {} with {what} than this cluster applied there: \
             it holds another history with the same cluster id (a cluster recreated, or \
             restored under its old name); give this cluster its own archive location",
            loc.url, point.index
        )
    };
    if here.revision != point.revision {
        return Err(another(&format!(
            "revision {} (this cluster's: {})",
            point.revision, here.revision
        )));
    }
    let Some(last) = catalog
        .segments
        .iter()
        .rev()
        .find(|s| s.last == point.index)
    else {
        return Ok(true);
    };
    let bytes = loc
        .store
        .get(&loc.path(&last.key))
        .await
        .map_err(|e| format!("downloading {} from {}: {e}", last.key, loc.url))?
        .bytes()
        .await
        .map_err(|e| format!("downloading {} from {}: {e}", last.key, loc.url))?;
    let (_, entries) = segment::decode(&bytes).map_err(|e| format!("{}: {e}", last.key))?;
    match entries.iter().find(|e| e.index == point.index) {
        Some(theirs) if theirs.value == here.value => Ok(true),
        _ => Err(another("another entry")),
    }
}

/// Runs until `closing` turns true.
pub async fn run(
    archive: Arc<Archive>,
    source: impl Source,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut end: Option<u64> = None;
    let mut backoff = archive.settings.flush_every;
    // Since when this node has been master without a successful round.
    let mut master_since: Option<u64> = None;
    // While not master: when the archive was last looked at, and whether
    // its standing still was logged.
    let mut watched: Option<std::time::Instant> = None;
    let mut warned_stalled = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closing.changed() => {}
        }
        if *closing.borrow() || !source.alive() {
            return;
        }
        if !source.is_master() {
            // Whoever is master now moves the archive on, and reports the
            // lag. Unless it does not archive at all (started without
            // --archive-url): that is watched from here.
            end = None;
            master_since = None;
            archive.update(|p| {
                p.archived_index = None;
                p.behind_since_ms = None;
            });
            if watched.is_none_or(|t: std::time::Instant| t.elapsed() >= FOLLOWER_WATCH_EVERY) {
                watched = Some(std::time::Instant::now());
                let stalled = stalled_under_another_master(&archive, &source).await;
                match stalled {
                    Some((lag, secs)) => {
                        if !std::mem::replace(&mut warned_stalled, true) {
                            tracing::warn!(
                                url = %archive.location.url,
                                lag_entries = lag,
                                last_upload_secs_ago = secs,
                                "the archive is not moving: nothing was uploaded for {secs} s and \
                                 it is {lag} entries behind what this replica applied; the master \
                                 may not archive (is it started with --archive-url?)"
                            );
                        }
                        source.set_archive_lag(lag, secs);
                    }
                    None => {
                        warned_stalled = false;
                        source.set_archive_lag(0, 0);
                    }
                }
            }
            backoff = archive.settings.flush_every;
            continue;
        }
        watched = None;
        warned_stalled = false;
        let since = *master_since.get_or_insert_with(now_ms);
        // The lag is reported while a round runs too: a round held up by an
        // object store that does not answer (each try waits out its
        // timeout) is when the lag grows, and an alert must see it.
        let result = {
            let this_round = round(&archive, &source, &mut end);
            tokio::pin!(this_round);
            let mut report = tokio::time::interval(LAG_REPORT_EVERY);
            loop {
                tokio::select! {
                    r = &mut this_round => break r,
                    _ = report.tick() => report_lag(&archive, &source, since, None),
                }
            }
        };
        match result {
            Ok(caught_up) => {
                backoff = archive.settings.flush_every;
                archive.update(|p| {
                    p.archived_index = end;
                    if caught_up {
                        p.last_success_ms = Some(now_ms());
                    }
                    p.error = None;
                });
            }
            Err(e) => {
                let e = super::location::tidy_error(&e);
                tracing::warn!(error = %e, url = %archive.location.url, "archiving failed; will retry");
                end = None;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                archive.update(|p| p.error = Some(e));
            }
        }
        report_lag(&archive, &source, since, end);
    }
}

/// Runs until `closing` turns true: while this node is master, its rounds
/// succeed and the archive is marked with its cluster's timeline, merges
/// the log segments of settled windows (see [`super::merge`]).
pub async fn merge_segments(
    archive: Arc<Archive>,
    source: impl Source,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let Some(window) = archive.settings.merge_every else {
        return;
    };
    let limits = super::merge::Limits::new(window);
    let loc = &archive.location;
    let mut state = super::merge::State::default();
    let mut wait = limits.pass_every();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = closing.changed() => {}
        }
        if *closing.borrow() || !source.alive() {
            return;
        }
        wait = limits.pass_every();
        let progress = archive.progress();
        if !source.is_master() || progress.archived_index.is_none() || progress.error.is_some() {
            // A new master lists from the start (its first pass is the
            // only one that lists every segment).
            state.resume_at = None;
            continue;
        }
        let cluster_id = source.cluster_id();
        match super::claimed_already(loc, &cluster_id, source.timeline().as_ref()).await {
            Ok(true) => {}
            // Not this cluster's timeline's (yet): the archiver's rounds
            // sort that out, or report it.
            Ok(false) => continue,
            Err(e) => {
                tracing::debug!(error = %e, "merging waits for the archive's marker");
                continue;
            }
        }
        let keep_going = || source.is_master() && source.alive();
        let pass =
            super::merge::pass(loc, &cluster_id, limits, &mut state, &now_ms, &keep_going).await;
        match pass {
            Ok(done) => {
                if done.merged + done.skipped + done.removed > 0 {
                    tracing::info!(
                        url = %loc.url,
                        merged = done.merged,
                        segments_removed = done.removed,
                        runs_left_alone = done.skipped,
                        "merged log segments in the archive"
                    );
                }
                if done.more {
                    wait = Duration::from_secs(1);
                }
            }
            Err(e) => {
                let e = super::location::tidy_error(&e);
                tracing::warn!(url = %loc.url, error = %e, "merging log segments failed; will retry");
            }
        }
    }
}

/// How often a replica that is not master looks at the archive.
const FOLLOWER_WATCH_EVERY: Duration = Duration::from_secs(60);
/// How long an archive may have had no upload before a replica that is not
/// master reports it as standing still: a master that archives uploads at
/// least every 30 s (lease renewals are entries too).
const STALLED_AFTER_MS: u64 = 90_000;

/// On a replica that is not master: `(lag, seconds)` when the archive has
/// had no upload for [`STALLED_AFTER_MS`] and ends before what this
/// replica applied, as when the master does not archive at all. `None`
/// when it moves, or cannot be listed (the master's archiver reports that).
async fn stalled_under_another_master(
    archive: &Archive,
    source: &impl Source,
) -> Option<(u64, u64)> {
    let catalog = archive.catalog.get(&archive.location).await.ok()?;
    let end = catalog.tail()?;
    let newest = catalog.newest_upload_ms()?;
    let since = now_ms().saturating_sub(newest);
    let lag = source.applied_index().saturating_sub(end.index);
    (since >= STALLED_AFTER_MS && lag > 0).then_some((lag, since / 1000))
}

/// How often the lag is reported while a round runs.
const LAG_REPORT_EVERY: Duration = Duration::from_secs(1);

/// Reports how far the archive is behind what this master applied: from
/// `end` when a round just told it, or else from the last end a round
/// reached (the whole log when none has). The seconds count from the last
/// round that caught up, or from `since` (becoming master) when none has.
fn report_lag(archive: &Archive, source: &impl Source, since: u64, end: Option<u64>) {
    let progress = archive.progress();
    let applied = source.applied_index();
    let end = end.or(progress.archived_index);
    let lag = end.map_or(applied, |e| applied.saturating_sub(e));
    let caught_up = progress.last_success_ms.unwrap_or(0).max(since);
    let stale = now_ms().saturating_sub(caught_up) / 1000;
    source.set_archive_lag(lag, if lag == 0 { 0 } else { stale });
}

/// One round; `end` is the archive's end as known (None: list it). True
/// when it ends caught up with what was applied.
async fn round(
    archive: &Archive,
    source: &impl Source,
    end: &mut Option<u64>,
) -> Result<bool, String> {
    let loc = &archive.location;
    if end.is_some() {
        // Another writer may have taken the archive over since it was
        // listed (a cluster restored from its end), or this cluster may
        // have got its timeline since: either way, list and claim again.
        let marked = super::marked_timeline(loc).await?;
        let ours = source.timeline();
        let retry_timeline = marked.is_none()
            && ours.is_none()
            && archive
                .progress()
                .timeline_tried_ms
                .is_none_or(|t| now_ms().saturating_sub(t) >= TIMELINE_RETRY_MS);
        if retry_timeline {
            archive.update(|p| p.timeline_tried_ms = Some(now_ms()));
        }
        if marked != ours.map(|t| t.id) || retry_timeline {
            *end = None;
        }
    }
    if end.is_none() {
        let timeline = match source.timeline() {
            Some(t) => Some(t),
            None => source
                .start_timeline()
                .await
                .inspect_err(|e| tracing::debug!(error = %e, "no timeline for the cluster yet"))
                .ok(),
        };
        let cluster_id = source.cluster_id();
        let catalog = Catalog::list(loc).await?;
        let tail = catalog.tail();
        let claimed = claim(
            loc,
            &cluster_id,
            timeline.as_ref(),
            &catalog,
            archive.settings.takeover_after,
        )
        .await?;
        archive.update(|p| p.last_base_ms = catalog.bases.last().map(|b| b.created_ms));
        if let Some(point) = tail {
            let behind = point.index > source.applied_index();
            let now = now_ms();
            let mut since = now;
            archive.update(|p| {
                p.behind_since_ms = behind.then(|| *p.behind_since_ms.get_or_insert(now));
                since = p.behind_since_ms.unwrap_or(now);
            });
            if behind && now.saturating_sub(since) < BEHIND_QUIETLY_MS {
                return Ok(false);
            }
            if behind {
                // Not applied here yet (a new master still applying what
                // the old one archived, or a cluster restored to an earlier
                // point under the same id in an archive of an earlier
                // version): nothing to compare with yet.
                return Err(format!(
                    "the archive ends at index {}, past what this node applied ({}): waiting \
                     for this node to get there (if it never does, the archive holds another \
                     history of this cluster: give this cluster its own archive location)",
                    point.index,
                    source.applied_index()
                ));
            }
            if ours_at_end(archive, &catalog, point).await? {
                *end = Some(point.index);
                if claimed == Claimed::Unchecked
                    && let Some(t) = &timeline
                {
                    // Its end is checked to be ours: mark it, so that from
                    // now on the check no longer needs the entry there.
                    write_marker(loc, &cluster_id, Some(t)).await?;
                }
            } else if claimed == Claimed::Ours {
                // On this cluster's timeline: the entries after the end
                // are this cluster's, and a new base continues it.
                tracing::info!(
                    url = %loc.url,
                    archive_end = point.index,
                    "the archive's end is no longer held here; starting from a new base"
                );
            } else {
                tracing::warn!(
                    url = %loc.url,
                    archive_end = point.index,
                    "the archive's end is no longer held here, and the archive is not marked \
                     with this cluster's timeline, so its history cannot be checked; starting \
                     over from a new base"
                );
            }
        } else if claimed == Claimed::Unchecked
            && let Some(t) = &timeline
        {
            write_marker(loc, &cluster_id, Some(t)).await?;
        }
    }
    let mut gap_bases = 0;
    let mut caught_up = false;
    // What was applied when the round began, and no more: entries applied
    // while this round uploads go in the next one. Chasing them instead
    // uploaded a segment after every upload under steady writes, tens of
    // objects a second where `flush_every` promises one.
    let upto = source.applied_index();
    // Bounded, so that a lost mastership or a shutdown is noticed.
    for _ in 0..MAX_SEGMENTS_PER_ROUND {
        let Some(from) = end.map(|e| e + 1) else {
            let base = take_base(archive, source).await?;
            *end = Some(base.index);
            archive.tail.release_archived(base.index);
            continue;
        };
        let upto = upto.max(end.unwrap_or(0));
        match archive
            .tail
            .from(from, archive.settings.segment_bytes, upto)
            .up_to(upto)
        {
            Slice::Entries(entries) if entries.is_empty() => {
                // Behind the archive's end is not caught up: the lag shows.
                caught_up = upto + 1 >= from;
                break;
            }
            Slice::Entries(entries)
                if !entries.iter().any(|e| matches!(e.value, Value::Batch(_)))
                    && archive
                        .progress()
                        .last_upload_ms
                        .is_some_and(|t| now_ms().saturating_sub(t) < IDLE_FLUSH_MS) =>
            {
                // Only leases and no-ops: an idle cluster uploads them now
                // and then, not every round.
                caught_up = true;
                break;
            }
            Slice::Entries(entries) => {
                let last = entries.last().map_or(from, |e| e.index);
                let revision = entries.last().map_or(0, |e| e.revision);
                let time_ms = entries.last().map_or(0, |e| e.time_ms);
                let key = Segment::object_name(from, last, revision, time_ms);
                let body = segment::encode(&source.cluster_id(), entries)?;
                loc.store
                    .put(&loc.path(&key), body.into())
                    .await
                    .map_err(|e| format!("uploading {key} to {}: {e}", loc.url))?;
                *end = Some(last);
                archive.tail.release_archived(last);
                archive.update(|p| p.last_upload_ms = Some(now_ms()));
            }
            Slice::Gone { oldest } => {
                gap_bases += 1;
                if gap_bases > 1 {
                    return Err(format!(
                        "writes outpace archiving: more than the tail's {} bytes were applied \
                         while a base snapshot was uploaded, so the log after it is lost \
                         again; raise --archive-tail-bytes or speed up the object store",
                        archive.settings.tail_bytes
                    ));
                }
                tracing::info!(
                    archive_end = from - 1,
                    oldest_held = ?oldest,
                    "the entries after the archive's end are no longer held; taking a new base"
                );
                let base = take_base(archive, source).await?;
                *end = Some(base.index);
                archive.tail.release_archived(base.index);
            }
        }
    }
    let due = archive.progress().last_base_ms.is_none_or(|t| {
        now_ms().saturating_sub(t) >= archive.settings.base_every.as_millis() as u64
    });
    if due {
        take_base(archive, source).await?;
    }
    Ok(caught_up)
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;
    use crate::archive::read_marker;
    use crate::archive::restore::{self, Target};
    use crate::archive::segment::Entry;
    use crate::kv::{Op, Store};
    use crate::paxos::{Command, RequestId, Value};

    /// A master whose store is applied to by hand, as the driver would.
    struct Fake {
        store: Mutex<Store>,
        master: AtomicBool,
        /// The client id its writes carry: two fakes with different ones
        /// write different histories of the same keys and revisions.
        client: u64,
        /// Whether its cluster takes a timeline (a version that has them).
        timelines: bool,
        /// What `applied_index` says at most: the entries after it in the
        /// tail are as if applied while a round runs.
        seen_up_to: Mutex<Option<u64>>,
    }

    impl Fake {
        /// A cluster of a version before timelines.
        fn new(client: u64) -> Fake {
            Fake {
                store: Mutex::new(Store::new()),
                master: AtomicBool::new(true),
                client,
                timelines: false,
                seen_up_to: Mutex::new(None),
            }
        }

        /// A cluster that takes a timeline when its archiver asks.
        fn with_timelines(client: u64) -> Fake {
            Fake {
                timelines: true,
                ..Fake::new(client)
            }
        }

        /// Applies one batch of `n` puts, pushing it to the tail.
        fn apply(&self, archive: &Archive, n: usize) {
            let mut store = self.store.lock().expect("store");
            let index = store.applied_index() + 1;
            let cmds: Vec<Command> = (0..n)
                .map(|i| Command {
                    id: RequestId {
                        client: self.client,
                        seq: index * 100 + i as u64,
                    },
                    op: Op::Put {
                        key: format!("k{}", (index as usize * 7 + i) % 50).into_bytes(),
                        value: format!("v{index}-{i}").into_bytes(),
                        expect: None,
                    },
                })
                .collect();
            let mut revisions = Vec::new();
            for c in &cmds {
                store.apply(c.id, &c.op);
                revisions.push(store.revision());
            }
            store.set_applied_index(index);
            archive.tail.push(Entry {
                index,
                time_ms: index,
                revision: store.revision(),
                value: Value::Batch(cmds.into()),
                revisions,
            });
        }
    }

    impl Source for Fake {
        fn alive(&self) -> bool {
            true
        }
        fn cluster_id(&self) -> String {
            "c1".into()
        }
        fn is_master(&self) -> bool {
            self.master.load(Ordering::SeqCst)
        }
        fn applied_index(&self) -> u64 {
            let applied = self.store.lock().expect("store").applied_index();
            let cap = *self.seen_up_to.lock().expect("cap");
            cap.map_or(applied, |c| applied.min(c))
        }
        async fn snapshot(&self) -> Result<BackupStream, String> {
            let mut store = self.store.lock().expect("store");
            let (index, revision) = (store.applied_index(), store.revision());
            let start = store.begin_snapshot();
            let (tx, pieces) = tokio::sync::mpsc::channel(1 << 16);
            let _ = tx.try_send(Ok(Some(start.head)));
            loop {
                let mut piece = Vec::new();
                let done = store
                    .snapshot_chunk(start.id, 7, &mut piece)
                    .map_err(|e| e.to_string())?;
                let _ = tx.try_send(Ok(Some(piece)));
                if done {
                    break;
                }
            }
            let _ = tx.try_send(Ok(None));
            Ok(BackupStream {
                cluster_id: "c1".into(),
                index,
                revision,
                pieces,
            })
        }
        fn set_archive_lag(&self, _: u64, _: u64) {}
        fn timeline(&self) -> Option<Timeline> {
            self.store.lock().expect("store").timeline()
        }
        async fn start_timeline(&self) -> Result<Timeline, String> {
            if !self.timelines {
                return Err("an earlier version".into());
            }
            let mut store = self.store.lock().expect("store");
            let id = RequestId {
                client: self.client,
                seq: u64::MAX,
            };
            store.apply(
                id,
                &Op::Timeline {
                    id: format!("{:016x}", self.client),
                },
            );
            store.timeline().ok_or_else(|| "not applied".into())
        }
    }

    /// Keys with their values and mod revisions.
    type Contents = Vec<(Vec<u8>, Vec<u8>, u64)>;

    /// The contents of a store.
    fn contents(store: &Store) -> Contents {
        (0..50)
            .filter_map(|k| {
                let key = format!("k{k}").into_bytes();
                store
                    .get(&key)
                    .map(|kv| (key, kv.value.clone(), kv.mod_revision))
            })
            .collect()
    }

    /// A node at a fixed applied index, recording the lag it is told: a
    /// master whose base snapshot never finishes (as when the object store
    /// stops answering), or a replica that is not master.
    struct Stuck {
        applied: u64,
        lag: Arc<Mutex<Option<(u64, u64)>>>,
        master: bool,
    }

    impl Source for Stuck {
        fn alive(&self) -> bool {
            true
        }
        fn cluster_id(&self) -> String {
            "c1".into()
        }
        fn is_master(&self) -> bool {
            self.master
        }
        fn applied_index(&self) -> u64 {
            self.applied
        }
        async fn snapshot(&self) -> Result<BackupStream, String> {
            std::future::pending().await
        }
        fn set_archive_lag(&self, entries: u64, seconds: u64) {
            *self.lag.lock().expect("lag") = Some((entries, seconds));
        }
        fn timeline(&self) -> Option<Timeline> {
            None
        }
        async fn start_timeline(&self) -> Result<Timeline, String> {
            Err("an earlier version".into())
        }
    }

    #[tokio::test]
    async fn a_replica_that_is_not_master_reports_an_archive_standing_still() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}/a", dir.path().display());
        // A master archived up to index 6 long ago (the fake's entries
        // carry times near the epoch), then stopped archiving.
        let archive = Archive::open(Settings::new(url.clone())).expect("archive");
        let master = Fake::new(1);
        let mut end = None;
        for _ in 0..6 {
            master.apply(&archive, 1);
        }
        assert!(round(&archive, &master, &mut end).await.expect("archived"));
        let catalog = Catalog::list(&archive.location).await.expect("list");
        let base = catalog.bases.last().expect("a base").clone();
        // Its base is fresh: make it as old as the rest.
        let old_name = Base::object_name(base.index, base.revision, 1_000);
        let from = archive.location.path(&format!("base/{}.backup", base.name));
        let to = archive.location.path(&format!("base/{old_name}.backup"));
        archive
            .location
            .store
            .rename(&from, &to)
            .await
            .expect("rename");

        let mut settings = Settings::new(url);
        settings.flush_every = Duration::from_millis(10);
        let watcher = Arc::new(Archive::open(settings).expect("archive"));
        let lag = Arc::new(Mutex::new(None));
        let (close, closing) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(
            watcher,
            Stuck {
                applied: 40,
                lag: lag.clone(),
                master: false,
            },
            closing,
        ));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lag.lock().expect("lag").is_none() {
            assert!(std::time::Instant::now() < deadline, "no lag reported");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let reported = lag.lock().expect("lag").expect("lag");
        assert_eq!(reported.0, 34, "applied 40, archived to 6");
        assert!(reported.1 > 1_000_000, "stale for ages: {reported:?}");
        let _ = close.send(true);
        task.abort();
    }

    #[tokio::test]
    async fn the_lag_is_reported_while_a_round_is_held_up() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::new(format!("file://{}/a", dir.path().display()));
        settings.flush_every = Duration::from_millis(10);
        let archive = Arc::new(Archive::open(settings).expect("archive"));
        let lag = Arc::new(Mutex::new(None));
        let source = Stuck {
            applied: 42,
            lag: lag.clone(),
            master: true,
        };
        let (close, closing) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(run(archive, source, closing));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while lag.lock().expect("lag").is_none() {
            assert!(
                std::time::Instant::now() < deadline,
                "no lag reported while the first round hangs"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(lag.lock().expect("lag").map(|(e, _)| e), Some(42));
        let _ = close.send(true);
        task.abort();
    }

    /// The keys of the objects under the archive's `wal/`.
    async fn segment_keys(archive: &Archive) -> Vec<String> {
        let catalog = Catalog::list(&archive.location).await.expect("list");
        catalog.segments.iter().map(|s| s.key.clone()).collect()
    }

    /// `fake` applies indexes 1 to 10 and archives them: a base at 5, a
    /// segment after. Returns the archive's end as its archiver knows it.
    async fn archive_ten(archive: &Archive, fake: &Fake) -> Option<u64> {
        let mut end = None;
        for n in 1..=10 {
            fake.apply(archive, 1);
            if n == 5 {
                assert!(round(archive, fake, &mut end).await.expect("base"));
            }
        }
        assert!(round(archive, fake, &mut end).await.expect("segment"));
        end
    }

    #[tokio::test]
    async fn another_history_under_the_same_id_is_never_continued() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}/a", dir.path().display());
        // Cluster A archives indexes 1 to 10: a base at 5, a segment after.
        let archive_a = Archive::open(Settings::new(url.clone())).expect("archive");
        let a = Fake::new(1);
        let end = archive_ten(&archive_a, &a).await;
        assert_eq!(end, Some(10));
        let archived = segment_keys(&archive_a).await;

        // A master of A's history that lists the archive again (after an
        // error, or a new master) continues it.
        let mut again = None;
        a.apply(&archive_a, 1);
        assert!(round(&archive_a, &a, &mut again).await.expect("continued"));
        assert_eq!(again, Some(11));

        // Cluster B, under the same id, went its own way from index 5 (a
        // restore to an earlier point): the same keys and revisions, other
        // writes. Behind the archive's end it waits; at it, it refuses.
        let archive_b = Archive::open(Settings::new(url.clone())).expect("archive");
        let b = Fake::new(2);
        for _ in 0..5 {
            b.apply(&archive_b, 1);
        }
        let mut end_b = None;
        assert!(!round(&archive_b, &b, &mut end_b).await.expect("waits"));
        assert_eq!(end_b, None);
        for _ in 0..6 {
            b.apply(&archive_b, 1);
        }
        let err = round(&archive_b, &b, &mut end_b)
            .await
            .expect_err("another history");
        assert!(err.contains("another history"), "{err}");
        let mut expected = archived.clone();
        expected.extend(
            segment_keys(&archive_a)
                .await
                .into_iter()
                .skip(archived.len()),
        );
        assert_eq!(
            segment_keys(&archive_b).await,
            expected,
            "nothing of B's appended"
        );

        // A master that no longer holds the archive's end cannot tell: it
        // starts over from a base of its own rather than append unchecked.
        b.apply(&archive_b, 1);
        archive_b.tail.release_archived(12);
        let mut end_b = None;
        assert!(round(&archive_b, &b, &mut end_b).await.expect("a new base"));
        assert_eq!(end_b, Some(12));
        let catalog = Catalog::list(&archive_b.location).await.expect("list");
        assert_eq!(catalog.bases.last().map(|b| b.index), Some(12));
        assert_eq!(
            segment_keys(&archive_b).await,
            expected,
            "still nothing appended"
        );
    }

    #[tokio::test]
    async fn another_timeline_is_refused_even_where_the_end_cannot_be_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}/a", dir.path().display());
        // Cluster A, on a timeline of its own, archives indexes 1 to 10.
        let archive_a = Archive::open(Settings::new(url.clone())).expect("archive");
        let a = Fake::with_timelines(0xa);
        let mut end = archive_ten(&archive_a, &a).await;
        let a_timeline = a.timeline().expect("A took a timeline");
        let marker = read_marker(&archive_a.location).await.expect("marker");
        assert_eq!(marker.and_then(|m| m.timeline), Some(a_timeline.id.clone()));
        let archived = segment_keys(&archive_a).await;

        // B was restored from A at index 5 and went its own way. Whether or
        // not it still holds the entry at the archive's end (after a
        // restart it does not), it is refused, and appends nothing.
        let archive_b = Archive::open(Settings::new(url.clone())).expect("archive");
        let b = Fake::with_timelines(0xb);
        for _ in 0..5 {
            b.apply(&archive_b, 1);
        }
        b.store.lock().expect("store").apply(
            RequestId {
                client: 0xb,
                seq: 1 << 40,
            },
            &Op::Timeline {
                id: a_timeline.id.clone(),
            },
        );
        b.store
            .lock()
            .expect("store")
            .fork_timeline("000000000000000b");
        for _ in 0..7 {
            b.apply(&archive_b, 1);
        }
        for held in [true, false] {
            if !held {
                archive_b.tail.release_archived(12);
            }
            let mut end_b = None;
            let err = round(&archive_b, &b, &mut end_b)
                .await
                .expect_err("another timeline");
            assert!(
                err.contains("timeline") && err.contains("restored at index 5"),
                "{err}"
            );
        }
        assert_eq!(segment_keys(&archive_b).await, archived, "nothing of B's");

        // C was restored from A's latest point (index 10). While the
        // archive had an upload lately, A may still run: C waits. Once it
        // is quiet, C continues the archive.
        let c = Fake::with_timelines(0xc);
        {
            let mut store = c.store.lock().expect("store");
            *store = Store::restore(a.store.lock().expect("store").snapshot());
            store.fork_timeline("000000000000000c");
        }
        let waiting = Archive::open(Settings::new(url.clone())).expect("archive");
        c.apply(&waiting, 1);
        let err = round(&waiting, &c, &mut None)
            .await
            .expect_err("the archive had an upload moments ago");
        assert!(err.contains("will continue it once"), "{err}");
        let mut quiet = Settings::new(url.clone());
        quiet.takeover_after = Duration::ZERO;
        let archive_c = Archive::open(quiet).expect("archive");
        c.store.lock().expect("store").set_applied_index(10);
        c.apply(&archive_c, 1);
        let mut end_c = None;
        assert!(round(&archive_c, &c, &mut end_c).await.expect("taken over"));
        assert_eq!(end_c, Some(11), "a base of its own, then on");
        let marker = read_marker(&archive_c.location).await.expect("marker");
        assert_eq!(
            marker.as_ref().and_then(|m| m.timeline.as_deref()),
            Some("000000000000000c")
        );
        assert_eq!(
            marker.map(|m| m.format_version),
            Some(2),
            "earlier versions refuse it"
        );
        // A, still running with the archive's end it knew, reads the marker
        // at its next round and is refused.
        assert_eq!(end, Some(10));
        a.apply(&archive_a, 1);
        let err = round(&archive_a, &a, &mut end)
            .await
            .expect_err("A is refused now");
        assert!(err.contains("timeline 000000000000000c"), "{err}");
        assert_eq!(end, None);
    }

    #[tokio::test]
    async fn an_archive_of_an_earlier_version_is_marked_once_its_end_is_checked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}/a", dir.path().display());
        let archive = Archive::open(Settings::new(url)).expect("archive");
        let old = Fake::new(1);
        let mut end = None;
        for _ in 0..4 {
            old.apply(&archive, 1);
        }
        assert!(round(&archive, &old, &mut end).await.expect("archived"));
        let marker = read_marker(&archive.location).await.expect("marker");
        assert_eq!(marker.as_ref().map(|m| m.timeline.clone()), Some(None));
        // The same cluster, upgraded: it takes a timeline, checks the end
        // against what it applied, and marks the archive.
        let upgraded = Fake {
            timelines: true,
            ..old
        };
        upgraded.apply(&archive, 1);
        let mut end = None;
        assert!(
            round(&archive, &upgraded, &mut end)
                .await
                .expect("continued")
        );
        assert_eq!(end, Some(5));
        let timeline = upgraded.timeline().expect("a timeline");
        let marker = read_marker(&archive.location).await.expect("marker");
        assert_eq!(marker.and_then(|m| m.timeline), Some(timeline.id));
    }

    #[tokio::test]
    async fn rounds_ship_the_log_start_over_after_a_gap_and_restore_to_any_revision() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::new(format!("file://{}/a", dir.path().display()));
        // Room for a few batches only: the tail overflows on purpose below.
        settings.tail_bytes = 4 << 10;
        settings.segment_bytes = 1 << 10;
        let archive = Archive::open(settings).expect("archive");
        let fake = Fake::new(1);
        // Every state the store went through, by revision.
        let mut history: Vec<(u64, Contents)> = Vec::new();
        let mut record = |fake: &Fake| {
            let store = fake.store.lock().expect("store");
            history.push((store.revision(), contents(&store)));
        };
        for _ in 0..5 {
            fake.apply(&archive, 3);
        }
        record(&fake);
        let mut end = None;
        // No base yet: the first round takes one.
        assert!(round(&archive, &fake, &mut end).await.expect("round 1"));
        assert_eq!(end, Some(5));
        for _ in 0..4 {
            fake.apply(&archive, 2);
            record(&fake);
        }
        assert!(round(&archive, &fake, &mut end).await.expect("round 2"));
        assert_eq!(end, Some(9));
        // The tail overflows before the next round: a new base follows.
        for _ in 0..60 {
            fake.apply(&archive, 4);
            record(&fake);
        }
        assert!(round(&archive, &fake, &mut end).await.expect("round 3"));
        assert_eq!(end, Some(69));
        for _ in 0..5 {
            fake.apply(&archive, 1);
            record(&fake);
        }
        assert!(round(&archive, &fake, &mut end).await.expect("round 4"));
        assert_eq!(end, Some(74));

        let catalog = Catalog::list(&archive.location).await.expect("list");
        assert_eq!(
            catalog.bases.iter().map(|b| b.index).collect::<Vec<_>>(),
            vec![5, 69]
        );
        let recoverable = catalog.recoverable().expect("recoverable");
        assert_eq!((recoverable.first.index, recoverable.last.index), (5, 74));
        let ranges: Vec<_> = catalog
            .recoverable_ranges()
            .iter()
            .map(|r| (r.first.index, r.last.index))
            .collect();
        assert_eq!(
            ranges,
            vec![(5, 9), (69, 74)],
            "the gap between 9 and 69 shows"
        );
        // Every revision reachable from a base restores to exactly the store
        // as it was then; the ones in the gap are refused.
        // The first base's chain ends at index 9; the second base starts at 69.
        let chain_end = catalog
            .segments
            .iter()
            .find(|s| s.last == 9)
            .map(|s| s.revision)
            .expect("the segment ending at 9");
        let second = catalog.bases[1].revision;
        for (revision, expected) in &history {
            let plan = match restore::plan(&catalog, Target::Revision(*revision)) {
                Ok(plan) => plan,
                Err(e) => {
                    assert!(
                        *revision > chain_end && *revision < second,
                        "revision {revision}: {e}"
                    );
                    assert!(e.contains("falls in a gap"), "{e}");
                    continue;
                }
            };
            let store = restored(&archive, dir.path(), &plan, Target::Revision(*revision)).await;
            assert_eq!(store.revision(), *revision);
            assert_eq!(&contents(&store), expected, "at revision {revision}");
        }
    }

    /// The store `plan` restores to at `target`.
    async fn restored(
        archive: &Archive,
        dir: &std::path::Path,
        plan: &restore::Plan,
        target: Target,
    ) -> Store {
        try_restore(archive, dir, plan, target)
            .await
            .expect("replay")
    }

    /// The store `plan` restores to at `target`, or why it does not.
    async fn try_restore(
        archive: &Archive,
        dir: &std::path::Path,
        plan: &restore::Plan,
        target: Target,
    ) -> Result<Store, String> {
        static FILES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let file = dir.join(format!("base-{}", FILES.fetch_add(1, Ordering::SeqCst)));
        restore::download(&archive.location, &plan.base.key(), &file)
            .await
            .expect("download");
        let bytes = std::fs::read(&file).expect("read");
        let mut decoder = crate::storage::backup_file::Decoder::new();
        let mut image = Vec::new();
        decoder
            .feed(&bytes, &mut |d: &[u8]| {
                image.extend_from_slice(d);
                Ok::<(), String>(())
            })
            .expect("a whole backup");
        let mut store =
            Store::restore_from_reader(&image[..], Default::default()).expect("a store");
        restore::replay(
            &archive.location,
            "c1",
            &plan.segments,
            target,
            &mut store,
            |_, _| {},
        )
        .await?;
        Ok(store)
    }

    #[tokio::test]
    async fn a_round_uploads_what_was_applied_when_it_began_not_what_comes_during_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let archive = Archive::open(Settings::new(format!("file://{}/a", dir.path().display())))
            .expect("open");
        let fake = Fake::new(1);
        for _ in 0..5 {
            fake.apply(&archive, 2);
        }
        let mut end = None;
        assert!(round(&archive, &fake, &mut end).await.expect("round"));
        assert_eq!(end, Some(5));
        // Entries 6 to 10 are in the tail; only 6 to 8 were applied when
        // the next round began.
        for _ in 0..5 {
            fake.apply(&archive, 2);
        }
        *fake.seen_up_to.lock().expect("cap") = Some(8);
        assert!(round(&archive, &fake, &mut end).await.expect("round"));
        assert_eq!(end, Some(8));
        assert_eq!(
            segment_keys(&archive).await,
            vec![Segment::object_name(6, 8, 16, 8)]
        );
        *fake.seen_up_to.lock().expect("cap") = None;
        assert!(round(&archive, &fake, &mut end).await.expect("round"));
        assert_eq!(end, Some(10));
    }

    #[tokio::test]
    async fn merged_segments_restore_every_revision_and_a_restore_under_way_goes_on() {
        use crate::archive::merge;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut settings = Settings::new(format!("file://{}/a", dir.path().display()));
        // Several small segments to each round.
        settings.segment_bytes = 100;
        let archive = Archive::open(settings).expect("archive");
        let loc = &archive.location;
        let fake = Fake::new(1);
        let mut history: Vec<(u64, Contents)> = Vec::new();
        let mut end = None;
        for _ in 0..6 {
            for _ in 0..6 {
                fake.apply(&archive, 2);
                let store = fake.store.lock().expect("store");
                history.push((store.revision(), contents(&store)));
            }
            assert!(round(&archive, &fake, &mut end).await.expect("round"));
        }
        let before = Catalog::list(loc).await.expect("list");
        assert_eq!(before.bases.len(), 1);
        assert!(
            before.segments.len() >= 20,
            "{} segments",
            before.segments.len()
        );
        // A restore planned before the merge, downloading after it.
        let planned = restore::plan(&before, Target::Latest).expect("plan");
        // One planned on a listing that missed the archive's second half
        // (as one that ran while a merge deleted could).
        let half = Catalog {
            segments: before.segments[..before.segments.len() / 2].to_vec(),
            ..before.clone()
        };
        let short = restore::plan(&half, Target::Latest).expect("plan");
        let latest = restored(&archive, dir.path(), &short, Target::Latest).await;
        assert_eq!(
            Some(&contents(&latest)),
            history.last().map(|(_, c)| c),
            "a restore to the latest point looks for more at its end"
        );

        // Segments from the 1970s (the fake's clock) are long settled.
        let limits = merge::Limits {
            window: Duration::from_secs(3600),
            max_bytes: 1 << 20,
            max_members: 4,
        };
        let mut state = merge::State::default();
        let mut merged = 0;
        for _ in 0..10 {
            let pass = merge::pass(loc, "c1", limits, &mut state, &now_ms, &|| true)
                .await
                .expect("pass");
            assert_eq!((pass.skipped, pass.removed), (0, 0));
            merged += pass.merged;
            if !pass.more {
                break;
            }
        }
        // The members stay a while after the merged segments are uploaded.
        let both = Catalog::list(loc).await.expect("list");
        assert_eq!(both.segments.len(), before.segments.len() + merged);
        assert_eq!(both.recoverable_ranges(), before.recoverable_ranges());
        let later = now_ms() + merge::DELETE_AFTER.as_millis() as u64;
        let deleting = merge::pass(loc, "c1", limits, &mut state, &|| later, &|| true)
            .await
            .expect("pass");
        assert_eq!(
            (deleting.merged, deleting.removed),
            (0, before.segments.len())
        );
        let after = Catalog::list(loc).await.expect("list");
        assert_eq!(merged, after.segments.len());
        assert!(
            after.segments.len() * 3 <= before.segments.len(),
            "{} segments merged into {}",
            before.segments.len(),
            after.segments.len()
        );
        assert_eq!(after.recoverable_ranges(), before.recoverable_ranges());
        assert_eq!(after.tail(), before.tail());
        let again = merge::pass(loc, "c1", limits, &mut state, &|| later, &|| true)
            .await
            .expect("pass");
        assert_eq!((again.merged, again.removed), (0, 0), "merged once");

        // The restore planned on segments that are gone lists again.
        let latest = restored(&archive, dir.path(), &planned, Target::Latest).await;
        assert_eq!(
            Some(&contents(&latest)),
            history.last().map(|(_, c)| c),
            "the planned restore reached the end"
        );
        // A plan that reached further than the archive now does (as if a
        // listing raced a merge) fails; it never restores less quietly.
        let end = after.tail().expect("an end").index;
        let base_index = after.bases[0].index;
        let beyond = restore::Plan {
            base: after.bases[0].clone(),
            segments: vec![
                Segment::parse(
                    Segment::object_name(base_index + 1, end + 10, 1, 1).trim_start_matches("wal/"),
                )
                .expect("parse"),
            ],
        };
        let err = try_restore(&archive, dir.path(), &beyond, Target::Latest)
            .await
            .map(|_| ())
            .expect_err("restored less than planned");
        assert!(err.contains("the archive changed"), "{err}");
        // Every revision from the base on restores from the merged segments.
        let base = after.bases[0].revision;
        for (revision, expected) in history.iter().filter(|(r, _)| *r >= base) {
            let plan = restore::plan(&after, Target::Revision(*revision)).expect("plan");
            let store = restored(&archive, dir.path(), &plan, Target::Revision(*revision)).await;
            assert_eq!(&contents(&store), expected, "at revision {revision}");
        }
    }
}

//! Continuous archiving and point-in-time recovery.
//!
//! An archive is a set of objects under one location ([`location`]):
//!
//! ```text
//! archive.json                                   the cluster it belongs to,
//!                                                and the timeline writing it
//! base/<index:020>-r<revision>-t<unix ms>.backup  base snapshots (backup files)
//! wal/<first:020>-<last:020>-r<revision>-t<unix ms>.seg
//!                                                log segments: chosen entries
//!                                                first..=last; the revision
//!                                                and time of the last one
//! ```
//!
//! A base is a backup file ([`crate::storage::backup_file`]) of the store at
//! log index `index`. A segment holds every chosen log entry of its range,
//! each with the wall-clock time the archiving node applied it and the
//! store revision after each of its commands ([`segment`]). Everything a
//! listing needs is in the object names, so listing downloads nothing.
//!
//! **What an archive guarantees.** A point `p` is recoverable when some base
//! has index `b <= p` and segments cover `b+1..=p` without a gap. Replaying
//! segments onto a base reproduces the store exactly at every entry, since
//! entries are chosen values (the same on every replica, by Paxos safety)
//! applied in index order by the same deterministic state machine; the
//! revisions recorded at archive time are checked against the replay's.
//! Segments may overlap (a master change, a retried upload): the entries of
//! an index are the same in every one, and replay skips indexes it has.
//!
//! The master ships ([`archiver`]); every replica keeps the latest applied
//! entries in a bounded [`tail::Tail`] so that a new master continues where
//! the archive stands. When the archive's end is no longer in the tail (the
//! node was behind, an upload failed for long, the tail overflowed) the
//! archiver starts a new base and continues from it.

pub mod archiver;
pub mod location;
pub mod merge;
pub mod restore;
pub mod segment;
pub mod tail;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use object_store::ObjectStoreExt as _;
use serde::{Deserialize, Serialize};

pub use location::Location;

use crate::kv::timeline::Timeline;

/// The object naming the cluster an archive belongs to.
pub const MARKER: &str = "archive.json";
/// The layout this version writes and reads: 2 when `archive.json` names
/// a timeline (an earlier version refuses the archive then), 1 otherwise.
pub const FORMAT_VERSION: u32 = 2;

/// The contents of [`MARKER`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Marker {
    pub format_version: u32,
    pub cluster_id: String,
    /// The timeline that writes here (see [`claim`]); absent in an archive
    /// of an earlier version, until a cluster on a timeline checked its end
    /// and marked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<String>,
}

/// A base snapshot in the archive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Base {
    /// Names the base (`DELETE /v1/admin/backups/{name}`).
    pub name: String,
    /// The store revision it holds.
    pub revision: u64,
    /// The log index it reflects.
    pub index: u64,
    /// When it was taken, in seconds since the Unix epoch.
    pub created_at: u64,
    /// Its size in bytes.
    pub bytes: u64,
    #[serde(skip)]
    #[schema(ignore)]
    pub created_ms: u64,
}

impl Base {
    pub fn object_name(index: u64, revision: u64, created_ms: u64) -> String {
        format!("{index:020}-r{revision}-t{created_ms}")
    }

    /// Parses a base's name (the object's file name without `.backup`).
    pub fn parse(name: &str, bytes: u64) -> Option<Base> {
        let mut parts = name.split('-');
        let index = parts.next()?.parse().ok()?;
        let revision = parts.next()?.strip_prefix('r')?.parse().ok()?;
        let created_ms: u64 = parts.next()?.strip_prefix('t')?.parse().ok()?;
        if parts.next().is_some() {
            return None;
        }
        Some(Base {
            name: name.to_string(),
            revision,
            index,
            created_at: created_ms / 1000,
            bytes,
            created_ms,
        })
    }

    pub fn key(&self) -> String {
        format!("base/{}.backup", self.name)
    }
}

/// A log segment in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub first: u64,
    pub last: u64,
    /// The store revision after its last entry.
    pub revision: u64,
    /// When its last entry was applied, in ms since the Unix epoch.
    pub time_ms: u64,
    pub key: String,
}

impl Segment {
    pub fn object_name(first: u64, last: u64, revision: u64, time_ms: u64) -> String {
        format!("wal/{first:020}-{last:020}-r{revision}-t{time_ms}.seg")
    }

    pub fn parse(file: &str) -> Option<Segment> {
        let stem = file.strip_suffix(".seg")?;
        let mut parts = stem.split('-');
        let first = parts.next()?.parse().ok()?;
        let last = parts.next()?.parse().ok()?;
        let revision = parts.next()?.strip_prefix('r')?.parse().ok()?;
        let time_ms = parts.next()?.strip_prefix('t')?.parse().ok()?;
        if parts.next().is_some() || last < first {
            return None;
        }
        Some(Segment {
            first,
            last,
            revision,
            time_ms,
            key: format!("wal/{file}"),
        })
    }
}

/// A point the archive can restore to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Point {
    pub revision: u64,
    pub index: u64,
    /// Seconds since the Unix epoch.
    pub time: u64,
}

/// The first and last points a restore can reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recoverable {
    pub first: Point,
    pub last: Point,
}

/// What an archive holds, from one listing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Catalog {
    pub marker: Option<Marker>,
    /// Oldest first.
    pub bases: Vec<Base>,
    /// By first index.
    pub segments: Vec<Segment>,
}

impl Catalog {
    /// When the newest object was uploaded (a base's creation, a segment's
    /// last entry), in ms since the epoch; `None` for an empty archive.
    pub fn newest_upload_ms(&self) -> Option<u64> {
        self.bases
            .iter()
            .map(|b| b.created_ms)
            .chain(self.segments.iter().map(|s| s.time_ms))
            .max()
    }

    /// Lists the archive at `loc`, every object of it.
    pub async fn list(loc: &Location) -> Result<Catalog, String> {
        // The marker first: one that cannot be read fails the listing
        // before, not after, what may be thousands of list requests.
        let mut catalog = Catalog {
            marker: read_marker(loc).await?,
            ..Catalog::default()
        };
        let root = (!loc.prefix.as_ref().is_empty()).then_some(&loc.prefix);
        catalog.take_listing(loc, loc.store.list(root)).await?;
        catalog.sort();
        Ok(catalog)
    }

    /// `earlier` brought up to date by listing only what can have changed:
    /// every base (few), and the segments named after the last one it
    /// knows (names sort by first index, and each upload continues past
    /// the archive's end). Segments that end at or before the oldest base
    /// are dropped: no restore reads them, and deleting that base's
    /// predecessor deletes them ([`Catalog::segments_ending_by`] finds any
    /// a deletion cut short left behind). Missed until the next whole
    /// listing: a segment uploaded out of order (one a deposed master
    /// finished after its successor continued), and merges ([`merge`]),
    /// whose merged segments sort before the last one known and whose
    /// members this keeps showing: they cover the same entries, so what
    /// the catalog says can be restored is the same.
    pub async fn list_since(loc: &Location, earlier: &Catalog) -> Result<Catalog, String> {
        let mut catalog = Catalog {
            marker: read_marker(loc).await?,
            segments: earlier.segments.clone(),
            ..Catalog::default()
        };
        let bases = loc.path("base");
        catalog
            .take_listing(loc, loc.store.list(Some(&bases)))
            .await?;
        let wal = loc.path("wal");
        let new_segments = match earlier.segments.last() {
            Some(last) => loc.store.list_with_offset(Some(&wal), &loc.path(&last.key)),
            None => loc.store.list(Some(&wal)),
        };
        catalog.take_listing(loc, new_segments).await?;
        catalog.sort();
        catalog.segments.dedup_by(|a, b| a.key == b.key);
        if let Some(oldest) = catalog.bases.first().map(|b| b.index) {
            catalog.segments.retain(|s| s.last > oldest);
        }
        Ok(catalog)
    }

    /// Adds the bases and segments of a listing of `loc`'s objects.
    async fn take_listing(
        &mut self,
        loc: &Location,
        mut listing: futures_util::stream::BoxStream<
            '_,
            object_store::Result<object_store::ObjectMeta>,
        >,
    ) -> Result<(), String> {
        use futures_util::StreamExt as _;
        while let Some(item) = listing.next().await {
            let meta = item.map_err(|e| format!("listing archive {}: {e}", loc.url))?;
            let rel: Vec<_> = meta
                .location
                .prefix_match(&loc.prefix)
                .map(|parts| parts.map(|p| p.as_ref().to_string()).collect())
                .unwrap_or_default();
            match rel
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .as_slice()
            {
                ["base", file] => {
                    if let Some(b) = file
                        .strip_suffix(".backup")
                        .and_then(|n| Base::parse(n, meta.size))
                    {
                        self.bases.push(b);
                    }
                }
                ["wal", file] => {
                    if let Some(s) = Segment::parse(file) {
                        self.segments.push(s);
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    fn sort(&mut self) {
        self.bases.sort_by_key(|b| (b.index, b.created_ms));
        self.segments
            .sort_by(|a, b| (a.first, a.last, &a.key).cmp(&(b.first, b.last, &b.key)));
    }

    /// The last index the archive covers without a gap from its newest
    /// base (`None` without a base).
    pub fn tail(&self) -> Option<Point> {
        let base = self.bases.last()?;
        Some(match restore::chain(base.index, &self.segments).last() {
            Some(s) => Point {
                revision: s.revision,
                index: s.last,
                time: s.time_ms / 1000,
            },
            None => Point {
                revision: base.revision,
                index: base.index,
                time: base.created_at,
            },
        })
    }

    /// The stretches a restore can reach, oldest first. Each base reaches
    /// as far as the segments after it continue without a gap; stretches
    /// that overlap are one. More than one means gaps: a point after one
    /// stretch's end and before the next one's start cannot be restored
    /// (segments were lost or deleted, or the archiver could not keep up
    /// and a new base was taken).
    pub fn recoverable_ranges(&self) -> Vec<Recoverable> {
        let mut out: Vec<Recoverable> = Vec::new();
        for base in &self.bases {
            let first = Point {
                revision: base.revision,
                index: base.index,
                time: base.created_at,
            };
            let last = restore::chain(base.index, &self.segments)
                .last()
                .map_or(first, |s| Point {
                    revision: s.revision,
                    index: s.last,
                    time: s.time_ms / 1000,
                });
            match out.last_mut() {
                Some(r) if base.index <= r.last.index => {
                    if last.index > r.last.index {
                        r.last = last;
                    }
                }
                _ => out.push(Recoverable { first, last }),
            }
        }
        out
    }

    /// The first and last points a restore can reach (with any gaps
    /// between them: see [`Catalog::recoverable_ranges`]).
    pub fn recoverable(&self) -> Option<Recoverable> {
        let ranges = self.recoverable_ranges();
        Some(Recoverable {
            first: ranges.first()?.first,
            last: ranges.last()?.last,
        })
    }

    /// The segments in the archive at `loc` that end at or before `index`:
    /// what no restore needs once the oldest base is at `index`. Asked of
    /// the store itself, so that segments a deletion cut short left behind
    /// are found by the next. An S3 bucket lists in key order (first
    /// index), so the listing stops at the first segment that starts past
    /// `index`; a directory bucket (`--x-s3`) and other stores do not, and
    /// are listed whole.
    pub async fn segments_ending_by(loc: &Location, index: u64) -> Result<Vec<Segment>, String> {
        use futures_util::StreamExt as _;
        let sorted = loc.lists_in_order();
        let mut listing = loc.store.list(Some(&loc.path("wal")));
        let mut out = Vec::new();
        while let Some(item) = listing.next().await {
            let meta = item.map_err(|e| format!("listing archive {}: {e}", loc.url))?;
            let Some(seg) = meta.location.filename().and_then(Segment::parse) else {
                continue;
            };
            if sorted && seg.first > index {
                break;
            }
            if seg.last <= index {
                out.push(seg);
            }
        }
        Ok(out)
    }
}

/// How long listings brought up to date ([`Catalog::list_since`]) are
/// trusted before the archive is listed whole again.
pub const WHOLE_LISTING_EVERY: Duration = Duration::from_secs(3600);
/// How long after a whole listing failed another is tried.
const WHOLE_LISTING_RETRY: Duration = Duration::from_secs(300);

/// The catalog a replica keeps between listings of its archive.
///
/// A busy cluster uploads a segment every `--archive-flush-every` (one a
/// second by default), so an archive that keeps 30 days holds millions of
/// objects, a thousand to each listing request. Listed whole on every
/// question (`backup list`, the operator's passes, each follower's watch),
/// it would take minutes per answer. This keeps the last catalog and lists
/// only what can have changed since ([`Catalog::list_since`]).
///
/// - The first answer lists the archive whole. After that, once an hour, a
///   whole listing runs in the background while answers go on from the
///   kept catalog; what it missed while it ran is then brought up to date
///   like any answer. A whole listing that fails is tried again 5 minutes
///   later.
/// - A listing runs as a task of its own: a caller that stops waiting (its
///   answer is bounded) does not cut it short, so a first listing that
///   takes longer than one answer still completes for the next.
/// - A caller gets the result of a listing that started after it asked (a
///   base it just took or deleted shows), success or failure: callers that
///   queued behind one listing share the next one, and a failure is not
///   repeated for each of them.
///
/// What reads it: the public backup routes and a follower's watch, for
/// what they report and to find a base to delete. What decides where
/// uploads continue or whether an archive is taken over (the archiver's
/// rounds, [`claim`] when a backup finds the archive not yet its own), what
/// a restore replays, and which segments a deletion removes
/// ([`Catalog::segments_ending_by`]) come from the store itself.
#[derive(Clone, Debug, Default)]
pub struct CatalogCache {
    state: Arc<tokio::sync::Mutex<CacheState>>,
    /// Set while a whole listing runs in the background.
    relisting: Arc<AtomicBool>,
}

#[derive(Debug, Default)]
struct CacheState {
    kept: Option<Kept>,
    /// The last listing that failed: when it started, and why.
    failed: Option<(Instant, String)>,
}

#[derive(Debug)]
struct Kept {
    catalog: Catalog,
    /// When the archive is next listed whole.
    relist_at: Instant,
    /// When the listing that brought the catalog up to date started: it
    /// holds everything uploaded before then.
    at: Instant,
}

impl CatalogCache {
    /// The archive at `loc` as it stands now (see [`CatalogCache`]).
    pub async fn get(&self, loc: &Location) -> Result<Catalog, String> {
        let asked = Instant::now();
        let this = self.clone();
        let loc = loc.clone();
        tokio::spawn(async move { this.answer(&loc, asked).await })
            .await
            .map_err(|e| format!("listing the archive stopped: {e}"))?
    }

    async fn answer(&self, loc: &Location, asked: Instant) -> Result<Catalog, String> {
        let mut state = self.state.lock().await;
        if let Some(k) = &state.kept
            && k.at > asked
        {
            return Ok(k.catalog.clone());
        }
        if let Some((at, why)) = &state.failed
            && *at > asked
        {
            return Err(why.clone());
        }
        let started = Instant::now();
        let listed = match &state.kept {
            Some(k) => {
                if Instant::now() >= k.relist_at {
                    self.relist_in_background(loc);
                }
                Catalog::list_since(loc, &k.catalog)
                    .await
                    .map(|c| (c, k.relist_at))
            }
            None => Catalog::list(loc)
                .await
                .map(|c| (c, started + WHOLE_LISTING_EVERY)),
        };
        match listed {
            Ok((catalog, relist_at)) => {
                state.kept = Some(Kept {
                    catalog: catalog.clone(),
                    relist_at,
                    at: started,
                });
                state.failed = None;
                Ok(catalog)
            }
            Err(why) => {
                state.failed = Some((started, why.clone()));
                Err(why)
            }
        }
    }

    /// Lists the archive whole in a task of its own, unless one runs, and
    /// puts the result (brought up to date) in place of the kept catalog.
    fn relist_in_background(&self, loc: &Location) {
        if self.relisting.swap(true, Ordering::SeqCst) {
            return;
        }
        let this = self.clone();
        let loc = loc.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let whole = Catalog::list(&loc).await;
            let mut state = this.state.lock().await;
            // Uploads and deletions while it listed come in the way every
            // answer's do.
            let fresh = match whole {
                Ok(whole) => Catalog::list_since(&loc, &whole).await,
                Err(e) => Err(e),
            };
            match fresh {
                Ok(catalog) => {
                    state.kept = Some(Kept {
                        catalog,
                        relist_at: started + WHOLE_LISTING_EVERY,
                        at: started,
                    });
                }
                Err(e) => {
                    tracing::warn!(url = %loc.url, error = %e, "listing the whole archive failed; \
                                   answers go on from the catalog kept");
                    if let Some(k) = state.kept.as_mut() {
                        k.relist_at = Instant::now() + WHOLE_LISTING_RETRY;
                    }
                }
            }
            this.relisting.store(false, Ordering::SeqCst);
        });
    }
}

async fn read_marker(loc: &Location) -> Result<Option<Marker>, String> {
    match loc.store.get(&loc.path(MARKER)).await {
        Ok(got) => {
            let bytes = got
                .bytes()
                .await
                .map_err(|e| format!("reading {MARKER} in {}: {e}", loc.url))?;
            let marker: Marker = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{MARKER} in {} is not an archive marker: {e}", loc.url))?;
            Ok(Some(marker))
        }
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(format!("reading {MARKER} in {}: {e}", loc.url)),
    }
}

/// What an archive's marker says about the caller writing to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claimed {
    /// The marker names the caller's timeline: claimed now (an empty
    /// archive), adopted (see [`claim`]), or already so.
    Ours,
    /// The marker or the caller has no timeline (an archive or a cluster
    /// of an earlier version): only the entry at the archive's end can tell
    /// whose history it holds (see `archiver::ours_at_end`).
    Unchecked,
}

/// Makes sure the archive at `loc` (listed as `catalog`) is `cluster_id`'s,
/// and on `timeline`: claims an empty one, refuses one that belongs to
/// another cluster or has a newer layout, and one that another history of
/// this cluster writes to.
///
/// A cluster restored from timeline `a` at index `r` and revision `v`
/// takes over an archive on `a` whose end is exactly `(r, v)` (nothing was
/// archived after the point it was restored from: the way back after
/// losing a whole cluster), once nothing was uploaded there for `quiet`
/// (`--archive-takeover-after`: a running cluster uploads at least every
/// 30 s, its lease renewals, so the one it came from has stopped). Its marker
/// then names the new timeline; the cluster it came from, should it run
/// again, is refused at its next round (the archiver reads the marker
/// every round). Any other archive on another timeline is refused: segments
/// of one history after a base of another would restore to a state that
/// never existed (see [`crate::kv::timeline`]). An archive without a
/// timeline (an earlier version's) is one a restored cluster takes over on
/// the same terms, and any other cluster checks by the entry at its end.
pub async fn claim(
    loc: &Location,
    cluster_id: &str,
    timeline: Option<&Timeline>,
    catalog: &Catalog,
    quiet: std::time::Duration,
) -> Result<Claimed, String> {
    let end = catalog.tail();
    // A restored cluster may take over an archive that ends where it was
    // restored from, and that nobody writes any more.
    let take_over = |ours: &Timeline| -> Result<(), String> {
        let at_end =
            end.is_some_and(|p| p.index == ours.from_index && p.revision == ours.from_revision);
        if !at_end {
            return Err(format!(
                "the archive at {} ends at {}, and this cluster is on {}, at revision {}: it \
                 holds another history of cluster {cluster_id}, so nothing is archived; give \
                 this cluster its own archive location (--archive-url). A cluster restored \
                 from an archive's latest point continues it only while nothing was archived \
                 after that point",
                loc.url,
                end.map_or_else(
                    || "no base".to_string(),
                    |p| format!("index {} revision {}", p.index, p.revision)
                ),
                ours.describe(),
                ours.from_revision
            ));
        }
        let newest = catalog.newest_upload_ms().unwrap_or(0);
        let since = now_ms().saturating_sub(newest);
        if u128::from(since) < quiet.as_millis() {
            return Err(format!(
                "this cluster was restored from the end of the archive at {} and will continue \
                 it once nothing was uploaded there for {} s (--archive-takeover-after; the \
                 last upload was {} s ago): the cluster it came from may still run",
                loc.url,
                quiet.as_secs(),
                since / 1000
            ));
        }
        Ok(())
    };
    match read_marker(loc).await? {
        Some(m) if m.format_version > FORMAT_VERSION => Err(format!(
            "the archive at {} has layout version {}; this version writes {FORMAT_VERSION}",
            loc.url, m.format_version
        )),
        Some(m) if m.cluster_id != cluster_id => Err(format!(
            "the archive at {} belongs to cluster {}, not {cluster_id}; give each cluster its own location",
            loc.url, m.cluster_id
        )),
        Some(m) => match (m.timeline.as_deref(), timeline) {
            (None, Some(ours)) if ours.from_index > 0 && end.is_some() => {
                // Restored, on an archive of an earlier version: only its
                // end can say the restore came from it.
                take_over(ours)?;
                write_marker(loc, cluster_id, Some(ours)).await?;
                Ok(Claimed::Ours)
            }
            (None, _) => Ok(Claimed::Unchecked),
            (Some(theirs), Some(ours)) if theirs == ours.id => Ok(Claimed::Ours),
            (Some(theirs), Some(ours)) if ours.parent.as_deref() == Some(theirs) => {
                take_over(ours)?;
                write_marker(loc, cluster_id, Some(ours)).await?;
                tracing::info!(
                    url = %loc.url,
                    timeline = %ours.id,
                    from = %theirs,
                    index = ours.from_index,
                    "this cluster was restored from the archive's end: it continues the archive"
                );
                Ok(Claimed::Ours)
            }
            (Some(theirs), Some(ours)) => Err(format!(
                "the archive at {} holds timeline {theirs} of cluster {cluster_id}, and this \
                 cluster is on {} (a restore starts a timeline of its own): writing here would \
                 mix two histories, so nothing is archived; give this cluster its own archive \
                 location (--archive-url)",
                loc.url,
                ours.describe(),
            )),
            (Some(theirs), None) => Err(format!(
                "the archive at {} holds timeline {theirs} of cluster {cluster_id}, and this \
                 node knows no timeline of its cluster yet (not applied here yet, or a member \
                 of an earlier version): nothing is archived until it does",
                loc.url
            )),
        },
        None => {
            write_marker(loc, cluster_id, timeline).await?;
            Ok(if timeline.is_some() {
                Claimed::Ours
            } else {
                Claimed::Unchecked
            })
        }
    }
}

/// Whether the archive at `loc` is already `cluster_id`'s on `timeline`,
/// in a layout this version writes: then [`claim`] would answer
/// [`Claimed::Ours`] without looking at the catalog, and a caller needs no
/// listing. False when it would have to look (or refuse).
pub async fn claimed_already(
    loc: &Location,
    cluster_id: &str,
    timeline: Option<&Timeline>,
) -> Result<bool, String> {
    let Some(ours) = timeline else {
        return Ok(false);
    };
    Ok(read_marker(loc).await?.is_some_and(|m| {
        m.format_version <= FORMAT_VERSION
            && m.cluster_id == cluster_id
            && m.timeline.as_deref() == Some(ours.id.as_str())
    }))
}

/// The timeline the marker of the archive at `loc` names, if any.
pub async fn marked_timeline(loc: &Location) -> Result<Option<String>, String> {
    Ok(read_marker(loc).await?.and_then(|m| m.timeline))
}

/// Marks the archive at `loc` as `cluster_id`'s, on `timeline`.
pub async fn write_marker(
    loc: &Location,
    cluster_id: &str,
    timeline: Option<&Timeline>,
) -> Result<(), String> {
    let marker = Marker {
        // An earlier version would write into an archive on any timeline:
        // one that names a timeline has a layout it refuses.
        format_version: if timeline.is_some() {
            FORMAT_VERSION
        } else {
            1
        },
        cluster_id: cluster_id.to_string(),
        timeline: timeline.map(|t| t.id.clone()),
    };
    let body = serde_json::to_vec(&marker).map_err(|e| e.to_string())?;
    loc.store
        .put(&loc.path(MARKER), body.into())
        .await
        .map_err(|e| format!("writing {MARKER} in {}: {e}", loc.url))?;
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(index: u64, revision: u64) -> Base {
        Base::parse(&Base::object_name(index, revision, index * 1000), 10).expect("parse")
    }

    fn seg(first: u64, last: u64) -> Segment {
        Segment::parse(
            Segment::object_name(first, last, last * 2, last * 1000).trim_start_matches("wal/"),
        )
        .expect("parse")
    }

    async fn put(loc: &Location, key: &str) {
        loc.store
            .put(&loc.path(key), b"x".to_vec().into())
            .await
            .expect("put");
    }

    async fn remove(loc: &Location, key: &str) {
        loc.store.delete(&loc.path(key)).await.expect("delete");
    }

    fn names(c: &Catalog) -> (Vec<String>, Vec<String>) {
        (
            c.bases.iter().map(|b| b.name.clone()).collect(),
            c.segments.iter().map(|s| s.key.clone()).collect(),
        )
    }

    #[tokio::test]
    async fn a_kept_catalog_brought_up_to_date_matches_a_whole_listing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        let loc = Location::open(&url, None).expect("open");
        for b in [base(100, 10), base(200, 20)] {
            put(&loc, &b.key()).await;
        }
        for (first, last) in [(1, 50), (51, 120), (121, 180), (181, 250)] {
            put(&loc, &seg(first, last).key).await;
        }
        let cache = CatalogCache::default();
        let first = cache.get(&loc).await.expect("listed whole");
        assert_eq!(
            names(&first),
            names(&Catalog::list(&loc).await.expect("list"))
        );
        assert_eq!(first.segments.len(), 4);

        // The archive moves on: new segments and a base; retention deletes
        // the oldest base and the segments only it needed.
        put(&loc, &seg(251, 300).key).await;
        put(&loc, &seg(301, 320).key).await;
        put(&loc, &base(300, 30).key()).await;
        remove(&loc, &base(100, 10).key()).await;
        for (first, last) in [(1, 50), (51, 120), (121, 180)] {
            remove(&loc, &seg(first, last).key).await;
        }
        let second = cache.get(&loc).await.expect("brought up to date");
        let whole = Catalog::list(&loc).await.expect("list");
        assert_eq!(names(&second), names(&whole));
        assert_eq!(second.recoverable_ranges(), whole.recoverable_ranges());
        assert_eq!(second.tail().map(|p| p.index), Some(320));

        // A segment a deletion cut short left behind: the kept catalog no
        // longer shows it (no restore reads it), and the store still
        // names it to the next deletion.
        put(&loc, &seg(51, 120).key).await;
        let kept = cache.get(&loc).await.expect("brought up to date");
        assert!(!names(&kept).1.contains(&seg(51, 120).key));
        let leftovers = Catalog::segments_ending_by(&loc, 200).await.expect("list");
        assert_eq!(leftovers, vec![seg(51, 120)]);
        remove(&loc, &seg(51, 120).key).await;

        // A segment uploaded out of order (a deposed master's last,
        // finished after its successor went on) is missed until the next
        // whole listing.
        put(&loc, &seg(190, 260).key).await;
        let third = cache.get(&loc).await.expect("brought up to date");
        assert!(!names(&third).1.contains(&seg(190, 260).key));
        assert_eq!(third.tail().map(|p| p.index), Some(320));
    }

    #[tokio::test]
    async fn a_failed_listing_is_shared_not_kept_and_the_next_caller_lists_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        let loc = Location::open(&url, None).expect("open");
        put(&loc, &base(100, 10).key()).await;
        let cache = CatalogCache::default();
        loc.store
            .put(&loc.path(MARKER), b"not json".to_vec().into())
            .await
            .expect("put");
        let err = cache.get(&loc).await.expect_err("an unreadable marker");
        assert!(err.contains("not an archive marker"), "{err}");
        remove(&loc, MARKER).await;
        let listed = cache
            .get(&loc)
            .await
            .expect("listed once the marker is gone");
        assert_eq!(listed.bases.len(), 1);
    }

    #[tokio::test]
    async fn an_archive_is_claimed_already_only_by_its_cluster_on_its_timeline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}", dir.path().display());
        let loc = Location::open(&url, None).expect("open");
        let timeline = |id: &str| Timeline {
            id: id.into(),
            parent: None,
            from_index: 0,
            from_revision: 0,
        };
        let ours = timeline("00000000000000aa");
        assert!(
            !claimed_already(&loc, "c", Some(&ours)).await.expect("read"),
            "no marker yet: claim must look"
        );
        write_marker(&loc, "c", Some(&ours)).await.expect("marker");
        assert!(claimed_already(&loc, "c", Some(&ours)).await.expect("read"));
        assert!(
            !claimed_already(&loc, "other", Some(&ours))
                .await
                .expect("read")
        );
        let theirs = timeline("00000000000000bb");
        assert!(
            !claimed_already(&loc, "c", Some(&theirs))
                .await
                .expect("read")
        );
        assert!(!claimed_already(&loc, "c", None).await.expect("read"));
    }

    #[test]
    fn names_round_trip_and_junk_is_ignored() {
        let b = base(42, 7);
        assert_eq!((b.index, b.revision, b.created_at), (42, 7, 42));
        assert_eq!(b.key(), "base/00000000000000000042-r7-t42000.backup");
        let s = seg(3, 9);
        assert_eq!((s.first, s.last, s.revision, s.time_ms), (3, 9, 18, 9000));
        for junk in ["x", "1-r2", "1-r2-t3-4", "a-r1-t1"] {
            assert!(Base::parse(junk, 0).is_none(), "{junk}");
        }
        assert!(Segment::parse("00000000000000000009-00000000000000000003-r1-t1.seg").is_none());
    }

    #[test]
    fn the_tail_follows_segments_from_the_newest_base_and_stops_at_a_gap() {
        let catalog = Catalog {
            marker: None,
            bases: vec![base(10, 5), base(20, 9)],
            segments: vec![seg(11, 15), seg(16, 25), seg(21, 30), seg(32, 40)],
        };
        let r = catalog.recoverable().expect("recoverable");
        assert_eq!(r.first.index, 10);
        assert_eq!(r.last.index, 30, "segment 32..40 is after a gap");
        assert_eq!(r.last.revision, 60);
        assert_eq!(Catalog::default().recoverable(), None);
    }

    #[test]
    fn recoverable_ranges_show_the_gaps_between_bases() {
        let ranges = |bases: Vec<Base>, segments: Vec<Segment>| {
            Catalog {
                marker: None,
                bases,
                segments,
            }
            .recoverable_ranges()
            .iter()
            .map(|r| (r.first.index, r.last.index))
            .collect::<Vec<_>>()
        };
        // The first base's segments stop at 15; the next base is at 50.
        assert_eq!(
            ranges(
                vec![base(10, 5), base(50, 30)],
                vec![seg(11, 15), seg(51, 60)]
            ),
            vec![(10, 15), (50, 60)]
        );
        // A base inside the first stretch extends it, it does not start one.
        assert_eq!(
            ranges(
                vec![base(10, 5), base(12, 6), base(40, 20)],
                vec![seg(11, 15), seg(16, 25)]
            ),
            vec![(10, 25), (40, 40)]
        );
        // A base with nothing after it is a stretch of one point.
        assert_eq!(ranges(vec![base(10, 5)], vec![]), vec![(10, 10)]);
        assert_eq!(ranges(vec![], vec![seg(1, 5)]), vec![]);
    }
}

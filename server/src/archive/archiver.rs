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
use super::{Base, Catalog, Location, Segment, claim, now_ms};
use crate::api::service::BackupStream;
use crate::storage::backup_file::{Encoder, FORMAT_VERSION, Header};

/// Segments uploaded in one round at most.
const MAX_SEGMENTS_PER_ROUND: usize = 64;

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
        }
    }
}

/// Where the archiver stands, for `GET /v1/admin/backups` and metrics.
#[derive(Clone, Debug, Default)]
pub struct Progress {
    /// The archive's end as this node last knew it (while master).
    pub archived_index: Option<u64>,
    pub last_base_ms: Option<u64>,
    /// The last round that ended without error, in ms since the epoch.
    pub last_success_ms: Option<u64>,
    pub error: Option<String>,
}

/// A node's archive: its location, tail and progress.
#[derive(Debug)]
pub struct Archive {
    pub location: Location,
    pub tail: Tail,
    pub settings: Settings,
    progress: Mutex<Progress>,
}

impl Archive {
    pub fn open(settings: Settings) -> Result<Archive, String> {
        let location = Location::open(&settings.url, settings.credentials.as_deref())?;
        Ok(Archive {
            location,
            tail: Tail::new(settings.tail_bytes),
            settings,
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
pub async fn take_base(archive: &Archive, source: &impl Source) -> Result<Base, String> {
    let cluster_id = source.cluster_id();
    claim(&archive.location, &cluster_id).await?;
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

/// Runs until `closing` turns true.
pub async fn run(
    archive: Arc<Archive>,
    source: impl Source,
    mut closing: tokio::sync::watch::Receiver<bool>,
) {
    let mut end: Option<u64> = None;
    let mut backoff = archive.settings.flush_every;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = closing.changed() => {}
        }
        if *closing.borrow() || !source.alive() {
            return;
        }
        if !source.is_master() {
            // Whoever is master now may move the archive on.
            end = None;
            archive.update(|p| p.archived_index = None);
            backoff = archive.settings.flush_every;
            continue;
        }
        match round(&archive, &source, &mut end).await {
            Ok(()) => {
                backoff = archive.settings.flush_every;
                archive.update(|p| {
                    p.archived_index = end;
                    p.last_success_ms = Some(now_ms());
                    p.error = None;
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, url = %archive.location.url, "archiving failed; will retry");
                end = None;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                archive.update(|p| p.error = Some(e));
            }
        }
        let applied = source.applied_index();
        let lag = end.map_or(applied, |e| applied.saturating_sub(e));
        let stale = archive
            .progress()
            .last_success_ms
            .map_or(0, |t| now_ms().saturating_sub(t) / 1000);
        source.set_archive_lag(lag, if lag == 0 { 0 } else { stale });
    }
}

/// One round; `end` is the archive's end as known (None: list it).
async fn round(
    archive: &Archive,
    source: &impl Source,
    end: &mut Option<u64>,
) -> Result<(), String> {
    let loc = &archive.location;
    if end.is_none() {
        claim(loc, &source.cluster_id()).await?;
        let catalog = Catalog::list(loc).await?;
        archive.update(|p| p.last_base_ms = catalog.bases.last().map(|b| b.created_ms));
        *end = catalog.tail().map(|p| p.index);
    }
    // Bounded, so that a lost mastership or a shutdown is noticed.
    for _ in 0..MAX_SEGMENTS_PER_ROUND {
        let Some(from) = end.map(|e| e + 1) else {
            let base = take_base(archive, source).await?;
            *end = Some(base.index);
            archive.tail.release_through(base.index);
            continue;
        };
        match archive
            .tail
            .from(from, archive.settings.segment_bytes, source.applied_index())
        {
            Slice::Entries(entries) if entries.is_empty() => break,
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
                archive.tail.release_through(last);
            }
            Slice::Gone { oldest } => {
                tracing::info!(
                    archive_end = from - 1,
                    oldest_held = ?oldest,
                    "the entries after the archive's end are no longer held; taking a new base"
                );
                let base = take_base(archive, source).await?;
                *end = Some(base.index);
                archive.tail.release_through(base.index);
            }
        }
    }
    let due = archive.progress().last_base_ms.is_none_or(|t| {
        now_ms().saturating_sub(t) >= archive.settings.base_every.as_millis() as u64
    });
    if due {
        take_base(archive, source).await?;
    }
    Ok(())
}

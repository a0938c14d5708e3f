//! The node's side of archiving: what the archiver reads from the node, and
//! the admin API's backups in the archive.

use object_store::ObjectStoreExt as _;
use std::sync::{Arc, Weak};

use super::{Inner, Node};
use crate::api::service::{BackupList, BackupStream, Service, ServiceError};
use crate::archive::archiver::{self, Archive, Source};
use crate::archive::{Base, Catalog};
use crate::kv::timeline::Timeline;

/// The archiver's view of its node; it does not keep the node alive.
#[derive(Debug)]
pub(super) struct ArchiveSource(pub(super) Weak<Inner>);

impl ArchiveSource {
    fn node(&self) -> Option<Node> {
        self.0.upgrade().map(|inner| Node { inner })
    }
}

impl Source for ArchiveSource {
    fn alive(&self) -> bool {
        self.0.strong_count() > 0
    }

    fn cluster_id(&self) -> String {
        self.node()
            .map(|n| n.inner.cfg.cluster_id.clone())
            .unwrap_or_default()
    }

    fn is_master(&self) -> bool {
        self.node().is_some_and(|n| n.is_master())
    }

    fn applied_index(&self) -> u64 {
        self.node()
            .map_or(0, |n| n.inner.published.borrow().applied)
    }

    async fn snapshot(&self) -> Result<BackupStream, String> {
        let node = self.node().ok_or("the node has stopped")?;
        node.backup().await.map_err(|e| e.to_string())
    }

    fn set_archive_lag(&self, entries: u64, seconds: u64) {
        if let Some(n) = self.node() {
            n.inner.metrics.set_archive_lag(entries, seconds);
        }
    }

    fn timeline(&self) -> Option<Timeline> {
        self.node().and_then(|n| timeline_of(&n))
    }

    async fn start_timeline(&self) -> Result<Timeline, String> {
        let node = self.node().ok_or("the node has stopped")?;
        if !node.members_do(|f| f.timeline) {
            return Err("a member does not know timelines yet (an earlier version)".into());
        }
        let op = crate::kv::Op::Timeline {
            id: Timeline::new_id(),
        };
        node.write(op, None).await.map_err(|e| e.to_string())?;
        // The one applied first stays: read it back rather than assume.
        timeline_of(&node).ok_or_else(|| "the timeline is not applied here yet".into())
    }
}

fn timeline_of(node: &Node) -> Option<Timeline> {
    node.inner.store.read().ok().and_then(|s| s.timeline())
}

fn archive_of(node: &Node) -> Result<Arc<Archive>, ServiceError> {
    node.inner.archive.clone().ok_or_else(|| {
        ServiceError::NoArchive(
            "this node has no archive; start it with --archive-url s3://bucket/prefix".into(),
        )
    })
}

fn unavailable(message: String) -> ServiceError {
    ServiceError::Unavailable {
        message: crate::archive::location::tidy_error(&message),
        retry_after_secs: 5,
    }
}

/// How long an admin call waits for the object store to answer a listing
/// or a delete. The store's client retries a server that does not answer
/// for minutes (right for the archiver, which reports its lag meanwhile);
/// a person or the operator asking about backups is told sooner.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Runs `call` on the archive, or says it did not answer in
/// [`ANSWER_WITHIN`], with the archiver's last error when it has one.
async fn bounded<T>(
    archive: &Archive,
    doing: &str,
    call: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, ServiceError> {
    match tokio::time::timeout(ANSWER_WITHIN, call).await {
        Ok(answer) => answer.map_err(unavailable),
        Err(_) => {
            let last = archive
                .progress()
                .error
                .map(|e| format!("; the archiver's last error: {e}"))
                .unwrap_or_default();
            Err(unavailable(format!(
                "the archive at {} did not answer within {}s while {doing}{last}",
                archive.location.url,
                ANSWER_WITHIN.as_secs()
            )))
        }
    }
}

pub(super) async fn backup(node: &Node) -> Result<Base, ServiceError> {
    let archive = archive_of(node)?;
    // Asked first, and bounded: an object store that does not answer is
    // reported before a snapshot is taken for it.
    let timeline = timeline_of(node);
    bounded(&archive, "reading its marker", async {
        let loc = &archive.location;
        let cluster_id = &node.inner.cfg.cluster_id;
        if crate::archive::claimed_already(loc, cluster_id, timeline.as_ref()).await? {
            return Ok(crate::archive::Claimed::Ours);
        }
        // Whether to take the archive over is decided on a whole listing.
        let catalog = Catalog::list(loc).await?;
        crate::archive::claim(
            &archive.location,
            &node.inner.cfg.cluster_id,
            timeline.as_ref(),
            &catalog,
            archive.settings.takeover_after,
        )
        .await
    })
    .await?;
    let source = ArchiveSource(Arc::downgrade(&node.inner));
    archiver::take_base(&archive, &source)
        .await
        .map_err(unavailable)
}

pub(super) async fn list(node: &Node) -> Result<BackupList, ServiceError> {
    let archive = archive_of(node)?;
    let catalog = bounded(
        &archive,
        "listing it",
        archive.catalog.get(&archive.location),
    )
    .await?;
    let progress = archive.progress();
    let applied = node.inner.published.borrow().applied;
    Ok(BackupList {
        archive_url: archive.location.url.clone(),
        recoverable: catalog.recoverable(),
        recoverable_ranges: catalog.recoverable_ranges(),
        archived_index: progress.archived_index,
        archive_lag: progress
            .archived_index
            .map(|end| applied.saturating_sub(end)),
        archive_error: progress.error,
        backups: catalog.bases,
    })
}

pub(super) async fn delete(node: &Node, name: String) -> Result<(), ServiceError> {
    let archive = archive_of(node)?;
    let loc = &archive.location;
    let catalog = bounded(&archive, "listing it", archive.catalog.get(loc)).await?;
    let Some(base) = catalog.bases.iter().find(|b| b.name == name) else {
        return Err(ServiceError::UnknownBackup(format!(
            "the archive at {} has no backup named {name:?}",
            loc.url
        )));
    };
    // Everything archived since the newest base is restored from it: with
    // it gone the archive would end at the base before, and go on taking
    // segments no restore can reach until the next base is due.
    if catalog
        .bases
        .last()
        .is_some_and(|newest| newest.name == name)
    {
        return Err(ServiceError::Conflict(format!(
            "{name} is the archive's newest backup, which every point archived since it is \
             restored from; take a new one first (POST /v1/admin/backups), then delete this"
        )));
    }
    let deleting = format!("deleting {}", base.key());
    bounded(&archive, &deleting, async {
        loc.store
            .delete(&loc.path(&base.key()))
            .await
            .map_err(|e| format!("{deleting}: {e}"))
    })
    .await?;
    // The segments only bases up to it needed, asked of the store rather
    // than the kept catalog: those a deletion cut short are found again.
    let oldest = catalog
        .bases
        .iter()
        .find(|b| b.name != name)
        .map(|b| b.index);
    if let Some(oldest) = oldest {
        let unneeded = bounded(
            &archive,
            "listing the segments only it needed",
            Catalog::segments_ending_by(loc, oldest),
        )
        .await?;
        let deleting = format!("deleting the {} segments only it needed", unneeded.len());
        let keys: Vec<String> = unneeded.into_iter().map(|s| s.key).collect();
        bounded(&archive, &deleting, async {
            loc.delete_all(&keys)
                .await
                .map_err(|e| format!("{deleting}: {e}"))
        })
        .await?;
    }
    tracing::info!(backup = %name, url = %loc.url, "deleted a backup from the archive");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::archiver::Settings;

    #[tokio::test(start_paused = true)]
    async fn an_archive_that_does_not_answer_is_reported_not_waited_for() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("file://{}/archive", dir.path().display());
        let archive = Archive::open(Settings::new(url.clone())).expect("open");
        let started = tokio::time::Instant::now();
        let err = bounded(
            &archive,
            "listing it",
            std::future::pending::<Result<(), String>>(),
        )
        .await
        .expect_err("never answers");
        assert_eq!(started.elapsed(), ANSWER_WITHIN);
        match err {
            ServiceError::Unavailable { message, .. } => assert_eq!(
                message,
                format!("the archive at {url} did not answer within 30s while listing it")
            ),
            other => panic!("{other:?}"),
        }
        let answered = bounded(&archive, "listing it", async { Ok(7) }).await;
        assert!(matches!(answered, Ok(7)), "{answered:?}");
        let failed = bounded(&archive, "listing it", async { Err::<(), _>("no".into()) }).await;
        assert!(
            matches!(&failed, Err(ServiceError::Unavailable { message, .. }) if message == "no"),
            "{failed:?}"
        );
    }
}

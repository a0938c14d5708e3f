//! Point-in-time recovery from an archive: choose a base, download it,
//! replay log segments onto the store it holds up to the target.
//!
//! The target is the newest state the archive can show that is not past it:
//! - `Latest`: every entry the archive holds without a gap;
//! - `Revision(r)`: every command whose revision is at most `r` (a batch is
//!   cut in the middle if need be), so the store is exactly at revision `r`;
//! - `Time(t)`: every entry the archiving master applied at or before `t`
//!   (its wall clock, so as exact as clocks are synchronised).

use object_store::ObjectStoreExt as _;
use std::path::Path;

use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

use super::segment;
use super::{Base, Catalog, Location, Segment};
use crate::kv::Store;
use crate::paxos::Value;

/// What to restore to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Latest,
    Revision(u64),
    /// Milliseconds since the Unix epoch.
    Time(u64),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Latest => write!(f, "the latest point"),
            Target::Revision(r) => write!(f, "revision {r}"),
            Target::Time(t) => match chrono::DateTime::from_timestamp_millis(*t as i64) {
                Some(at) => write!(f, "{}", at.to_rfc3339()),
                None => write!(f, "{t} ms"),
            },
        }
    }
}

/// A base and the segments that follow it without a gap.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    pub base: Base,
    pub segments: Vec<Segment>,
}

/// The segments that continue `from` without a gap, in order.
pub fn chain(from: u64, segments: &[Segment]) -> Vec<Segment> {
    let mut end = from;
    let mut out = Vec::new();
    for s in segments {
        if s.first <= end + 1 && s.last > end {
            end = s.last;
            out.push(s.clone());
        }
    }
    out
}

/// Chooses the base to start from for `target`.
pub fn plan(catalog: &Catalog, target: Target) -> Result<Plan, String> {
    match &catalog.marker {
        None => {
            return Err(format!(
                "no {} here: not a phxkv archive (or not its root)",
                super::MARKER
            ));
        }
        Some(m) if m.format_version > super::FORMAT_VERSION => {
            return Err(format!(
                "the archive has layout version {}; this version reads {}",
                m.format_version,
                super::FORMAT_VERSION
            ));
        }
        Some(_) => {}
    }
    let Some(first) = catalog.bases.first() else {
        return Err("the archive holds no base snapshot: nothing to restore".into());
    };
    let base = match target {
        Target::Latest => catalog.bases.last(),
        Target::Revision(r) => catalog.bases.iter().rev().find(|b| b.revision <= r),
        Target::Time(t) => catalog.bases.iter().rev().find(|b| b.created_ms <= t),
    };
    let Some(base) = base else {
        return Err(format!(
            "{target} is before the first recoverable point (revision {}, {})",
            first.revision,
            Target::Time(first.created_ms)
        ));
    };
    let segments = chain(base.index, &catalog.segments);
    let (reach, reach_ms) = segments
        .last()
        .map_or((base.revision, base.created_ms), |s| {
            (s.revision, s.time_ms)
        });
    // From this base the archive reaches `reach`; a target past it is in a
    // gap (a newer base starts after it) or past the archive's end.
    let past = match target {
        Target::Latest => false,
        Target::Revision(r) => reach < r,
        Target::Time(t) => reach_ms < t,
    };
    if past {
        let newest = catalog.tail().map_or(reach, |p| p.revision);
        return Err(if newest > reach {
            format!(
                "{target} falls in a gap of the archive: from base {} it reaches revision \
                 {reach} ({}), and the next base starts later",
                base.name,
                Target::Time(reach_ms)
            )
        } else {
            format!(
                "{target} is past the last recoverable point (revision {reach}, {}); \
                 omit the target to restore all of it",
                Target::Time(reach_ms)
            )
        });
    }
    Ok(Plan {
        base: base.clone(),
        segments,
    })
}

/// Downloads the plan's base to `to` (a new file), streaming.
pub async fn download(loc: &Location, key: &str, to: &Path) -> Result<u64, String> {
    let got = loc
        .store
        .get(&loc.path(key))
        .await
        .map_err(|e| format!("downloading {key} from {}: {e}", loc.url))?;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .await
        .map_err(|e| format!("{}: {e}", to.display()))?;
    let mut stream = got.into_stream();
    let mut bytes = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("downloading {key}: {e}"))?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk)
            .await
            .map_err(|e| format!("{}: {e}", to.display()))?;
    }
    file.sync_all()
        .await
        .map_err(|e| format!("{}: {e}", to.display()))?;
    Ok(bytes)
}

/// How often in a row a replay lists the archive again for segments merged
/// away while it ran, without applying anything in between, before it
/// gives up.
const RELISTS: usize = 3;
/// How often a replay that has replayed its plan without reaching its
/// target lists the archive again to look for more.
const END_RELISTS: usize = 2;

/// Replays the plan's segments onto `store` (restored from the plan's base)
/// up to `target`. Checks every revision against the one archived.
///
/// A segment that is gone when its turn comes (the master merged it into a
/// larger one meanwhile: see [`super::merge`]) is no reason to fail: the
/// archive is listed again, and the replay goes on with the segments that
/// continue what it has applied. A replay that has replayed its plan
/// without reaching its target (every replay to the latest point) lists
/// the archive again, and goes on while there is more: the listing a plan
/// came from may have run while a merge deleted segments, and missed some
/// of the archive (see [`super::merge::DELETE_AFTER`] for when). If it then
/// still ends before a point its plans reached, that is an error, never a
/// restore cut short.
pub async fn replay(
    loc: &Location,
    cluster_id: &str,
    segments: &[Segment],
    target: Target,
    store: &mut Store,
    mut progress: impl FnMut(u64, u64),
) -> Result<(), String> {
    let mut plan = segments.to_vec();
    // How far the plans reach: a replay must get at least there.
    let mut planned = plan.iter().map(|s| s.last).max().unwrap_or(0);
    let mut target_reached = false;
    let mut relists = 0;
    let mut relisted_at = store.applied_index();
    let mut end_relists = 0;
    let mut next = 0;
    // The segment read that reaches furthest.
    let mut furthest: Option<Segment> = None;
    'segments: loop {
        let Some(seg) = plan.get(next).cloned() else {
            // The plan is replayed and the target not reached (a Time or
            // Revision target that is reached ends the loop below).
            if end_relists >= END_RELISTS {
                break;
            }
            end_relists += 1;
            let catalog = Catalog::list(loc).await?;
            plan = chain(store.applied_index(), &catalog.segments);
            planned = planned.max(plan.iter().map(|s| s.last).max().unwrap_or(0));
            next = 0;
            if plan.is_empty() {
                break;
            }
            continue;
        };
        next += 1;
        if seg.last <= store.applied_index() {
            continue;
        }
        let got = match loc.store.get(&loc.path(&seg.key)).await {
            Err(object_store::Error::NotFound { .. }) => {
                let from = store.applied_index();
                if from > relisted_at {
                    relists = 0;
                }
                relisted_at = from;
                relists += 1;
                if relists > RELISTS {
                    return Err(format!(
                        "downloading {}: gone, and {RELISTS} listings of the archive did not \
                         find entry {} anywhere else",
                        seg.key,
                        from + 1
                    ));
                }
                let catalog = Catalog::list(loc).await?;
                let chained = chain(from, &catalog.segments);
                if chained.is_empty() {
                    return Err(format!(
                        "{} was deleted while it was restored from, and no other segment \
                         holds entry {}",
                        seg.key,
                        from + 1
                    ));
                }
                tracing::info!(segment = %seg.key, "a segment was merged away during the \
                               restore; continuing from the archive as it is now");
                planned = planned.max(chained.iter().map(|s| s.last).max().unwrap_or(0));
                plan = chained;
                next = 0;
                continue;
            }
            got => got.map_err(|e| format!("downloading {}: {e}", seg.key))?,
        };
        let bytes = got
            .bytes()
            .await
            .map_err(|e| format!("downloading {}: {e}", seg.key))?;
        if furthest
            .as_ref()
            .is_none_or(|f: &Segment| seg.last > f.last)
        {
            furthest = Some(seg.clone());
        }
        let (from, entries) = segment::decode(&bytes).map_err(|e| format!("{}: {e}", seg.key))?;
        if from != cluster_id {
            return Err(format!(
                "{}: a segment of cluster {from}, in the archive of {cluster_id}",
                seg.key
            ));
        }
        for entry in entries {
            let applied = store.applied_index();
            if entry.index <= applied {
                continue;
            }
            if entry.index != applied + 1 {
                return Err(format!(
                    "{}: the archive has no entry {} (the next one is {})",
                    seg.key,
                    applied + 1,
                    entry.index
                ));
            }
            if let Target::Time(t) = target
                && entry.time_ms > t
            {
                target_reached = true;
                break 'segments;
            }
            let mut reached = false;
            if let Value::Batch(cmds) = &entry.value {
                if cmds.len() != entry.revisions.len() {
                    return Err(format!(
                        "{}: entry {} has {} commands and {} revisions",
                        seg.key,
                        entry.index,
                        cmds.len(),
                        entry.revisions.len()
                    ));
                }
                for (cmd, &revision) in cmds.iter().zip(&entry.revisions) {
                    if let Target::Revision(r) = target
                        && revision > r
                    {
                        reached = true;
                        break;
                    }
                    store.apply(cmd.id, &cmd.op);
                    if store.revision() != revision {
                        return Err(format!(
                            "replaying entry {} gave revision {}, the archive says {revision}",
                            entry.index,
                            store.revision()
                        ));
                    }
                }
            }
            store.set_applied_index(entry.index);
            progress(entry.index, store.revision());
            if reached {
                target_reached = true;
                break 'segments;
            }
            if store.revision() != entry.revision {
                return Err(format!(
                    "replaying entry {} gave revision {}, the archive says {}",
                    entry.index,
                    store.revision(),
                    entry.revision
                ));
            }
        }
    }
    if let Target::Revision(r) = target
        && store.revision() < r
    {
        return Err(format!(
            "the archive reaches revision {}, not {r}",
            store.revision()
        ));
    }
    if !target_reached && store.applied_index() < planned {
        return Err(format!(
            "the archive changed while it was restored from: segments up to index {planned} \
             were listed, and only {} could be read; try again",
            store.applied_index()
        ));
    }
    if let (Target::Latest, Some(last)) = (target, furthest)
        && store.applied_index() < last.last
    {
        return Err(format!(
            "{} ends at index {}, the archive lists it up to {}",
            last.key,
            store.applied_index(),
            last.last
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base(index: u64, revision: u64, ms: u64) -> Base {
        Base::parse(&Base::object_name(index, revision, ms), 1).expect("base")
    }

    fn seg(first: u64, last: u64, revision: u64) -> Segment {
        Segment::parse(
            Segment::object_name(first, last, revision, last * 1000).trim_start_matches("wal/"),
        )
        .expect("segment")
    }

    fn catalog() -> Catalog {
        Catalog {
            marker: Some(super::super::Marker {
                format_version: 1,
                cluster_id: "c".into(),
                timeline: None,
            }),
            bases: vec![base(10, 5, 10_000), base(30, 20, 30_000)],
            segments: vec![
                seg(11, 20, 9),
                seg(21, 35, 25),
                seg(36, 40, 30),
                seg(50, 60, 40),
            ],
        }
    }

    #[test]
    fn the_newest_base_not_past_the_target_is_chosen() {
        let c = catalog();
        assert_eq!(plan(&c, Target::Latest).expect("latest").base.index, 30);
        assert_eq!(plan(&c, Target::Revision(19)).expect("r19").base.index, 10);
        assert_eq!(plan(&c, Target::Revision(20)).expect("r20").base.index, 30);
        assert_eq!(plan(&c, Target::Time(29_999)).expect("t").base.index, 10);
        let p = plan(&c, Target::Revision(25)).expect("r25");
        assert_eq!(
            p.segments.iter().map(|s| s.first).collect::<Vec<_>>(),
            vec![21, 36],
            "the chain stops at the gap before 50"
        );
    }

    #[test]
    fn targets_outside_the_archive_are_refused_with_the_range() {
        let c = catalog();
        let early = plan(&c, Target::Revision(4)).expect_err("too early");
        assert!(
            early.contains("before the first recoverable point (revision 5"),
            "{early}"
        );
        let late = plan(&c, Target::Revision(31)).expect_err("too late");
        assert!(
            late.contains("past the last recoverable point (revision 30"),
            "{late}"
        );
        let past = plan(&c, Target::Time(45_000)).expect_err("past the end");
        assert!(past.contains("past the last recoverable point"), "{past}");
        // Base 10's chain ends at index 20 (20 s); base 30 comes after a gap.
        let gapped = Catalog {
            segments: vec![seg(11, 20, 9)],
            ..catalog()
        };
        let gap = plan(&gapped, Target::Time(25_000)).expect_err("in a gap");
        assert!(gap.contains("falls in a gap"), "{gap}");
        assert!(plan(&gapped, Target::Time(20_000)).is_ok());
        let no_marker = Catalog {
            marker: None,
            ..catalog()
        };
        assert!(plan(&no_marker, Target::Latest).is_err());
        assert!(plan(&Catalog::default(), Target::Latest).is_err());
    }
}

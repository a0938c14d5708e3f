//! Replicas compare digests of their applied state, so one whose data went
//! wrong (a damaged disk, a bug, a restore gone astray) is caught instead of
//! trusted, in the spirit of etcd's corruption check.
//!
//! Every replica records the digest of its state machine
//! ([`crate::kv::Store::digest`]: the keys and the revision) and of its
//! request-id table ([`crate::kv::Store::requests_digest`]: what decides
//! whether a copy of a write is applied) after applying each instance whose
//! index is a multiple of [`CHECK_EVERY`]; replicas that applied the same
//! log agree on both exactly (the simulator checks this at every index).
//! Replicas of versions before the table's digest send the keys' alone and
//! are compared on it alone. Every few seconds each replica sends its
//! newest checkpoints to its peers (`POST /peer/v1/digests`), and compares
//! what it receives with its own for the same indexes.
//!
//! Who is wrong? At one index, if a majority of the voters agree on a digest
//! of the keys other than this replica's, or hold the same keys as it does
//! and agree on another digest of the table, this replica has diverged: it
//! logs an error, stops serving reads and watches, hands mastership over if
//! it holds it and never runs for master again; `/readyz` fails and
//! `/v1/cluster` says so. It stays that way until it is replaced (its
//! volume wiped and the member replaced): the verdict is written to the
//! data directory ([`DIVERGED_FILE`]) and read back at every start, so a
//! restart does not let it serve or lead before the next comparison. A
//! replica that merely disagrees
//! with a peer, without a majority against it, reports the peer (a log line
//! and a metric): the peer's own check will condemn it if it is the one
//! that is wrong.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Checkpoints are taken at every index that is a multiple of this.
pub const CHECK_EVERY: u64 = 64;
/// Own and per-peer checkpoints kept.
const KEPT: usize = 64;
/// Newest checkpoints sent to peers each time.
pub const SENT: usize = 16;

/// A digest of the state at one index, as it travels.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Checkpoint {
    pub index: u64,
    /// 32 hex digits: the keys, their values and bookkeeping, and the
    /// revision.
    pub digest: String,
    /// 32 hex digits: the request-id table (the ids remembered, the log
    /// index each write sent as a `once` op was applied at, the highest
    /// such index forgotten). Absent from replicas of earlier versions,
    /// which are compared on `digest` alone. A version that computes it
    /// differently will send it under another name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<String>,
}

/// The digests of the state at one index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateDigest {
    /// [`crate::kv::Store::digest`].
    pub keys: u128,
    /// [`crate::kv::Store::requests_digest`]; `None` from a peer of an
    /// earlier version.
    pub requests: Option<u128>,
}

impl StateDigest {
    /// Whether `other` shows a different state: different keys, or a
    /// different table where both have one.
    fn differs_from(&self, other: &StateDigest) -> bool {
        self.keys != other.keys
            || matches!((self.requests, other.requests), (Some(a), Some(b)) if a != b)
    }
}

/// Which digest a replica was found to differ in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DivergedPart {
    /// The keys, their values and bookkeeping, or the revision.
    #[default]
    Keys,
    /// The request-id table, with the keys alike.
    Requests,
}

/// What a replica sends its peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DigestReport {
    /// The sender's member name.
    pub name: String,
    pub checkpoints: Vec<Checkpoint>,
    /// How far the sender's durable acceptor state reaches, for the check
    /// a replica makes of its data directory when it starts (see
    /// `GET /peer/v1/acknowledged/{incarnation}`). Absent from replicas of
    /// earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durable: Option<super::rollback::Mark>,
    /// The sender's incarnation id (16 hex digits): `durable` counts only
    /// for the incarnation the receiver knows under `name`. Absent from
    /// replicas of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incarnation: Option<String>,
}

/// Why this replica counts as diverged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Divergence {
    /// The log index whose state differs.
    pub index: u64,
    /// Which digest differs. Absent from replicas of earlier versions,
    /// which compared the keys alone: read as `keys`.
    #[serde(default)]
    pub part: DivergedPart,
    /// This replica's digest there.
    pub ours: String,
    /// The digest a majority of the voters agree on.
    pub majority: String,
    /// The members that reported it.
    pub agreeing: Vec<String>,
}

/// Where a replica's data directory keeps the verdict that it diverged.
pub const DIVERGED_FILE: &str = "diverged.json";

/// Records `d` in `data_dir`, durably (written beside, synced, renamed, the
/// directory synced).
pub fn record_divergence(data_dir: &std::path::Path, d: &Divergence) -> std::io::Result<()> {
    let body = serde_json::to_vec_pretty(d).map_err(std::io::Error::other)?;
    crate::storage::replace_file(data_dir, DIVERGED_FILE, &body)
}

/// The verdict recorded in `data_dir`, if any. A file that does not decode
/// still counts: something marked this replica, and only a wipe clears it.
pub fn recorded_divergence(data_dir: &std::path::Path) -> Option<Divergence> {
    let bytes = std::fs::read(data_dir.join(DIVERGED_FILE)).ok()?;
    Some(
        serde_json::from_slice(&bytes).unwrap_or_else(|_| Divergence {
            index: 0,
            part: DivergedPart::default(),
            ours: "unknown".into(),
            majority: "unknown".into(),
            agreeing: Vec::new(),
        }),
    )
}

/// Something a comparison found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Finding {
    /// This replica diverged.
    Diverged(Divergence),
    /// A peer's digest differs from ours at `index`, with no majority
    /// against us.
    PeerDiffers { peer: String, index: u64 },
}

/// This replica's checkpoints, its peers', and the verdict.
#[derive(Debug, Default)]
pub struct Digests {
    own: VecDeque<(u64, StateDigest)>,
    peers: BTreeMap<String, BTreeMap<u64, StateDigest>>,
    diverged: Option<Divergence>,
    /// The newest index at which each peer was reported as differing.
    reported: BTreeMap<String, u64>,
}

pub fn format_digest(d: u128) -> String {
    format!("{d:032x}")
}

impl Digests {
    /// Records this replica's digests after applying `index`.
    pub fn record(&mut self, index: u64, digest: StateDigest) {
        if self.own.back().is_some_and(|(i, _)| *i >= index) {
            return;
        }
        self.own.push_back((index, digest));
        while self.own.len() > KEPT {
            self.own.pop_front();
        }
    }

    /// The newest checkpoints, oldest first, for a report.
    pub fn newest(&self) -> Vec<Checkpoint> {
        let skip = self.own.len().saturating_sub(SENT);
        self.own
            .iter()
            .skip(skip)
            .map(|(index, d)| Checkpoint {
                index: *index,
                digest: format_digest(d.keys),
                requests: d.requests.map(format_digest),
            })
            .collect()
    }

    /// Takes a peer's report; malformed checkpoints are skipped.
    pub fn receive(&mut self, report: &DigestReport) {
        let theirs = self.peers.entry(report.name.clone()).or_default();
        for c in &report.checkpoints {
            let keys = u128::from_str_radix(&c.digest, 16);
            let requests = c
                .requests
                .as_deref()
                .map(|r| u128::from_str_radix(r, 16))
                .transpose();
            if let (Ok(keys), Ok(requests)) = (keys, requests) {
                theirs.insert(c.index, StateDigest { keys, requests });
            }
        }
        while theirs.len() > KEPT {
            theirs.pop_first();
        }
    }

    /// The verdict so far.
    pub fn divergence(&self) -> Option<&Divergence> {
        self.diverged.as_ref()
    }

    /// Takes the verdict a previous run of this replica recorded.
    pub fn restore_divergence(&mut self, d: Divergence) {
        self.diverged = Some(d);
    }

    /// Compares what is known. `voters` are the voting members' names.
    /// Returns what is new since the last call.
    pub fn judge(&mut self, voters: &[String]) -> Vec<Finding> {
        let mut found = Vec::new();
        if self.diverged.is_some() {
            return found;
        }
        let quorum = voters.len() / 2 + 1;
        for (index, ours) in self.own.iter().rev() {
            // Keys digest -> who reported it, and table digest -> who
            // reported it with the same keys as ours (voters only count for
            // the verdict).
            let mut by_keys: BTreeMap<u128, Vec<String>> = BTreeMap::new();
            let mut by_requests: BTreeMap<u128, Vec<String>> = BTreeMap::new();
            for (peer, theirs) in &self.peers {
                let Some(d) = theirs.get(index) else {
                    continue;
                };
                by_keys.entry(d.keys).or_default().push(peer.clone());
                if let Some(requests) = d.requests.filter(|_| d.keys == ours.keys) {
                    by_requests.entry(requests).or_default().push(peer.clone());
                }
                if ours.differs_from(d) && self.reported.get(peer).is_none_or(|i| i < index) {
                    self.reported.insert(peer.clone(), *index);
                    found.push(Finding::PeerDiffers {
                        peer: peer.clone(),
                        index: *index,
                    });
                }
            }
            let outvoted = |ours: u128, by_digest: &BTreeMap<u128, Vec<String>>| {
                by_digest
                    .iter()
                    .filter(|(d, _)| **d != ours)
                    .find(|(_, names)| {
                        let votes = names.iter().filter(|n| voters.contains(n)).count();
                        votes >= quorum && votes > 0
                    })
                    .map(|(d, names)| (ours, *d, names.clone()))
            };
            let verdict = outvoted(ours.keys, &by_keys)
                .map(|v| (DivergedPart::Keys, v))
                .or_else(|| {
                    let ours = ours.requests?;
                    outvoted(ours, &by_requests).map(|v| (DivergedPart::Requests, v))
                });
            if let Some((part, (ours, majority, agreeing))) = verdict {
                let verdict = Divergence {
                    index: *index,
                    part,
                    ours: format_digest(ours),
                    majority: format_digest(majority),
                    agreeing,
                };
                self.diverged = Some(verdict.clone());
                found.push(Finding::Diverged(verdict));
                return found;
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, points: &[(u64, StateDigest)]) -> DigestReport {
        let mut d = Digests::default();
        for (i, digest) in points {
            d.record(*i, *digest);
        }
        DigestReport {
            name: name.into(),
            checkpoints: d.newest(),
            durable: None,
            incarnation: None,
        }
    }

    /// The keys' digest alone, as a replica of an earlier version sends it.
    fn keys(keys: u128) -> StateDigest {
        StateDigest {
            keys,
            requests: None,
        }
    }

    fn both(keys: u128, requests: u128) -> StateDigest {
        StateDigest {
            keys,
            requests: Some(requests),
        }
    }

    fn voters() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn agreeing_replicas_find_nothing() {
        let mut d = Digests::default();
        d.record(64, keys(7));
        d.record(128, keys(8));
        d.receive(&report("b", &[(64, keys(7)), (128, keys(8))]));
        d.receive(&report("c", &[(64, keys(7))]));
        assert!(d.judge(&voters()).is_empty());
        assert!(d.divergence().is_none());
    }

    #[test]
    fn a_replica_outvoted_by_a_majority_has_diverged() {
        // This is c, whose data was damaged: a and b agree on another state.
        let mut d = Digests::default();
        d.record(64, keys(7));
        d.record(128, keys(99));
        d.receive(&report("a", &[(64, keys(7)), (128, keys(8))]));
        d.receive(&report("b", &[(128, keys(8))]));
        let found = d.judge(&voters());
        let verdict = d.divergence().cloned().expect("diverged");
        assert_eq!(verdict.index, 128);
        assert_eq!(verdict.majority, format_digest(8));
        assert_eq!(verdict.agreeing, vec!["a".to_string(), "b".to_string()]);
        assert!(found.contains(&Finding::Diverged(verdict)));
        // Sticky: later agreement does not clear it.
        d.record(192, keys(5));
        d.receive(&report("a", &[(192, keys(5))]));
        assert!(d.judge(&voters()).is_empty());
        assert!(d.divergence().is_some());
    }

    #[test]
    fn a_healthy_replica_reports_the_odd_one_out_once_and_stays_trusted() {
        // This is a; c is the damaged one.
        let mut d = Digests::default();
        d.record(128, keys(8));
        d.receive(&report("b", &[(128, keys(8))]));
        d.receive(&report("c", &[(128, keys(99))]));
        let found = d.judge(&voters());
        assert_eq!(
            found,
            vec![Finding::PeerDiffers {
                peer: "c".into(),
                index: 128
            }]
        );
        assert!(d.divergence().is_none());
        assert!(d.judge(&voters()).is_empty(), "reported once");
        // Learners do not make a majority.
        let mut d = Digests::default();
        d.record(64, keys(1));
        d.receive(&report("x", &[(64, keys(2))]));
        d.receive(&report("y", &[(64, keys(2))]));
        d.judge(&voters());
        assert!(d.divergence().is_none());
    }

    #[test]
    fn checkpoints_are_bounded_and_garbage_is_ignored() {
        let mut d = Digests::default();
        for i in 1..=500 {
            d.record(i * 64, keys(u128::from(i)));
        }
        assert_eq!(d.own.len(), KEPT);
        assert_eq!(d.newest().len(), SENT);
        let mut r = report("b", &[(64, keys(1))]);
        r.checkpoints.push(Checkpoint {
            index: 128,
            digest: "not hex".into(),
            requests: None,
        });
        r.checkpoints.push(Checkpoint {
            index: 192,
            digest: format_digest(1),
            requests: Some("not hex either".into()),
        });
        d.receive(&r);
        assert_eq!(d.peers["b"].len(), 1);
    }

    #[test]
    fn a_replica_whose_request_table_differs_from_the_majoritys_has_diverged() {
        // This is c: its keys are right, its request-id table is not.
        let mut d = Digests::default();
        d.record(64, both(7, 1));
        d.record(128, both(8, 99));
        d.receive(&report("a", &[(64, both(7, 1)), (128, both(8, 2))]));
        d.receive(&report("b", &[(128, both(8, 2))]));
        d.judge(&voters());
        let verdict = d.divergence().cloned().expect("diverged");
        assert_eq!(verdict.index, 128);
        assert_eq!(verdict.part, DivergedPart::Requests);
        assert_eq!(verdict.ours, format_digest(99));
        assert_eq!(verdict.majority, format_digest(2));
        // Keys that differ are what is reported, whatever the tables say.
        let mut d = Digests::default();
        d.record(64, both(7, 1));
        d.receive(&report("a", &[(64, both(9, 2))]));
        d.receive(&report("b", &[(64, both(9, 3))]));
        d.judge(&voters());
        let verdict = d.divergence().cloned().expect("diverged");
        assert_eq!(verdict.part, DivergedPart::Keys);
        assert_eq!(verdict.majority, format_digest(9));
    }

    #[test]
    fn peers_of_an_earlier_version_are_compared_on_the_keys_alone() {
        // a runs an earlier version and sends no table digest; b agrees
        // with us on both. Nothing differs.
        let mut d = Digests::default();
        d.record(64, both(7, 1));
        d.receive(&report("a", &[(64, keys(7))]));
        d.receive(&report("b", &[(64, both(7, 1))]));
        assert!(d.judge(&voters()).is_empty());
        assert_eq!(
            d.newest(),
            vec![Checkpoint {
                index: 64,
                digest: format_digest(7),
                requests: Some(format_digest(1)),
            }]
        );
        // b's table differs, with no majority against us: b is reported,
        // and we stay trusted.
        let mut d = Digests::default();
        d.record(64, both(7, 1));
        d.receive(&report("a", &[(64, keys(7))]));
        d.receive(&report("b", &[(64, both(7, 5))]));
        assert_eq!(
            d.judge(&voters()),
            vec![Finding::PeerDiffers {
                peer: "b".into(),
                index: 64
            }]
        );
        assert!(d.divergence().is_none());
        // An old peer and a new one that agree on other keys are a
        // majority, whatever the new one's table says.
        let mut d = Digests::default();
        d.record(64, both(7, 1));
        d.receive(&report("a", &[(64, keys(9))]));
        d.receive(&report("b", &[(64, both(9, 4))]));
        d.judge(&voters());
        assert_eq!(
            d.divergence().map(|v| (v.part, v.agreeing.clone())),
            Some((DivergedPart::Keys, vec!["a".to_string(), "b".to_string()]))
        );
        // A verdict of an earlier version, without `part`, decodes as one
        // on the keys (the operator and peers read each other's).
        let old: Divergence = serde_json::from_str(
            r#"{"index":64,"ours":"01","majority":"02","agreeing":["a","b"]}"#,
        )
        .expect("decodes");
        assert_eq!(old.part, DivergedPart::Keys);
        // A report of an earlier version, without the field, still decodes.
        let old: DigestReport =
            serde_json::from_str(r#"{"name":"a","checkpoints":[{"index":64,"digest":"07"}]}"#)
                .expect("decodes");
        assert_eq!(old.checkpoints[0].requests, None);
    }
}

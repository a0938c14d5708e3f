//! Replicas compare digests of their applied state, so one whose data went
//! wrong (a damaged disk, a bug, a restore gone astray) is caught instead of
//! trusted, in the spirit of etcd's corruption check.
//!
//! Every replica records the digest of its state machine
//! ([`crate::kv::Store::digest`]) after applying each instance whose index is
//! a multiple of [`CHECK_EVERY`]; replicas that applied the same log agree
//! on it exactly (the simulator checks this at every index). Every few
//! seconds each replica sends its newest checkpoints to its peers
//! (`POST /peer/v1/digests`), and compares what it receives with its own for
//! the same indexes.
//!
//! Who is wrong? At one index, if a majority of the voters agree on a digest
//! other than this replica's, this replica has diverged: it logs an error,
//! stops serving reads and watches, hands mastership over if it holds it and
//! never runs for master again; `/readyz` fails and `/v1/cluster` says so.
//! It stays that way until it is replaced (its volume wiped and the member
//! replaced). A replica that merely disagrees with a peer, without a
//! majority against it, reports the peer (a log line and a metric): the
//! peer's own check will condemn it if it is the one that is wrong.

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
    /// 32 hex digits.
    pub digest: String,
}

/// What a replica sends its peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DigestReport {
    /// The sender's member name.
    pub name: String,
    pub checkpoints: Vec<Checkpoint>,
}

/// Why this replica counts as diverged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Divergence {
    /// The log index whose state differs.
    pub index: u64,
    /// This replica's digest there.
    pub ours: String,
    /// The digest a majority of the voters agree on.
    pub majority: String,
    /// The members that reported it.
    pub agreeing: Vec<String>,
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
    own: VecDeque<(u64, u128)>,
    peers: BTreeMap<String, BTreeMap<u64, u128>>,
    diverged: Option<Divergence>,
    /// The newest index at which each peer was reported as differing.
    reported: BTreeMap<String, u64>,
}

pub fn format_digest(d: u128) -> String {
    format!("{d:032x}")
}

impl Digests {
    /// Records this replica's digest after applying `index`.
    pub fn record(&mut self, index: u64, digest: u128) {
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
                digest: format_digest(*d),
            })
            .collect()
    }

    /// Takes a peer's report; malformed checkpoints are skipped.
    pub fn receive(&mut self, report: &DigestReport) {
        let theirs = self.peers.entry(report.name.clone()).or_default();
        for c in &report.checkpoints {
            if let Ok(d) = u128::from_str_radix(&c.digest, 16) {
                theirs.insert(c.index, d);
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

    /// Compares what is known. `voters` are the voting members' names.
    /// Returns what is new since the last call.
    pub fn judge(&mut self, voters: &[String]) -> Vec<Finding> {
        let mut found = Vec::new();
        if self.diverged.is_some() {
            return found;
        }
        let quorum = voters.len() / 2 + 1;
        for (index, ours) in self.own.iter().rev() {
            // Digest -> who reported it (voters only count for the verdict).
            let mut by_digest: BTreeMap<u128, Vec<String>> = BTreeMap::new();
            for (peer, theirs) in &self.peers {
                if let Some(d) = theirs.get(index) {
                    by_digest.entry(*d).or_default().push(peer.clone());
                    if d != ours && self.reported.get(peer).is_none_or(|i| i < index) {
                        self.reported.insert(peer.clone(), *index);
                        found.push(Finding::PeerDiffers {
                            peer: peer.clone(),
                            index: *index,
                        });
                    }
                }
            }
            for (d, names) in &by_digest {
                if d == ours {
                    continue;
                }
                let votes = names.iter().filter(|n| voters.contains(n)).count();
                if votes >= quorum && votes > 0 {
                    let verdict = Divergence {
                        index: *index,
                        ours: format_digest(*ours),
                        majority: format_digest(*d),
                        agreeing: names.clone(),
                    };
                    self.diverged = Some(verdict.clone());
                    found.push(Finding::Diverged(verdict));
                    return found;
                }
            }
        }
        found
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str, points: &[(u64, u128)]) -> DigestReport {
        DigestReport {
            name: name.into(),
            checkpoints: points
                .iter()
                .map(|(i, d)| Checkpoint {
                    index: *i,
                    digest: format_digest(*d),
                })
                .collect(),
        }
    }

    fn voters() -> Vec<String> {
        ["a", "b", "c"].iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn agreeing_replicas_find_nothing() {
        let mut d = Digests::default();
        d.record(64, 7);
        d.record(128, 8);
        d.receive(&report("b", &[(64, 7), (128, 8)]));
        d.receive(&report("c", &[(64, 7)]));
        assert!(d.judge(&voters()).is_empty());
        assert!(d.divergence().is_none());
    }

    #[test]
    fn a_replica_outvoted_by_a_majority_has_diverged() {
        // This is c, whose data was damaged: a and b agree on another state.
        let mut d = Digests::default();
        d.record(64, 7);
        d.record(128, 99);
        d.receive(&report("a", &[(64, 7), (128, 8)]));
        d.receive(&report("b", &[(128, 8)]));
        let found = d.judge(&voters());
        let verdict = d.divergence().cloned().expect("diverged");
        assert_eq!(verdict.index, 128);
        assert_eq!(verdict.majority, format_digest(8));
        assert_eq!(verdict.agreeing, vec!["a".to_string(), "b".to_string()]);
        assert!(found.contains(&Finding::Diverged(verdict)));
        // Sticky: later agreement does not clear it.
        d.record(192, 5);
        d.receive(&report("a", &[(192, 5)]));
        assert!(d.judge(&voters()).is_empty());
        assert!(d.divergence().is_some());
    }

    #[test]
    fn a_healthy_replica_reports_the_odd_one_out_once_and_stays_trusted() {
        // This is a; c is the damaged one.
        let mut d = Digests::default();
        d.record(128, 8);
        d.receive(&report("b", &[(128, 8)]));
        d.receive(&report("c", &[(128, 99)]));
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
        d.record(64, 1);
        d.receive(&report("x", &[(64, 2)]));
        d.receive(&report("y", &[(64, 2)]));
        d.judge(&voters());
        assert!(d.divergence().is_none());
    }

    #[test]
    fn checkpoints_are_bounded_and_garbage_is_ignored() {
        let mut d = Digests::default();
        for i in 1..=500 {
            d.record(i * 64, u128::from(i));
        }
        assert_eq!(d.own.len(), KEPT);
        assert_eq!(d.newest().len(), SENT);
        let mut r = report("b", &[(64, 1)]);
        r.checkpoints.push(Checkpoint {
            index: 128,
            digest: "not hex".into(),
        });
        d.receive(&r);
        assert_eq!(d.peers["b"].len(), 1);
    }
}

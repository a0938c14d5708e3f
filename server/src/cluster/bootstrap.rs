//! How a node with an empty data directory finds its place: create a new
//! cluster, take the configuration of the one being created, or wait to be
//! replaced in one that already exists.
//!
//! # Why this matters
//!
//! Paxos survives crashes, not amnesia. A node whose volume is lost forgets
//! every promise it made; if it voted again under its old identity, it and
//! one other node could form a majority that never saw writes a different
//! majority acknowledged, and those writes would silently vanish. So members
//! are *incarnations*: a data directory draws a random id when it is created
//! ([`crate::storage::Incarnation`]) and configurations name members by it.
//! A node that comes back empty has a new id that no configuration counts;
//! it votes nowhere until it is replaced (the old incarnation removed, the
//! new one added as a learner and promoted, like any member).
//!
//! What is left is the one moment when no configuration exists yet: the
//! bootstrap. The rules, and why they are safe:
//!
//! 1. *A node takes part in Paxos only with a configuration recorded on
//!    disk* (or, in join mode, with none, which counts it nowhere). A node
//!    without one answers peers' questions about itself (`hello`) and
//!    nothing else, so it never promises or accepts anything.
//! 2. *Only the seed creates a cluster*: the bootstrap member whose name
//!    sorts first. It does so only after every other bootstrap member has
//!    answered that it is fresh (nothing durable at all) and was given the
//!    same member list (two lists would make two seeds), and builds the
//!    configuration from their answers: each member's name, peer URL and
//!    incarnation. If any member cannot be reached, it keeps waiting: a
//!    member that does not answer might hold a cluster. It never assumes.
//! 3. *Everyone else adopts*, and only a bootstrap configuration a peer
//!    already holds and that names this node's own incarnation. One that
//!    names another incarnation (or none) under this node's name means the
//!    cluster exists and this node's volume is new: it waits to be replaced.
//! 4. A peer that holds any configuration, or waits to join one, proves the
//!    cluster exists: a fresh node never creates one then, even as the seed.
//!
//! Could two different bootstrap configurations ever be used? Only if the
//! seed created one, lost its volume before any other member recorded it,
//! and created another as a new incarnation once everybody was fresh again
//! (a member that had recorded the first would have answered "member"). The
//! first one's seed incarnation then never cast a vote anyone counted: the
//! others took no part in Paxos before recording it (rule 1), and recorded
//! it only after that incarnation was gone. A configuration one of whose
//! voters never votes is, for every quorum actually formed, the same as the
//! second configuration (same size, same other members), so every quorum of
//! either meets every quorum of the other: safety does not depend on which
//! one a member holds. A member that lost its volume during the bootstrap
//! is in the configuration under the incarnation that answered; its new
//! incarnation waits to be replaced, like any later loss.
//!
//! When peers are unreachable at start-up a fresh node waits, and says what
//! it waits for; it never bootstraps on its own. The price is that a new
//! cluster starts only once all its bootstrap members are up, as with etcd.
//! A single-member cluster has nobody to ask: a lost volume there is a lost
//! cluster, and it starts again empty.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::paxos::{Member, Membership, NodeId, Role};

/// One member of the bootstrap list: a name and where its peer API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BootstrapPeer {
    pub name: String,
    pub peer_url: String,
}

/// What a node is, as it tells its peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeState {
    /// Nothing durable yet; working out whether to create, adopt or wait.
    Fresh,
    /// Running without a configuration that counts it: waiting to be added
    /// (a new member) or replaced (a member whose volume was lost).
    Joining,
    /// Holds a configuration that counts it.
    Member,
}

/// One member as it travels in a [`Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MemberRecord {
    pub name: String,
    /// The member's incarnation id, 16 hex digits.
    pub id: String,
    pub peer_url: String,
    pub voter: bool,
}

/// A node's answer to `GET /peer/v1/hello`: who it is and what it holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Hello {
    pub cluster_id: String,
    pub name: String,
    /// This node's incarnation id, 16 hex digits.
    pub incarnation: String,
    pub state: NodeState,
    /// The configuration the cluster was bootstrapped with, if this node
    /// recorded it.
    pub bootstrap: Option<Vec<MemberRecord>>,
    /// The newest configuration this node holds, if any.
    pub members: Option<Vec<MemberRecord>>,
    /// This node's bootstrap list as `name=peer_url`, sorted: a new cluster
    /// is created only by members that were all given the same one.
    #[serde(default)]
    pub list: Vec<String>,
}

/// A bootstrap list as it travels in a [`Hello`].
pub fn list_of(peers: &[BootstrapPeer]) -> Vec<String> {
    let mut list: Vec<String> = peers
        .iter()
        .map(|p| format!("{}={}", p.name, p.peer_url))
        .collect();
    list.sort();
    list
}

/// Formats an incarnation id as it appears on the wire and to people.
pub fn format_id(id: NodeId) -> String {
    format!("{id:016x}")
}

/// Parses [`format_id`]'s output.
pub fn parse_id(s: &str) -> Result<NodeId, String> {
    match u64::from_str_radix(s, 16) {
        Ok(0) | Err(_) => Err(format!("{s:?} is not an incarnation id (16 hex digits)")),
        Ok(id) => Ok(id),
    }
}

/// A configuration as member records.
pub fn records(m: &Membership) -> Vec<MemberRecord> {
    m.members
        .iter()
        .map(|(id, m)| MemberRecord {
            name: m.name.clone(),
            id: format_id(*id),
            peer_url: m.addr.clone(),
            voter: m.role == Role::Voter,
        })
        .collect()
}

/// Member records back as a configuration.
pub fn membership(records: &[MemberRecord]) -> Result<Membership, String> {
    let mut m = Membership::default();
    for r in records {
        let id = parse_id(&r.id)?;
        let member = Member {
            name: r.name.clone(),
            addr: r.peer_url.clone(),
            role: if r.voter { Role::Voter } else { Role::Learner },
        };
        if m.members.insert(id, member).is_some() {
            return Err(format!("incarnation {} is listed twice", r.id));
        }
    }
    Ok(m)
}

/// What a peer said, or why it said nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Answer {
    Hello(Hello),
    Unreachable(String),
}

/// Where the bootstrap stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This node is the seed and every bootstrap member is fresh: create the
    /// cluster with this configuration.
    Create(Membership),
    /// A peer holds the cluster's bootstrap configuration, and it names this
    /// incarnation: take it.
    Adopt(Membership),
    /// The cluster exists and counts this incarnation already (it was added):
    /// run without a configuration and learn it from the log.
    Join(String),
    /// The cluster exists and does not count this incarnation: run without a
    /// configuration and wait to be replaced.
    AwaitReplacement(String),
    /// Nothing can be decided yet.
    Wait(String),
}

/// Who this node is, for [`decide`].
#[derive(Clone, Debug)]
pub struct Me<'a> {
    pub name: &'a str,
    pub incarnation: NodeId,
    pub cluster_id: &'a str,
}

/// The seed of a bootstrap list: the member whose name sorts first.
pub fn seed(peers: &[BootstrapPeer]) -> Option<&str> {
    peers.iter().map(|p| p.name.as_str()).min()
}

/// Decides from the peers' answers (keyed by name; this node's own entry is
/// ignored). Pure, so every rule of the module doc is tested directly.
pub fn decide(
    me: &Me<'_>,
    peers: &[BootstrapPeer],
    answers: &BTreeMap<String, Answer>,
) -> Decision {
    let names: BTreeSet<&str> = peers.iter().map(|p| p.name.as_str()).collect();
    let mut unreachable = Vec::new();
    let mut fresh: BTreeMap<&str, NodeId> = BTreeMap::new();
    let mut joining = Vec::new();
    let mut holders: Vec<&Hello> = Vec::new();
    for peer in peers.iter().filter(|p| p.name != me.name) {
        match answers.get(&peer.name) {
            None => unreachable.push(format!("{} (not asked yet)", peer.name)),
            Some(Answer::Unreachable(why)) => unreachable.push(format!("{} ({why})", peer.name)),
            Some(Answer::Hello(h)) => {
                if h.cluster_id != me.cluster_id {
                    return Decision::Wait(format!(
                        "{} at {} belongs to cluster {:?}, not {:?}; check --cluster-id and the member list",
                        peer.name, peer.peer_url, h.cluster_id, me.cluster_id
                    ));
                }
                if h.name != peer.name {
                    return Decision::Wait(format!(
                        "{} answers as {:?}; check the member list",
                        peer.peer_url, h.name
                    ));
                }
                match h.state {
                    NodeState::Fresh if h.list != list_of(peers) => {
                        return Decision::Wait(format!(
                            "{} was given another member list ({}) than this node ({}); \
                             every member must be started with the same one",
                            peer.name,
                            h.list.join(","),
                            list_of(peers).join(",")
                        ));
                    }
                    NodeState::Fresh => match parse_id(&h.incarnation) {
                        Ok(id) => {
                            fresh.insert(peer.name.as_str(), id);
                        }
                        Err(e) => unreachable.push(format!("{} ({e})", peer.name)),
                    },
                    NodeState::Joining => joining.push(peer.name.as_str()),
                    NodeState::Member => holders.push(h),
                }
            }
        }
    }
    // Rule 3 and 4: the cluster exists.
    let me_id = format_id(me.incarnation);
    for h in &holders {
        if let Some(b) = &h.bootstrap
            && b.iter().any(|r| r.name == me.name && r.id == me_id)
        {
            let listed: BTreeSet<&str> = b.iter().map(|r| r.name.as_str()).collect();
            if listed != names {
                return Decision::Wait(format!(
                    "{} was bootstrapped with members {:?}, but this node's list is {:?}",
                    h.name, listed, names
                ));
            }
            return match membership(b) {
                Ok(m) => Decision::Adopt(m),
                Err(e) => Decision::Wait(format!("{} sent a bad configuration: {e}", h.name)),
            };
        }
    }
    for h in &holders {
        if let Some(current) = &h.members
            && current.iter().any(|r| r.name == me.name && r.id == me_id)
        {
            return Decision::Join(format!(
                "{} counts this incarnation ({me_id}) as a member already; catching up",
                h.name
            ));
        }
    }
    if let Some(h) = holders.first() {
        let known = h
            .members
            .iter()
            .flatten()
            .chain(h.bootstrap.iter().flatten())
            .find(|r| r.name == me.name);
        let how = match known {
            Some(r) => format!("{} is a member as incarnation {}", me.name, r.id),
            None => format!("{} is not a member", me.name),
        };
        return Decision::AwaitReplacement(format!(
            "the cluster exists ({} holds it) and {how}, while this data directory is new \
             (incarnation {me_id}): the volume was lost or replaced. Replace the member: \
             phxkv members replace {}",
            h.name, me.name
        ));
    }
    if let Some(j) = joining.first() {
        return Decision::Wait(format!(
            "{j} waits to join an existing cluster; waiting for a member to answer"
        ));
    }
    // Rule 2: only the seed creates, and only with everyone known fresh.
    if !unreachable.is_empty() {
        return Decision::Wait(format!(
            "waiting for {} to answer: a new cluster starts only once every bootstrap member \
             is known to be empty",
            unreachable.join(", ")
        ));
    }
    let seed = seed(peers).unwrap_or(me.name);
    if seed != me.name {
        return Decision::Wait(format!(
            "every bootstrap member is empty; waiting for {seed} to create the cluster"
        ));
    }
    let mut m = Membership::default();
    for p in peers {
        let id = if p.name == me.name {
            me.incarnation
        } else {
            match fresh.get(p.name.as_str()) {
                Some(id) => *id,
                None => return Decision::Wait(format!("no incarnation known for {}", p.name)),
            }
        };
        if m.members
            .insert(
                id,
                Member {
                    name: p.name.clone(),
                    addr: p.peer_url.clone(),
                    role: Role::Voter,
                },
            )
            .is_some()
        {
            return Decision::Wait(format!(
                "two members answer as incarnation {}",
                format_id(id)
            ));
        }
    }
    Decision::Create(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<BootstrapPeer> {
        ["kv-0", "kv-1", "kv-2"]
            .iter()
            .map(|n| BootstrapPeer {
                name: n.to_string(),
                peer_url: format!("http://{n}:8081"),
            })
            .collect()
    }

    fn me(name: &str, incarnation: NodeId) -> Me<'_> {
        Me {
            name,
            incarnation,
            cluster_id: "c",
        }
    }

    fn hello(name: &str, id: NodeId, state: NodeState) -> Answer {
        Answer::Hello(Hello {
            cluster_id: "c".into(),
            name: name.into(),
            incarnation: format_id(id),
            state,
            bootstrap: None,
            members: None,
            list: list_of(&peers()),
        })
    }

    fn config(ids: &[(&str, NodeId)]) -> Membership {
        let mut m = Membership::default();
        for (name, id) in ids {
            m.members.insert(
                *id,
                Member {
                    name: name.to_string(),
                    addr: format!("http://{name}:8081"),
                    role: Role::Voter,
                },
            );
        }
        m
    }

    fn member(name: &str, id: NodeId, bootstrap: &Membership) -> Answer {
        Answer::Hello(Hello {
            cluster_id: "c".into(),
            name: name.into(),
            incarnation: format_id(id),
            state: NodeState::Member,
            bootstrap: Some(records(bootstrap)),
            members: Some(records(bootstrap)),
            list: list_of(&peers()),
        })
    }

    fn answers(list: Vec<(&str, Answer)>) -> BTreeMap<String, Answer> {
        list.into_iter().map(|(n, a)| (n.to_string(), a)).collect()
    }

    #[test]
    fn the_seed_creates_the_cluster_once_every_member_is_known_empty() {
        let a = answers(vec![
            ("kv-1", hello("kv-1", 11, NodeState::Fresh)),
            ("kv-2", hello("kv-2", 12, NodeState::Fresh)),
        ]);
        assert_eq!(
            decide(&me("kv-0", 10), &peers(), &a),
            Decision::Create(config(&[("kv-0", 10), ("kv-1", 11), ("kv-2", 12)]))
        );
        // The others wait for the seed.
        let a = answers(vec![
            ("kv-0", hello("kv-0", 10, NodeState::Fresh)),
            ("kv-2", hello("kv-2", 12, NodeState::Fresh)),
        ]);
        assert!(
            matches!(decide(&me("kv-1", 11), &peers(), &a), Decision::Wait(w) if w.contains("kv-0 to create"))
        );
    }

    #[test]
    fn an_unreachable_member_stops_the_seed_from_creating_anything() {
        let a = answers(vec![
            ("kv-1", hello("kv-1", 11, NodeState::Fresh)),
            ("kv-2", Answer::Unreachable("connection refused".into())),
        ]);
        let d = decide(&me("kv-0", 10), &peers(), &a);
        assert!(
            matches!(&d, Decision::Wait(w) if w.contains("kv-2 (connection refused)")),
            "{d:?}"
        );
    }

    #[test]
    fn a_member_adopts_the_configuration_that_names_its_incarnation() {
        let b = config(&[("kv-0", 10), ("kv-1", 11), ("kv-2", 12)]);
        let a = answers(vec![
            ("kv-0", member("kv-0", 10, &b)),
            ("kv-2", hello("kv-2", 12, NodeState::Fresh)),
        ]);
        assert_eq!(decide(&me("kv-1", 11), &peers(), &a), Decision::Adopt(b));
    }

    #[test]
    fn a_new_volume_under_an_old_name_waits_to_be_replaced_even_as_the_seed() {
        let b = config(&[("kv-0", 10), ("kv-1", 11), ("kv-2", 12)]);
        // kv-1 lost its volume: it is incarnation 99 now.
        let a = answers(vec![
            ("kv-0", member("kv-0", 10, &b)),
            ("kv-2", Answer::Unreachable("timeout".into())),
        ]);
        let d = decide(&me("kv-1", 99), &peers(), &a);
        assert!(
            matches!(&d, Decision::AwaitReplacement(r) if r.contains("members replace kv-1") && r.contains(&format_id(11))),
            "{d:?}"
        );
        // The seed itself, back empty, never creates a second cluster.
        let a = answers(vec![
            ("kv-1", member("kv-1", 11, &b)),
            ("kv-2", hello("kv-2", 12, NodeState::Fresh)),
        ]);
        assert!(matches!(
            decide(&me("kv-0", 77), &peers(), &a),
            Decision::AwaitReplacement(_)
        ));
        // A peer waiting to join proves the cluster exists too.
        let a = answers(vec![
            ("kv-1", hello("kv-1", 11, NodeState::Joining)),
            ("kv-2", hello("kv-2", 12, NodeState::Fresh)),
        ]);
        assert!(matches!(
            decide(&me("kv-0", 77), &peers(), &a),
            Decision::Wait(_)
        ));
    }

    #[test]
    fn a_replacement_already_added_joins_and_catches_up() {
        let b = config(&[("kv-0", 10), ("kv-1", 11), ("kv-2", 12)]);
        let now = config(&[("kv-0", 10), ("kv-1", 99), ("kv-2", 12)]);
        let a = answers(vec![(
            "kv-0",
            Answer::Hello(Hello {
                cluster_id: "c".into(),
                name: "kv-0".into(),
                incarnation: format_id(10),
                state: NodeState::Member,
                bootstrap: Some(records(&b)),
                members: Some(records(&now)),
                list: list_of(&peers()),
            }),
        )]);
        assert!(matches!(
            decide(&me("kv-1", 99), &peers(), &a),
            Decision::Join(_)
        ));
    }

    #[test]
    fn peers_of_another_cluster_or_list_are_never_adopted() {
        let mut other = hello("kv-1", 11, NodeState::Fresh);
        if let Answer::Hello(h) = &mut other {
            h.cluster_id = "other".into();
        }
        let a = answers(vec![
            ("kv-1", other),
            ("kv-2", hello("kv-2", 12, NodeState::Fresh)),
        ]);
        assert!(
            matches!(decide(&me("kv-0", 10), &peers(), &a), Decision::Wait(w) if w.contains("\"other\""))
        );
        // A fresh member given another list: nobody creates anything.
        let mut other_list = hello("kv-1", 11, NodeState::Fresh);
        if let Answer::Hello(h) = &mut other_list {
            h.list = vec!["kv-1=http://kv-1:8081".into()];
        }
        let a = answers(vec![
            ("kv-1", other_list),
            ("kv-2", hello("kv-2", 12, NodeState::Fresh)),
        ]);
        assert!(
            matches!(decide(&me("kv-0", 10), &peers(), &a), Decision::Wait(w) if w.contains("another member list"))
        );
        // A configuration with other names than this node's list.
        let b = config(&[("kv-0", 10), ("kv-1", 11), ("kv-9", 19)]);
        let a = answers(vec![("kv-0", member("kv-0", 10, &b))]);
        assert!(
            matches!(decide(&me("kv-1", 11), &peers(), &a), Decision::Wait(w) if w.contains("bootstrapped with members"))
        );
    }

    #[test]
    fn ids_round_trip_and_nonsense_is_refused() {
        assert_eq!(parse_id(&format_id(0xdead_beef)), Ok(0xdead_beef));
        assert!(parse_id("0").is_err());
        assert!(parse_id("xyz").is_err());
        let m = config(&[("a", 1), ("b", 2)]);
        assert_eq!(membership(&records(&m)), Ok(m));
    }
}

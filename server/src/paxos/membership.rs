//! Membership changes through the log, and why they are safe.
//!
//! A configuration is a value chosen like any other ([`Value::Config`]). As in
//! Raft's single-server changes, a replica uses the *latest configuration in
//! its log*, chosen or not, from the moment it holds it: for whom to send to,
//! which votes count in a quorum, and whether it may run for master.
//!
//! # The argument
//!
//! 1. *Adjacent configurations share quorums.* Each change adds or removes one
//!    voter, or turns a learner into a voter (which adds one voter). If `C'`
//!    is `C` plus or minus one voter, every majority of `C` intersects every
//!    majority of `C'`: with `n` voters in the smaller one, a majority of the
//!    larger one keeps at least `floor((n+1)/2)` voters of the smaller one, and
//!    `floor((n+1)/2) + floor(n/2) + 1 = n + 1 > n`.
//! 2. *Only adjacent configurations are ever in use together, and each is
//!    built on a chosen past.* A master proposes a change only when its
//!    commit index has reached its own barrier (the first lease it proposed,
//!    which follows every instance an earlier master may have left) and the
//!    newest configuration in its log, and only into the instance right
//!    after its commit index: nothing may be in flight below it (new batches
//!    wait while a change drains them). So when `C2` is proposed at `s`,
//!    every instance before `s`, `C1` among them, is chosen: two masters can
//!    never place sibling changes of one configuration in instances that
//!    both survive (a change above unchosen instances could, at a later
//!    election, outlive a sibling another master chose below it:
//!    `paxos::tests::a_voter_change_above_unchosen_instances_cannot_fork_the_configuration`).
//!    A change of voters also waits until a quorum of the *new* voters holds
//!    every instance chosen so far: instances chosen by older quorums may be
//!    held by none of the new configuration's majorities otherwise, and a
//!    master elected there would fill them with no-ops (found by the
//!    simulator: a lone learner promoted, then the old voter removed).
//!    Instances still in flight after `C2` was proposed were proposed under
//!    `C1` or `C2`, never under `C0`. A master elected later learns the newest configuration
//!    during phase 1: its promise quorum, counted in the configuration it knows,
//!    intersects the quorum that accepted any newer configuration (point 1), so
//!    that configuration shows up in a promise and the candidate counts its
//!    quorum in it before it becomes master.
//!
//!    *Which* configuration a candidate counts in matters: the newest one
//!    among the values that survive the merge of its promises (a value known
//!    chosen, else the one accepted at the highest ballot, per slot), not
//!    the newest one anywhere in them. A configuration whose slot a higher
//!    ballot took over was never chosen (the higher ballot's phase 1 would
//!    have found it), and a candidate that counted its quorum there could be
//!    elected by a minority of the configuration actually chosen: a stale
//!    master holding such a slot was once elected by two of four voters and
//!    chose an instance a second time (`paxos::tests::
//!    a_configuration_that_lost_its_slot_never_decides_a_quorum`). A
//!    configuration that may have been chosen always survives the merge.
//! 3. *In-flight instances.* An instance proposed under `C` and still unchosen
//!    when `C'` enters the log is counted in `C'` from then on. Both quorums meet
//!    every phase-1 quorum of `C` or `C'` (point 1), so the usual Paxos argument
//!    (a later ballot's phase 1 sees any value that may have been chosen) holds
//!    unchanged. That is why no `alpha` window is needed: pipelining and changes
//!    compose because quorums of the only two live configurations intersect.
//! 4. *Removal of the master.* A master removed from the voters keeps driving
//!    the log until the change is committed and its window drained, then steps
//!    down; its lease ends on its own timer, after which the remaining voters
//!    elect a new master. The caller may hand mastership off first to avoid the
//!    wait.
//! 5. *Leases.* A lease is honoured by a majority of the configuration it
//!    was chosen in, which meets every majority of the next configuration but
//!    not necessarily of the one after. So when a change of voters is chosen,
//!    the master gives up every lease chosen or proposed before it and takes
//!    a new one in the new configuration (see `super::lease`); by the time the
//!    following change may be proposed, no older lease is relied on.
//! 6. *Changes that cannot finish.* A change of voters is refused unless a
//!    quorum of the resulting configuration has answered the master
//!    recently. Otherwise it could never be committed, and since every later
//!    master counts its quorum in it (point 2), the cluster would be stuck
//!    with it: removing a healthy voter while another is down is the usual
//!    way to get there.
//!
//! Members are incarnations, not names: a node's id is created with its data
//! directory, so a node that comes back with an empty disk has a new id that
//! no configuration counts. It forgot its promises; counted under its old
//! id, it could help choose a second value for an instance. It is replaced
//! (the old id removed, the new one added as a learner, then promoted) like
//! any other member.
//!
//! New members join as learners: they receive every accept and catch up (by
//! log or snapshot) without being counted, and become voters by a second
//! change once caught up.

#[cfg(doc)]
use super::types::Value;
use super::types::{ConfChange, Member, Membership, Role};

/// The configuration that results from applying `change` to `current`, or why
/// the change makes no sense.
pub fn apply_change(current: &Membership, change: &ConfChange) -> Result<Membership, String> {
    let mut next = current.clone();
    match change {
        ConfChange::AddLearner { id, name, addr } => {
            if let Some(m) = current.members.get(id) {
                return Err(format!("node {:?} is already a member", m.name));
            }
            if current.members.values().any(|m| m.name == *name) {
                return Err(format!("a member named {name:?} already exists"));
            }
            next.members.insert(
                *id,
                Member {
                    name: name.clone(),
                    addr: addr.clone(),
                    role: Role::Learner,
                },
            );
        }
        ConfChange::Promote { id } => match next.members.get_mut(id) {
            Some(m) if m.role == Role::Learner => m.role = Role::Voter,
            Some(m) => return Err(format!("node {:?} is already a voter", m.name)),
            None => return Err(format!("node {id:x} is not a member")),
        },
        ConfChange::Remove { id } => {
            let Some(m) = next.members.remove(id) else {
                return Err(format!("node {id:x} is not a member"));
            };
            if m.role == Role::Voter && next.voter_count() == 0 {
                return Err(format!("removing {:?} would leave no voters", m.name));
            }
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Membership {
        let mut m = Membership::default();
        for (id, name) in [(1, "a"), (2, "b"), (3, "c")] {
            m.members.insert(
                id,
                Member {
                    name: name.into(),
                    addr: String::new(),
                    role: Role::Voter,
                },
            );
        }
        m
    }

    #[test]
    fn learner_then_promotion_adds_one_voter() {
        let add = ConfChange::AddLearner {
            id: 4,
            name: "d".into(),
            addr: "x".into(),
        };
        let m = apply_change(&three(), &add).expect("add");
        assert_eq!(m.voter_count(), 3);
        assert_eq!(m.members[&4].role, Role::Learner);
        let m = apply_change(&m, &ConfChange::Promote { id: 4 }).expect("promote");
        assert_eq!(m.voter_count(), 4);
        assert_eq!(m.quorum(), 3);
    }

    #[test]
    fn nonsense_changes_are_refused() {
        let m = three();
        assert!(apply_change(&m, &ConfChange::Promote { id: 1 }).is_err());
        assert!(apply_change(&m, &ConfChange::Remove { id: 9 }).is_err());
        let dup = ConfChange::AddLearner {
            id: 1,
            name: "z".into(),
            addr: String::new(),
        };
        assert!(apply_change(&m, &dup).is_err());
        let dup_name = ConfChange::AddLearner {
            id: 7,
            name: "a".into(),
            addr: String::new(),
        };
        assert!(apply_change(&m, &dup_name).is_err());
        let mut one = Membership::default();
        one.members.insert(1, m.members[&1].clone());
        assert!(apply_change(&one, &ConfChange::Remove { id: 1 }).is_err());
    }

    #[test]
    fn majorities_of_adjacent_configurations_intersect() {
        // Exhaustive over small sizes: every majority of n voters meets every
        // majority of n+1 voters that include them.
        for n in 1..=6usize {
            let small = (1u32 << n) - 1;
            let big = (1u32 << (n + 1)) - 1;
            let q_small = n / 2 + 1;
            let q_big = n.div_ceil(2) + 1;
            for a in 0..=small {
                if (a.count_ones() as usize) < q_small {
                    continue;
                }
                for b in 0..=big {
                    if (b.count_ones() as usize) < q_big {
                        continue;
                    }
                    assert_ne!(a & b, 0, "n={n} a={a:b} b={b:b}");
                }
            }
        }
    }
}

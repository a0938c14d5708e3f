//! Unit tests of the engine's roles, driven by hand in one thread: a tiny
//! network of replicas whose messages the test delivers, drops or inspects.

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use super::*;
use crate::kv::Op;

const MS: Duration = Duration::from_millis(1);

fn membership(ids: &[NodeId]) -> Membership {
    let mut m = Membership::default();
    for id in ids {
        m.members.insert(
            *id,
            Member {
                name: format!("n{id}"),
                addr: String::new(),
                role: Role::Voter,
            },
        );
    }
    m
}

fn config(id: NodeId) -> EngineConfig {
    config_in(id, ReadMode::Lease)
}

fn config_in(id: NodeId, mode: ReadMode) -> EngineConfig {
    let mut c = EngineConfig::new(id);
    c.read_mode = mode;
    c.lease = Duration::from_millis(1000);
    c.election_timeout = Duration::from_millis(100);
    c.heartbeat = Duration::from_millis(50);
    c.retry = Duration::from_millis(40);
    c.window = 4;
    c.max_batch_commands = 100;
    c.forward_retry = Duration::from_secs(1);
    c.forward_for = Duration::from_secs(20);
    c
}

fn put(seq: u64, key: &str) -> Command {
    Command {
        id: RequestId { client: 1, seq },
        op: Op::Put {
            key: key.as_bytes().to_vec(),
            value: b"v".to_vec(),
            expect: None,
        },
    }
}

/// A read's token and what the replica answered.
type ReadAnswer = (u64, Result<Index, ReadError>);

/// Decides which messages a test's network loses.
type Dropper = Box<dyn Fn(&Envelope) -> bool>;

/// A hand-driven cluster: messages wait in `wire` until delivered.
struct Net {
    nodes: BTreeMap<NodeId, Replica>,
    wire: VecDeque<Envelope>,
    persisted: BTreeMap<NodeId, Vec<Persist>>,
    committed: BTreeMap<NodeId, Vec<(Index, Value)>>,
    /// Answers to read requests, per node, in order.
    reads: BTreeMap<NodeId, Vec<ReadAnswer>>,
    /// Forwarded commands that came back refused, per node, in order.
    refused: BTreeMap<NodeId, Vec<(RequestId, ProposeError)>>,
    now: Duration,
    /// Messages for which this returns true are lost.
    dropper: Option<Dropper>,
    mode: ReadMode,
}

impl Net {
    fn new(ids: &[NodeId]) -> Net {
        Net::in_mode(ids, ReadMode::Lease)
    }

    fn in_mode(ids: &[NodeId], mode: ReadMode) -> Net {
        let m = membership(ids);
        let nodes = ids
            .iter()
            .map(|id| {
                let cfg = config_in(*id, mode);
                (
                    *id,
                    Replica::new(cfg, Recovered::default(), m.clone(), Duration::ZERO),
                )
            })
            .collect();
        Net {
            nodes,
            wire: VecDeque::new(),
            persisted: BTreeMap::new(),
            committed: BTreeMap::new(),
            reads: BTreeMap::new(),
            refused: BTreeMap::new(),
            now: Duration::ZERO,
            dropper: None,
            mode,
        }
    }

    /// Restarts `id` from exactly what it persisted; with `forget_commit`
    /// the commit index is lost too (a store may write it lazily).
    fn restart(&mut self, id: NodeId, initial: Membership, forget_commit: bool) {
        let mut rec = Recovered::default();
        for p in self.persisted.get(&id).cloned().unwrap_or_default() {
            match p {
                Persist::Promise(b) => rec.promised = rec.promised.max(b),
                Persist::Entry(i, e) => {
                    rec.entries.insert(i, e);
                }
                Persist::Commit(c) => rec.commit = rec.commit.max(c),
            }
        }
        if forget_commit {
            rec.commit = 0;
        }
        let now = self.now;
        self.nodes.insert(
            id,
            Replica::new(config_in(id, self.mode), rec, initial, now),
        );
    }

    /// Every (index, value) each node applied, checked for agreement: no
    /// two nodes ever apply different values at one index.
    fn assert_agreement(&self) {
        let mut chosen: BTreeMap<Index, (NodeId, &Value)> = BTreeMap::new();
        for (id, committed) in &self.committed {
            for (i, v) in committed {
                if let Some((other, w)) = chosen.get(i) {
                    assert_eq!(
                        *w, v,
                        "instance {i}: node {other} applied {w:?}, node {id} applied {v:?}"
                    );
                } else {
                    chosen.insert(*i, (*id, v));
                }
            }
        }
    }

    fn drain(&mut self, id: NodeId) {
        let Some(r) = self.nodes.get_mut(&id) else {
            return;
        };
        let ready = r.take_ready();
        self.persisted.entry(id).or_default().extend(ready.persist);
        self.committed
            .entry(id)
            .or_default()
            .extend(ready.committed);
        self.reads.entry(id).or_default().extend(ready.reads);
        self.refused.entry(id).or_default().extend(ready.refused);
        self.wire.extend(ready.messages);
    }

    fn drain_all(&mut self) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            self.drain(id);
        }
    }

    /// Delivers everything on the wire (and what that produces) except
    /// messages to or from nodes in `cut`.
    fn settle(&mut self, cut: &[NodeId]) {
        self.drain_all();
        let mut budget = 10_000;
        while let Some(env) = self.wire.pop_front() {
            budget -= 1;
            assert!(budget > 0, "message storm");
            if cut.contains(&env.to) || cut.contains(&env.from) {
                continue;
            }
            if self.dropper.as_ref().is_some_and(|d| d(&env)) {
                continue;
            }
            if let Some(r) = self.nodes.get_mut(&env.to) {
                r.step(self.now, env.from, env.msg);
            }
            self.drain(env.to);
        }
    }

    fn advance(&mut self, d: Duration, cut: &[NodeId]) {
        let steps = (d.as_millis() / 10).max(1);
        for _ in 0..steps {
            self.now += 10 * MS;
            let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
            for id in ids {
                if cut.contains(&id) {
                    continue;
                }
                let now = self.now;
                if let Some(r) = self.nodes.get_mut(&id) {
                    r.tick(now);
                }
            }
            self.settle(cut);
        }
    }

    fn master(&self) -> Option<NodeId> {
        self.nodes.values().find(|r| r.is_master()).map(|r| r.id())
    }

    fn elect(&mut self, id: NodeId) {
        let now = self.now + Duration::from_secs(5);
        self.now = now;
        if let Some(r) = self.nodes.get_mut(&id) {
            r.tick(now);
        }
        self.settle(&[]);
        assert_eq!(
            self.master(),
            Some(id),
            "node {id} should have been elected"
        );
    }

    fn batches(&self, id: NodeId) -> Vec<Vec<u64>> {
        self.committed
            .get(&id)
            .map(|c| {
                c.iter()
                    .filter_map(|(_, v)| match v {
                        Value::Batch(cmds) => Some(cmds.iter().map(|c| c.id.seq).collect()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Proposes `change` at `master`, as a caller does: while the answer is
/// "in progress" (instances in flight, voters catching up), lets only the
/// master's timers run, delivering everything but to or from `cut`.
fn change(
    net: &mut Net,
    master: NodeId,
    change: ConfChange,
    cut: &[NodeId],
) -> Result<Index, ProposeError> {
    for _ in 0..100 {
        let now = net.now;
        let r = net.nodes.get_mut(&master).expect("master");
        match r.propose_change(now, change.clone()) {
            Err(ProposeError::ChangeInProgress) => {}
            other => return other,
        }
        net.now += 10 * MS;
        let now = net.now;
        if let Some(r) = net.nodes.get_mut(&master) {
            r.tick(now);
        }
        net.settle(cut);
    }
    Err(ProposeError::ChangeInProgress)
}

// ------------------------------------------------------------- acceptor

#[test]
fn acceptor_promises_higher_ballots_and_persists_before_replying() {
    let mut r = Replica::new(
        config(2),
        Recovered::default(),
        membership(&[1, 2, 3]),
        Duration::ZERO,
    );
    let later = Duration::from_secs(5); // past the start-up lease
    r.step(
        later,
        1,
        Message::Prepare {
            ballot: Ballot::new(3, 1),
            from_index: 1,
        },
    );
    let ready = r.take_ready();
    assert_eq!(ready.persist, vec![Persist::Promise(Ballot::new(3, 1))]);
    assert!(
        matches!(ready.messages[0].msg, Message::Promise { ballot, .. } if ballot == Ballot::new(3, 1))
    );

    r.step(
        later,
        3,
        Message::Prepare {
            ballot: Ballot::new(2, 3),
            from_index: 1,
        },
    );
    let ready = r.take_ready();
    assert!(
        ready.persist.is_empty(),
        "a refused prepare persists nothing"
    );
    assert!(matches!(
        ready.messages[0].msg,
        Message::Reject { reason: RejectReason::Outdated, promised, .. } if promised == Ballot::new(3, 1)
    ));
}

#[test]
fn acceptor_persists_accepted_values_and_refuses_lower_ballots() {
    let mut r = Replica::new(
        config(2),
        Recovered::default(),
        membership(&[1, 2, 3]),
        Duration::ZERO,
    );
    let t = Duration::from_secs(5);
    let b = Ballot::new(4, 1);
    r.step(
        t,
        1,
        Message::Accept {
            ballot: b,
            entries: vec![(1, Value::Noop)],
            commit: 0,
        },
    );
    let ready = r.take_ready();
    assert!(ready.persist.contains(&Persist::Promise(b)));
    assert!(ready.persist.contains(&Persist::Entry(
        1,
        LogEntry {
            ballot: b,
            value: Value::Noop,
            chosen: false
        }
    )));
    assert!(
        matches!(&ready.messages[0].msg, Message::Accepted { indexes, .. } if indexes == &vec![1])
    );

    r.step(
        t,
        3,
        Message::Accept {
            ballot: Ballot::new(2, 3),
            entries: vec![(1, Value::Noop)],
            commit: 0,
        },
    );
    let ready = r.take_ready();
    assert!(ready.persist.is_empty());
    assert!(matches!(
        ready.messages[0].msg,
        Message::Reject {
            reason: RejectReason::Outdated,
            ..
        }
    ));
}

#[test]
fn acceptor_holding_a_lease_refuses_other_proposers_until_it_expires() {
    let mut r = Replica::new(
        config(2),
        Recovered::default(),
        membership(&[1, 2, 3]),
        Duration::ZERO,
    );
    let t = Duration::from_secs(5);
    let lease = Value::Lease {
        holder: 1,
        duration_ms: 1000,
    };
    r.step(
        t,
        1,
        Message::Accept {
            ballot: Ballot::new(1, 1),
            entries: vec![(1, lease)],
            commit: 0,
        },
    );
    r.take_ready();
    // Higher ballot from node 3 during the lease: refused.
    r.step(
        t + 500 * MS,
        3,
        Message::Prepare {
            ballot: Ballot::new(9, 3),
            from_index: 1,
        },
    );
    let ready = r.take_ready();
    assert!(matches!(
        ready.messages[0].msg,
        Message::Reject {
            reason: RejectReason::Lease { holder: 1 },
            ..
        }
    ));
    // The holder itself may still re-prepare.
    r.step(
        t + 500 * MS,
        1,
        Message::Prepare {
            ballot: Ballot::new(2, 1),
            from_index: 1,
        },
    );
    assert!(matches!(
        r.take_ready().messages[0].msg,
        Message::Promise { .. }
    ));
    // After the lease, node 3 gets its promise.
    r.step(
        t + 1001 * MS,
        3,
        Message::Prepare {
            ballot: Ballot::new(9, 3),
            from_index: 1,
        },
    );
    assert!(matches!(
        r.take_ready().messages[0].msg,
        Message::Promise { .. }
    ));
}

#[test]
fn restarted_acceptor_refuses_every_proposer_for_a_whole_lease() {
    let start = Duration::from_secs(100);
    let mut r = Replica::new(
        config(2),
        Recovered::default(),
        membership(&[1, 2, 3]),
        start,
    );
    r.step(
        start + 999 * MS,
        1,
        Message::Prepare {
            ballot: Ballot::new(1, 1),
            from_index: 1,
        },
    );
    assert!(matches!(
        r.take_ready().messages[0].msg,
        Message::Reject {
            reason: RejectReason::Lease { holder: 0 },
            ..
        }
    ));
    r.step(
        start + 1001 * MS,
        1,
        Message::Prepare {
            ballot: Ballot::new(1, 1),
            from_index: 1,
        },
    );
    assert!(matches!(
        r.take_ready().messages[0].msg,
        Message::Promise { .. }
    ));
}

/// Every replica of a restarted cluster waits out the same unknown lease
/// (and every follower of a lost master waits out its lease). Were they all
/// to run the moment it ends, their candidacies would collide and the first
/// master would be stepped down by the next candidate's higher ballot. Each
/// runs from a random point after it instead. Deterministic: the seeds are
/// fixed; before that change every one of these rounds was contested.
#[test]
fn a_restarted_cluster_elects_one_master_without_a_duel() {
    let ids = [1, 2, 3];
    let start = Duration::from_secs(100);
    let mut contested = Vec::new();
    for round in 0..20u64 {
        let mut net = Net::new(&ids);
        net.now = start;
        for id in ids {
            let mut cfg = config(id);
            cfg.seed = round * 31 + id;
            let r = Replica::new(cfg, Recovered::default(), membership(&ids), start);
            net.nodes.insert(id, r);
        }
        // Millisecond steps for 3 s: the lease is 1 s, the election timeout
        // 100 ms, so every timer fires while the lease still holds.
        // Candidacies, by ballot: on this instant network a lower ballot
        // never wins before a higher one that ran in the same step, so
        // what is counted is candidates, not masters.
        let mut candidates = BTreeSet::new();
        for _ in 0..3000 {
            net.now += MS;
            let now = net.now;
            for r in net.nodes.values_mut() {
                r.tick(now);
            }
            net.drain_all();
            for env in &net.wire {
                if let Message::Prepare { ballot, .. } = env.msg {
                    candidates.insert(ballot);
                }
            }
            net.settle(&[]);
        }
        assert!(net.master().is_some(), "round {round}: no master");
        if candidates.len() > 1 {
            contested.push((round, candidates));
        }
    }
    assert!(
        contested.len() <= 2,
        "{} of 20 restarts had more than one candidate: {contested:?}",
        contested.len()
    );
}

/// The followers of a master that died wait out its lease, then one of them
/// runs first and wins; the other hears from it before its own turn.
#[test]
fn followers_of_a_lost_master_elect_one_successor_without_a_duel() {
    let ids = [1, 2, 3];
    let mut contested = Vec::new();
    for round in 0..20u64 {
        let mut net = Net::new(&ids);
        for id in ids {
            let mut cfg = config(id);
            cfg.seed = round * 17 + id;
            let r = Replica::new(cfg, Recovered::default(), membership(&ids), net.now);
            net.nodes.insert(id, r);
        }
        net.elect(1);
        net.advance(200 * MS, &[]);
        let mut candidates = BTreeSet::new();
        for _ in 0..3000 {
            net.now += MS;
            let now = net.now;
            for id in [2, 3] {
                if let Some(r) = net.nodes.get_mut(&id) {
                    r.tick(now);
                }
            }
            net.drain(2);
            net.drain(3);
            for env in &net.wire {
                if let Message::Prepare { ballot, .. } = env.msg {
                    candidates.insert(ballot);
                }
            }
            net.settle(&[1]);
        }
        let successor = net.nodes.values().find(|r| r.id() != 1 && r.is_master());
        assert!(successor.is_some(), "round {round}: no successor");
        if candidates.len() > 1 {
            contested.push((round, candidates));
        }
    }
    assert!(
        contested.len() <= 2,
        "{} of 20 failovers had more than one candidate: {contested:?}",
        contested.len()
    );
}

#[test]
fn acceptor_refuses_a_candidate_that_is_far_behind() {
    let mut cfg = config(2);
    cfg.max_promise_lag = 2;
    let mut rec = Recovered::default();
    for i in 1..=5 {
        rec.entries.insert(
            i,
            LogEntry {
                ballot: Ballot::new(1, 1),
                value: Value::Noop,
                chosen: true,
            },
        );
    }
    rec.commit = 5;
    let mut r = Replica::new(cfg, rec, membership(&[1, 2, 3]), Duration::ZERO);
    r.step(
        Duration::from_secs(5),
        3,
        Message::Prepare {
            ballot: Ballot::new(2, 3),
            from_index: 1,
        },
    );
    let ready = r.take_ready();
    assert!(
        ready.persist.is_empty(),
        "no promise is made to a lagging candidate"
    );
    assert!(matches!(
        ready.messages[0].msg,
        Message::Reject {
            reason: RejectReason::Behind { commit: 5 },
            ..
        }
    ));
}

// ------------------------------------------------------------- proposer

#[test]
fn election_chooses_a_lease_and_enables_lease_reads() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let m = &net.nodes[&1];
    assert!(m.lease_valid(now));
    let index = m.read_index(now).expect("lease read");
    assert!(index >= 1);
    // The runtime's shortcut agrees: lease reads until the master's lease end.
    assert!(m.read_lease_until(now).is_some_and(|u| u > now));
    assert!(matches!(
        net.nodes[&2].read_index(now),
        Err(ReadError::NotMaster { hint: Some(1) })
    ));
    assert_eq!(net.nodes[&2].read_lease_until(now), None);
    // The lease value is in everybody's log.
    for id in [1, 2, 3] {
        assert!(net.nodes[&id].commit_index() >= 1 || id != 1);
    }
}

#[test]
fn master_lease_ends_before_the_acceptors_lease() {
    let cfg = config(1);
    assert!(cfg.master_lease() < cfg.lease);
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let chosen_at = net.now;
    // Cut the master off: it must stop claiming the lease by its own timer,
    // strictly before the followers' leases (1000ms) run out.
    net.advance(Duration::from_millis(990), &[2, 3]);
    let m = &net.nodes[&1];
    assert!(!m.lease_valid(chosen_at + cfg.master_lease()));
    assert!(m.read_index(chosen_at + cfg.master_lease()).is_err());
    assert_eq!(m.read_lease_until(chosen_at + cfg.master_lease()), None);
    assert!(
        m.read_lease_until(chosen_at)
            .is_some_and(|u| u <= chosen_at + cfg.master_lease()),
        "the shortcut never outlives the master's lease"
    );
}

#[test]
fn new_master_reproposes_values_accepted_under_an_older_ballot() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    // Node 1 proposes, but only node 2 receives the accept before node 1 dies.
    let now = net.now;
    net.nodes.get_mut(&1).map(|r| r.propose(now, put(1, "a")));
    net.drain(1);
    let to2: Vec<Envelope> = net.wire.drain(..).filter(|e| e.to == 2).collect();
    for e in to2 {
        if let Some(r) = net.nodes.get_mut(&2) {
            r.step(now, e.from, e.msg)
        }
    }
    net.drain(2);
    net.wire.clear();
    net.nodes.remove(&1);
    // Node 3 takes over after the lease: it must find and re-propose seq 1.
    net.advance(Duration::from_millis(3000), &[1]);
    let master = net.master().expect("a new master");
    assert_ne!(master, 1);
    assert_eq!(
        net.batches(3),
        vec![vec![1]],
        "the accepted value survives the change of master"
    );
}

#[test]
fn gaps_without_accepted_values_are_filled_with_noops() {
    let mut r = Replica::new(
        config(1),
        Recovered::default(),
        membership(&[1, 2, 3]),
        Duration::ZERO,
    );
    let t = Duration::from_secs(5);
    r.tick(t);
    let ready = r.take_ready();
    deliver_own(&mut r, t, &ready);
    let ballot = ready
        .messages
        .iter()
        .find_map(|m| match m.msg {
            Message::Prepare { ballot, .. } => Some(ballot),
            _ => None,
        })
        .expect("prepare");
    // Node 2 promises and reports an accepted value at instance 3 only.
    let entry = LogEntry {
        ballot: Ballot::new(0, 2),
        value: Value::Batch(vec![put(9, "x")].into()),
        chosen: false,
    };
    r.step(
        t,
        2,
        Message::Promise {
            ballot,
            entries: vec![(3, entry)],
            commit: 0,
        },
    );
    assert!(r.is_master());
    let ready = r.take_ready();
    let accept = ready
        .messages
        .iter()
        .find_map(|m| match &m.msg {
            Message::Accept { entries, .. } => Some(entries.clone()),
            _ => None,
        })
        .expect("accept");
    assert_eq!(accept[0], (1, Value::Noop));
    assert_eq!(accept[1], (2, Value::Noop));
    assert_eq!(accept[2], (3, Value::Batch(vec![put(9, "x")].into())));
    assert!(matches!(accept[3], (4, Value::Lease { holder: 1, .. })));
}

#[test]
fn higher_ballot_makes_the_master_step_down_and_return_queued_commands() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("node 1");
    // Fill the window (one instance per turn) so later commands stay queued.
    for seq in 1..=10 {
        r.propose(now, put(seq, "k")).expect("queued");
        r.take_ready();
    }
    r.step(
        now,
        3,
        Message::Reject {
            ballot: Ballot::new(1, 1),
            promised: Ballot::new(50, 3),
            reason: RejectReason::Outdated,
        },
    );
    assert!(!r.is_master());
    let ready = r.take_ready();
    assert!(
        !ready.rejected.is_empty(),
        "unproposed commands come back to the caller"
    );
    assert_eq!(
        r.propose(now, put(11, "k")),
        Err(ProposeError::NotMaster { hint: Some(3) })
    );
}

// -------------------------------------------------- batching and pipelining

#[test]
fn master_batches_queued_commands_and_bounds_the_window() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("node 1");
    let first = r.status(now).last_index;
    // Commands fed in one turn share an instance.
    for seq in 1..=10 {
        r.propose(now, put(seq, "k")).expect("queued");
    }
    assert_eq!(r.status(now).last_index, first, "packed at take_ready");
    net.drain(1);
    assert_eq!(net.nodes[&1].status(now).last_index, first + 1);
    // Without any replies, at most `window` instances are in flight however
    // many turns pass.
    for seq in 11..=50 {
        if let Some(r) = net.nodes.get_mut(&1) {
            r.propose(now, put(seq, "k")).expect("queued");
        }
        net.drain(1);
    }
    let st = net.nodes[&1].status(now);
    assert!(
        st.last_index - st.commit <= 4 + 1,
        "window exceeded: {st:?}"
    );
    net.settle(&[]);
    let batches = net.batches(1);
    let total: usize = batches.iter().map(Vec::len).sum();
    assert_eq!(total, 50);
    assert!(batches.len() < 50, "commands were batched: {batches:?}");
    // Order is preserved.
    let flat: Vec<u64> = batches.into_iter().flatten().collect();
    assert_eq!(flat, (1..=50).collect::<Vec<_>>());
}

/// Node 1 of {1, 2, 3} with `cfg`, master by node 2's promise, its first
/// turn taken; the time and its ballot.
fn elected_alone(cfg: EngineConfig) -> (Replica, Duration, Ballot) {
    let mut r = Replica::new(
        cfg,
        Recovered::default(),
        membership(&[1, 2, 3]),
        Duration::ZERO,
    );
    let t = Duration::from_secs(5);
    r.tick(t);
    let ready = r.take_ready();
    deliver_own(&mut r, t, &ready);
    let ballot = r.status(t).ballot;
    r.step(
        t,
        2,
        Message::Promise {
            ballot,
            entries: vec![],
            commit: 0,
        },
    );
    assert!(r.is_master());
    r.take_ready();
    (r, t, ballot)
}

/// [`elected_alone`] with room for one instance in flight (its lease
/// takes it) and three commands in the queue.
fn elected_with_a_queue_of_three() -> (Replica, Duration, Ballot) {
    let mut cfg = config(1);
    cfg.max_queue = 3;
    cfg.window = 1;
    elected_alone(cfg)
}

#[test]
fn a_full_queue_refuses_proposals_as_busy() {
    let (mut r, t, _) = elected_with_a_queue_of_three();
    // The lease instance occupies the window; everything else queues.
    let mut refused = 0;
    for seq in 1..=10 {
        if let Err(e) = r.propose(t, put(seq, "k")) {
            assert_eq!(e, ProposeError::Busy(3));
            refused += 1;
        }
    }
    assert!(refused > 0);
    // Forwarded writes beyond the queue go back to their sender as busy.
    r.step(
        t,
        2,
        Message::Forward {
            cmds: (11..=12).map(|seq| put(seq, "k")).collect(),
        },
    );
    let back: Vec<_> = r.take_ready().messages;
    assert!(
        back.iter().any(|env| env.to == 2
            && env.msg
                == Message::ForwardRefused {
                    ids: vec![
                        RequestId { client: 1, seq: 11 },
                        RequestId { client: 1, seq: 12 }
                    ],
                    hint: None,
                    busy: true,
                }),
        "{back:?}"
    );
}

#[test]
fn a_command_proposed_first_goes_ahead_of_a_full_queue() {
    let (mut r, t, ballot) = elected_with_a_queue_of_three();
    // The lease instance occupies the window; the queue fills.
    for seq in 1..=3 {
        r.propose(t, put(seq, "k")).expect("queued");
    }
    assert_eq!(r.propose(t, put(4, "k")), Err(ProposeError::Busy(3)));
    r.propose_first(t, put(100, "fence"))
        .expect("taken past the bound");
    let lease = r.status(t).last_index;
    for from in [2, 3] {
        r.step(
            t,
            from,
            Message::Accepted {
                ballot,
                indexes: vec![lease],
                commit: 0,
            },
        );
    }
    let ready = r.take_ready();
    let proposed: Vec<u64> = ready
        .messages
        .iter()
        .find_map(|env| match &env.msg {
            Message::Accept { entries, .. } => entries.iter().find_map(|(_, v)| match v {
                Value::Batch(cmds) => Some(cmds.iter().map(|c| c.id.seq).collect()),
                _ => None,
            }),
            _ => None,
        })
        .expect("the queue proposed once the lease was chosen");
    assert_eq!(proposed, [100, 1, 2, 3]);
}

#[test]
fn a_master_that_steps_down_refuses_queued_forwards_back_to_their_follower() {
    let mut cfg = config(1);
    cfg.window = 1;
    let (mut r, t, ballot) = elected_alone(cfg);
    // The lease instance occupies the window: the forwards and a write of
    // this node's own client wait in the queue.
    r.step(
        t,
        2,
        Message::Forward {
            cmds: (1..=2).map(|seq| put(seq, "k")).collect(),
        },
    );
    r.propose(t, put(3, "k")).expect("queued");
    let ready = r.take_ready();
    assert!(
        !ready
            .messages
            .iter()
            .any(|env| matches!(env.msg, Message::ForwardRefused { .. })),
        "{:?}",
        ready.messages
    );
    // Node 3 was promised a higher ballot: this master stops.
    let higher = Ballot {
        round: ballot.round + 1,
        node: 3,
    };
    r.step(
        t,
        3,
        Message::Reject {
            ballot,
            promised: higher,
            reason: RejectReason::Outdated,
        },
    );
    assert!(!r.is_master());
    let ready = r.take_ready();
    let refused: Vec<_> = ready
        .messages
        .iter()
        .filter(|env| matches!(env.msg, Message::ForwardRefused { .. }))
        .collect();
    assert_eq!(refused.len(), 1, "{:?}", ready.messages);
    assert_eq!(refused[0].to, 2);
    assert_eq!(
        refused[0].msg,
        Message::ForwardRefused {
            ids: vec![
                RequestId { client: 1, seq: 1 },
                RequestId { client: 1, seq: 2 }
            ],
            hint: Some(3),
            busy: false,
        }
    );
    // Its own client's write comes back to this node's caller.
    let rejected: Vec<_> = ready.rejected.iter().map(|c| c.id.seq).collect();
    assert_eq!(rejected, vec![3]);
}

// -------------------------------------------------------------- learner

#[test]
fn followers_learn_commits_from_the_master() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    net.nodes.get_mut(&1).map(|r| r.propose(now, put(1, "a")));
    net.settle(&[]);
    net.advance(Duration::from_millis(100), &[]);
    for id in [1, 2, 3] {
        assert_eq!(net.batches(id), vec![vec![1]], "node {id}");
    }
}

#[test]
fn a_follower_forwards_writes_in_one_message_and_applies_them_like_everyone() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let f = net.nodes.get_mut(&2).expect("follower");
    for seq in 1..=3 {
        f.forward(now, 1, put(seq, "a")).expect("queued");
    }
    let ready = f.take_ready();
    let forwards: Vec<_> = ready
        .messages
        .iter()
        .filter(|env| matches!(env.msg, Message::Forward { .. }))
        .collect();
    assert_eq!(forwards.len(), 1, "{:?}", ready.messages);
    assert_eq!(forwards[0].to, 1);
    net.wire.extend(ready.messages);
    net.settle(&[]);
    net.advance(Duration::from_millis(100), &[]);
    for id in [1, 2, 3] {
        assert_eq!(net.batches(id), vec![vec![1, 2, 3]], "node {id}");
    }
    assert!(net.refused.values().all(Vec::is_empty));
    net.assert_agreement();
}

/// {1, 2, 3} with 1 master, its follower 2 having just forwarded
/// `put(1, "a")` to it, with the forwards from 2 to 1 counted and lost
/// (see [`counting_forwards`]).
fn forwarded_and_lost(isolate: bool) -> (Net, Rc<Cell<usize>>) {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let (seen, dropper) =
        counting_forwards(2, 1, move |env| isolate && (env.to == 1 || env.from == 1));
    net.dropper = Some(dropper);
    let now = net.now;
    let f = net.nodes.get_mut(&2).expect("follower");
    f.forward(now, 1, put(1, "a")).expect("queued");
    (net, seen)
}

/// Forward messages from `from` to `to` the network saw, and a dropper
/// that loses them, and whatever else `also` says.
fn counting_forwards(
    from: NodeId,
    to: NodeId,
    also: impl Fn(&Envelope) -> bool + 'static,
) -> (Rc<Cell<usize>>, Dropper) {
    let seen = Rc::new(Cell::new(0));
    let counter = seen.clone();
    let dropper: Dropper = Box::new(move |env| {
        let forward =
            env.from == from && env.to == to && matches!(env.msg, Message::Forward { .. });
        if forward {
            counter.set(counter.get() + 1);
        }
        forward || also(env)
    });
    (seen, dropper)
}

#[test]
fn a_forward_lost_on_the_way_is_sent_again_and_applied_once() {
    let (mut net, seen) = forwarded_and_lost(false);
    net.settle(&[]);
    assert_eq!(seen.get(), 1);
    net.advance(Duration::from_millis(900), &[]);
    assert_eq!(seen.get(), 1, "sent again before forward_retry");
    assert!(net.batches(1).is_empty());
    // The network delivers again; the next copy goes through.
    net.dropper = None;
    net.advance(Duration::from_millis(500), &[]);
    for id in [1, 2, 3] {
        assert_eq!(net.batches(id), vec![vec![1]], "node {id}");
    }
    // Applied here: never sent again.
    let (seen, dropper) = counting_forwards(2, 1, |_| false);
    net.dropper = Some(dropper);
    net.advance(Duration::from_secs(3), &[]);
    assert_eq!(seen.get(), 0);
    net.assert_agreement();
}

#[test]
fn copies_of_a_forward_are_proposed_once_while_one_is_queued_or_in_flight() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let copy = || Envelope {
        from: 2,
        to: 1,
        msg: Message::Forward {
            cmds: vec![put(1, "a"), put(2, "b")],
        },
    };
    // The second copy arrives while the first is in flight (its accepts
    // are on the wire behind it).
    net.wire.push_back(copy());
    net.wire.push_back(copy());
    net.settle(&[]);
    net.advance(Duration::from_millis(100), &[]);
    for id in [1, 2, 3] {
        assert_eq!(net.batches(id), vec![vec![1, 2]], "node {id}");
    }
    // One that arrives after the first was committed is proposed again:
    // the state machine takes it as a duplicate (see `kv::dedup`). That the
    // master proposes it at all shows the ids were forgotten at commit.
    net.wire.push_back(copy());
    net.settle(&[]);
    net.advance(Duration::from_millis(100), &[]);
    assert_eq!(net.batches(1), vec![vec![1, 2], vec![1, 2]]);
    net.assert_agreement();
}

#[test]
fn a_follower_behind_the_masters_commit_does_not_send_a_forward_again() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    // Node 2 hears heartbeats but no values: it lags behind the commit
    // index they carry. Its forwards are lost.
    let (seen, dropper) = counting_forwards(2, 1, |env| {
        env.to == 2 && matches!(env.msg, Message::Accept { .. } | Message::Catchup { .. })
    });
    net.dropper = Some(dropper);
    let now = net.now;
    net.nodes.get_mut(&1).map(|r| r.propose(now, put(1, "a")));
    let f = net.nodes.get_mut(&2).expect("follower");
    f.forward(now, 1, put(2, "b")).expect("queued");
    net.advance(Duration::from_secs(3), &[]);
    assert_eq!(net.batches(1), vec![vec![1]]);
    assert!(net.batches(2).is_empty());
    assert_eq!(seen.get(), 1, "sent again while behind");
    // Caught up, it sends the forward again.
    net.dropper = None;
    net.advance(Duration::from_millis(1500), &[]);
    for id in [1, 2, 3] {
        assert_eq!(net.batches(id), vec![vec![1], vec![2]], "node {id}");
    }
}

#[test]
fn a_follower_that_hears_no_report_from_its_master_sends_no_copy() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.advance(Duration::from_millis(100), &[]);
    // Node 2 stops hearing from node 1 (and never runs for master): what
    // it knows of the commit index is as old as its forward.
    net.nodes.get_mut(&2).expect("follower").forbid_candidacy();
    let (seen, dropper) = counting_forwards(2, 1, |env| env.from == 1 && env.to == 2);
    net.dropper = Some(dropper);
    let now = net.now;
    let f = net.nodes.get_mut(&2).expect("follower");
    f.forward(now, 1, put(1, "a")).expect("queued");
    net.advance(Duration::from_secs(5), &[]);
    assert_eq!(net.nodes[&2].master_hint(), Some(1));
    assert_eq!(seen.get(), 1, "a copy without a report since the forward");
}

#[test]
fn a_forward_is_sent_again_only_until_its_deadline() {
    let (mut net, seen) = forwarded_and_lost(false);
    net.advance(Duration::from_secs(40), &[]);
    // Sent at 0 s, then again 1, 2, 4 and 8 s after each send (about 1, 3,
    // 7 and 15 s); the next, at about 23 s, would be past `forward_for`
    // (20 s).
    assert_eq!(seen.get(), 5);
    assert!(net.batches(1).is_empty());
}

#[test]
fn a_late_refusal_from_another_node_leaves_a_forward_waiting() {
    let (mut net, _) = forwarded_and_lost(false);
    net.settle(&[]);
    let refused = |from| Envelope {
        from,
        to: 2,
        msg: Message::ForwardRefused {
            ids: vec![RequestId { client: 1, seq: 1 }],
            hint: Some(1),
            busy: false,
        },
    };
    // Node 3 (say, a master it went to before) refuses it late: not about
    // the attempt waiting at node 1.
    net.wire.push_back(refused(3));
    net.settle(&[]);
    assert!(net.refused.get(&2).is_none_or(Vec::is_empty));
    net.wire.push_back(refused(1));
    net.settle(&[]);
    assert_eq!(net.refused[&2].len(), 1);
}

#[test]
fn a_forward_is_not_sent_again_to_a_node_that_is_no_longer_master() {
    // Node 1 is cut off from here on; the forward to it is lost.
    let (mut net, seen) = forwarded_and_lost(true);
    let mut waited = Duration::ZERO;
    while net.nodes[&2].master_hint().is_none_or(|m| m == 1) {
        assert!(waited < Duration::from_secs(10), "no new master");
        net.advance(Duration::from_millis(100), &[]);
        waited += Duration::from_millis(100);
    }
    let before = seen.get();
    net.advance(Duration::from_secs(5), &[]);
    assert_eq!(seen.get(), before, "sent again to the former master");
    // Nor does the engine send it to the new one: its caller does.
    for id in [2, 3] {
        assert!(
            net.batches(id).iter().all(|b| !b.contains(&1)),
            "node {id}: {:?}",
            net.batches(id)
        );
    }
}

#[test]
fn a_forward_to_a_node_that_is_not_master_comes_back_refused_with_a_hint() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let f = net.nodes.get_mut(&2).expect("follower");
    // Not to a node other than the master this replica knows.
    assert_eq!(
        f.forward(now, 3, put(7, "a")),
        Err(ProposeError::NotMaster { hint: Some(1) })
    );
    // A node that is not master refuses what reaches it anyway.
    net.wire.push_back(Envelope {
        from: 2,
        to: 3,
        msg: Message::Forward {
            cmds: vec![put(7, "a")],
        },
    });
    net.settle(&[]);
    assert_eq!(
        net.refused[&2],
        vec![(
            RequestId { client: 1, seq: 7 },
            ProposeError::NotMaster { hint: Some(1) }
        )]
    );
    assert!(net.batches(1).is_empty());
    // The master takes what is forwarded to it as its own proposal.
    let m = net.nodes.get_mut(&1).expect("master");
    m.forward(now, 3, put(8, "a")).expect("proposed");
    net.settle(&[]);
    assert_eq!(net.batches(1), vec![vec![8]]);
}

#[test]
fn a_follower_gets_read_indexes_from_the_master_in_either_read_mode() {
    for mode in [ReadMode::Lease, ReadMode::Quorum] {
        let mut net = Net::in_mode(&[1, 2, 3], mode);
        net.elect(1);
        net.advance(Duration::from_millis(50), &[]);
        let now = net.now;
        let commit = net.nodes[&1].commit_index();
        let f = net.nodes.get_mut(&2).expect("follower");
        f.request_remote_read(now, 1, 5).expect("asked");
        assert_eq!(
            f.request_remote_read(now, 3, 6),
            Err(ReadError::NotMaster { hint: Some(1) })
        );
        // Asked of a node that is not master: refused, with the master.
        net.wire.push_back(Envelope {
            from: 2,
            to: 3,
            msg: Message::ReadIndexRequest { seq: 6 },
        });
        net.settle(&[]);
        net.advance(Duration::from_millis(20), &[]);
        let answers = &net.reads[&2];
        assert!(answers.contains(&(5, Ok(commit))), "{mode:?}: {answers:?}");
        assert!(
            answers.contains(&(6, Err(ReadError::NotMaster { hint: Some(1) }))),
            "{mode:?}: {answers:?}"
        );
        // The master's own reads are unaffected by its followers'.
        assert!(net.reads.get(&1).is_none_or(|r| r.is_empty()), "{mode:?}");
    }
}

#[test]
fn forwards_are_split_by_count_and_by_size() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let f = net.nodes.get_mut(&2).expect("follower");
    let n = MAX_FORWARD_COMMANDS as u64 + 1;
    for seq in 1..=n {
        f.forward(now, 1, put(seq, "a")).expect("queued");
    }
    let big = |seq| Command {
        id: RequestId { client: 2, seq },
        op: Op::Put {
            key: b"big".to_vec(),
            value: vec![0; MAX_FORWARD_BYTES / 2],
            expect: None,
        },
    };
    for seq in 1..=3 {
        f.forward(now, 1, big(seq)).expect("queued");
    }
    let sizes: Vec<usize> = f
        .take_ready()
        .messages
        .iter()
        .filter_map(|env| match &env.msg {
            Message::Forward { cmds } => Some(cmds.len()),
            _ => None,
        })
        .collect();
    // 1024 small ones; one small and one big; then one big each.
    assert_eq!(sizes, vec![MAX_FORWARD_COMMANDS, 2, 1, 1]);
}

#[test]
fn a_lagging_follower_catches_up_through_the_log() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    for seq in 1..=20 {
        let now = net.now;
        net.nodes.get_mut(&1).map(|r| r.propose(now, put(seq, "a")));
        net.settle(&[3]);
    }
    assert!(net.batches(3).is_empty());
    net.advance(Duration::from_millis(200), &[]);
    let flat: Vec<u64> = net.batches(3).into_iter().flatten().collect();
    assert_eq!(flat, (1..=20).collect::<Vec<_>>());
}

#[test]
fn a_follower_behind_the_compaction_point_is_sent_a_snapshot() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    for seq in 1..=5 {
        let now = net.now;
        net.nodes.get_mut(&1).map(|r| r.propose(now, put(seq, "a")));
        net.settle(&[3]);
    }
    let r = net.nodes.get_mut(&1).expect("master");
    let index = r.commit_index();
    r.compacted(SnapshotMeta {
        index,
        membership: membership(&[1, 2, 3]),
    });
    let now = net.now;
    r.step(now, 3, Message::CatchupRequest { from_index: 1 });
    let ready = r.take_ready();
    assert_eq!(ready.send_snapshot, vec![3]);
    // Installing it moves the follower past the gap.
    let f = net.nodes.get_mut(&3).expect("follower");
    f.snapshot_installed(SnapshotMeta {
        index,
        membership: membership(&[1, 2, 3]),
    });
    assert_eq!(f.commit_index(), index);
}

// ----------------------------------------------------------- membership

#[test]
fn membership_changes_go_one_at_a_time_through_the_log() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    net.nodes.insert(
        4,
        Replica::new(config(4), Recovered::default(), Membership::default(), now),
    );
    let add = ConfChange::AddLearner {
        id: 4,
        name: "n4".into(),
        addr: String::new(),
    };
    change(&mut net, 1, add, &[]).expect("add learner");
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    assert_eq!(
        r.propose_change(now, ConfChange::Promote { id: 4 }),
        Err(ProposeError::ChangeInProgress)
    );
    net.advance(Duration::from_millis(300), &[]);
    // The learner caught up and knows it is a learner.
    assert_eq!(net.nodes[&4].membership().members[&4].role, Role::Learner);
    assert_eq!(net.nodes[&4].commit_index(), net.nodes[&1].commit_index());
    change(&mut net, 1, ConfChange::Promote { id: 4 }, &[]).expect("promote");
    net.advance(Duration::from_millis(100), &[]);
    assert!(net.nodes[&1].membership().is_voter(4));
    assert_eq!(net.nodes[&1].membership().quorum(), 3);
    // With 4 voters, two nodes alone cannot choose anything.
    let now = net.now;
    let before = net.nodes[&1].commit_index();
    net.nodes.get_mut(&1).map(|r| r.propose(now, put(1, "k")));
    net.settle(&[3, 4]);
    assert_eq!(net.nodes[&1].commit_index(), before);
    net.settle(&[]);
    net.advance(Duration::from_millis(100), &[]);
    assert!(net.nodes[&1].commit_index() > before);
}

#[test]
fn a_change_without_a_reachable_quorum_is_refused_for_that_reason_not_as_in_progress() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    // Nodes 2 and 3 fall silent while a write is in flight: it can never
    // be chosen, so "in progress" would never end. The reason to give is
    // that the change could not be committed.
    let now = net.now;
    net.nodes.get_mut(&1).map(|r| r.propose(now, put(1, "k")));
    net.advance(Duration::from_millis(400), &[2, 3]);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    match r.propose_change(now, ConfChange::Remove { id: 2 }) {
        Err(ProposeError::InvalidChange(m)) => {
            assert!(m.contains("only 1 of the 3 voters are reachable"), "{m}");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_change_its_own_configuration_cannot_choose_is_refused_not_left_in_flight() {
    // Two voters, one gone: removing it would leave a configuration that
    // can work ({1}), but the change itself needs both to be chosen. Taken,
    // it would wait in flight for good and refuse every later change as
    // "in progress".
    let mut net = Net::new(&[1, 2]);
    net.elect(1);
    net.advance(Duration::from_millis(400), &[2]);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    match r.propose_change(now, ConfChange::Remove { id: 2 }) {
        Err(ProposeError::InvalidChange(m)) => {
            assert!(m.contains("only 1 of the 2 voters are reachable"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    // And again, for the same reason: nothing was left pending.
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    assert!(matches!(
        r.propose_change(now, ConfChange::Remove { id: 2 }),
        Err(ProposeError::InvalidChange(_))
    ));
}

#[test]
fn a_removed_master_steps_down() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    change(&mut net, 1, ConfChange::Remove { id: 1 }, &[]).expect("remove");
    net.advance(Duration::from_millis(200), &[]);
    assert!(!net.nodes[&1].is_master());
    assert!(!net.nodes[&2].membership().members.contains_key(&1));
    net.advance(Duration::from_millis(3000), &[1]);
    let m = net.master().expect("the remaining voters elect a master");
    assert!(m == 2 || m == 3);
}

#[test]
fn a_master_that_hears_a_higher_ballot_heartbeat_steps_down() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    r.step(
        now,
        3,
        Message::Heartbeat {
            ballot: Ballot::new(99, 3),
            commit: 0,
        },
    );
    assert!(!r.is_master());
    assert_eq!(r.master_hint(), Some(3));
}

#[test]
fn a_master_whose_proposal_lost_an_instance_steps_down_before_advertising_it() {
    // Regression: a stale master that learned, by catch-up, a value chosen
    // under a higher ballot at an instance where its own proposal was in
    // flight kept advertising a commit index covering that instance at its
    // own ballot; a follower holding the stale master's value then applied it.
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    r.propose(now, put(1, "a")).expect("proposed");
    r.take_ready();
    let mine = r.status(now).last_index;
    r.step(
        now,
        3,
        Message::Catchup {
            entries: vec![(mine, Value::Noop)],
            commit: mine,
        },
    );
    assert!(!r.is_master(), "the stale master must step down");
    let ready = r.take_ready();
    assert!(
        !ready
            .messages
            .iter()
            .any(|m| matches!(m.msg, Message::Heartbeat { .. } | Message::Accept { .. })),
        "no commit index is advertised after stepping down"
    );
}

#[test]
fn mastership_handoff_elects_the_target_without_waiting_for_the_lease() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    r.transfer_mastership(now, 2).expect("handoff starts");
    // The old master stops serving lease reads and taking commands at once.
    assert!(!r.lease_valid(now));
    assert_eq!(r.read_lease_until(now), None);
    assert_eq!(
        r.propose(now, put(1, "k")),
        Err(ProposeError::NotMaster { hint: Some(2) })
    );
    net.settle(&[]);
    assert_eq!(net.master(), Some(2), "the target took over at once");
    assert!(!net.nodes[&1].is_master());
    // Node 3 honours the target's lease: nobody else can get its promise.
    let t = net.now;
    if let Some(r) = net.nodes.get_mut(&3) {
        r.step(
            t,
            1,
            Message::Prepare {
                ballot: Ballot::new(99, 1),
                from_index: 1,
            },
        )
    }
    let ready = net
        .nodes
        .get_mut(&3)
        .map(|r| r.take_ready())
        .expect("ready");
    assert!(matches!(
        ready.messages[0].msg,
        Message::Reject {
            reason: RejectReason::Lease { holder: 2 },
            ..
        }
    ));
}

#[test]
fn a_checked_handoff_elects_the_named_voter() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.advance(Duration::from_millis(100), &[]);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    assert_eq!(r.hand_off(now, Some(3)), Ok(3));
    assert_eq!(
        r.hand_off(now, Some(2)),
        Err(HandoffError::InProgress),
        "one handoff at a time"
    );
    net.settle(&[]);
    assert_eq!(net.master(), Some(3));
    // The new master refuses to hand over to itself, and the old one
    // points at the new.
    let now = net.now;
    assert_eq!(
        net.nodes.get_mut(&3).map(|r| r.hand_off(now, Some(3))),
        Some(Err(HandoffError::AlreadyMaster(3)))
    );
    assert_eq!(
        net.nodes.get_mut(&1).map(|r| r.hand_off(now, Some(2))),
        Some(Err(HandoffError::NotMaster { hint: Some(3) }))
    );
}

#[test]
fn a_handoff_is_refused_to_a_learner_a_stranger_and_a_silent_voter() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let learner = ConfChange::AddLearner {
        id: 4,
        name: "n4".into(),
        addr: String::new(),
    };
    net.nodes
        .get_mut(&1)
        .map(|r| r.propose_change(now, learner).expect("add learner"));
    net.settle(&[]);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    assert_eq!(r.hand_off(now, Some(4)), Err(HandoffError::NotVoter(4)));
    assert_eq!(r.hand_off(now, Some(9)), Err(HandoffError::NotMember(9)));
    // Node 3 stops answering: after two election timeouts it is refused,
    // and a handoff to "anyone" picks node 2.
    net.advance(Duration::from_millis(400), &[3]);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    assert_eq!(r.hand_off(now, Some(3)), Err(HandoffError::Unreachable(3)));
    assert!(r.is_master(), "a refused handoff changes nothing");
    assert!(r.lease_valid(now));
    assert_eq!(r.hand_off(now, None), Ok(2));
    net.settle(&[3]);
    assert_eq!(net.master(), Some(2));
}

#[test]
fn a_handoff_is_refused_to_a_voter_far_behind_and_to_anyone_when_none_qualifies() {
    let mut cfg_lag = config(1);
    cfg_lag.max_promise_lag = 4;
    let mut net = Net::new(&[1, 2, 3]);
    net.nodes.insert(
        1,
        Replica::new(
            cfg_lag,
            Recovered::default(),
            membership(&[1, 2, 3]),
            Duration::ZERO,
        ),
    );
    net.elect(1);
    // Node 3 misses a few writes (its messages are lost, its timers stop).
    for seq in 1..=6 {
        let now = net.now;
        net.nodes.get_mut(&1).map(|r| r.propose(now, put(seq, "k")));
        net.settle(&[3]);
    }
    // Heard from recently, but behind: refused by name, passed over by "anyone".
    net.dropper = Some(Box::new(|e: &Envelope| {
        e.to == 3 && matches!(e.msg, Message::Accept { .. } | Message::Catchup { .. })
    }));
    net.advance(Duration::from_millis(60), &[]);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    let refused = r.hand_off(now, Some(3));
    assert!(
        matches!(refused, Err(HandoffError::Behind { id: 3, .. })),
        "{refused:?}"
    );
    assert_eq!(r.hand_off(now, None), Ok(2));
    net.dropper = None;
    net.settle(&[]);
    assert_eq!(net.master(), Some(2));
    // A cluster of one has nobody to hand over to.
    let mut solo = Net::new(&[1]);
    solo.elect(1);
    let now = solo.now;
    assert_eq!(
        solo.nodes.get_mut(&1).map(|r| r.hand_off(now, None)),
        Some(Err(HandoffError::NoCandidate))
    );
}

#[test]
fn a_learner_that_has_not_caught_up_cannot_be_promoted() {
    let mut cfg_lag = config(1);
    cfg_lag.max_promise_lag = 2;
    let mut net = Net::new(&[1, 2, 3]);
    net.nodes.insert(
        1,
        Replica::new(
            cfg_lag,
            Recovered::default(),
            membership(&[1, 2, 3]),
            Duration::ZERO,
        ),
    );
    net.elect(1);
    let now = net.now;
    let add = ConfChange::AddLearner {
        id: 4,
        name: "n4".into(),
        addr: String::new(),
    };
    net.nodes
        .get_mut(&1)
        .map(|r| r.propose_change(now, add).expect("add learner"));
    net.settle(&[]);
    // Node 4 does not exist, so it never reports progress; the log grows.
    for seq in 1..=10 {
        let now = net.now;
        net.nodes.get_mut(&1).map(|r| r.propose(now, put(seq, "k")));
        net.settle(&[]);
    }
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    assert!(matches!(
        r.propose_change(now, ConfChange::Promote { id: 4 }),
        Err(ProposeError::InvalidChange(m)) if m.contains("not caught up")
    ));
}

// ------------------------------------------- reconfiguration and durability

/// Elects `id` while the nodes in `cut` hear nothing: only `id` is ticked.
fn elect_without(net: &mut Net, id: NodeId, cut: &[NodeId]) {
    net.now += Duration::from_secs(5);
    let now = net.now;
    if let Some(r) = net.nodes.get_mut(&id) {
        r.tick(now);
    }
    net.settle(cut);
    assert!(net.nodes[&id].is_master(), "node {id} should be master");
}

#[test]
fn a_configuration_that_lost_its_slot_never_decides_a_quorum() {
    // Voters a=1, b=2, c=3, d=4; d is master.
    let all = [1, 2, 3, 4];
    let mut net = Net::new(&all);
    net.elect(4);
    net.advance(Duration::from_millis(100), &[]);
    // d appends "remove c" at j; nobody else receives it, and d is cut off.
    let j = change(&mut net, 4, ConfChange::Remove { id: 3 }, &[]).expect("d proposes the change");
    net.drain(4);
    net.wire.clear();
    // b is elected by {a, b, c} and fills j with its barrier.
    elect_without(&mut net, 2, &[4]);
    net.settle(&[4]);
    // b commits "remove d" at j+1 and a write W at j+2 with c alone.
    let removal =
        change(&mut net, 2, ConfChange::Remove { id: 4 }, &[4]).expect("b proposes removing d");
    assert_eq!(removal, j + 1);
    net.settle(&[1, 4]);
    let now = net.now;
    net.nodes.get_mut(&2).map(|r| r.propose(now, put(7, "w")));
    net.settle(&[1, 4]);
    assert_eq!(net.batches(2), vec![vec![7]], "b committed W");
    // c restarts and forgets its commit index (it is written lazily).
    net.restart(3, membership(&all), true);
    // d restarts too, keeping its log; reaching a and c but not b, it
    // campaigns under its stale config {a, b, d}, whose slot b's barrier
    // took over.
    net.restart(4, membership(&all), false);
    net.now += Duration::from_secs(5);
    let now = net.now;
    if let Some(r) = net.nodes.get_mut(&4) {
        r.tick(now);
    }
    net.settle(&[2]);
    // Only d's timers run (its retransmissions reach c).
    for _ in 0..6 {
        net.now += 10 * MS;
        let now = net.now;
        if let Some(r) = net.nodes.get_mut(&4) {
            r.tick(now);
        }
        net.settle(&[2]);
    }
    net.assert_agreement();
    assert!(
        !net.nodes[&4].is_master(),
        "d was removed by a chosen configuration; it must not become master"
    );
    // Healed, the cluster goes on with W in place.
    net.advance(Duration::from_millis(3000), &[4]);
    net.assert_agreement();
    for id in [1, 2, 3] {
        assert!(net.batches(id).contains(&vec![7]), "node {id} lost W");
    }
}

#[test]
fn a_master_lease_does_not_outlive_two_voter_changes() {
    // Voters 1, 2, 3 with 1 as master; its lease values reach only 1 and 3
    // (2 and the joining 4 lose every one), which Paxos must tolerate.
    let mut net = Net::new(&[1, 2, 3]);
    net.nodes.insert(
        4,
        Replica::new(
            config(4),
            Recovered::default(),
            Membership::default(),
            Duration::ZERO,
        ),
    );
    net.dropper = Some(Box::new(|e: &Envelope| {
        e.from == 1
            && (e.to == 2 || e.to == 4)
            && matches!(&e.msg, Message::Accept { entries, .. }
                if entries.iter().any(|(_, v)| matches!(v, Value::Lease { .. })))
    }));
    net.elect(1);
    // Within one lease: add 4 as a learner, promote it, remove 3.
    for change in [
        ConfChange::AddLearner {
            id: 4,
            name: "n4".into(),
            addr: String::new(),
        },
        ConfChange::Promote { id: 4 },
        ConfChange::Remove { id: 3 },
    ] {
        // Before the fix all three went through at once; now the second
        // waits for a lease the new configuration must grant, which 2 and 4
        // never accept, so it may not happen at all. Either way, no two
        // leases may overlap below.
        let _ = self::change(&mut net, 1, change, &[]);
        net.settle(&[]);
    }
    // 1 is cut off; {2, 4} hold no lease of 1's and elect 2. 1 must not
    // believe in its lease while 2 holds one.
    for _ in 0..60 {
        net.advance(Duration::from_millis(10), &[1]);
        let now = net.now;
        let holders: Vec<NodeId> = [1, 2, 4]
            .into_iter()
            .filter(|id| net.nodes[id].lease_valid(now))
            .collect();
        assert!(
            holders.len() <= 1,
            "overlapping leases at {now:?}: {holders:?}"
        );
    }
    assert!(
        [2, 3, 4].iter().any(|id| net.nodes[id].is_master()),
        "the others elected a master"
    );
}

/// Delivers the messages a replica addressed to itself, as the caller does
/// once a Ready's records are durable.
fn deliver_own(r: &mut Replica, now: Duration, ready: &Ready) {
    let me = r.id();
    for env in ready.messages.iter().filter(|e| e.to == me) {
        r.step(now, env.from, env.msg.clone());
    }
}

/// No message that may leave before the Ready's records are durable may
/// carry a commit index that covers an entry of that same Ready.
fn assert_no_early_commit(ready: &Ready) {
    let first_new = ready
        .persist
        .iter()
        .filter_map(|p| match p {
            Persist::Entry(i, _) => Some(*i),
            _ => None,
        })
        .min();
    let Some(first_new) = first_new else { return };
    for env in &ready.messages {
        let commit = match &env.msg {
            Message::Accept { commit, .. } | Message::Heartbeat { commit, .. }
                if env.msg.may_precede_persist() =>
            {
                *commit
            }
            _ => continue,
        };
        assert!(
            commit < first_new,
            "{:?} to {} advertises commit {commit} before entry {first_new} is durable",
            env.msg,
            env.to
        );
    }
}

#[test]
fn a_single_voter_never_advertises_a_commit_before_its_records_are_durable() {
    let mut m = membership(&[1]);
    m.members.insert(
        2,
        Member {
            name: "n2".into(),
            addr: String::new(),
            role: Role::Learner,
        },
    );
    let mut r = Replica::new(config(1), Recovered::default(), m, Duration::ZERO);
    let mut now = Duration::from_secs(5);
    r.tick(now);
    let mut seq = 0;
    for _ in 0..10 {
        // Several proposals and a tick in one turn, as the driver batches them.
        for _ in 0..3 {
            seq += 1;
            let _ = r.propose(now, put(seq, "k"));
        }
        now += Duration::from_millis(60);
        r.tick(now);
        let ready = r.take_ready();
        assert_no_early_commit(&ready);
        deliver_own(&mut r, now, &ready);
    }
    assert!(r.is_master());
    assert!(r.commit_index() > 3, "the single voter made progress");
}

#[test]
fn a_snapshot_installed_before_pending_values_are_applied_replaces_them() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    for seq in 1..=5 {
        let now = net.now;
        net.nodes.get_mut(&1).map(|r| r.propose(now, put(seq, "a")));
        net.settle(&[3]);
    }
    let commit = net.nodes[&1].commit_index();
    let entries: Vec<(Index, Value)> = (1..=commit)
        .filter_map(|i| {
            net.committed[&1]
                .iter()
                .find(|(j, _)| *j == i)
                .map(|(j, v)| (*j, v.clone()))
        })
        .collect();
    // Node 3 learns everything, and before its caller applies any of it,
    // installs a snapshot that covers most of it.
    let now = net.now;
    let f = net.nodes.get_mut(&3).expect("follower");
    f.step(now, 1, Message::Catchup { entries, commit });
    f.snapshot_installed(SnapshotMeta {
        index: commit - 1,
        membership: membership(&[1, 2, 3]),
    });
    let applied: Vec<Index> = f.take_ready().committed.iter().map(|(i, _)| *i).collect();
    assert_eq!(
        applied,
        vec![commit],
        "only what follows the snapshot is left to apply"
    );
}

#[test]
fn a_replica_forbidden_to_run_for_master_never_campaigns_but_still_votes() {
    let mut net = Net::new(&[1, 2, 3]);
    if let Some(r) = net.nodes.get_mut(&3) {
        r.forbid_candidacy();
    }
    net.elect(1);
    // With 1 gone, only 2 may take over, with 3's vote.
    net.advance(Duration::from_secs(5), &[1]);
    assert!(net.nodes[&2].is_master());
    assert!(!net.nodes[&3].is_master());
    // A handoff to 3 does not make it run either.
    let ballot = net.nodes[&2].status(net.now).ballot;
    let now = net.now;
    if let Some(r) = net.nodes.get_mut(&3) {
        r.step(now, 2, Message::TimeoutNow { ballot });
        assert!(
            !r.take_ready()
                .messages
                .iter()
                .any(|e| matches!(e.msg, Message::Prepare { .. }))
        );
    }
}

#[test]
fn a_voter_change_above_unchosen_instances_cannot_fork_the_configuration() {
    // A change proposed while instances below it were still in flight could
    // survive, at a later election, above a sibling change that a second
    // master chose in one of those instances: two configurations whose
    // majorities do not meet, and two values chosen for one instance.
    let all = [1, 2, 3, 4];
    let mut net = Net::new(&all);
    net.elect(1);
    net.advance(Duration::from_millis(100), &[]);
    // 1 (A) has writes in flight and is asked to remove 4 (D); nobody hears
    // any of it.
    let now = net.now;
    for seq in 1..=4 {
        if let Some(r) = net.nodes.get_mut(&1) {
            let _ = r.propose(now, put(seq, "a"));
        }
        net.drain(1);
    }
    if let Some(r) = net.nodes.get_mut(&1) {
        // Refused now: the change waits for the instances in flight.
        assert_eq!(
            r.propose_change(now, ConfChange::Remove { id: 4 }),
            Err(ProposeError::ChangeInProgress)
        );
    }
    net.drain(1);
    net.wire.clear();
    // 3 (C) is elected by {2, 3, 4} and chooses its barrier.
    elect_without(&mut net, 3, &[1]);
    net.settle(&[1]);
    // 2 (B) loses 3 and 4; C removes the unreachable A with D alone, and
    // writes.
    change(&mut net, 3, ConfChange::Remove { id: 1 }, &[1, 2]).expect("C removes A");
    net.settle(&[1, 2]);
    let now = net.now;
    net.nodes.get_mut(&3).map(|r| r.propose(now, put(9, "c")));
    net.settle(&[1, 2]);
    // {A, B} | {C, D}: A restarts and campaigns with B.
    net.restart(1, membership(&all), false);
    net.now += Duration::from_secs(5);
    let now = net.now;
    if let Some(r) = net.nodes.get_mut(&1) {
        r.tick(now);
    }
    net.settle(&[3, 4]);
    for _ in 0..100 {
        net.now += 10 * MS;
        let now = net.now;
        if let Some(r) = net.nodes.get_mut(&1) {
            r.tick(now);
        }
        net.settle(&[3, 4]);
    }
    net.assert_agreement();
}

#[test]
fn a_voter_change_waits_until_a_quorum_of_the_new_voters_holds_every_chosen_instance() {
    // One voter, 1, and a learner, 2, that has received nothing. Promoting 2
    // and then removing 1 would leave a lone voter without the instances 1
    // chose alone: elected, it would fill them with no-ops.
    let mut m = membership(&[1]);
    m.members.insert(
        2,
        Member {
            name: "n2".into(),
            addr: String::new(),
            role: Role::Learner,
        },
    );
    let mut net = Net::new(&[1]);
    net.nodes.insert(
        1,
        Replica::new(config(1), Recovered::default(), m.clone(), Duration::ZERO),
    );
    net.nodes.insert(
        2,
        Replica::new(config(2), Recovered::default(), m, Duration::ZERO),
    );
    net.elect(1);
    for seq in 1..=5 {
        let now = net.now;
        net.nodes.get_mut(&1).map(|r| r.propose(now, put(seq, "a")));
        net.settle(&[2]);
    }
    // While 2 answers heartbeats but gets no values, the promotion waits.
    net.dropper = Some(Box::new(|e: &Envelope| {
        e.to == 2 && matches!(e.msg, Message::Accept { .. } | Message::Catchup { .. })
    }));
    assert_eq!(
        change(&mut net, 1, ConfChange::Promote { id: 2 }, &[]),
        Err(ProposeError::ChangeInProgress)
    );
    // Once 2 has caught up, it goes through, and so does the removal of 1.
    net.dropper = None;
    change(&mut net, 1, ConfChange::Promote { id: 2 }, &[]).expect("promote");
    net.settle(&[]);
    change(&mut net, 1, ConfChange::Remove { id: 1 }, &[]).expect("remove");
    net.advance(Duration::from_millis(200), &[]);
    net.advance(Duration::from_secs(3), &[1]);
    assert!(net.nodes[&2].is_master());
    net.assert_agreement();
    assert_eq!(
        net.batches(2).into_iter().flatten().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5],
        "the lone voter holds every write"
    );
}

// ------------------------------------------------------------ quorum reads

/// Feeds `id` a read request and moves its output onto the wire.
fn read(net: &mut Net, id: NodeId, token: u64) -> Result<(), ReadError> {
    let now = net.now;
    let r = net.nodes.get_mut(&id).expect("node");
    let asked = r.request_read(now, token);
    net.drain(id);
    asked
}

fn answers(net: &Net, id: NodeId) -> Vec<ReadAnswer> {
    net.reads.get(&id).cloned().unwrap_or_default()
}

#[test]
fn a_quorum_read_is_answered_after_a_majority_confirms_a_round() {
    let mut net = Net::in_mode(&[1, 2, 3], ReadMode::Quorum);
    net.elect(1);
    let commit = net.nodes[&1].commit_index();
    read(&mut net, 1, 7).expect("queued");
    assert!(
        answers(&net, 1).is_empty(),
        "no answer without a round trip"
    );
    let probes: Vec<_> = net
        .wire
        .iter()
        .filter(|e| matches!(e.msg, Message::ReadProbe { .. }))
        .map(|e| e.to)
        .collect();
    assert_eq!(probes, vec![2, 3]);
    // One follower's ack plus the master is a majority of three.
    net.settle(&[3]);
    assert_eq!(answers(&net, 1), vec![(7, Ok(commit))]);
}

#[test]
fn a_quorum_read_is_not_confirmed_by_a_round_that_started_before_it() {
    let mut net = Net::in_mode(&[1, 2, 3], ReadMode::Quorum);
    net.elect(1);
    read(&mut net, 1, 1).expect("queued");
    // Round 1 is in flight; read 2 arrives and must wait for round 2.
    read(&mut net, 1, 2).expect("queued");
    let round1: Vec<Envelope> = net.wire.drain(..).collect();
    let ack = |to: NodeId| {
        round1
            .iter()
            .filter(|e| e.to == to)
            .find_map(|e| match e.msg {
                Message::ReadProbe { ballot, seq } => Some(Message::ReadAck { ballot, seq }),
                _ => None,
            })
            .expect("probe")
    };
    let now = net.now;
    net.nodes.get_mut(&1).expect("master").step(now, 2, ack(2));
    net.drain(1);
    let got: Vec<u64> = answers(&net, 1).iter().map(|(t, _)| *t).collect();
    assert_eq!(got, vec![1], "round 1 answers read 1 only");
    // Round 2 went out when round 1 finished; a late duplicate of round
    // 1's ack does not confirm it.
    net.nodes.get_mut(&1).expect("master").step(now, 3, ack(3));
    net.drain(1);
    assert_eq!(answers(&net, 1).len(), 1);
    net.settle(&[]);
    let got: Vec<u64> = answers(&net, 1).iter().map(|(t, _)| *t).collect();
    assert_eq!(got, vec![1, 2]);
}

#[test]
fn a_quorum_read_fails_when_a_majority_knows_a_higher_ballot() {
    let mut net = Net::in_mode(&[1, 2, 3], ReadMode::Quorum);
    net.elect(1);
    // 2 and 3 elect 2 behind 1's back: no lease holds them back.
    let t = net.now + 300 * MS;
    net.now = t;
    if let Some(r) = net.nodes.get_mut(&2) {
        r.tick(t);
    }
    net.settle(&[1]);
    assert!(
        net.nodes[&2].is_master(),
        "2 was elected without waiting out a lease"
    );
    assert!(net.nodes[&1].is_master(), "1 has not heard of it yet");
    read(&mut net, 1, 9).expect("queued");
    net.settle(&[]);
    assert!(
        !net.nodes[&1].is_master(),
        "the probe's refusal made 1 step down"
    );
    assert!(
        matches!(
            answers(&net, 1).as_slice(),
            [(9, Err(ReadError::NotMaster { .. }))]
        ),
        "{:?}",
        answers(&net, 1)
    );
}

#[test]
fn in_lease_mode_the_same_partition_cannot_elect_another_master() {
    let mut net = Net::in_mode(&[1, 2, 3], ReadMode::Lease);
    net.elect(1);
    net.advance(100 * MS, &[]);
    let t = net.now + 300 * MS;
    net.now = t;
    if let Some(r) = net.nodes.get_mut(&2) {
        r.tick(t);
    }
    net.settle(&[1]);
    assert!(!net.nodes[&2].is_master(), "the acceptors honour 1's lease");
}

#[test]
fn quorum_reads_answer_without_a_lease_and_lease_reads_do_not() {
    let mut net = Net::in_mode(&[1, 2, 3], ReadMode::Quorum);
    net.elect(1);
    let now = net.now;
    assert!(!net.nodes[&1].lease_valid(now), "no lease is relied on");
    assert_eq!(net.nodes[&1].read_lease_until(now), None);
    assert_eq!(
        read(&mut net, 2, 1),
        Err(ReadError::NotMaster { hint: Some(1) })
    );
    let mut lease = Net::new(&[1, 2, 3]);
    lease.elect(1);
    read(&mut lease, 1, 4).expect("answered");
    let commit = lease.nodes[&1].commit_index();
    assert_eq!(
        answers(&lease, 1),
        vec![(4, Ok(commit))],
        "at once, from the lease"
    );
}

#[test]
fn a_read_round_slower_than_the_retry_keeps_the_acks_it_has() {
    let mut net = Net::in_mode(&[1, 2, 3], ReadMode::Quorum);
    net.elect(1);
    let commit = net.nodes[&1].commit_index();
    read(&mut net, 1, 5).expect("queued");
    let first: Vec<Envelope> = net.wire.drain(..).collect();
    // No answer within the retry interval: the master asks again.
    net.now += 50 * MS;
    let now = net.now;
    net.nodes.get_mut(&1).expect("master").tick(now);
    net.drain(1);
    let again = net
        .wire
        .iter()
        .filter(|e| matches!(e.msg, Message::ReadProbe { .. }))
        .count();
    assert_eq!(again, 2, "both peers are asked again");
    net.wire.clear();
    // The answer to the first probe arrives late: it still counts.
    let late = first
        .iter()
        .find_map(|e| match e.msg {
            Message::ReadProbe { ballot, seq } if e.to == 2 => {
                Some(Message::ReadAck { ballot, seq })
            }
            _ => None,
        })
        .expect("probe to 2");
    net.nodes.get_mut(&1).expect("master").step(now, 2, late);
    net.drain(1);
    assert_eq!(answers(&net, 1), vec![(5, Ok(commit))]);
}

#[test]
fn commands_queued_when_mastership_is_handed_over_come_back() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    r.propose(now, put(1, "k")).expect("queued");
    r.transfer_mastership(now, 2).expect("handoff starts");
    let ready = r.take_ready();
    assert_eq!(ready.rejected.len(), 1, "the queued command is given back");
    assert!(
        !ready.messages.iter().any(|e| matches!(
            &e.msg,
            Message::Accept { entries, .. }
                if entries.iter().any(|(_, v)| matches!(v, Value::Batch(_)))
        )),
        "and never proposed behind the handoff"
    );
}

#[test]
fn a_follower_reports_a_master_silent_for_three_leases() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    net.advance(Duration::from_millis(100), &[]);
    assert!(!net.nodes[&2].master_silent(net.now));
    assert!(!net.nodes[&1].master_silent(net.now), "never on the master");
    // Node 2 hears from nobody (and cannot be elected alone): while it
    // holds the master's lease it waits; then it stands for election,
    // knowing no master, and never wins.
    net.advance(Duration::from_millis(500), &[1, 3]);
    assert!(!net.nodes[&2].master_silent(net.now), "a moment's silence");
    net.advance(Duration::from_millis(2600), &[1, 3]);
    assert!(net.nodes[&2].master_silent(net.now));
    // Back in touch: a master (the old one, or another) is heard again.
    net.advance(Duration::from_secs(3), &[]);
    assert!(!net.nodes[&2].master_silent(net.now));
}

#[test]
fn a_master_that_hands_over_is_never_reported_cut_off_from_the_new_one() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    // Master for many leases: it heard no other master all that time.
    net.advance(Duration::from_secs(10), &[]);
    let now = net.now;
    let r = net.nodes.get_mut(&1).expect("master");
    assert_eq!(r.hand_off(now, Some(2)), Ok(2));
    // Checked after every message (the node publishes its status after
    // every turn): in particular between stepping down and the new
    // master's first word.
    net.drain_all();
    let mut steps = 0;
    while let Some(env) = net.wire.pop_front() {
        steps += 1;
        assert!(steps < 10_000, "message storm");
        if let Some(r) = net.nodes.get_mut(&env.to) {
            r.step(now, env.from, env.msg);
        }
        net.drain(env.to);
        assert!(
            !net.nodes[&1].master_silent(now),
            "the old master called itself cut off after {steps} messages"
        );
    }
    assert_eq!(net.master(), Some(2));
}

#[test]
fn the_master_reports_members_it_has_not_heard_from_for_two_leases() {
    let mut net = Net::new(&[1, 2, 3]);
    net.elect(1);
    let now = net.now;
    assert!(net.nodes[&1].silent_peers(now).is_empty());
    assert!(
        net.nodes[&2].silent_peers(now).is_empty(),
        "only the master can tell"
    );
    // Node 3 stops answering; node 2 keeps answering heartbeats.
    net.advance(Duration::from_millis(1500), &[3]);
    assert!(
        net.nodes[&1].silent_peers(net.now).is_empty(),
        "within two leases (1 s each) nobody is silent yet"
    );
    net.advance(Duration::from_millis(600), &[3]);
    assert_eq!(
        net.nodes[&1].silent_peers(net.now),
        BTreeSet::from([3]),
        "node 3 is silent past two leases, node 2 is not"
    );
    // Back: heard from again at the next heartbeat.
    net.advance(Duration::from_millis(200), &[]);
    assert!(net.nodes[&1].silent_peers(net.now).is_empty());
}

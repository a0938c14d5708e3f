//! In-process throughput of the engine: a fault-free 3-node cluster whose
//! messages are delivered at once, with batching and pipelining on. Each node
//! persists to an in-memory store and applies to the real KV state machine, so
//! the figure is the CPU cost of consensus plus apply, without network or
//! fsync. It is a measurement, never a test assertion.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::kv::{Op, Store};
use crate::paxos::{
    Command, EngineConfig, Envelope, Member, Membership, Replica, RequestId, Role, Value,
};
use crate::storage::{LogStore, MemStore};

/// What one throughput run measured.
#[derive(Debug)]
pub struct Throughput {
    pub commands: u64,
    pub elapsed: Duration,
    pub instances: u64,
}

impl std::fmt::Display for Throughput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} commands in {:.3}s through a 3-node cluster: {:.0} commands/s, {} instances ({:.1} commands per batch)",
            self.commands,
            secs,
            self.commands as f64 / secs,
            self.instances,
            self.commands as f64 / self.instances.max(1) as f64
        )
    }
}

struct Node {
    replica: Replica,
    store: Store,
    disk: MemStore,
}

/// Pushes `commands` 256-byte puts through a 3-node cluster as fast as the
/// engine takes them, with up to 4096 commands queued at the master.
pub fn throughput(commands: u64) -> Throughput {
    let mut membership = Membership::default();
    for id in 1..=3 {
        membership.members.insert(
            id,
            Member {
                name: format!("n{id}"),
                addr: String::new(),
                role: Role::Voter,
            },
        );
    }
    let mut nodes: Vec<Node> = (1..=3)
        .map(|id| {
            let mut cfg = EngineConfig::new(id);
            cfg.election_timeout = Duration::from_millis(if id == 1 { 10 } else { 10_000 });
            Node {
                replica: Replica::new(cfg, Default::default(), membership.clone(), Duration::ZERO),
                store: Store::new(),
                disk: MemStore::new(),
            }
        })
        .collect();
    let mut now = Duration::from_secs(11);
    let mut queue: VecDeque<Envelope> = VecDeque::new();
    let pump = |nodes: &mut Vec<Node>,
                queue: &mut VecDeque<Envelope>,
                applied: &mut u64,
                instances: &mut u64| {
        for (i, n) in nodes.iter_mut().enumerate() {
            let ready = n.replica.take_ready();
            let _ = n.disk.append(&ready.persist);
            queue.extend(ready.messages);
            for (index, v) in ready.committed {
                if let Value::Batch(cmds) = &v {
                    for c in cmds.iter() {
                        n.store.apply(c.id, &c.op);
                        if i == 0 {
                            *applied += 1;
                        }
                    }
                    if i == 0 {
                        *instances += 1;
                    }
                }
                n.store.set_applied_index(index);
            }
        }
    };
    let (mut applied, mut instances) = (0u64, 0u64);
    // Elect node 1.
    nodes[0].replica.tick(now);
    for _ in 0..100 {
        pump(&mut nodes, &mut queue, &mut applied, &mut instances);
        while let Some(env) = queue.pop_front() {
            let to = (env.to - 1) as usize;
            nodes[to].replica.step(now, env.from, env.msg);
        }
        if nodes[0].replica.read_index(now).is_ok() {
            break;
        }
    }
    let value = vec![b'x'; 256];
    let started = Instant::now();
    let mut proposed = 0u64;
    applied = 0;
    instances = 0;
    while applied < commands {
        while proposed < commands && proposed < applied + 4096 {
            let cmd = Command {
                id: RequestId {
                    client: 7,
                    seq: proposed + 1,
                },
                op: Op::Put {
                    key: format!("key{}", proposed % 10_000).into_bytes(),
                    value: value.clone(),
                    expect: None,
                },
            };
            if nodes[0].replica.propose(now, cmd).is_err() {
                break;
            }
            proposed += 1;
        }
        pump(&mut nodes, &mut queue, &mut applied, &mut instances);
        // Deliver what is queued now, in one round, like a network would.
        let round: Vec<Envelope> = queue.drain(..).collect();
        for env in round {
            let to = (env.to - 1) as usize;
            nodes[to].replica.step(now, env.from, env.msg);
        }
        now += Duration::from_micros(10);
        nodes[0].replica.tick(now);
    }
    Throughput {
        commands: applied,
        elapsed: started.elapsed(),
        instances,
    }
}

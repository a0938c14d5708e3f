//! The faults a run injects, one at a time, each healed before the next:
//! kill -9 of any node (restarted a moment later), SIGSTOP of the master,
//! partitions through the peer proxies (the master alone, a follower alone,
//! or a bridge: two nodes that cannot reach each other but both reach the
//! third), lost volumes (a node wiped and restarted empty, then replaced
//! through the API), membership changes (a member removed, wiped, and
//! brought back as a replacement) proposed through random nodes, and
//! rolled-back volumes (a node put back on an older copy of its own data
//! directory after it acknowledged writes past it, which it must refuse).

use std::fmt;
use std::time::Duration;

use rand::Rng;
use rand::rngs::SmallRng;

use super::cluster::Cluster;

/// The kinds of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Fault {
    Kill,
    Pause,
    Partition,
    DiskLoss,
    Membership,
    Rollback,
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::DiskLoss => "disk-loss",
            Fault::Membership => "membership",
            Fault::Rollback => "rollback",
        };
        f.write_str(s)
    }
}

pub const ALL: [Fault; 6] = [
    Fault::Kill,
    Fault::Pause,
    Fault::Partition,
    Fault::DiskLoss,
    Fault::Membership,
    Fault::Rollback,
];

/// How far past the highest commit index a copy of a stopped node's
/// volume can reach: a master proposes at most its window of instances
/// (4 by default) past what it knows chosen, and a new master re-proposes
/// only what earlier ones proposed. Generous, so that "past the copy" is
/// certain.
const PROPOSED_PAST_COMMIT: u64 = 64;

/// Entries a node must apply after it caught up past its copy before the
/// copy counts as older than what it acknowledged.
const APPLIED_PAST_COPY: u64 = 20;

fn pick(rng: &mut SmallRng, n: usize) -> usize {
    rng.random_range(0..n)
}

fn sleep_ms(rng: &mut SmallRng, lo: u64, hi: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(rng.random_range(lo..hi)))
}

/// Injects one fault of `kind` and heals it. Returns a line for the log,
/// or why a replacement could not be finished (not a safety failure: the
/// run's final phase finishes it); an error when the system got the fault
/// wrong in a way the histories cannot show (a rolled-back volume that
/// was not refused).
pub async fn inject(c: &mut Cluster, rng: &mut SmallRng, kind: Fault) -> Result<String, String> {
    let n = c.nodes.len();
    // Losing a volume, or removing a member, while the configuration is
    // not whole could leave fewer voters than a majority: that is the loss
    // of the cluster, not a fault it must survive. A kill instead.
    let kind = match kind {
        Fault::DiskLoss | Fault::Membership | Fault::Rollback if !c.all_voters().await => {
            Fault::Kill
        }
        k => k,
    };
    Ok(match kind {
        Fault::Kill => {
            let i = pick(rng, n);
            c.kill(i);
            sleep_ms(rng, 300, 3000).await;
            let _ = c.start(i);
            format!("kill -9 {}", c.nodes[i].name)
        }
        Fault::Pause => {
            let i = c.master().await.unwrap_or_else(|| pick(rng, n));
            c.pause(i);
            sleep_ms(rng, 500, 4000).await;
            c.resume(i);
            format!("SIGSTOP {}", c.nodes[i].name)
        }
        Fault::Partition => {
            let all: Vec<usize> = (0..n).collect();
            let master = c.master().await;
            let black_hole = rng.random_bool(0.5);
            let what = match rng.random_range(0..3) {
                // The master alone.
                0 => {
                    let m = master.unwrap_or_else(|| pick(rng, n));
                    let rest: Vec<usize> = all.iter().copied().filter(|x| *x != m).collect();
                    c.links.cut(&[m], &rest, black_hole);
                    format!("{} isolated", c.nodes[m].name)
                }
                // A follower alone.
                1 => {
                    let f = (0..n)
                        .find(|x| Some(*x) != master && rng.random_bool(0.5))
                        .unwrap_or_else(|| pick(rng, n));
                    let rest: Vec<usize> = all.iter().copied().filter(|x| *x != f).collect();
                    c.links.cut(&[f], &rest, black_hole);
                    format!("{} isolated", c.nodes[f].name)
                }
                // A bridge: a and b cannot talk; both reach the others.
                _ => {
                    let a = pick(rng, n);
                    let b = (a + 1 + pick(rng, n - 1)) % n;
                    c.links.cut(&[a], &[b], black_hole);
                    format!("bridge: {} and {} cut", c.nodes[a].name, c.nodes[b].name)
                }
            };
            sleep_ms(rng, 1000, 5000).await;
            c.links.heal();
            format!(
                "partition ({what}, {})",
                if black_hole { "black hole" } else { "refused" }
            )
        }
        Fault::DiskLoss => {
            let i = pick(rng, n);
            let name = c.nodes[i].name.clone();
            if let Err(e) = c.wipe(i) {
                return Ok(format!("disk loss of {name} failed: {e}"));
            }
            sleep_ms(rng, 200, 1500).await;
            let _ = c.start(i);
            // The node waits to be replaced; the operator (us) replaces it.
            match c.replace(&name, Duration::from_secs(25)).await {
                Ok(()) => format!("disk loss of {name}, replaced"),
                Err(e) => format!("disk loss of {name}, replacement pending: {e}"),
            }
        }
        Fault::Membership => {
            let master = c.master().await;
            let i = (0..n)
                .find(|x| Some(*x) != master && rng.random_bool(0.5))
                .unwrap_or_else(|| pick(rng, n));
            let name = c.nodes[i].name.clone();
            if let Err(e) = c.remove(&name, Duration::from_secs(10)).await {
                return Ok(format!("removing {name} was refused: {e}"));
            }
            if let Err(e) = c.wipe(i) {
                return Ok(format!("removed {name}; wiping it failed: {e}"));
            }
            let _ = c.start(i);
            match c.replace(&name, Duration::from_secs(25)).await {
                Ok(()) => format!("{name} removed, wiped and added back"),
                Err(e) => format!("{name} removed and wiped; adding it back is pending: {e}"),
            }
        }
        Fault::Rollback => return rollback(c, rng).await,
    })
}

/// Stops a node, copies its volume, lets it acknowledge writes past the
/// copy, then puts the copy back and starts it: it must refuse to start
/// (status 65, `phxkv serve --help`), and it is then wiped and replaced
/// like a lost volume. A node that had not yet acknowledged anything past
/// the copy may start on it: it forgot nothing it told anyone.
async fn rollback(c: &mut Cluster, rng: &mut SmallRng) -> Result<String, String> {
    let i = pick(rng, c.nodes.len());
    let name = c.nodes[i].name.clone();
    c.kill(i);
    let copy = match c.copy_volume(i) {
        Ok(copy) => copy,
        Err(e) => {
            let _ = c.start(i);
            return Ok(format!("copying {name}'s volume failed: {e}"));
        }
    };
    // Read after the kill: nothing the stopped node holds lies beyond it.
    let copy_bound = c.commit_index().await + PROPOSED_PAST_COMMIT;
    sleep_ms(rng, 100, 1000).await;
    let _ = c.start(i);
    // It catches up past the copy, then applies more as a voter: each of
    // those entries it accepted and said so (to the master in `accepted`,
    // or, as master, in its next digest report).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut caught_up = None;
    let mut moved = false;
    while tokio::time::Instant::now() < deadline {
        match (c.applied(i).await, caught_up) {
            (Some(a), None) if a >= copy_bound => caught_up = Some(a),
            (Some(a), Some(from)) if a >= from + APPLIED_PAST_COPY => {
                moved = true;
                break;
            }
            _ => {}
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if moved {
        // Two digest rounds: its peers have heard what it holds.
        tokio::time::sleep(Duration::from_millis(4500)).await;
    }
    if let Err(e) = c.put_back(i, &copy) {
        let _ = c.start(i);
        return Ok(format!("putting {name}'s older volume back failed: {e}"));
    }
    if let Err(e) = c.start(i) {
        return Ok(format!("{name} could not start on its older volume: {e}"));
    }
    match c.exit_within(i, Duration::from_secs(15)).await {
        Some(phxkv::node::EXIT_ROLLED_BACK) => {
            if let Err(e) = c.wipe(i) {
                return Ok(format!(
                    "{name} refused its older volume; wiping it failed: {e}"
                ));
            }
            let _ = c.start(i);
            Ok(match c.replace(&name, Duration::from_secs(25)).await {
                Ok(()) => format!("{name} put back on an older volume: refused, replaced"),
                Err(e) => format!("{name} refused an older volume; replacement pending: {e}"),
            })
        }
        Some(code) => Err(format!(
            "{name}, put back on an older copy of its volume, exited with status {code} \
             instead of {} (its log: {})",
            phxkv::node::EXIT_ROLLED_BACK,
            c.nodes[i].log.display()
        )),
        None if moved => Err(format!(
            "{name} started on a copy of its volume older than what it had acknowledged: \
             the rollback went unnoticed (its log: {})",
            c.nodes[i].log.display()
        )),
        None => Ok(format!(
            "{name} put back on an older volume: it had acknowledged nothing past it, so it runs"
        )),
    }
}

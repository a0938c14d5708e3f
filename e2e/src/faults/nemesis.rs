//! The faults a run injects, one at a time, each healed before the next:
//! kill -9 of any node (restarted a moment later), SIGSTOP of the master,
//! partitions through the peer proxies (the master alone, a follower alone,
//! or a bridge: two nodes that cannot reach each other but both reach the
//! third), lost volumes (a node wiped and restarted empty, then replaced
//! through the API), and membership changes (a member removed, wiped, and
//! brought back as a replacement) proposed through random nodes.

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
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::Partition => "partition",
            Fault::DiskLoss => "disk-loss",
            Fault::Membership => "membership",
        };
        f.write_str(s)
    }
}

pub const ALL: [Fault; 5] = [
    Fault::Kill,
    Fault::Pause,
    Fault::Partition,
    Fault::DiskLoss,
    Fault::Membership,
];

fn pick(rng: &mut SmallRng, n: usize) -> usize {
    rng.random_range(0..n)
}

fn sleep_ms(rng: &mut SmallRng, lo: u64, hi: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(rng.random_range(lo..hi)))
}

/// Injects one fault of `kind` and heals it. Returns a line for the log,
/// or why a replacement could not be finished (not a safety failure: the
/// run's final phase finishes it).
pub async fn inject(c: &mut Cluster, rng: &mut SmallRng, kind: Fault) -> String {
    let n = c.nodes.len();
    // Losing a volume, or removing a member, while the configuration is
    // not whole could leave fewer voters than a majority: that is the loss
    // of the cluster, not a fault it must survive. A kill instead.
    let kind = match kind {
        Fault::DiskLoss | Fault::Membership if !c.all_voters().await => Fault::Kill,
        k => k,
    };
    match kind {
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
                return format!("disk loss of {name} failed: {e}");
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
                return format!("removing {name} was refused: {e}");
            }
            if let Err(e) = c.wipe(i) {
                return format!("removed {name}; wiping it failed: {e}");
            }
            let _ = c.start(i);
            match c.replace(&name, Duration::from_secs(25)).await {
                Ok(()) => format!("{name} removed, wiped and added back"),
                Err(e) => format!("{name} removed and wiped; adding it back is pending: {e}"),
            }
        }
    }
}

//! Master leases, and why two nodes never both hold one.
//!
//! A lease is a value chosen through Paxos: `Lease { holder, duration }`.
//!
//! - The master reads its clock (`t0`) *before* it proposes the lease, and
//!   treats the lease as its own from the moment the value is chosen until
//!   `t0 + duration * (1 - rho) / (1 + rho)` by its clock, where `rho` is the
//!   configured bound on clock-rate drift.
//! - An acceptor starts its timer when it *accepts* the value (necessarily after
//!   `t0` in real time, because the accept was sent after `t0`) and, until
//!   `duration` has passed by its own clock, refuses prepares, and accepts at a
//!   ballot above its promise, from anyone but the holder.
//! - A restarted acceptor does not know whose lease it may have accepted, so it
//!   refuses every other proposer for a whole lease from start-up.
//! - When a change of voters is chosen, the master drops its lease (and the
//!   lease proposals still in flight before the change) and takes a new one:
//!   a majority of the configuration a lease was chosen in meets every
//!   majority of the next configuration, but two changes later it may meet
//!   none, and another master could be elected there while this one still
//!   served reads (`paxos::tests::a_master_lease_does_not_outlive_two_voter_changes`).
//!
//! Why that is safe: the lease value is chosen, so a majority accepted it. In
//! real time each of them refuses others until at least `t0 + duration/(1+rho)`,
//! while the master stops relying on the lease no later than
//! `t0 + duration*(1-rho)/(1+rho)/(1-rho) = t0 + duration/(1+rho)`. Any other
//! node needs promises (or accepts above the holder's ballot) from a majority to
//! get anything chosen, and every majority contains one of those acceptors, so no
//! other node can be elected, let alone get a lease chosen, before the master's
//! lease has ended by its own clock. Renewals follow the same rule with their
//! own `t0`; a renewal that is not chosen changes nothing for the master.
//!
//! What a lease buys: while it holds, the master knows no other master can
//! commit anything, so it serves linearizable reads from its own applied state
//! once it has applied every instance up to its commit index and at least its
//! own first lease (which follows every instance an earlier master may have
//! left), without a round trip.

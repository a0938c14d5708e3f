//! Linearizable reads without clocks ([`ReadMode::Quorum`](super::config::ReadMode)),
//! and why they are safe.
//!
//! A read that reaches the master waits for the next *confirmation round*:
//! the master sends `ReadProbe { ballot, seq }` to every peer, and an
//! acceptor answers `ReadAck { ballot, seq }` only if it has promised no
//! ballot above `ballot` (otherwise it refuses, as it would an accept, and the
//! master steps down). When acks from a majority of voters (the master counts
//! itself) arrive for a round that started after the read arrived, the read
//! is answered at the master's commit index, which must have reached the
//! master's barrier (its first instance, placed after everything an earlier
//! master may have chosen). Reads that arrive while a round is in flight wait
//! for the next one; every read waiting at a round's start shares it.
//!
//! Why that is safe: let `W` be a write acknowledged before the read arrived.
//! `W` was chosen at some ballot `b'` before that, by a majority accepting at
//! `b'`.
//!
//! - `b' > ballot`: those acceptors had promised `b'` before the read arrived,
//!   so before the round started. Promises only grow, so each of them refuses
//!   the probe, and a majority of acks cannot exist (two majorities meet).
//! - `b' < ballot`: the master's phase 1 drew promises from a majority after
//!   which none of them accepts below `ballot`; a value chosen below `ballot`
//!   was accepted by one of them before, is reported in its promise and is
//!   re-proposed by the master below its barrier. The commit index covers the
//!   barrier, so it covers `W`.
//! - `b' = ballot`: this master chose it and acknowledged it only once it was
//!   committed here, so the commit index covers it.
//!
//! So the state at the commit index contains every write acknowledged before
//! the read arrived, and answering from it, once applied, is linearizable.
//! Nothing here reads a clock: a paused master or a drifting clock can only
//! delay rounds, not confirm a stale one, since every ack answers a probe
//! sent after the read arrived. An ack states nothing this node has to make
//! durable (a promise is sent only once durable, so an acceptor that has
//! durably promised more refuses in memory too), so probes and acks leave
//! without waiting for their turn's fsync. A round without a majority after
//! the retry interval asks again, under the same number, the peers that have
//! not answered: the acks it holds still answer probes sent after its reads
//! arrived, so a slow round completes rather than starting over.
//!
//! Acceptors in this mode honour no master lease, so a master's death is
//! followed by an election after the election timeout alone. They still
//! refuse other proposers for a lease after a restart: a cluster switched
//! from lease mode by a rolling restart may hold a master whose lease was
//! accepted before the restart, and it must run out before another master is
//! elected (replicas refuse peers in the other mode, so no lease is renewed
//! across the switch).

//! The Multi-Paxos engine: a pure state machine, no I/O, no clock, no tasks.
//!
//! Inputs are peer messages ([`Replica::step`]), client proposals
//! ([`Replica::propose`]) and ticks carrying monotonic time ([`Replica::tick`]);
//! outputs come out of [`Replica::take_ready`]: records to persist, then
//! messages to send, then chosen values to apply. The same code runs in the
//! server and in the deterministic simulator.

pub mod config;
pub mod lease;
pub mod log;
pub mod membership;
pub mod message;
pub mod quorum_read;
pub mod replica;
pub mod types;

pub use config::{EngineConfig, ReadMode};
pub use log::*;
pub use message::{Envelope, Message, ReadIndexAnswer, RejectReason};
pub use replica::{
    HandoffError, MAX_FORWARD_BYTES, MAX_FORWARD_COMMANDS, ProposeError, ReadError, Ready, Replica,
    Status,
};
pub use types::*;

#[cfg(test)]
mod tests;

//! The Multi-Paxos engine.

pub mod log;
pub mod types;

pub use log::*;
pub use types::*;

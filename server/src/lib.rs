//! phxkv: a strongly consistent key-value store on Multi-Paxos with master leases.
//!
//! The crate is cut so that consensus can be tested without I/O:
//! - [`paxos`]: the engine, a pure state machine driven by messages and ticks;
//! - [`kv`]: the key-value state machine the chosen commands are applied to;
//! - [`storage`]: durable homes for the engine's records and snapshots;
//! - [`sim`]: a deterministic simulator and the checkers it runs after every step.

pub mod api;
pub mod archive;
pub mod auth;
pub mod cli;
pub mod cluster;
pub mod kv;
pub mod net;
pub mod node;
pub mod paxos;
pub mod sim;
pub mod storage;
pub mod telemetry;
pub mod text;
pub mod tls;

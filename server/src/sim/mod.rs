//! Deterministic simulation of a phxkv cluster.

pub mod lincheck;

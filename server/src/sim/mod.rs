//! Deterministic simulation of a phxkv cluster.

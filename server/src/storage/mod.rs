//! Durable storage for the engine's records and snapshots.

//! The key-value state machine that chosen commands are applied to.

pub mod op;

pub use op::*;

//! The key-value state machine that chosen commands are applied to.

pub mod error;
pub mod limits;
pub mod op;

pub use error::KvError;
pub use limits::Limits;
pub use op::*;

//! HTTP: the public v1 API on the client port, and the peer API.

pub mod service;

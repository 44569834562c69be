//! Serving HTTP with a header read timeout and optional TLS: the shared
//! [`tollgate_schemas::listener`], re-exported.

pub use tollgate_schemas::listener::*;

//! Optional TLS on the proxy's listeners (`tls:` and `admin.tls:`): the shared
//! [`tollgate_schemas::tls`], re-exported.

pub use tollgate_schemas::tls::*;

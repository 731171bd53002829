//! What the layers that put keyrot behind a transport build on: `keyrot-http` (and through
//! it the axum and actix-web adapters), or a gRPC layer. An application does not need
//! any of it.
//!
//! The metrics these layers record are keyrot's own (named in [`crate::metric_names`],
//! described by [`crate::describe_metrics`]), so every transport reports them alike.

pub use crate::ids::random_hex;
pub use crate::json::parse_strict;
pub use crate::metrics::verification_failure as record_verification_failure;
pub use crate::metrics::{jwks_response as record_jwks_response, ledger_aggregated as record_ledger_aggregated};
pub use crate::symmetric::with_concatenated;

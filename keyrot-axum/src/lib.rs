//! keyrot adapter for axum (work in progress).

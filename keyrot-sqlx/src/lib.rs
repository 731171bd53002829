//! keyrot adapter for sqlx (work in progress).

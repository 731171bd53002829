//! keyrot adapter for actix (work in progress).

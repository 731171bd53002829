//! # The keyrot manual
//!
//! keyrot rotates the signing keys of Rust services that issue or verify JWTs, exactly
//! once across any number of instances. This manual is the long form of the README: read
//! the chapters in order the first time, then come back to the one you need.
//!
//! 1. [Getting started](getting_started): the quickstart, a test token, the crates to add,
//!    an issuer on axum or actix-web, and what the HTTP endpoints answer.
//! 2. [The lifecycle and the policy](lifecycle): the key states, the policy's durations and
//!    defaults, and every `KEYROT_*` variable the examples read.
//! 3. [Services that only verify](verify_only): a remote JWKS, the public store view, what
//!    verification checks, and the verified-token cache.
//! 4. [OAuth interoperability](oauth): the discovery documents, what they list and when,
//!    and the standard clients tested against them.
//! 5. [gRPC](grpc): verifying tokens in tonic services, and the status each refusal gets.
//! 6. [Several instances](instances): exactly one rotation across instances, and choosing
//!    a store.
//! 7. [Many rings](many_rings): one ring manager per instance for thousands of tenants.
//! 8. [Choosing an algorithm](algorithms).
//! 9. [Symmetric keys](symmetric): MAC and AEAD rings for webhooks (Standard Webhooks),
//!    cookies and field encryption, and when to use which ring kind.
//! 10. [The security model](security): who may rotate, keys at rest, what a database writer
//!     can and cannot do, and what each kind of verifier trusts.
//! 11. [Master keys and signing keys in an HSM or a KMS](custody): which custody to choose, what each protects
//!     against, and moving a running deployment there.
//! 12. [Operations](operations): the examples and `keyrotctl`, metrics, alert rules, logs.
//! 13. [Incident runbooks](runbooks): a leaked signing key (including a rate-limited forced
//!     rotation), and a database someone wrote to.
//! 14. [Benchmarks](benchmarks): every figure with the command that measures it.
//! 15. [Tests](testing): what the test suite covers and how CI runs it.
//!
//! Every Rust block of the manual is a doc test of `keyrot-core`, and the shell blocks that
//! start services are run by `examples/quickstart/tests/manual_blocks.rs`: what is printed
//! here compiles and runs. Commands are run from a clone of the repository
//! (`cargo run -p quickstart` needs the workspace).

#[doc = include_str!("getting_started.md")]
pub mod getting_started {}

#[doc = include_str!("lifecycle.md")]
pub mod lifecycle {}

#[doc = include_str!("verify_only.md")]
pub mod verify_only {}

#[doc = include_str!("oauth.md")]
pub mod oauth {}

#[doc = include_str!("grpc.md")]
pub mod grpc {}

#[doc = include_str!("instances.md")]
pub mod instances {}

#[doc = include_str!("many_rings.md")]
pub mod many_rings {}

#[doc = include_str!("algorithms.md")]
pub mod algorithms {}

#[doc = include_str!("symmetric.md")]
pub mod symmetric {}

#[doc = include_str!("security.md")]
pub mod security {}

#[doc = include_str!("custody.md")]
pub mod custody {}

#[doc = include_str!("operations.md")]
pub mod operations {}

#[doc = include_str!("runbooks.md")]
pub mod runbooks {}

#[doc = include_str!("benchmarks.md")]
pub mod benchmarks {}

#[doc = include_str!("testing.md")]
pub mod testing {}

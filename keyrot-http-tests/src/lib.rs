//! The HTTP behaviour suite every keyrot web adapter runs, written once.
//!
//! An adapter's `tests/` file defines how to start its server for a [`TestApp`] on
//! `127.0.0.1` with an ephemeral port, and calls [`http_suite!`]: every case then runs
//! over real HTTP (reqwest) against that server. Time moves on a
//! [`ManualClock`](keyrot_core::ManualClock); nothing sleeps.
//!
//! The server must serve:
//! - the adapter's keyrot routes for [`TestApp::endpoints`] (JWKS, rotation, status);
//! - [`PROTECTED_PATH`] behind the adapter's verifying middleware running
//!   [`TestApp::auth`], answering [`whoami_body`] of the `Claims<StandardClaims>`
//!   extractor;
//! - [`SCOPED_PATH`], the same handler behind the middleware and the adapter's
//!   scope helper requiring [`SCOPED_SCOPE`];
//! - [`UNGUARDED_PATH`], the same handler without the middleware, and
//!   [`UNGUARDED_SCOPED_PATH`], the same handler behind the scope helper alone (both
//!   misconfigurations, which must fail closed);
//! - [`COOKIE_PATH`] and [`HEADER_PATH`], the same handler behind the middleware running
//!   [`TestApp::cookie_auth`] and [`TestApp::header_auth`];
//! - [`OPTIONAL_PATH`], answering [`maybe_whoami_body`] of the adapter's optional claims
//!   extractor (`MaybeClaims<StandardClaims>`), and [`OPTIONAL_STRICT_PATH`], the
//!   `Claims` handler, both behind the optional-auth middleware running
//!   `TestApp::auth.optional()`; and [`UNGUARDED_OPTIONAL_PATH`], the optional handler
//!   without any middleware (fails closed);
//! - the tenant routes: [`TestApp::tenants`] (the adapter's tenant JWKS and discovery
//!   routes), [`TENANT_ISS_PATH`], [`TENANT_PATH_PATTERN`] and [`TENANT_HOST_PATH`]
//!   answering [`whoami_body`] behind the tenant middlewares, and
//!   [`TENANT_ISS_RING_PATTERN`] and [`TENANT_HOST_RING_PATTERN`] answering
//!   [`tenant_whoami_body`] of the `Token` extractor behind the issuer and host ones.
//!
//! An adapter's test file is the start function and one line (the compiled uses are
//! `keyrot-axum/tests/http.rs` and `keyrot-actix/tests/http.rs`):
//!
//! ```text
//! async fn start(app: keyrot_http_tests::TestApp) -> keyrot_http_tests::RunningServer { … }
//! keyrot_http_tests::http_suite!(start);
//! ```

mod cache;
pub mod cases;
pub mod cookies;
mod plane;
mod tenants;
mod world;

pub use world::{Answer, World};

use keyrot_core::{StandardClaims, Verified};
use keyrot_http::{BearerAuth, HttpEndpoints, TenantAuth, TenantEndpoints};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;

/// A route behind the verifying middleware.
pub const PROTECTED_PATH: &str = "/api/whoami";
/// A route behind the verifying middleware and the scope helper.
pub const SCOPED_PATH: &str = "/api/reports";
/// A route with the claims extractor but without the verifying middleware.
pub const UNGUARDED_PATH: &str = "/unguarded/whoami";
/// A route behind the scope helper but without the verifying middleware.
pub const UNGUARDED_SCOPED_PATH: &str = "/unguarded/reports";
/// The scope [`SCOPED_PATH`] requires.
pub const SCOPED_SCOPE: &str = "reports.read";
/// A route behind the middleware reading the token from cookie [`TOKEN_COOKIE`].
pub const COOKIE_PATH: &str = "/api-cookie/whoami";
/// The cookie [`TestApp::cookie_auth`] reads.
pub const TOKEN_COOKIE: &str = "keyrot_token";
/// A route behind the middleware reading the token from header [`TOKEN_HEADER`].
pub const HEADER_PATH: &str = "/api-header/whoami";
/// The header [`TestApp::header_auth`] reads.
pub const TOKEN_HEADER: &str = "x-api-token";
/// A route serving anonymous users too: the optional claims extractor behind the
/// optional-auth middleware.
pub const OPTIONAL_PATH: &str = "/optional/whoami";
/// The `Claims` extractor behind the optional-auth middleware.
pub const OPTIONAL_STRICT_PATH: &str = "/optional/strict";
/// The optional claims extractor without any middleware.
pub const UNGUARDED_OPTIONAL_PATH: &str = "/unguarded/maybe";

/// A route behind the tenant middleware picking the ring from the token's `iss`.
pub const TENANT_ISS_PATH: &str = "/tenant-iss/whoami";
/// A route behind the tenant middleware picking the ring from the path (`{ring}`).
pub const TENANT_PATH_PATTERN: &str = "/tenant/{ring}/whoami";
/// A route behind the tenant middleware picking the ring from the `Host` header
/// (`<ring>.tenants.example`).
pub const TENANT_HOST_PATH: &str = "/tenant-host/whoami";
/// A route naming its tenant (`{ring}`) behind the middleware picking the ring from the
/// token's `iss` ([`TestApp::tenant_by_issuer`]), answering [`tenant_whoami_body`] of the
/// adapter's `Token` extractor.
pub const TENANT_ISS_RING_PATTERN: &str = "/tenant-iss/{ring}/whoami";
/// A route naming its tenant (`{ring}`) behind the middleware picking the ring from the
/// host ([`TestApp::tenant_by_host`]), answering [`tenant_whoami_body`].
pub const TENANT_HOST_RING_PATTERN: &str = "/tenant-host/{ring}/whoami";

/// What the adapter's test server serves.
#[derive(Debug, Clone)]
pub struct TestApp {
    /// The keyrot endpoints (JWKS, rotation, status).
    pub endpoints: HttpEndpoints,
    /// The verifying middleware's configuration for [`PROTECTED_PATH`] and [`SCOPED_PATH`]
    /// (and, made optional, for [`OPTIONAL_PATH`] and [`OPTIONAL_STRICT_PATH`]).
    pub auth: BearerAuth,
    /// `auth` reading the token from cookie [`TOKEN_COOKIE`], for [`COOKIE_PATH`].
    pub cookie_auth: BearerAuth,
    /// `auth` reading the token from header [`TOKEN_HEADER`], for [`HEADER_PATH`].
    pub header_auth: BearerAuth,
    /// Every tenant's JWKS and discovery document (the adapter's tenant routes).
    pub tenants: TenantEndpoints,
    /// The tenant middleware for [`TENANT_ISS_PATH`] (ring from `iss`).
    pub tenant_by_issuer: TenantAuth,
    /// The tenant middleware for [`TENANT_PATH_PATTERN`] (ring from the path).
    pub tenant_by_path: TenantAuth,
    /// The tenant middleware for [`TENANT_HOST_PATH`] (ring from the host).
    pub tenant_by_host: TenantAuth,
}

/// The body the protected handlers answer with (JSON of `sub` and `client_id`).
pub fn whoami_body(claims: &StandardClaims) -> String {
    serde_json::json!({ "sub": claims.sub, "client_id": claims.client_id }).to_string()
}

/// The body the tenant handlers answer with: the token's `sub` and the ring that
/// verified it ([`Verified::ring`]).
pub fn tenant_whoami_body(token: &Verified) -> String {
    let ring = token.ring().map(|r| r.as_str());
    serde_json::json!({ "sub": token.claims.get("sub"), "ring": ring }).to_string()
}

/// The body the optional handler answers with: [`whoami_body`] for a verified token,
/// `{"anonymous":true}` without one.
pub fn maybe_whoami_body(claims: Option<&StandardClaims>) -> String {
    match claims {
        Some(c) => whoami_body(c),
        None => serde_json::json!({ "anonymous": true }).to_string(),
    }
}

/// A server started by an adapter's test; stopped when dropped.
pub struct RunningServer {
    addr: SocketAddr,
    stop: Option<Box<dyn FnOnce() + Send>>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer").field("addr", &self.addr).finish()
    }
}

impl RunningServer {
    /// A server listening on `addr`; `stop` shuts it down.
    pub fn new(addr: SocketAddr, stop: impl FnOnce() + Send + 'static) -> Self {
        Self {
            addr,
            stop: Some(Box::new(stop)),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            stop();
        }
    }
}

/// How a case starts the adapter's server.
pub type Start = Box<dyn FnOnce(TestApp) -> Pin<Box<dyn Future<Output = RunningServer> + Send>> + Send>;

/// Boxes an adapter's `async fn start(TestApp) -> RunningServer` into a [`Start`].
pub fn boxed_start<F, Fut>(start: F) -> Start
where
    F: FnOnce(TestApp) -> Fut + Send + 'static,
    Fut: Future<Output = RunningServer> + Send + 'static,
{
    Box::new(move |app| -> Pin<Box<dyn Future<Output = RunningServer> + Send>> { Box::pin(start(app)) })
}

/// Generates one `#[tokio::test]` per case of [`cases`], each starting a fresh server with
/// `$start` (an `async fn(TestApp) -> RunningServer`). The calling crate needs `tokio`
/// (with `macros` and `rt-multi-thread`) as a dev-dependency.
#[macro_export]
macro_rules! http_suite {
    ($start:path) => {
        $crate::http_suite!(@cases $start;
            p0_1_normal_scope_succeeds,
            p0_2_token_without_rotation_scope_is_403,
            p0_3_user_token_with_injected_rotation_scope_is_403,
            p0_4_invalid_or_expired_token_is_401,
            p0_5_normal_rotation_within_six_days_is_429,
            p0_6_forced_rotation_within_an_hour_is_429,
            p0_7_forced_rotation_after_an_hour_succeeds,
            rotation_token_living_over_15_minutes_is_403,
            forced_rotation_without_reason_is_400,
            same_idempotency_key_rotates_once_and_answers_the_same,
            every_attempt_is_audited_once_with_the_seed_fields,
            lock_busy_is_409_with_retry_after,
            request_body_is_limited_and_validated,
            wrong_method_is_405_json,
            middleware_accepts_key_activated_on_another_instance,
            middleware_rejects_token_of_expired_key,
            middleware_accepts_retiring_key_until_token_expiry,
            middleware_extractor_and_scope_helper,
            extractor_without_middleware_is_500,
            jwks_publishes_pending_key_before_it_signs,
            jwks_drops_expired_key,
            jwks_etag_and_304,
            jwks_if_none_match_uses_weak_comparison,
            rotation_token_of_another_type_is_401,
            refused_attempts_are_audited_within_a_budget,
            status_shows_ring_without_key_material,
            tampered_rows_are_refused_and_shown_on_the_status_page,
            authorized_requests_that_change_nothing_are_audited_within_a_budget,
            status_ignores_tampered_rows_at_the_end_of_time,
            discovery_document_is_served_at_both_paths,
            discovery_is_routed_only_with_an_issuer_url,
            discovery_lists_a_configured_token_endpoint,
            token_from_a_cookie,
            token_from_a_custom_header,
            optional_auth_serves_anonymous_users_and_refuses_invalid_tokens,
            middleware_takes_any_token_verifier,
            middleware_requires_the_access_token_profile_when_configured,
            middleware_token_cache_hits_and_never_outlives_a_revocation,
            tenant_jwks_and_discovery_are_served_per_ring,
            tenant_middleware_picks_the_ring_from_iss_path_or_host,
            a_retired_tenant_is_not_found_and_its_tokens_are_refused,
            a_tenant_token_is_refused_on_another_tenants_routes,
        );
    };
    (@cases $start:path; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::cases::$case($crate::boxed_start($start)).await;
            }
        )*
    };
}

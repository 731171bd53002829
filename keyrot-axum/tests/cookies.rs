//! Encrypted and signed session cookies (keyrot_axum::cookies) over real HTTP: a login
//! route sets them, `/me` reads them, through a rotation, the end of the Retiring window,
//! a revocation, tampering, a value moved to another cookie's name and a cookie sent twice.
//! A refused cookie is answered `401 {"error":"invalid_cookie"}`; no cookie at all is the
//! handler's `401` with an empty body.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keyrot_axum::{CookieCodec, CookieRejection, SetCookie, read_cookie};
use keyrot_http_tests::RunningServer;
use keyrot_http_tests::cookies::{Codecs, SESSION, THEME, USER};

async fn sealed_login(State(c): State<Codecs>) -> Result<impl IntoResponse, CookieRejection> {
    Ok((
        SetCookie(c.sealed.set_cookie(SESSION, USER.as_bytes())?),
        SetCookie(c.sealed.set_cookie(THEME, b"dark")?),
        "welcome",
    ))
}

async fn signed_login(State(c): State<Codecs>) -> Result<impl IntoResponse, CookieRejection> {
    Ok((
        SetCookie(c.signed.set_cookie(SESSION, USER)?),
        SetCookie(c.signed.set_cookie(THEME, "dark")?),
        "welcome",
    ))
}

async fn sealed_me(State(c): State<Codecs>, headers: HeaderMap) -> Result<Response, CookieRejection> {
    let Some(session) = read_cookie(&c.sealed, &headers, SESSION)? else {
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    };
    let again = c.sealed.reissue(SESSION, &session)?.map(SetCookie);
    Ok((again, String::from_utf8_lossy(&session.value).into_owned()).into_response())
}

async fn signed_me(State(c): State<Codecs>, headers: HeaderMap) -> Result<Response, CookieRejection> {
    let Some(session) = read_cookie(&c.signed, &headers, SESSION)? else {
        return Ok(StatusCode::UNAUTHORIZED.into_response());
    };
    let again = c.signed.reissue(SESSION, &session)?.map(SetCookie);
    Ok((again, session.value).into_response())
}

async fn start(codecs: Codecs) -> RunningServer {
    let router = Router::new()
        .route("/sealed/login", post(sealed_login))
        .route("/sealed/me", get(sealed_me))
        .route("/signed/login", post(signed_login))
        .route("/signed/me", get(signed_me))
        .with_state(codecs);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind an ephemeral port");
    let addr = listener.local_addr().expect("local address");
    let task = tokio::spawn(async move { axum::serve(listener, router).await });
    RunningServer::new(addr, move || task.abort())
}

keyrot_http_tests::cookie_suite!(start);

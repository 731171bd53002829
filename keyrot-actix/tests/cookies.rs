//! Encrypted and signed session cookies (keyrot_actix::cookies) over real HTTP: a login
//! route sets them, `/me` reads them, through a rotation, the end of the Retiring window,
//! a revocation, tampering, a value moved to another cookie's name and a cookie sent twice.
//! A refused cookie is answered `401 {"error":"invalid_cookie"}`; no cookie at all is the
//! handler's `401` with an empty body.

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use keyrot_actix::{CookieCodec, CookieErrorResponse, SetCookie, read_cookie};
use keyrot_http_tests::RunningServer;
use keyrot_http_tests::cookies::{Codecs, SESSION, THEME, USER};

async fn sealed_login(c: web::Data<Codecs>) -> Result<HttpResponse, CookieErrorResponse> {
    Ok(HttpResponse::Ok()
        .append_header(SetCookie(c.sealed.set_cookie(SESSION, USER.as_bytes())?))
        .append_header(SetCookie(c.sealed.set_cookie(THEME, b"dark")?))
        .body("welcome"))
}

async fn signed_login(c: web::Data<Codecs>) -> Result<HttpResponse, CookieErrorResponse> {
    Ok(HttpResponse::Ok()
        .append_header(SetCookie(c.signed.set_cookie(SESSION, USER)?))
        .append_header(SetCookie(c.signed.set_cookie(THEME, "dark")?))
        .body("welcome"))
}

async fn sealed_me(c: web::Data<Codecs>, req: HttpRequest) -> Result<HttpResponse, CookieErrorResponse> {
    let Some(session) = read_cookie(&c.sealed, &req, SESSION)? else {
        return Ok(HttpResponse::Unauthorized().finish());
    };
    let mut resp = HttpResponse::Ok();
    if let Some(again) = c.sealed.reissue(SESSION, &session)? {
        resp.append_header(SetCookie(again));
    }
    Ok(resp.body(session.value))
}

async fn signed_me(c: web::Data<Codecs>, req: HttpRequest) -> Result<HttpResponse, CookieErrorResponse> {
    let Some(session) = read_cookie(&c.signed, &req, SESSION)? else {
        return Ok(HttpResponse::Unauthorized().finish());
    };
    let mut resp = HttpResponse::Ok();
    if let Some(again) = c.signed.reissue(SESSION, &session)? {
        resp.append_header(SetCookie(again));
    }
    Ok(resp.body(session.value))
}

async fn start(codecs: Codecs) -> RunningServer {
    let (tx, rx) = tokio::sync::oneshot::channel();
    // actix runs its own single-threaded runtime (System) on a thread of its own.
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let data = web::Data::new(codecs);
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(data.clone())
                    .route("/sealed/login", web::post().to(sealed_login))
                    .route("/sealed/me", web::get().to(sealed_me))
                    .route("/signed/login", web::post().to(signed_login))
                    .route("/signed/me", web::get().to(signed_me))
            })
            .workers(1)
            .disable_signals()
            .bind(("127.0.0.1", 0))
            .expect("bind an ephemeral port");
            let addr = server.addrs()[0];
            let server = server.run();
            let _ = tx.send((addr, server.handle()));
            let _ = server.await;
        });
    });
    let (addr, handle) = rx.await.expect("the actix server started");
    RunningServer::new(addr, move || {
        // Sends the stop command at once; the server thread then ends.
        drop(handle.stop(false));
    })
}

keyrot_http_tests::cookie_suite!(start);

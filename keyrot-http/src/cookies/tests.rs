use super::*;
use std::time::Duration;

#[test]
fn names_and_values_are_checked() {
    for bad in ["", "a b", "a;b", "a=b", "é", "a,b"] {
        assert_eq!(check_name(bad), Err(CookieError::InvalidName), "{bad:?}");
    }
    for good in ["session", "__Host-session", "a.b-c_d!#$%&'*+^`|~"] {
        assert_eq!(check_name(good), Ok(()), "{good:?}");
    }
    let o = CookieOptions::default();
    assert_eq!(o.set_cookie("s", "a b"), Err(CookieError::InvalidValue));
    assert_eq!(o.set_cookie("s", "a;b"), Err(CookieError::InvalidValue));
    assert_eq!(
        o.set_cookie("s", &"a".repeat(MAX_COOKIE_BYTES)),
        Err(CookieError::TooLarge)
    );
}

#[test]
fn set_cookie_has_safe_defaults_and_options() {
    let o = CookieOptions::default();
    let v = o.set_cookie("session", "abc").expect("set-cookie");
    assert!(v.starts_with("session=abc"), "{v}");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(v.split("; ").any(|a| a == attr), "{attr} in {v}");
    }
    assert!(!v.contains("Max-Age") && !v.contains("Domain"), "{v}");
    let o = CookieOptions::default()
        .with_path("/app")
        .with_domain("example.com")
        .with_same_site(SameSite::Strict)
        .with_http_only(false)
        .with_secure(false)
        .with_max_age(Duration::from_secs(3600));
    let v = o.set_cookie("s", "x").expect("set-cookie");
    for attr in ["Path=/app", "Domain=example.com", "SameSite=Strict", "Max-Age=3600"] {
        assert!(v.split("; ").any(|a| a == attr), "{attr} in {v}");
    }
    assert!(!v.contains("HttpOnly") && !v.contains("Secure"), "{v}");
    assert!(CookieOptions::default().set_cookie("__Host-s", "x").is_ok());
    let insecure = CookieOptions::default().with_secure(false);
    assert_eq!(insecure.set_cookie("__Secure-s", "x"), Err(CookieError::InvalidName));
    assert_eq!(insecure.set_cookie("__Host-s", "x"), Err(CookieError::InvalidName));
    let scoped = CookieOptions::default().with_path("/app");
    assert_eq!(scoped.set_cookie("__Host-s", "x"), Err(CookieError::InvalidName));
    assert!(scoped.set_cookie("__Secure-s", "x").is_ok());
    let r = CookieOptions::default().removal("s").expect("removal");
    assert!(
        r.starts_with("s=;") && r.contains("Max-Age=0") && r.contains("Path=/"),
        "{r}"
    );
}

#[test]
fn errors_map_to_statuses_without_secrets() {
    assert_eq!(CookieError::Malformed.status(), 401);
    assert_eq!(
        CookieError::from_open(SymmetricError::KeyExpired("0a0b0c0d".into())),
        CookieError::Refused { reason: "key_expired" }
    );
    assert_eq!(
        CookieError::from_open(SymmetricError::Malformed("x")),
        CookieError::Malformed
    );
    let r = CookieError::Refused {
        reason: "authentication",
    }
    .to_response();
    assert_eq!(r.status, 401);
    assert_eq!(r.body.as_bytes(), br#"{"error":"invalid_cookie"}"#);
    assert_eq!(CookieError::Unavailable { reason: "rng" }.to_response().status, 500);
    let o = Opened {
        value: b"secret".to_vec(),
        kid: "k".into(),
        issued_at: chrono::DateTime::UNIX_EPOCH,
        stale: false,
    };
    assert!(!format!("{o:?}").contains("secret"));
}

#[test]
fn max_age_bounds_a_cookie_on_the_server_and_a_reissue_gets_what_is_left() {
    let t0 = chrono::DateTime::from_timestamp(1_800_000_000, 0).expect("time");
    let secs = chrono::TimeDelta::seconds;
    let o = CookieOptions::default().with_max_age(Duration::from_secs(3600));
    assert_eq!(o.check_age(t0, t0 + secs(3599)), Ok(()));
    let expired = Err(CookieError::Refused {
        reason: "cookie_expired",
    });
    assert_eq!(o.check_age(t0, t0 + secs(3600)), expired);
    assert_eq!(o.remaining(t0, t0 + secs(600)), Some(Duration::from_secs(3000)));
    let again = o
        .set_cookie_for("s", "x", o.remaining(t0, t0 + secs(600)))
        .expect("set-cookie");
    assert!(again.split("; ").any(|a| a == "Max-Age=3000"), "{again}");
    // A session cookie has no lifetime of its own: its key's window bounds it.
    let session = CookieOptions::default();
    assert_eq!(session.check_age(t0, t0 + chrono::TimeDelta::days(3650)), Ok(()));
    assert_eq!(session.remaining(t0, t0), None);
}

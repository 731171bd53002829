//! Where a request carries its token: `Authorization: Bearer` (RFC 6750 §2.1), a named
//! cookie, or a named header. Read strictly: a credential that appears twice, or does
//! not have the syntax of a token, is malformed (`401 invalid_token`), never skipped.

use super::{HeaderSource, Single, single};

/// What the `Authorization` header holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BearerToken<'a> {
    /// No `Authorization` header, or one with another scheme (e.g. `Basic`).
    Absent,
    /// `Bearer <token>` with a syntactically valid token (RFC 6750 `b64token`).
    Present(&'a str),
    /// A bearer credential that cannot be a token: empty, bad characters, or more than
    /// one `Authorization` header.
    Malformed,
}

fn is_b64token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// Reads the bearer token from the `Authorization` header. The scheme is matched
/// case-insensitively.
pub fn bearer_token(headers: &dyn HeaderSource) -> BearerToken<'_> {
    let value = match single(headers, "authorization") {
        Single::Absent => return BearerToken::Absent,
        Single::Many => return BearerToken::Malformed,
        Single::One(v) => v,
    };
    let Some(scheme) = value.get(..6) else {
        return BearerToken::Absent;
    };
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return BearerToken::Absent;
    }
    let rest = &value[6..];
    if rest.is_empty() {
        return BearerToken::Malformed;
    }
    if rest[0] != b' ' {
        // "Bearerx…" is another scheme.
        return BearerToken::Absent;
    }
    let token = rest.trim_ascii_start();
    if token.is_empty() || !token.iter().copied().all(is_b64token_char) {
        return BearerToken::Malformed;
    }
    match std::str::from_utf8(token) {
        Ok(t) => BearerToken::Present(t),
        Err(_) => BearerToken::Malformed,
    }
}

/// One place a [`BearerAuth`](super::BearerAuth) reads the token from
/// ([`BearerAuth::with_token_sources`](super::BearerAuth::with_token_sources)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenSource(Kind);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Authorization,
    Cookie(String),
    Header(String),
}

impl TokenSource {
    /// `Authorization: Bearer <token>` (the default).
    pub fn authorization_header() -> Self {
        Self(Kind::Authorization)
    }

    /// The cookie `name` of the `Cookie` header(s) (RFC 6265 §4.2): its value (optionally
    /// in double quotes) is the token. A cookie of that name sent twice (e.g. one set by a
    /// sibling domain) is malformed. Cookies are sent by the browser on its own: protect
    /// state-changing routes against cross-site requests (`SameSite`, a CSRF token);
    /// keyrot does not.
    pub fn cookie(name: impl Into<String>) -> Self {
        Self(Kind::Cookie(name.into()))
    }

    /// Header `name` (case-insensitive), whose whole value (surrounding spaces aside) is
    /// the token, e.g. `X-Api-Token`. The header sent twice is malformed.
    pub fn header(name: impl AsRef<str>) -> Self {
        Self(Kind::Header(name.as_ref().to_ascii_lowercase()))
    }

    /// The token this source finds in `headers`.
    pub fn read<'h>(&self, headers: &'h dyn HeaderSource) -> BearerToken<'h> {
        match &self.0 {
            Kind::Authorization => bearer_token(headers),
            Kind::Header(name) => match single(headers, name) {
                Single::Absent => BearerToken::Absent,
                Single::Many => BearerToken::Malformed,
                Single::One(v) => as_token(v.trim_ascii()),
            },
            Kind::Cookie(name) => cookie_token(headers, name),
        }
    }

    /// Where the sources of `sources` find the token: the one present; malformed when
    /// any is malformed or when more than one holds a token (ambiguous); absent when none
    /// does.
    pub(crate) fn read_all<'h>(sources: &[TokenSource], headers: &'h dyn HeaderSource) -> BearerToken<'h> {
        let mut found = BearerToken::Absent;
        for s in sources {
            match (s.read(headers), found) {
                (BearerToken::Absent, _) => {}
                (BearerToken::Malformed, _) | (BearerToken::Present(_), BearerToken::Present(_)) => {
                    return BearerToken::Malformed;
                }
                (present, _) => found = present,
            }
        }
        found
    }
}

/// `v` as a token: non-empty RFC 6750 `b64token` characters.
fn as_token(v: &[u8]) -> BearerToken<'_> {
    if v.is_empty() || !v.iter().copied().all(is_b64token_char) {
        return BearerToken::Malformed;
    }
    match std::str::from_utf8(v) {
        Ok(t) => BearerToken::Present(t),
        Err(_) => BearerToken::Malformed,
    }
}

/// The cookie `name` across every `Cookie` header: `name=value` pairs separated by `;`
/// (spaces around a pair ignored); the value may be in double quotes.
fn cookie_token<'h>(headers: &'h dyn HeaderSource, name: &str) -> BearerToken<'h> {
    let mut found: Option<&'h [u8]> = None;
    let mut twice = false;
    headers.for_each_value("cookie", &mut |header| {
        for pair in header.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            let Some(eq) = pair.iter().position(|&b| b == b'=') else {
                continue;
            };
            if &pair[..eq] != name.as_bytes() {
                continue;
            }
            if found.is_some() {
                twice = true;
            }
            found = Some(&pair[eq + 1..]);
        }
    });
    match found {
        None => BearerToken::Absent,
        Some(_) if twice => BearerToken::Malformed,
        Some(v) => {
            let v = match v {
                [b'"', inner @ .., b'"'] => inner,
                v => v,
            };
            as_token(v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(source: &TokenSource, headers: &[(&str, &str)]) -> BearerToken<'static> {
        let owned: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec()))
            .collect();
        match source.read(&owned) {
            BearerToken::Present(t) => BearerToken::Present(Box::leak(t.to_owned().into_boxed_str())),
            BearerToken::Absent => BearerToken::Absent,
            BearerToken::Malformed => BearerToken::Malformed,
        }
    }

    #[test]
    fn cookies_are_read_strictly() {
        let c = TokenSource::cookie("tok");
        assert_eq!(read(&c, &[]), BearerToken::Absent);
        assert_eq!(
            read(&c, &[("cookie", "a=1; tok=abc.def-_; b=2")]),
            BearerToken::Present("abc.def-_")
        );
        assert_eq!(read(&c, &[("cookie", "tok=\"abc\"")]), BearerToken::Present("abc"));
        assert_eq!(
            read(&c, &[("cookie", "a=1"), ("cookie", "tok=x")]),
            BearerToken::Present("x")
        );
        assert_eq!(
            read(&c, &[("cookie", "xtok=1; tokx=2; TOK=3")]),
            BearerToken::Absent,
            "exact, case-sensitive name"
        );
        assert_eq!(read(&c, &[("cookie", "tok=a; tok=b")]), BearerToken::Malformed, "twice");
        assert_eq!(
            read(&c, &[("cookie", "tok=a"), ("cookie", "tok=a")]),
            BearerToken::Malformed
        );
        assert_eq!(read(&c, &[("cookie", "tok=")]), BearerToken::Malformed);
        assert_eq!(read(&c, &[("cookie", "tok=a b")]), BearerToken::Malformed);
        assert_eq!(read(&c, &[("cookie", "tok=\"a")]), BearerToken::Malformed);
        assert_eq!(read(&c, &[("cookie", "garbage; tok=ok")]), BearerToken::Present("ok"));
    }

    #[test]
    fn headers_and_combinations() {
        let h = TokenSource::header("X-Api-Token");
        assert_eq!(read(&h, &[("x-api-token", " abc ")]), BearerToken::Present("abc"));
        assert_eq!(
            read(&h, &[("x-api-token", "a"), ("x-api-token", "a")]),
            BearerToken::Malformed
        );
        assert_eq!(read(&h, &[("x-api-token", "Bearer abc")]), BearerToken::Malformed);
        assert_eq!(read(&h, &[("authorization", "Bearer abc")]), BearerToken::Absent);
        let both = [TokenSource::authorization_header(), TokenSource::cookie("tok")];
        let owned = |v: &[(&'static str, &'static str)]| v.to_vec();
        assert_eq!(
            TokenSource::read_all(&both, &owned(&[("cookie", "tok=c")])),
            BearerToken::Present("c")
        );
        assert_eq!(
            TokenSource::read_all(&both, &owned(&[("authorization", "Bearer a"), ("cookie", "tok=c")])),
            BearerToken::Malformed,
            "two credentials are ambiguous"
        );
        assert_eq!(
            TokenSource::read_all(&both, &owned(&[("authorization", "Bearer"), ("cookie", "tok=c")])),
            BearerToken::Malformed
        );
        assert_eq!(TokenSource::read_all(&both, &owned(&[])), BearerToken::Absent);
    }
}

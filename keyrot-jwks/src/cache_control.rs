//! A response's freshness as keyrot reads it: `Cache-Control` (RFC 9111 §5.2), `Expires`
//! (§5.3) and `Age` (§5.1).

use reqwest::header::{AGE, CACHE_CONTROL, DATE, EXPIRES, HeaderMap};
use std::time::{Duration, SystemTime};

/// How long a response without `max-age` or `Expires` is fresh (before clamping).
pub(crate) const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);

/// A response's caching directives, as far as keyrot honours them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct CacheControl {
    /// `max-age` (the smallest, when given more than once; 0 when invalid).
    pub(crate) max_age: Option<u64>,
    /// The freshness lifetime `Expires` gives (`Expires` − `Date`, 0 when invalid).
    pub(crate) expires: Option<u64>,
    pub(crate) no_cache: bool,
    pub(crate) no_store: bool,
    /// A `Cache-Control` line that does not follow the grammar: the response is stale.
    pub(crate) malformed: bool,
    /// The `Age` header (seconds the response already spent in caches).
    pub(crate) age: u64,
}

impl CacheControl {
    /// Reads the headers of a response received now.
    pub(crate) fn from_headers(headers: &HeaderMap) -> Self {
        Self::received_at(headers, SystemTime::now())
    }

    /// Reads the headers of a response received at `received` (the date `Expires` counts
    /// from when there is no valid `Date`).
    pub(crate) fn received_at(headers: &HeaderMap, received: SystemTime) -> Self {
        let mut cc = CacheControl::default();
        for line in headers.get_all(CACHE_CONTROL) {
            if directives(line.as_bytes(), &mut |name, arg| cc.apply(name, arg)).is_err() {
                cc.malformed = true;
            }
        }
        cc.expires = expires(headers, received);
        cc.age = headers
            .get(AGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        cc
    }

    fn apply(&mut self, name: &[u8], arg: Option<&[u8]>) {
        if name.eq_ignore_ascii_case(b"max-age") {
            // An invalid max-age makes the response stale (RFC 9111 §4.2.1).
            let secs = arg.and_then(delta_seconds).unwrap_or(0);
            self.max_age = Some(self.max_age.map_or(secs, |m| m.min(secs)));
        } else if name.eq_ignore_ascii_case(b"no-cache") {
            // Qualified or not: keyrot revalidates every time.
            self.no_cache = true;
        } else if name.eq_ignore_ascii_case(b"no-store") {
            self.no_store = true;
        }
    }

    /// How long the response may be used before it is refreshed: `max-age` less `Age`,
    /// else `Expires` − `Date` less `Age` (§4.2.1; `Expires` is ignored when `max-age`
    /// is present), else [`DEFAULT_LIFETIME`]; zero with `no-cache`, `no-store` or a
    /// malformed `Cache-Control`; then clamped to `[floor, ceiling]`.
    pub(crate) fn lifetime(&self, floor: Duration, ceiling: Duration) -> Duration {
        let raw = if self.no_cache || self.no_store || self.malformed {
            Duration::ZERO
        } else {
            self.max_age
                .or(self.expires)
                .map_or(DEFAULT_LIFETIME, |m| Duration::from_secs(m.saturating_sub(self.age)))
        };
        raw.max(floor).min(ceiling)
    }
}

/// `delta-seconds = 1*DIGIT` (RFC 9111 §1.2.2); a value too large to represent is the
/// largest one, never an error.
fn delta_seconds(arg: &[u8]) -> Option<u64> {
    if arg.is_empty() || !arg.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        arg.iter()
            .fold(0u64, |n, d| n.saturating_mul(10).saturating_add(u64::from(d - b'0'))),
    )
}

/// The freshness lifetime from `Expires` (RFC 9111 §5.3): `Expires` − `Date` (or the time
/// received, when `Date` is absent or invalid), at least zero. An invalid `Expires`
/// (`0`, any other non-date, or more than one) means already expired.
fn expires(headers: &HeaderMap, received: SystemTime) -> Option<u64> {
    let mut lines = headers.get_all(EXPIRES).iter();
    let first = lines.next()?;
    if lines.next().is_some() {
        return Some(0);
    }
    let Some(at) = http_date(first.as_bytes()) else {
        return Some(0);
    };
    let date = headers.get(DATE).and_then(|d| http_date(d.as_bytes()));
    let from = date.unwrap_or(received);
    Some(at.duration_since(from).map_or(0, |d| d.as_secs()))
}

/// An HTTP-date in any of its three forms (RFC 9110 §5.6.7).
fn http_date(value: &[u8]) -> Option<SystemTime> {
    httpdate::parse_http_date(std::str::from_utf8(value).ok()?.trim()).ok()
}

/// What [`directives`] calls with each directive: its name and unquoted argument.
type Directive<'f> = dyn FnMut(&[u8], Option<&[u8]>) + 'f;

/// `tchar` (RFC 9110 §5.6.2).
fn tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Calls `each` with every directive of one `Cache-Control` line, the argument of a
/// quoted-string unescaped:
///
/// ```text
/// Cache-Control   = #cache-directive
/// cache-directive = token [ "=" ( token / quoted-string ) ]
/// ```
///
/// A list (RFC 9110 §5.6.1) with optional whitespace around its commas and empty elements
/// ignored; a comma inside a quoted string does not separate. Stops at the first syntax
/// error (the directives before it have been given).
fn directives(line: &[u8], each: &mut Directive<'_>) -> Result<(), ()> {
    let mut i = 0;
    let ows = |i: &mut usize| {
        while line.get(*i).is_some_and(|b| *b == b' ' || *b == b'\t') {
            *i += 1;
        }
    };
    loop {
        while line.get(i).is_some_and(|b| matches!(b, b' ' | b'\t' | b',')) {
            i += 1;
        }
        if i == line.len() {
            return Ok(());
        }
        let name = token(line, &mut i).ok_or(())?;
        let arg = match line.get(i) {
            Some(b'=') => {
                i += 1;
                Some(match line.get(i) {
                    Some(b'"') => quoted_string(line, &mut i).ok_or(())?,
                    _ => token(line, &mut i).ok_or(())?.to_vec(),
                })
            }
            _ => None,
        };
        each(name, arg.as_deref());
        ows(&mut i);
        match line.get(i) {
            None => return Ok(()),
            Some(b',') => i += 1,
            Some(_) => return Err(()),
        }
    }
}

/// `token = 1*tchar` at `*i`.
fn token<'l>(line: &'l [u8], i: &mut usize) -> Option<&'l [u8]> {
    let start = *i;
    while line.get(*i).copied().is_some_and(tchar) {
        *i += 1;
    }
    (*i > start).then(|| &line[start..*i])
}

/// `quoted-string = DQUOTE *( qdtext / quoted-pair ) DQUOTE` at `*i` (on the opening
/// quote), unescaped.
fn quoted_string(line: &[u8], i: &mut usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    *i += 1;
    loop {
        let b = *line.get(*i)?;
        *i += 1;
        match b {
            b'"' => return Some(out),
            b'\\' => {
                let escaped = *line.get(*i)?;
                *i += 1;
                if !(escaped == b'\t' || escaped == b' ' || (escaped >= 0x21 && escaped != 0x7f)) {
                    return None;
                }
                out.push(escaped);
            }
            b'\t' | b' ' | 0x21 | 0x23..=0x5b | 0x5d..=0x7e | 0x80..=0xff => out.push(b),
            _ => return None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderName, HeaderValue};

    const FLOOR: Duration = Duration::from_secs(30);
    const CEILING: Duration = Duration::from_secs(3600);

    fn headers(lines: &[(HeaderName, &[u8])]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in lines {
            h.append(name.clone(), HeaderValue::from_bytes(value).expect("value"));
        }
        h
    }

    /// The lifetime `Cache-Control` lines give, received at a fixed time.
    fn cc(lines: &[&str]) -> Duration {
        let lines: Vec<_> = lines.iter().map(|l| (CACHE_CONTROL, l.as_bytes())).collect();
        at(&lines)
    }

    fn at(lines: &[(HeaderName, &[u8])]) -> Duration {
        let received = httpdate::parse_http_date("Thu, 01 Jan 2026 00:00:00 GMT").expect("date");
        CacheControl::received_at(&headers(lines), received).lifetime(FLOOR, CEILING)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn directives_and_clamping() {
        assert_eq!(cc(&["public, max-age=300"]), secs(300));
        assert_eq!(cc(&["max-age=5"]), FLOOR);
        assert_eq!(cc(&["max-age=86400"]), CEILING);
        assert_eq!(cc(&["max-age=300", "MAX-AGE=100"]), secs(100), "the smaller of two");
        assert_eq!(cc(&["max-age=300, no-cache"]), FLOOR);
        assert_eq!(cc(&["no-store"]), FLOOR);
        assert_eq!(cc(&[]), DEFAULT_LIFETIME);
        assert_eq!(at(&[(CACHE_CONTROL, b"max-age=400"), (AGE, b"100")]), secs(300));
    }

    /// `cache-directive = token [ "=" ( token / quoted-string ) ]`, a `#` list.
    #[test]
    fn the_grammar_of_rfc_9111_section_5_2() {
        assert_eq!(cc(&["Max-Age=300"]), secs(300), "names are case-insensitive");
        assert_eq!(cc(&["max-age=\"120\""]), secs(120), "the quoted form is accepted");
        assert_eq!(cc(&[", ,max-age=300,, "]), secs(300), "empty list elements");
        assert_eq!(cc(&["max-age=300\t,\tpublic"]), secs(300), "OWS around commas");
        assert_eq!(cc(&["x-ext=tok!#$%&'*+-.^_`|~9, max-age=300"]), secs(300), "tchar");
        // A comma inside a quoted string separates nothing.
        assert_eq!(cc(&["private=\"x, max-age=3000\", max-age=60"]), secs(60));
        assert_eq!(cc(&["no-cache=\"set-cookie, max-age=3000\""]), FLOOR);
        assert_eq!(cc(&["private=\"x, max-age=3000\""]), DEFAULT_LIFETIME);
        assert_eq!(cc(&["x=\"no-store, y\", max-age=300"]), secs(300));
        // An escaped quote does not end the string.
        assert_eq!(cc(&["x=\"a\\\", max-age=3000\", max-age=60"]), secs(60));
        assert_eq!(cc(&["x=\"a\\\\\", max-age=60"]), secs(60), "an escaped backslash");
        // A directive that is not the grammar makes the response stale.
        for bad in [
            "max-age = 300",
            "max-age= 300",
            "max-age=300 public",
            "private=\"unterminated, max-age=3000",
            "max-age=300, =5",
            "max-age=300; public",
            "max-age=\"300\"x",
        ] {
            assert_eq!(cc(&[bad]), FLOOR, "{bad}");
        }
        let obs_text = headers(&[(CACHE_CONTROL, b"x=\"caf\xe9\", max-age=300")]);
        assert_eq!(
            CacheControl::from_headers(&obs_text).lifetime(FLOOR, CEILING),
            secs(300)
        );
    }

    /// `delta-seconds = 1*DIGIT`; an invalid one is stale, a huge one the largest value.
    #[test]
    fn max_age_arguments() {
        for stale in [
            "max-age",
            "max-age=",
            "max-age=-1",
            "max-age=1.5",
            "max-age=soon",
            "max-age=\"\"",
        ] {
            assert_eq!(cc(&[stale]), FLOOR, "{stale}");
        }
        assert_eq!(cc(&["max-age=18446744073709551615"]), CEILING);
        assert_eq!(cc(&["max-age=99999999999999999999999999"]), CEILING, "saturates");
        let cc = CacheControl::from_headers(&headers(&[(CACHE_CONTROL, b"max-age=18446744073709551616")]));
        assert_eq!(cc.max_age, Some(u64::MAX));
    }

    /// `Expires = HTTP-date`, used only without `max-age`; an invalid one has expired.
    #[test]
    fn expires_as_in_rfc_9111_section_5_3() {
        let five_min = b"Thu, 01 Jan 2026 00:05:00 GMT".as_slice();
        assert_eq!(at(&[(EXPIRES, five_min)]), secs(300), "from the time received");
        let date = b"Wed, 31 Dec 2025 23:55:00 GMT".as_slice();
        assert_eq!(at(&[(EXPIRES, five_min), (DATE, date)]), secs(600), "minus Date");
        assert_eq!(
            at(&[(EXPIRES, five_min), (DATE, b"yesterday")]),
            secs(300),
            "an invalid Date"
        );
        assert_eq!(at(&[(EXPIRES, five_min), (AGE, b"60")]), secs(240));
        assert_eq!(
            at(&[(EXPIRES, b"Thursday, 01-Jan-26 00:20:00 GMT")]),
            secs(1200),
            "RFC 850 form"
        );
        assert_eq!(
            at(&[(EXPIRES, b"Thu Jan  1 00:20:00 2026")]),
            secs(1200),
            "asctime form"
        );
        assert_eq!(
            at(&[(EXPIRES, five_min), (CACHE_CONTROL, b"max-age=60")]),
            secs(60),
            "max-age wins"
        );
        assert_eq!(
            at(&[(EXPIRES, b"0"), (CACHE_CONTROL, b"max-age=60")]),
            secs(60),
            "even over a bad one"
        );
        for expired in [
            b"0".as_slice(),
            b"-1",
            b"never",
            b"Thu, 01 Jan 2026 00:05:00",
            b"Wed, 31 Dec 2025 00:00:00 GMT",
        ] {
            assert_eq!(at(&[(EXPIRES, expired)]), FLOOR, "{}", String::from_utf8_lossy(expired));
        }
        assert_eq!(at(&[(EXPIRES, five_min), (EXPIRES, five_min)]), FLOOR, "two Expires");
        assert_eq!(at(&[(EXPIRES, b"Fri, 01 Jan 2027 00:00:00 GMT")]), CEILING);
    }
}

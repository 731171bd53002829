//! Strict JSON: objects with duplicate members are refused (RFC 7515 §5.2 allows a
//! recipient to reject them; keyrot always does, since two parsers could read two
//! different claim sets from one token).

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

/// Why strict JSON parsing failed. Carries no input text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JsonError {
    /// Not valid JSON (including a byte-order mark or trailing data).
    #[error("not valid JSON")]
    Syntax,
    /// An object has the same member twice.
    #[error("duplicate member in a JSON object")]
    DuplicateMember,
    /// The top-level value is not an object.
    #[error("not a JSON object")]
    NotObject,
}

struct StrictValue(Value);

impl<'de> de::Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

const DUPLICATE: &str = "keyrot:duplicate-member";

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let StrictValue(v) = map.next_value()?;
            if out.insert(key, v).is_some() {
                return Err(de::Error::custom(DUPLICATE));
            }
        }
        Ok(Value::Object(out))
    }
}

/// The error a strict reader raises on a duplicate member ([`classify`] maps it back).
pub(crate) fn duplicate<E: de::Error>() -> E {
    E::custom(DUPLICATE)
}

/// Why a strict reader failed: a duplicate member, or anything else (syntax).
pub(crate) fn classify(e: &serde_json::Error) -> JsonError {
    if e.to_string().contains(DUPLICATE) {
        JsonError::DuplicateMember
    } else {
        JsonError::Syntax
    }
}

/// A member name, borrowed from the input unless it has escapes.
pub(crate) struct Name<'de>(pub(crate) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(NameVisitor)
    }
}

struct NameVisitor;

impl<'de> Visitor<'de> for NameVisitor {
    type Value = Name<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a member name")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Name<'de>, E> {
        Ok(Name(Cow::Owned(v)))
    }
}

/// How many member names of one object [`Names`] keeps on the stack.
const INLINE_NAMES: usize = 12;

/// The member names of one object read so far, to refuse a duplicate without building
/// the object. Names borrowed from the input are kept on the stack (the first
/// [`INLINE_NAMES`]), each with its length and first seven bytes as one word, so that
/// names of up to seven bytes compare in one instruction; escaped names and any beyond
/// go to a hash set made only then.
pub(crate) struct Names<'de> {
    inline: [(u64, &'de str); INLINE_NAMES],
    len: usize,
    other: Option<HashSet<Cow<'de, str>>>,
}

/// A name's first seven bytes and its length (saturated) as one word: equal words mean
/// equal names when the names are no longer than seven bytes.
fn prefix_word(name: &str) -> u64 {
    let bytes = name.as_bytes();
    let len = u64::from(u8::try_from(bytes.len()).unwrap_or(u8::MAX)) << 56;
    if let Some(first) = bytes.first_chunk::<8>() {
        return len | (u64::from_le_bytes(*first) & 0x00ff_ffff_ffff_ffff);
    }
    // Fewer than eight bytes.
    bytes
        .iter()
        .enumerate()
        .fold(len, |word, (i, &b)| word | u64::from(b) << (8 * i))
}

impl<'de> Names<'de> {
    pub(crate) fn new() -> Self {
        Self {
            inline: [(0, ""); INLINE_NAMES],
            len: 0,
            other: None,
        }
    }

    /// Records `name`; false when the object already has it.
    pub(crate) fn insert(&mut self, name: Cow<'de, str>) -> bool {
        let word = prefix_word(&name);
        let inline = &self.inline[..self.len];
        let seen = if name.len() <= 7 {
            inline.iter().any(|&(w, _)| w == word)
        } else {
            inline.iter().any(|&(w, n)| w == word && n == &*name)
        };
        if seen || self.other.as_ref().is_some_and(|o| o.contains(&*name)) {
            return false;
        }
        match name {
            Cow::Borrowed(n) if self.len < INLINE_NAMES => {
                self.inline[self.len] = (word, n);
                self.len += 1;
            }
            _ => {
                self.other.get_or_insert_with(HashSet::new).insert(name);
            }
        }
        true
    }
}

/// Reads one value of any type without keeping it, refusing duplicate members at any
/// depth: as strict as [`parse_strict`], without building anything.
pub(crate) struct Checked;

impl<'de> de::Deserialize<'de> for Checked {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(CheckedVisitor).map(|()| Checked)
    }
}

/// Reads the rest of an object with [`Checked`] values (the duplicate rule of
/// [`parse_strict`]: a name is recorded once its value has been read).
pub(crate) fn walk_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    let mut names = Names::new();
    while let Some(Name(name)) = map.next_key()? {
        let Checked = map.next_value()?;
        if !names.insert(name) {
            return Err(duplicate());
        }
    }
    Ok(())
}

/// Reads the rest of an array with [`Checked`] elements.
pub(crate) fn walk_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while let Some(Checked) = seq.next_element()? {}
    Ok(())
}

struct CheckedVisitor;

impl<'de> Visitor<'de> for CheckedVisitor {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_none<E>(self) -> Result<(), E> {
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        walk_seq(seq)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<(), A::Error> {
        walk_map(map)
    }
}

/// Parses a JSON object, refusing duplicate members at any depth, a BOM and trailing
/// data.
pub fn parse_strict(bytes: &[u8]) -> Result<Value, JsonError> {
    parse_strict_object(bytes).map(Value::Object)
}

/// [`parse_strict`], returning the object's members.
///
/// Input that is UTF-8 (as all valid JSON is) is checked for it once, in one fast pass,
/// and read as text: serde_json then skips its check of each string, and applies every
/// other rule alike. Other input is read as bytes, so that the error reported is the
/// first one in the input, as before.
pub fn parse_strict_object(bytes: &[u8]) -> Result<Map<String, Value>, JsonError> {
    match std::str::from_utf8(bytes) {
        Ok(text) => strict_object(&mut serde_json::Deserializer::from_str(text)),
        Err(_) => strict_object(&mut serde_json::Deserializer::from_slice(bytes)),
    }
}

fn strict_object<'de, R: serde_json::de::Read<'de>>(
    de: &mut serde_json::Deserializer<R>,
) -> Result<Map<String, Value>, JsonError> {
    let StrictValue(v) = de::Deserialize::deserialize(&mut *de).map_err(|e| classify(&e))?;
    de.end().map_err(|_| JsonError::Syntax)?;
    match v {
        Value::Object(members) => Ok(members),
        _ => Err(JsonError::NotObject),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        assert!(parse_strict(br#"{"a":1,"b":{"c":[{"d":1}]}}"#).is_ok());
        assert_eq!(parse_strict(br#"{"a":1,"a":2}"#), Err(JsonError::DuplicateMember));
        assert_eq!(parse_strict(br#"{"a":{"b":1,"b":1}}"#), Err(JsonError::DuplicateMember));
        assert_eq!(
            parse_strict(br#"{"a":[{"b":1,"b":1}]}"#),
            Err(JsonError::DuplicateMember)
        );
        // Escapes that spell the same name are the same member.
        assert_eq!(parse_strict(br#"{"a":1,"\u0061":2}"#), Err(JsonError::DuplicateMember));
    }

    #[test]
    fn names_refuse_exactly_the_repeated_ones() {
        let long = "n".repeat(300);
        let longer = format!("{long}x");
        let names = [
            "",
            "a",
            "ab",
            "abcdefg",
            "abcdefgh",
            "abcdefgi",
            "abcdefghijklmnop",
            "abcdefghijklmnoq",
            &long,
            &longer,
        ];
        let mut n = Names::new();
        for name in names {
            assert!(n.insert(Cow::Borrowed(name)), "{name}");
        }
        for name in names {
            assert!(!n.insert(Cow::Borrowed(name)), "{name} again");
            assert!(!n.insert(Cow::Owned(name.to_owned())), "{name} again, escaped");
        }
        // Past the inline names, and escaped names first.
        let mut n = Names::new();
        let many: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
        for name in &many {
            assert!(n.insert(Cow::Owned(name.clone())));
            assert!(!n.insert(Cow::Borrowed(name)));
        }
        let mut n = Names::new();
        for name in &many {
            assert!(n.insert(Cow::Borrowed(name)));
        }
        for name in &many {
            assert!(!n.insert(Cow::Owned(name.clone())), "{name}");
        }
    }

    #[test]
    fn text_and_bytes_read_alike() {
        // Invalid UTF-8 inside and outside strings, after or before other errors: the
        // answer is the byte reader's.
        let cases: [&[u8]; 8] = [
            b"{\"a\":\"\xff\"}",
            b"{\"a\":1,\"a\":\"\xff\"}",
            b"{\"a\":{\"b\":1,\"b\":2},\"c\":\"\xff\"}",
            b"{\"\xc3\":1}",
            b"{\"a\":1}\xff",
            b"{\"a\":\"\xc3\xa9\",\"b\":\"\\ud800\"}",
            b"{\"a\":\"\xc3\xa9\",\"b\":\"\x01\"}",
            b"{\"\xc3\xa9\":\"\\u00e9\",\"\\u00e9\":1}",
        ];
        for bytes in cases {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            let by_bytes = strict_object(&mut de);
            assert_eq!(
                parse_strict_object(bytes),
                by_bytes,
                "{}",
                String::from_utf8_lossy(bytes)
            );
        }
        assert_eq!(
            parse_strict_object(b"{\"\xc3\xa9\":\"\\u00e9\",\"\\u00e9\":1}"),
            Err(JsonError::DuplicateMember)
        );
    }

    #[test]
    fn bom_trailing_and_non_objects_are_refused() {
        assert_eq!(parse_strict(b"\xEF\xBB\xBF{}"), Err(JsonError::Syntax));
        assert_eq!(parse_strict(b"{} x"), Err(JsonError::Syntax));
        assert_eq!(parse_strict(b"[1]"), Err(JsonError::NotObject));
        assert_eq!(parse_strict(b"\"s\""), Err(JsonError::NotObject));
    }
}

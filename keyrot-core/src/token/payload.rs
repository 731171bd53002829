//! Reading a verified payload: into the claims map, or straight into the caller's type.
//!
//! Both readers apply one rule set. The map reader parses the payload strictly
//! ([`crate::json::parse_strict_object`]) and borrows the registered claims from the map.
//! The typed reader makes one pass over the bytes that builds nothing. That pass refuses
//! what the strict parser refuses (a duplicate member at any depth, a BOM, trailing data,
//! a payload that is not an object, with the same error at the same point of the input)
//! and borrows the registered claims from the bytes. A second pass then deserialises the
//! caller's type from the same bytes. The claims are checked by [`Registered::check`]
//! either way, before the caller's type is read.

use super::claims::{Audience, Claim, Registered, date_from_f64, date_from_u64, profile_member};
use super::decode::json_err;
use super::tee::{Pass, Slot, Tee};
use super::{TokenError, Validation};
use crate::json::{self, Checked, JsonError, Name, Names, walk_map, walk_seq};
use serde::de::{self, DeserializeOwned, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};
use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

/// How a verification reads the payload once the signature holds, and what it produces.
pub(crate) trait ReadClaims {
    /// What the claims become.
    type Claims;
    /// Reads the payload (strict JSON) and checks the claim rules of `v` as of `now`.
    fn read(payload: &[u8], v: &Validation, now: i64) -> Result<Self::Claims, TokenError>;
}

/// Into the claims map ([`crate::Verified::claims`]).
pub(crate) struct AsMap;

impl ReadClaims for AsMap {
    type Claims = Map<String, Value>;

    fn read(payload: &[u8], v: &Validation, now: i64) -> Result<Self::Claims, TokenError> {
        let claims = json::parse_strict_object(payload).map_err(|e| json_err(e, "payload"))?;
        Registered::of_map(&claims).check(v, now)?;
        Ok(claims)
    }
}

/// Straight into the caller's `T`, with no map in between.
pub(crate) struct AsType<T>(PhantomData<fn() -> T>);

impl<T: DeserializeOwned> ReadClaims for AsType<T> {
    type Claims = T;

    fn read(payload: &[u8], v: &Validation, now: i64) -> Result<T, TokenError> {
        // UTF-8 checked once for the whole payload, so that serde_json reads it as text and
        // skips its check of each string (see `json::parse_strict_object`).
        if let Ok(text) = std::str::from_utf8(payload) {
            let mut pass = Pass::new();
            let mut de = serde_json::Deserializer::from_str(text);
            let claims = T::deserialize(Tee {
                de: &mut de,
                pass: &mut pass,
                slot: Slot::Top,
            });
            if let Ok(claims) = claims
                && pass.complete()
                && de.end().is_ok()
            {
                pass.registered.check(v, now)?;
                return Ok(claims);
            }
        }
        // The one pass cannot vouch for the payload: the strict pass decides, then `T` is
        // read on its own.
        registered(payload).map_err(|e| json_err(e, "payload"))?.check(v, now)?;
        serde_json::from_slice(payload).map_err(|_| TokenError::ClaimsShape)
    }
}

/// The registered claims of a payload, read in one strict pass that builds nothing.
pub(super) fn registered(payload: &[u8]) -> Result<Registered<'_>, JsonError> {
    let mut de = serde_json::Deserializer::from_slice(payload);
    let top = de.deserialize_any(TopVisitor).map_err(|e| json::classify(&e))?;
    de.end().map_err(|_| JsonError::Syntax)?;
    top.ok_or(JsonError::NotObject)
}

/// The top level: `Some` registered claims for an object, `None` (after a strict walk)
/// for any other value.
struct TopVisitor;

impl<'de> Visitor<'de> for TopVisitor {
    type Value = Option<Registered<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
        walk_seq(seq).map(|()| None)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut names = Names::new();
        let mut reg = Registered::default();
        while let Some(Name(name)) = map.next_key()? {
            // Each value is read whole before its name is recorded, as the map reader does.
            match &*name {
                "exp" => reg.exp = map.next_value::<Member<'de>>()?.date(),
                "nbf" => reg.nbf = map.next_value::<Member<'de>>()?.date(),
                "iat" => reg.iat = map.next_value::<Member<'de>>()?.date(),
                "iss" => reg.iss = map.next_value::<Member<'de>>()?.text(),
                "aud" => reg.aud = map.next_value::<Member<'de>>()?.audience(),
                other => match profile_member(other) {
                    Some(i) => reg.profile[i] = map.next_value::<Member<'de>>()?.text().map(drop),
                    None => {
                        let Checked = map.next_value()?;
                    }
                },
            }
            if !names.insert(name) {
                return Err(json::duplicate());
            }
        }
        Ok(Some(reg))
    }
}

/// The value of a registered claim, as far as the rules read it.
enum Member<'de> {
    /// A number, as a numeric date.
    Number(Claim<i64>),
    Text(Cow<'de, str>),
    /// An array whose items are all strings.
    Strings(Vec<Cow<'de, str>>),
    /// Anything else (read strictly, then dropped).
    Other,
}

impl<'de> Member<'de> {
    fn date(self) -> Claim<i64> {
        match self {
            Member::Number(date) => date,
            _ => Claim::Invalid,
        }
    }

    fn text(self) -> Claim<Cow<'de, str>> {
        match self {
            Member::Text(s) => Claim::Present(s),
            _ => Claim::Invalid,
        }
    }

    fn audience(self) -> Audience<'de> {
        match self {
            Member::Text(s) => Audience::One(s),
            Member::Strings(items) => Audience::Strings(items),
            _ => Audience::Invalid,
        }
    }
}

impl<'de> de::Deserialize<'de> for Member<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MemberVisitor)
    }
}

struct MemberVisitor;

impl<'de> Visitor<'de> for MemberVisitor {
    type Value = Member<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Member::Number(Claim::Present(v)))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Member::Number(date_from_u64(v)))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Member::Number(date_from_f64(v)))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Member::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Member::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Member::Other)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Member::Other)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Member::Other)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        walk_map(map).map(|()| Member::Other)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        let mut all_strings = true;
        while let Some(item) = seq.next_element::<Member<'de>>()? {
            match item {
                Member::Text(s) if all_strings => items.push(s),
                _ => all_strings = false,
            }
        }
        Ok(if all_strings {
            Member::Strings(items)
        } else {
            Member::Other
        })
    }
}

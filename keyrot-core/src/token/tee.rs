//! One pass for typed claims: the caller's type is deserialised through a proxy that, as
//! the values go by, records the registered claims (the top-level `exp`, `nbf`, `iat`,
//! `iss`, `aud`) and refuses a duplicate member in any object at any depth.
//!
//! The proxy forwards every call unchanged, so the caller's type sees what
//! `serde_json::from_slice` would give it. When the proxy cannot vouch for the whole
//! payload, the strict pass of `payload.rs` decides instead. That happens when the type
//! fails, when a member repeats (even if the type swallowed the error), when a value is
//! read in a way the proxy does not follow (bytes without a UTF-8 check, an enum's content,
//! serde_json's raw values), or when the payload is not an object.

use super::claims::{Audience, Claim, Registered, date_from_f64, date_from_u64, profile_member};
use crate::json::{self, Name, Names};
use serde::de::value::{BorrowedStrDeserializer, StrDeserializer};
use serde::de::{self, DeserializeSeed, Deserializer, EnumAccess, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// The names serde_json gives its private types (raw values, arbitrary-precision
/// numbers), which it reads in its own way.
const SERDE_JSON_PRIVATE: &str = "$serde_json::private::";

/// What one pass found.
pub(super) struct Pass<'de> {
    /// The registered claims, as the strict pass would read them.
    pub(super) registered: Registered<'de>,
    /// Whether every value of the payload went through the proxy: read strictly, every
    /// object checked for duplicates, the top level an object.
    pub(super) vouched: bool,
    object: bool,
}

impl Pass<'_> {
    pub(super) fn new() -> Self {
        Self {
            registered: Registered::default(),
            vouched: true,
            object: false,
        }
    }

    /// Whether the pass saw a whole object and can vouch for all of it.
    pub(super) fn complete(&self) -> bool {
        self.vouched && self.object
    }
}

/// Where a value sits: the top level, a registered claim, an item of an `aud` array, or
/// anywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Top,
    Exp,
    Nbf,
    Iat,
    Iss,
    Aud,
    AudItem,
    /// A member of [`super::claims::PROFILE_MEMBERS`], by index.
    Profile(usize),
    Nested,
}

impl Slot {
    fn of_member(name: &str) -> Self {
        match name {
            "exp" => Slot::Exp,
            "nbf" => Slot::Nbf,
            "iat" => Slot::Iat,
            "iss" => Slot::Iss,
            "aud" => Slot::Aud,
            other => profile_member(other).map_or(Slot::Nested, Slot::Profile),
        }
    }
}

impl<'de> Pass<'de> {
    fn date(&mut self, slot: Slot) -> Option<&mut Claim<i64>> {
        match slot {
            Slot::Exp => Some(&mut self.registered.exp),
            Slot::Nbf => Some(&mut self.registered.nbf),
            Slot::Iat => Some(&mut self.registered.iat),
            _ => None,
        }
    }

    /// A number at `slot`.
    fn number(&mut self, slot: Slot, date: Claim<i64>) {
        match self.date(slot) {
            Some(claim) => *claim = date,
            None => self.other(slot),
        }
    }

    /// A string at `slot` (copied only when a claim keeps it and it is not borrowed).
    fn text(&mut self, slot: Slot, s: Cow<'de, str>) {
        match slot {
            Slot::Iss => self.registered.iss = Claim::Present(s),
            Slot::Aud => self.registered.aud = Audience::One(s),
            Slot::Profile(i) => self.registered.profile[i] = Claim::Present(()),
            Slot::AudItem => {
                if let Audience::Strings(items) = &mut self.registered.aud {
                    items.push(s);
                }
            }
            _ => self.other(slot),
        }
    }

    fn text_ref(&mut self, slot: Slot, s: &str) {
        if let Slot::Profile(i) = slot {
            self.registered.profile[i] = Claim::Present(());
        } else if matches!(slot, Slot::Iss | Slot::Aud | Slot::AudItem) {
            self.text(slot, Cow::Owned(s.to_owned()));
        } else {
            self.other(slot);
        }
    }

    /// A value of a type `slot` does not take.
    fn other(&mut self, slot: Slot) {
        match slot {
            Slot::Exp | Slot::Nbf | Slot::Iat => {
                if let Some(claim) = self.date(slot) {
                    *claim = Claim::Invalid;
                }
            }
            Slot::Iss => self.registered.iss = Claim::Invalid,
            Slot::Aud | Slot::AudItem => self.registered.aud = Audience::Invalid,
            Slot::Profile(i) => self.registered.profile[i] = Claim::Invalid,
            Slot::Top => self.vouched = false,
            Slot::Nested => {}
        }
    }

    /// An array at `slot`: the slot of its items.
    fn array(&mut self, slot: Slot) -> Slot {
        if slot == Slot::Aud {
            self.registered.aud = Audience::Strings(Vec::new());
            return Slot::AudItem;
        }
        self.other(slot);
        Slot::Nested
    }

    /// An object at `slot`.
    fn object(&mut self, slot: Slot) {
        if slot == Slot::Top {
            self.object = true;
        } else {
            self.other(slot);
        }
    }
}

/// The proxy deserializer of one value.
pub(super) struct Tee<'p, 'de, D> {
    pub(super) de: D,
    pub(super) pass: &'p mut Pass<'de>,
    pub(super) slot: Slot,
}

impl<'p, 'de, D> Tee<'p, 'de, D> {
    fn wrap<V>(pass: &'p mut Pass<'de>, slot: Slot, v: V) -> Wrap<'p, 'de, V> {
        Wrap { v, pass, slot }
    }
}

macro_rules! forward_deserialize {
    ($($method:ident($($arg:ident: $ty:ty),*);)*) => {$(
        fn $method<V: Visitor<'de>>(self, $($arg: $ty,)* visitor: V) -> Result<V::Value, Self::Error> {
            self.de.$method($($arg,)* Self::wrap(self.pass, self.slot, visitor))
        }
    )*};
}

impl<'p, 'de, D: Deserializer<'de>> Deserializer<'de> for Tee<'p, 'de, D> {
    type Error = D::Error;

    forward_deserialize! {
        deserialize_any(); deserialize_bool(); deserialize_i8(); deserialize_i16(); deserialize_i32();
        deserialize_i64(); deserialize_i128(); deserialize_u8(); deserialize_u16(); deserialize_u32();
        deserialize_u64(); deserialize_u128(); deserialize_f32(); deserialize_f64(); deserialize_char();
        deserialize_str(); deserialize_string(); deserialize_bytes(); deserialize_byte_buf();
        deserialize_option(); deserialize_unit(); deserialize_seq(); deserialize_map();
        deserialize_identifier();
        deserialize_unit_struct(name: &'static str);
        deserialize_tuple(len: usize);
        deserialize_tuple_struct(name: &'static str, len: usize);
        deserialize_struct(name: &'static str, fields: &'static [&'static str]);
        deserialize_enum(name: &'static str, variants: &'static [&'static str]);
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(self, name: &'static str, visitor: V) -> Result<V::Value, D::Error> {
        if name.starts_with(SERDE_JSON_PRIVATE) {
            self.pass.vouched = false;
            return self.de.deserialize_newtype_struct(name, visitor);
        }
        self.de
            .deserialize_newtype_struct(name, Self::wrap(self.pass, self.slot, visitor))
    }

    /// A value the type skips is still read whole, strictly, and recorded.
    fn deserialize_ignored_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.de.deserialize_any(Self::wrap(self.pass, self.slot, IgnoredAny))?;
        visitor.visit_unit()
    }

    fn is_human_readable(&self) -> bool {
        self.de.is_human_readable()
    }
}

/// The proxy of a seed (a map's value, an array's item).
struct TeeSeed<'p, 'de, S> {
    seed: S,
    pass: &'p mut Pass<'de>,
    slot: Slot,
}

impl<'de, S: DeserializeSeed<'de>> DeserializeSeed<'de> for TeeSeed<'_, 'de, S> {
    type Value = S::Value;

    fn deserialize<D: Deserializer<'de>>(self, de: D) -> Result<S::Value, D::Error> {
        let read = self.seed.deserialize(Tee {
            de,
            pass: &mut *self.pass,
            slot: self.slot,
        });
        // An error the caller's type might swallow: the strict pass decides.
        if read.is_err() {
            self.pass.vouched = false;
        }
        read
    }
}

/// The proxy visitor: records what `slot` needs, then hands the value on unchanged.
struct Wrap<'p, 'de, V> {
    v: V,
    pass: &'p mut Pass<'de>,
    slot: Slot,
}

macro_rules! forward_visit {
    ($($method:ident($ty:ty) => |$pass:ident, $slot:ident, $x:ident| $record:expr;)*) => {$(
        fn $method<E: de::Error>(self, $x: $ty) -> Result<V::Value, E> {
            let ($pass, $slot) = (self.pass, self.slot);
            $record;
            self.v.$method($x)
        }
    )*};
}

impl<'de, V: Visitor<'de>> Visitor<'de> for Wrap<'_, 'de, V> {
    type Value = V::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.expecting(f)
    }

    forward_visit! {
        visit_bool(bool) => |p, s, _x| p.other(s);
        visit_i8(i8) => |p, s, x| p.number(s, Claim::Present(i64::from(x)));
        visit_i16(i16) => |p, s, x| p.number(s, Claim::Present(i64::from(x)));
        visit_i32(i32) => |p, s, x| p.number(s, Claim::Present(i64::from(x)));
        visit_i64(i64) => |p, s, x| p.number(s, Claim::Present(x));
        visit_u8(u8) => |p, s, x| p.number(s, Claim::Present(i64::from(x)));
        visit_u16(u16) => |p, s, x| p.number(s, Claim::Present(i64::from(x)));
        visit_u32(u32) => |p, s, x| p.number(s, Claim::Present(i64::from(x)));
        visit_u64(u64) => |p, s, x| p.number(s, date_from_u64(x));
        visit_i128(i128) => |p, _s, _x| p.vouched = false;
        visit_u128(u128) => |p, _s, _x| p.vouched = false;
        visit_f32(f32) => |p, s, x| p.number(s, date_from_f64(f64::from(x)));
        visit_f64(f64) => |p, s, x| p.number(s, date_from_f64(x));
        visit_char(char) => |p, _s, _x| p.vouched = false;
        visit_str(&str) => |p, s, x| p.text_ref(s, x);
        visit_borrowed_str(&'de str) => |p, s, x| p.text(s, Cow::Borrowed(x));
        visit_string(String) => |p, s, x| p.text_ref(s, &x);
        // Bytes are not checked for UTF-8.
        visit_bytes(&[u8]) => |p, _s, _x| p.vouched = false;
        visit_borrowed_bytes(&'de [u8]) => |p, _s, _x| p.vouched = false;
        visit_byte_buf(Vec<u8>) => |p, _s, _x| p.vouched = false;
    }

    fn visit_none<E: de::Error>(self) -> Result<V::Value, E> {
        self.pass.other(self.slot);
        self.v.visit_none()
    }

    fn visit_unit<E: de::Error>(self) -> Result<V::Value, E> {
        self.pass.other(self.slot);
        self.v.visit_unit()
    }

    fn visit_some<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.v.visit_some(Tee {
            de,
            pass: self.pass,
            slot: self.slot,
        })
    }

    fn visit_newtype_struct<D: Deserializer<'de>>(self, de: D) -> Result<V::Value, D::Error> {
        self.v.visit_newtype_struct(Tee {
            de,
            pass: self.pass,
            slot: self.slot,
        })
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<V::Value, A::Error> {
        let slot = self.pass.array(self.slot);
        self.v.visit_seq(SeqTee {
            seq,
            pass: self.pass,
            slot,
        })
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<V::Value, A::Error> {
        self.pass.object(self.slot);
        self.v.visit_map(MapTee {
            map,
            pass: self.pass,
            top: self.slot == Slot::Top,
            names: Names::new(),
            pending: None,
        })
    }

    /// An enum's content is not followed.
    fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<V::Value, A::Error> {
        self.pass.vouched = false;
        self.v.visit_enum(data)
    }
}

struct SeqTee<'p, 'de, A> {
    seq: A,
    pass: &'p mut Pass<'de>,
    slot: Slot,
}

impl<'de, A: SeqAccess<'de>> SeqAccess<'de> for SeqTee<'_, 'de, A> {
    type Error = A::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, A::Error> {
        let read = self.seq.next_element_seed(TeeSeed {
            seed,
            pass: &mut *self.pass,
            slot: self.slot,
        });
        if read.is_err() {
            self.pass.vouched = false;
        }
        read
    }

    fn size_hint(&self) -> Option<usize> {
        self.seq.size_hint()
    }
}

struct MapTee<'p, 'de, A> {
    map: A,
    pass: &'p mut Pass<'de>,
    top: bool,
    names: Names<'de>,
    /// The name of the member whose value comes next.
    pending: Option<Cow<'de, str>>,
}

impl<A> MapTee<'_, '_, A> {
    /// An error the caller's type might swallow: the strict pass decides.
    fn refuse<E>(&mut self, e: E) -> E {
        self.pass.vouched = false;
        e
    }
}

impl<'de, A: MapAccess<'de>> MapAccess<'de> for MapTee<'_, 'de, A> {
    type Error = A::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, A::Error> {
        let name = match self.map.next_key() {
            Ok(Some(Name(name))) => name,
            Ok(None) => return Ok(None),
            Err(e) => return Err(self.refuse(e)),
        };
        let key = match &name {
            Cow::Borrowed(s) => seed.deserialize(BorrowedStrDeserializer::new(s)),
            Cow::Owned(s) => seed.deserialize(StrDeserializer::new(s)),
        };
        self.pending = Some(name);
        key.map(Some).map_err(|e| self.refuse(e))
    }

    fn next_value_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<T::Value, A::Error> {
        let Some(name) = self.pending.take() else {
            return Err(self.refuse(de::Error::custom("a value without a member name")));
        };
        let slot = if self.top { Slot::of_member(&name) } else { Slot::Nested };
        let value = self
            .map
            .next_value_seed(TeeSeed {
                seed,
                pass: &mut *self.pass,
                slot,
            })
            .map_err(|e| self.refuse(e))?;
        // Recorded once its value has been read, as the strict pass does.
        if !self.names.insert(name) {
            return Err(self.refuse(json::duplicate()));
        }
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.map.size_hint()
    }
}

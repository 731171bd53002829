use super::keys::{SymmetricKey, SymmetricKeys, id_of_kid, kid_of_id};
use super::mac::{ChainParts as _, HmacSha256, keyed};
use super::webhook::signing;
use crate::alg::KeyKind;
use crate::ring::{KeyState, RingName};
use crate::secret::SecretBytes;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use chrono::{TimeZone, Utc};
use hmac::{KeyInit as _, Mac as _};

fn key(secret: &[u8], id: u32, state: KeyState) -> SymmetricKey {
    SymmetricKey {
        kid: kid_of_id(id),
        id,
        state,
        not_after: None,
        created_at: Utc
            .timestamp_opt(1_600_000_000 + i64::from(id), 0)
            .single()
            .unwrap_or_default(),
        secret: SecretBytes::from_slice(secret),
        mac: HmacSha256::new_from_slice(secret).ok(),
    }
}

/// A MAC made from the cached keyed state is the MAC of the key itself (RFC 4231 test
/// case 2: key "Jefe", "what do ya want for nothing?"), and every part of that cached
/// state is wiped when dropped (a compile-time check of the `zeroize` features).
#[test]
fn the_cached_hmac_state_is_the_keys_own_and_is_wiped_on_drop() {
    fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
    // `Hmac<Sha256>` is its buffer and `HmacCore`, which holds two SHA-256 cores.
    wiped_on_drop::<<sha2::Sha256 as hmac::digest::block_api::CoreProxy>::Core>();
    wiped_on_drop::<hmac::digest::block_api::Buffer<hmac::block_api::HmacCore<sha2::Sha256>>>();

    let cached = key(b"Jefe", 7, KeyState::Active);
    assert!(cached.mac.is_some());
    let uncached = SymmetricKey {
        mac: None,
        ..key(b"Jefe", 7, KeyState::Active)
    };
    let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
    for k in [&cached, &uncached] {
        let tag = keyed(k).map(|m| {
            m.chain_parts(&[b"what do ya want ", b"for nothing?"])
                .finalize()
                .into_bytes()
        });
        let hex: String = tag
            .map(|t| t.iter().map(|b| format!("{b:02x}")).collect())
            .unwrap_or_default();
        assert_eq!(hex, expected);
    }
}

/// The example of the Standard Webhooks specification (and of the Svix libraries):
/// secret `whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw`, message `msg_p5jXN8AQM9LWM0D4loKWxJek`
/// at 1614265330 with payload `{"test": 2432232314}`.
#[test]
fn standard_webhooks_example_signature() {
    let secret = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_or_default();
    let k = key(&secret, 1, KeyState::Active);
    let tag = signing(
        &k,
        "msg_p5jXN8AQM9LWM0D4loKWxJek",
        "1614265330",
        br#"{"test": 2432232314}"#,
    )
    .map(|m| STANDARD.encode(m.finalize().into_bytes()));
    assert_eq!(tag.as_deref(), Ok("g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="));
    assert_eq!(
        super::standard_webhooks_secret(&SecretBytes::from_slice(&secret)).as_str(),
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    );
}

#[test]
fn kids_are_eight_lowercase_hex_digits_of_the_id() {
    assert_eq!(kid_of_id(0x0a1b_2c3d), "0a1b2c3d");
    assert_eq!(id_of_kid("0a1b2c3d"), Some(0x0a1b_2c3d));
    for bad in ["0A1B2C3D", "0a1b2c3", "0a1b2c3d0", "0a1b2c3g", ""] {
        assert_eq!(id_of_kid(bad), None, "{bad}");
    }
}

#[test]
fn the_active_key_comes_first_and_debug_shows_no_secret() {
    let ring = RingName::new("r").unwrap_or_else(|_| unreachable!());
    let keys = SymmetricKeys {
        ring,
        kind: KeyKind::Mac,
        keys: vec![key(b"active secret bytes......", 2, KeyState::Active)],
    };
    assert_eq!(keys.active().map(|k| k.id), Ok(2));
    let debug = format!("{keys:?}");
    assert!(
        debug.contains("00000002") && !debug.contains("active secret"),
        "{debug}"
    );
    let none = SymmetricKeys {
        keys: vec![key(b"x", 3, KeyState::Pending)],
        ..keys
    };
    assert!(none.active().is_err(), "a Pending key never encrypts or signs");
}

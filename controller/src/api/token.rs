//! Bearer tokens: `flt1.<base64url(json claims)>.<base64url(HMAC-SHA256)>`.
//!
//! The MAC covers `flt1.<payload>` and is keyed by a signing key from replicated state, named by
//! the `kid` claim, so every controller can verify any controller's tokens. Roles are not in the
//! token: they are read from state on every request, so a removed role or a disabled user takes
//! effect at once. Pure: the caller passes the keys and the time.
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::state::SigningKey;

pub const PREFIX: &str = "flt1.";
/// Default (and longest) token lifetime.
pub const DEFAULT_LIFETIME_MS: i64 = crate::state::MAX_TOKEN_LIFETIME_MS;

type HmacSha256 = Hmac<Sha256>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// Token id (for revocation).
    pub tid: String,
    /// User id.
    pub uid: String,
    /// Project the token is scoped to; empty for none.
    pub pid: String,
    /// Issued at, ms since the Unix epoch.
    pub iat: i64,
    /// Expires at, ms since the Unix epoch.
    pub exp: i64,
    /// Id of the signing key.
    pub kid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a valid Flotilla token")]
    Malformed,
    #[error("the token was signed by a key this cluster no longer has; log in again")]
    UnknownKey,
    #[error("the token's signature does not match (tampered or forged)")]
    BadSignature,
    #[error("the token expired; log in again")]
    Expired,
}

fn mac(secret: &[u8], signed: &str) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any size");
    m.update(signed.as_bytes());
    m
}

/// Signs `claims` with `key`.
pub fn sign(claims: &Claims, key: &SigningKey) -> String {
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialize"));
    let signed = format!("{PREFIX}{payload}");
    let tag = mac(&key.secret, &signed).finalize().into_bytes();
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(tag))
}

/// Checks shape, key, signature (constant time) and expiry. Revocation and the user's state
/// are the caller's business.
pub fn verify(token: &str, keys: &[SigningKey], now_ms: i64) -> Result<Claims, TokenError> {
    let rest = token.strip_prefix(PREFIX).ok_or(TokenError::Malformed)?;
    let (payload, tag) = rest.split_once('.').ok_or(TokenError::Malformed)?;
    let tag = URL_SAFE_NO_PAD
        .decode(tag)
        .map_err(|_| TokenError::Malformed)?;
    let json = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json).map_err(|_| TokenError::Malformed)?;
    let key = keys
        .iter()
        .find(|k| k.id == claims.kid)
        .ok_or(TokenError::UnknownKey)?;
    let signed = &token[..PREFIX.len() + payload.len()];
    mac(&key.secret, signed)
        .verify_slice(&tag)
        .map_err(|_| TokenError::BadSignature)?;
    if now_ms >= claims.exp {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str, byte: u8) -> SigningKey {
        SigningKey {
            id: id.into(),
            secret: vec![byte; 32],
            created_at_ms: 0,
            retired_at_ms: None,
        }
    }

    fn claims(kid: &str) -> Claims {
        Claims {
            tid: "t1".into(),
            uid: "u1".into(),
            pid: "p1".into(),
            iat: 1_000,
            exp: 1_000 + DEFAULT_LIFETIME_MS,
            kid: kid.into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_round_trips_its_claims() {
        let k = key("k1", 7);
        let t = sign(&claims("k1"), &k);
        assert!(t.starts_with("flt1.") && t.matches('.').count() == 2, "{t}");
        assert_eq!(verify(&t, &[k], 2_000), Ok(claims("k1")));
    }

    #[test]
    fn a_token_signed_by_a_retired_key_still_verifies() {
        let (old, new) = (key("k1", 1), key("k2", 2));
        let t = sign(&claims("k1"), &old);
        assert!(verify(&t, &[old, new], 2_000).is_ok());
    }

    #[test]
    fn a_tampered_payload_or_signature_is_rejected() {
        let k = key("k1", 7);
        let t = sign(&claims("k1"), &k);
        let mut forged = claims("k1");
        forged.uid = "admin".into();
        let forged_payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
        let sig = t.rsplit('.').next().unwrap();
        let tampered = format!("flt1.{forged_payload}.{sig}");
        assert_eq!(
            verify(&tampered, std::slice::from_ref(&k), 2_000),
            Err(TokenError::BadSignature)
        );
        let other_key = sign(&claims("k1"), &key("k1", 8));
        assert_eq!(
            verify(&other_key, std::slice::from_ref(&k), 2_000),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn an_expired_token_is_rejected() {
        let k = key("k1", 7);
        let t = sign(&claims("k1"), &k);
        let exp = claims("k1").exp;
        assert!(verify(&t, std::slice::from_ref(&k), exp - 1).is_ok());
        assert_eq!(verify(&t, &[k], exp), Err(TokenError::Expired));
    }

    #[test]
    fn an_unknown_key_id_is_rejected() {
        let t = sign(&claims("gone"), &key("gone", 7));
        assert_eq!(
            verify(&t, &[key("k1", 7)], 2_000),
            Err(TokenError::UnknownKey)
        );
    }

    #[test]
    fn garbage_is_malformed() {
        for bad in [
            "",
            "flt1.",
            "flt1.a",
            "flt1.!!.??",
            "xyz.a.b",
            "flt1.e30.AAAA",
        ] {
            assert_eq!(
                verify(bad, &[key("k1", 7)], 0),
                Err(TokenError::Malformed),
                "{bad}"
            );
        }
    }
}

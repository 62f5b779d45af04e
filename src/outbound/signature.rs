//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>), as sent by Svix.
//!
//! A secret is `whsec_` followed by the base64 of 24 to 64 random bytes. A message is signed as
//! `v1,` + base64(HMAC-SHA256(key, `"{webhook-id}.{webhook-timestamp}.{body}"`)) and sent with
//! three headers: `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature`. The
//! signature header may carry several space-separated signatures (e.g. during a secret rotation);
//! a receiver accepts the message when any one of them matches.
//!
//! [`Signer`] never shows its key: not in `Debug`, not in errors.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretSlice};
use sha2::Sha256;
use std::fmt;
use std::time::Duration;

type HmacSha256 = Hmac<Sha256>;

/// Prefix of a Standard Webhooks secret.
pub const SECRET_PREFIX: &str = "whsec_";
/// Header carrying the message id (stable across retries; receivers de-duplicate on it).
pub const HEADER_ID: &str = "webhook-id";
/// Header carrying the signing time, in Unix seconds.
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
/// Header carrying one or more space-separated `v1,<base64>` signatures.
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far a timestamp may be from the receiver's clock, either way, by default.
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// Fewest key bytes the Standard Webhooks spec allows.
pub const MIN_KEY_BYTES: usize = 24;
/// Most key bytes the Standard Webhooks spec allows.
pub const MAX_KEY_BYTES: usize = 64;

/// Why a secret or a signed message was refused. No variant carries key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The secret does not start with `whsec_`.
    #[error("webhook secret must start with \"whsec_\"")]
    MissingPrefix,
    /// The part after `whsec_` is not standard base64.
    #[error("webhook secret is not valid base64 after \"whsec_\"")]
    InvalidBase64,
    /// The decoded key is too short or too long.
    #[error("webhook secret decodes to {0} bytes; Standard Webhooks needs 24 to 64")]
    KeyLength(usize),
    /// The `webhook-timestamp` header is not a whole number of seconds.
    #[error("webhook-timestamp is not a Unix timestamp in seconds")]
    InvalidTimestamp,
    /// The timestamp is further in the past than the tolerance allows.
    #[error("webhook-timestamp is too old")]
    TimestampTooOld,
    /// The timestamp is further in the future than the tolerance allows.
    #[error("webhook-timestamp is too far in the future")]
    TimestampTooNew,
    /// No `v1` signature in the header matches the message.
    #[error("no matching webhook signature")]
    NoMatchingSignature,
}

/// The signers of a destination's secret setting: one `whsec_` secret, or several separated by
/// spaces while a new one replaces an old one (each signs every message, so a receiver that
/// holds either accepts it; drop the old one once every receiver has the new one).
pub fn signers(secrets: &str) -> Result<Vec<Signer>, SignatureError> {
    secrets
        .split_whitespace()
        .map(Signer::from_secret)
        .collect()
}

/// The `webhook-signature` value for one message: each signer's `v1,` signature, in order,
/// separated by spaces.
pub fn signature_header(signers: &[Signer], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let signatures: Vec<String> = signers
        .iter()
        .map(|s| s.sign(msg_id, timestamp, body))
        .collect();
    signatures.join(" ")
}

/// Signs (and verifies) messages with one Standard Webhooks secret.
pub struct Signer {
    key: SecretSlice<u8>,
}

impl Signer {
    /// Parses a `whsec_<base64>` secret.
    pub fn from_secret(secret: &str) -> Result<Signer, SignatureError> {
        let encoded = secret
            .trim()
            .strip_prefix(SECRET_PREFIX)
            .ok_or(SignatureError::MissingPrefix)?;
        let key = BASE64
            .decode(encoded)
            .map_err(|_| SignatureError::InvalidBase64)?;
        if !(MIN_KEY_BYTES..=MAX_KEY_BYTES).contains(&key.len()) {
            return Err(SignatureError::KeyLength(key.len()));
        }
        Ok(Signer { key: key.into() })
    }

    /// A fresh random secret (32 bytes), in `whsec_<base64>` form, for a new endpoint.
    pub fn generate_secret() -> String {
        let key: [u8; 32] = rand::random();
        format!("{SECRET_PREFIX}{}", BASE64.encode(key))
    }

    /// The MAC over `"{msg_id}.{timestamp}.{body}"`, ready to finalise or verify.
    fn mac(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(self.key.expose_secret())
            .expect("HMAC accepts keys of any length");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        mac
    }

    /// The `v1,<base64>` signature of one message.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.mac(msg_id, timestamp, body).finalize().into_bytes();
        format!("v1,{}", BASE64.encode(tag))
    }

    /// The three Standard Webhooks headers for one message, in the order id, timestamp,
    /// signature.
    pub fn headers(
        &self,
        msg_id: &str,
        timestamp: i64,
        body: &[u8],
    ) -> Vec<(&'static str, String)> {
        vec![
            (HEADER_ID, msg_id.to_string()),
            (HEADER_TIMESTAMP, timestamp.to_string()),
            (HEADER_SIGNATURE, self.sign(msg_id, timestamp, body)),
        ]
    }

    /// Verifies a received message against the current time with [`DEFAULT_TOLERANCE`].
    ///
    /// Arguments are the raw header values and the raw body, as a receiver sees them.
    pub fn verify(
        &self,
        msg_id: &str,
        timestamp: &str,
        body: &[u8],
        signatures: &str,
    ) -> Result<(), SignatureError> {
        let now = chrono::Utc::now().timestamp();
        self.verify_at(msg_id, timestamp, body, signatures, now, DEFAULT_TOLERANCE)
    }

    /// Verifies a received message as of `now` (Unix seconds), allowing the timestamp to be off
    /// by `tolerance` either way. Signatures are compared in constant time; entries of other
    /// versions than `v1` and malformed entries are skipped.
    pub fn verify_at(
        &self,
        msg_id: &str,
        timestamp: &str,
        body: &[u8],
        signatures: &str,
        now: i64,
        tolerance: Duration,
    ) -> Result<(), SignatureError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::InvalidTimestamp)?;
        let tolerance = i64::try_from(tolerance.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(ts) > tolerance {
            return Err(SignatureError::TimestampTooOld);
        }
        if ts.saturating_sub(now) > tolerance {
            return Err(SignatureError::TimestampTooNew);
        }
        let mac = self.mac(msg_id, ts, body);
        let matched = signatures
            .split_whitespace()
            .filter_map(|entry| entry.strip_prefix("v1,"))
            .filter_map(|b64| BASE64.decode(b64).ok())
            .any(|tag| mac.clone().verify_slice(&tag).is_ok());
        if matched {
            Ok(())
        } else {
            Err(SignatureError::NoMatchingSignature)
        }
    }
}

impl Clone for Signer {
    fn clone(&self) -> Self {
        Signer {
            key: self.key.expose_secret().to_vec().into(),
        }
    }
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("key", &"[redacted]")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    const VECTORS: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/standard-webhooks-vectors.json"
    );

    #[derive(Deserialize)]
    struct Vectors {
        vectors: Vec<Vector>,
    }

    #[derive(Deserialize)]
    struct Vector {
        secret: String,
        webhook_id: String,
        webhook_timestamp: i64,
        body: String,
        webhook_signature: String,
    }

    fn vectors() -> Vec<Vector> {
        let text = std::fs::read_to_string(VECTORS)
            .unwrap_or_else(|e| panic!("cannot read {VECTORS}: {e}"));
        serde_json::from_str::<Vectors>(&text).unwrap().vectors
    }

    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

    #[test]
    fn every_reference_vector_is_reproduced_byte_for_byte() {
        let vectors = vectors();
        assert!(vectors.len() >= 3, "expected at least three vectors");
        assert!(vectors.iter().any(|v| v.body.is_empty()), "no empty body");
        assert!(
            vectors.iter().any(|v| !v.body.is_ascii()),
            "no non-ASCII body"
        );
        for v in &vectors {
            let signer = Signer::from_secret(&v.secret).unwrap();
            let sig = signer.sign(&v.webhook_id, v.webhook_timestamp, v.body.as_bytes());
            assert_eq!(sig, v.webhook_signature, "vector {}", v.webhook_id);
        }
    }

    #[test]
    fn every_reference_vector_verifies_at_its_own_time() {
        for v in vectors() {
            let signer = Signer::from_secret(&v.secret).unwrap();
            let ts = v.webhook_timestamp.to_string();
            let at = v.webhook_timestamp + 10;
            signer
                .verify_at(
                    &v.webhook_id,
                    &ts,
                    v.body.as_bytes(),
                    &v.webhook_signature,
                    at,
                    DEFAULT_TOLERANCE,
                )
                .unwrap();
        }
    }

    #[test]
    fn headers_carry_id_timestamp_and_the_signature_in_order() {
        let signer = Signer::from_secret(SECRET).unwrap();
        let headers = signer.headers("msg_1", 1_700_000_000, b"{}");
        assert_eq!(
            headers,
            vec![
                ("webhook-id", "msg_1".to_string()),
                ("webhook-timestamp", "1700000000".to_string()),
                (
                    "webhook-signature",
                    signer.sign("msg_1", 1_700_000_000, b"{}")
                ),
            ]
        );
    }

    #[test]
    fn a_secret_without_the_whsec_prefix_is_refused() {
        let err = Signer::from_secret("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap_err();
        assert_eq!(err, SignatureError::MissingPrefix);
    }

    #[test]
    fn a_secret_with_bad_base64_is_refused() {
        let err = Signer::from_secret("whsec_not*base64!").unwrap_err();
        assert_eq!(err, SignatureError::InvalidBase64);
    }

    #[test]
    fn a_secret_outside_24_to_64_bytes_is_refused() {
        let short = format!("whsec_{}", BASE64.encode([7u8; 10]));
        assert_eq!(
            Signer::from_secret(&short).unwrap_err(),
            SignatureError::KeyLength(10)
        );
        let long = format!("whsec_{}", BASE64.encode([7u8; 65]));
        assert_eq!(
            Signer::from_secret(&long).unwrap_err(),
            SignatureError::KeyLength(65)
        );
        assert_eq!(
            Signer::from_secret("whsec_").unwrap_err(),
            SignatureError::KeyLength(0)
        );
    }

    #[test]
    fn the_secret_never_appears_in_debug_output_or_errors() {
        let signer = Signer::from_secret(SECRET).unwrap();
        let debug = format!("{signer:?}");
        assert!(
            !debug.contains("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
            "{debug}"
        );
        assert!(debug.contains("redacted"));
        for bad in ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "whsec_MfKQ9r8GKY*qrTwj"] {
            let err = Signer::from_secret(bad).unwrap_err();
            assert!(!format!("{err} {err:?}").contains("MfKQ9r8GKY"));
        }
    }

    #[test]
    fn a_generated_secret_parses_and_round_trips() {
        let secret = Signer::generate_secret();
        assert!(secret.starts_with("whsec_"));
        let signer = Signer::from_secret(&secret).unwrap();
        let sig = signer.sign("msg_x", 42, b"hello");
        signer
            .verify_at("msg_x", "42", b"hello", &sig, 42, DEFAULT_TOLERANCE)
            .unwrap();
        assert_ne!(secret, Signer::generate_secret());
    }

    #[test]
    fn verify_accepts_any_one_of_several_space_separated_signatures() {
        let signer = Signer::from_secret(SECRET).unwrap();
        let other = Signer::from_secret(&Signer::generate_secret()).unwrap();
        let good = signer.sign("msg_1", 100, b"body");
        let header = format!(
            "v1a,abc v1,!!notbase64 {} {good}",
            other.sign("msg_1", 100, b"body")
        );
        signer
            .verify_at("msg_1", "100", b"body", &header, 100, DEFAULT_TOLERANCE)
            .unwrap();
    }

    #[test]
    fn verify_refuses_a_changed_body_id_or_timestamp() {
        let signer = Signer::from_secret(SECRET).unwrap();
        let sig = signer.sign("msg_1", 100, b"body");
        let check = |id: &str, ts: &str, body: &[u8]| {
            signer.verify_at(id, ts, body, &sig, 100, DEFAULT_TOLERANCE)
        };
        assert_eq!(check("msg_1", "100", b"body"), Ok(()));
        assert_eq!(
            check("msg_1", "100", b"bodY"),
            Err(SignatureError::NoMatchingSignature)
        );
        assert_eq!(
            check("msg_2", "100", b"body"),
            Err(SignatureError::NoMatchingSignature)
        );
        assert_eq!(
            check("msg_1", "101", b"body"),
            Err(SignatureError::NoMatchingSignature)
        );
        let err = signer.verify_at("msg_1", "100", b"body", "", 100, DEFAULT_TOLERANCE);
        assert_eq!(err, Err(SignatureError::NoMatchingSignature));
    }

    #[test]
    fn verify_enforces_the_timestamp_tolerance_both_ways() {
        let signer = Signer::from_secret(SECRET).unwrap();
        let sig = signer.sign("m", 1_000, b"");
        let at = |now: i64| signer.verify_at("m", "1000", b"", &sig, now, DEFAULT_TOLERANCE);
        assert_eq!(at(1_000 + 300), Ok(()));
        assert_eq!(at(1_000 - 300), Ok(()));
        assert_eq!(at(1_000 + 301), Err(SignatureError::TimestampTooOld));
        assert_eq!(at(1_000 - 301), Err(SignatureError::TimestampTooNew));
        let bad = signer.verify_at("m", "soon", b"", &sig, 1_000, DEFAULT_TOLERANCE);
        assert_eq!(bad, Err(SignatureError::InvalidTimestamp));
    }

    #[test]
    fn verify_uses_the_current_clock_by_default() {
        let signer = Signer::from_secret(SECRET).unwrap();
        let now = chrono::Utc::now().timestamp();
        let sig = signer.sign("m", now, b"x");
        signer.verify("m", &now.to_string(), b"x", &sig).unwrap();
        let old = (now - 3600).to_string();
        let sig_old = signer.sign("m", now - 3600, b"x");
        assert_eq!(
            signer.verify("m", &old, b"x", &sig_old),
            Err(SignatureError::TimestampTooOld)
        );
    }
}

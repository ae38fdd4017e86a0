//! Authentication: password hashing, access tokens, runtime-token secrets.
//!
//! Passwords are Argon2id (PHC strings); access tokens are HS256 JWTs;
//! runtime tokens are random and stored only as SHA-256 hashes. Randomness
//! and hashing come from aws-lc-rs, the process's one crypto backend.

use anyhow::Context;
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use aws_lc_rs::rand::SecureRandom;
use base64::Engine;
use cadre_actors::ports::Secrets;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Random bytes from the system CSPRNG.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut buf = [0u8; N];
    // The system RNG failing is unrecoverable for a security component.
    if aws_lc_rs::rand::SystemRandom::new().fill(&mut buf).is_err() {
        panic!("system random number generator unavailable");
    }
    buf
}

/// URL-safe random text with `N` bytes of entropy.
pub fn random_text<const N: usize>() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<N>())
}

/// Hashes a password (Argon2id, random salt). CPU-heavy: call from `spawn_blocking`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt =
        SaltString::encode_b64(&random_bytes::<16>()).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| anyhow::anyhow!("hashing password: {e}"))
}

/// Verifies a password against a PHC string. CPU-heavy: call from `spawn_blocking`.
pub fn verify_password(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// The audience of access tokens.
pub const AUDIENCE: &str = "cadre-api";
/// The issuer of access tokens.
pub const ISSUER: &str = "cadre";
/// The type claim of access tokens (the only type Cadre signs).
pub const ACCESS: &str = "access";

/// Access-token claims.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// User id.
    pub sub: String,
    /// Organization id.
    pub org: String,
    /// Role when issued (informational: the directory's current role rules).
    pub role: String,
    /// Token type: always `access`.
    pub typ: String,
    /// Audience.
    pub aud: String,
    /// Issuer.
    pub iss: String,
    /// Session family (logout revokes it).
    pub sid: String,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Issued at (unix milliseconds; compared with the user's session cut-off).
    pub ims: i64,
    /// Expires (unix seconds).
    pub exp: u64,
}

/// Signs and verifies access tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl_secs: u64,
}

impl std::fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtKeys")
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl JwtKeys {
    /// Keys from a shared secret.
    pub fn new(secret: &[u8], ttl_secs: u64) -> JwtKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub", "aud", "iss"]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl_secs,
        }
    }

    /// Token lifetime in seconds.
    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    /// Issues an access token for a session.
    pub fn issue(&self, sub: &str, org: &str, role: &str, sid: &str) -> anyhow::Result<String> {
        use cadre_actors::ports::Clock;
        let now_ms = cadre_actors::ports::SystemClock.now_ms();
        let now = u64::try_from(now_ms / 1000).unwrap_or(0);
        let claims = Claims {
            sub: sub.to_string(),
            org: org.to_string(),
            role: role.to_string(),
            typ: ACCESS.to_string(),
            aud: AUDIENCE.to_string(),
            iss: ISSUER.to_string(),
            sid: sid.to_string(),
            iat: now,
            ims: now_ms,
            exp: now + self.ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .context("signing token")
    }

    /// Verifies a token's signature, expiry, audience, issuer and type.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .ok()
            .map(|d| d.claims)
            .filter(|c| c.typ == ACCESS)
    }
}

/// The JWT secret: the configured one, else the one kept in `data_dir`
/// (generated on first use, readable by the owner only).
pub fn load_or_create_secret(configured: &str, data_dir: &Path) -> anyhow::Result<Vec<u8>> {
    if !configured.is_empty() {
        return Ok(configured.as_bytes().to_vec());
    }
    let path = data_dir.join("jwt_secret");
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim();
        if existing.len() >= 32 {
            return Ok(existing.as_bytes().to_vec());
        }
    }
    let secret = random_text::<48>();
    crate::files::write_private(&path, secret.as_bytes())
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(secret.into_bytes())
}

/// Runtime-token secrets backed by aws-lc-rs.
#[derive(Debug, Default, Clone, Copy)]
pub struct AwsLcSecrets;

impl Secrets for AwsLcSecrets {
    fn generate_token(&self) -> String {
        random_text::<32>()
    }

    fn hash_token(&self, token: &str) -> String {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_verify_only_themselves() {
        let h = hash_password("correct horse").expect("hash");
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("correct horsE", &h));
        assert!(!verify_password("correct horse", "not a phc string"));
    }

    #[test]
    fn tokens_round_trip_and_reject_tampering() {
        let keys = JwtKeys::new(b"0123456789abcdef0123456789abcdef", 60);
        let t = keys.issue("u1", "o1", "owner", "s1").expect("issue");
        let c = keys.verify(&t).expect("valid");
        assert_eq!(
            (c.sub.as_str(), c.org.as_str(), c.role.as_str()),
            ("u1", "o1", "owner")
        );
        let other = JwtKeys::new(b"another-secret-another-secret-xx", 60);
        assert!(other.verify(&t).is_none());
        assert!(keys.verify("garbage").is_none());
        let mut tampered = t.clone();
        tampered.push('x');
        assert!(keys.verify(&tampered).is_none());
    }

    #[test]
    fn secret_is_generated_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = load_or_create_secret("", dir.path()).expect("create");
        let b = load_or_create_secret("", dir.path()).expect("reload");
        assert_eq!(a, b);
        assert!(a.len() >= 32);
        assert_eq!(
            load_or_create_secret("x".repeat(40).as_str(), dir.path()).expect("cfg"),
            "x".repeat(40).into_bytes()
        );
    }

    #[test]
    fn runtime_token_hashes_are_stable_and_distinct() {
        let s = AwsLcSecrets;
        let t = s.generate_token();
        assert_ne!(t, s.generate_token());
        assert_eq!(s.hash_token(&t), s.hash_token(&t));
        assert_ne!(s.hash_token(&t), s.hash_token("other"));
    }
}

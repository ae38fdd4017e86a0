//! Organization secrets (model API keys and the like), sealed at rest.
//!
//! A secret's value is sealed with AES-256-GCM (aws-lc-rs, the one crypto
//! backend) under the instance's secrets key before it reaches the
//! organization's approval actor, the store or the audit log; it is opened
//! only by a deployer, which hands the plain value to the runtime in its
//! environment. The key comes from `CADRE_SECRETS_KEY` (64 hex digits) or
//! from `<data_dir>/secrets.key`, created (mode 0600) on first start.
//!
//! The organization id is the additional authenticated data, so a sealed
//! value copied into another organization's row does not open.

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::path::Path;
use std::sync::Arc;

/// Seals and opens secret values.
#[derive(Clone)]
pub struct Sealer {
    key: Arc<LessSafeKey>,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<key>)")
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

impl Sealer {
    /// A sealer over 32 key bytes.
    pub fn new(key: &[u8]) -> Result<Sealer, String> {
        let unbound = UnboundKey::new(&AES_256_GCM, key)
            .map_err(|_| "the secrets key must be 32 bytes (64 hex digits)".to_string())?;
        Ok(Sealer {
            key: Arc::new(LessSafeKey::new(unbound)),
        })
    }

    /// The instance's sealer: `CADRE_SECRETS_KEY` if set, else the key file
    /// under `data_dir` (created with a fresh random key when absent).
    pub fn load(data_dir: &Path) -> Result<Sealer, String> {
        Sealer::load_for(data_dir, &[], false)
    }

    /// The instance's sealer, checked against what the database holds:
    /// `stored` is one sealed secret per organization that has any,
    /// `(organization, sealed value)`. A key is never generated while
    /// sealed secrets exist (they could never be opened again), and a key
    /// that does not open them refuses the start unless `allow_unreadable`
    /// (then they are reported and stay unreadable until set again).
    pub fn load_for(
        data_dir: &Path,
        stored: &[(String, String)],
        allow_unreadable: bool,
    ) -> Result<Sealer, String> {
        let path = data_dir.join("secrets.key");
        let from_env = std::env::var("CADRE_SECRETS_KEY")
            .ok()
            .filter(|v| !v.is_empty());
        let (sealer, source) = match from_env {
            Some(v) => {
                let key = unhex(&v).ok_or("CADRE_SECRETS_KEY is not hex")?;
                (Sealer::new(&key)?, "CADRE_SECRETS_KEY".to_string())
            }
            None => match std::fs::read_to_string(&path) {
                Ok(text) => {
                    let key =
                        unhex(&text).ok_or_else(|| format!("{} is not hex", path.display()))?;
                    (Sealer::new(&key)?, path.display().to_string())
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && !stored.is_empty() => {
                    return Err(format!(
                        "the database holds organization secrets of {} organization(s), but there \
                         is no secrets key: {} is missing and CADRE_SECRETS_KEY is not set. Copy \
                         the secrets.key of the instance that sealed them into the data directory \
                         (an export needs it carried along), or set CADRE_SECRETS_KEY to it. A new \
                         key is not generated: it could never open them. If the key is lost, set \
                         CADRE_SECRETS_KEY to a new one (64 hex digits) and \
                         CADRE_SECRETS__ALLOW_UNREADABLE=true, then set each secret again.",
                        stored.len(),
                        path.display()
                    ));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    return Sealer::generate(&path);
                }
                Err(e) => return Err(format!("reading {}: {e}", path.display())),
            },
        };
        let unreadable: Vec<&str> = stored
            .iter()
            .filter(|(org, sealed)| sealer.open(org, sealed).is_err())
            .map(|(org, _)| org.as_str())
            .collect();
        if !unreadable.is_empty() {
            let what = format!(
                "the secrets key from {source} does not open the organization secrets stored for \
                 {} organization(s) ({}): the database was sealed with another key (an import \
                 without its secrets.key?)",
                unreadable.len(),
                unreadable
                    .iter()
                    .take(5)
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            if !allow_unreadable {
                return Err(format!(
                    "{what}. Put that key in place (secrets.key in the data directory, or \
                     CADRE_SECRETS_KEY) and start again; to start anyway with those secrets \
                     unreadable until each is set again, set CADRE_SECRETS__ALLOW_UNREADABLE=true."
                ));
            }
            tracing::warn!("{what}; starting anyway (secrets.allow_unreadable): set them again");
        }
        Ok(sealer)
    }

    /// A fresh random key, written to `path` (0600).
    fn generate(path: &Path) -> Result<Sealer, String> {
        match std::fs::metadata(path) {
            Ok(_) => Err(format!("{} exists; not replacing it", path.display())),
            Err(_) => {
                let mut key = [0u8; 32];
                aws_lc_rs::rand::fill(&mut key).map_err(|_| "no randomness for a key")?;
                crate::files::write_private(path, hex(&key).as_bytes())
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                tracing::warn!(
                    path = %path.display(),
                    "no secrets key was configured: generated one; back it up with the database \
                     (organization secrets cannot be opened without it) or set CADRE_SECRETS_KEY"
                );
                Sealer::new(&key)
            }
        }
    }

    /// Seals `value` for organization `org`: base64 of nonce and ciphertext.
    pub fn seal(&self, org: &str, value: &str) -> Result<String, String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| "no randomness for a nonce")?;
        let mut data = value.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(org.as_bytes()),
                &mut data,
            )
            .map_err(|_| "sealing failed")?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(STANDARD.encode(out))
    }

    /// Opens a value sealed for `org`.
    pub fn open(&self, org: &str, sealed: &str) -> Result<String, String> {
        let raw = STANDARD
            .decode(sealed)
            .map_err(|_| "sealed secret is not base64")?;
        if raw.len() < NONCE_LEN {
            return Err("sealed secret too short".into());
        }
        let (nonce, data) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "bad nonce")?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(org.as_bytes()), &mut data)
            .map_err(|_| "the secret does not open with this instance's secrets key")?;
        String::from_utf8(plain.to_vec()).map_err(|_| "secret is not UTF-8".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_organization_and_key() {
        let s = Sealer::new(&[7u8; 32]).expect("key");
        let sealed = s.seal("org-a", "sk-live-123").expect("seal");
        assert!(!sealed.contains("sk-live"));
        assert_eq!(s.open("org-a", &sealed).expect("open"), "sk-live-123");
        assert!(s.open("org-b", &sealed).is_err());
        let other = Sealer::new(&[8u8; 32]).expect("key");
        assert!(other.open("org-a", &sealed).is_err());
        assert!(s.open("org-a", "not base64!").is_err());
        assert!(Sealer::new(&[1u8; 5]).is_err());
        // Two seals of one value differ (fresh nonces).
        assert_ne!(sealed, s.seal("org-a", "sk-live-123").expect("seal"));
    }

    #[test]
    fn the_key_file_is_created_once_and_reused() {
        let dir = tempfile::tempdir().expect("dir");
        let a = Sealer::load(dir.path()).expect("create");
        let sealed = a.seal("o", "v").expect("seal");
        let b = Sealer::load(dir.path()).expect("reuse");
        assert_eq!(b.open("o", &sealed).expect("open"), "v");
        let mode = std::fs::metadata(dir.path().join("secrets.key"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .expect("meta");
        assert_eq!(mode, 0o600);
    }
}

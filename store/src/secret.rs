//! Keys derived from the server secret: keyed token hashes and token sealing.
//!
//! The server secret comes from the operator (environment or a file outside the data
//! directory) and is never written to the data directory. Every stored device token and
//! claim secret is an HMAC-SHA256 under a key derived from it, so a copied data directory
//! alone yields no usable token (and no offline dictionary: the hash is keyed). A token its
//! device has not claimed yet is kept encrypted (ChaCha20-Poly1305, the entry id as
//! associated data so a sealed token cannot be moved to another entry).
//!
//! Derivation: `key_label = HMAC-SHA256(server_secret, "chatixia-store/v1/" + label)` —
//! the HKDF-Expand step for one block, with a distinct label per use.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::records::{SealedToken, TokenHash};

type HmacSha256 = Hmac<Sha256>;

/// Which kind of secret a hash is of (domain separation: a claim secret's hash never
/// matches a device token's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    /// A device token (`dt_…`).
    DeviceToken,
    /// A claim secret.
    ClaimSecret,
}

/// Why a sealed token could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsealError;

impl std::fmt::Display for UnsealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sealed token does not open under this server secret and entry")
    }
}

impl std::error::Error for UnsealError {}

/// Keys derived from the server secret. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Secrets {
    hash_key: [u8; 32],
    seal_key: [u8; 32],
    check: [u8; 32],
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets(..)")
    }
}

fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    // HMAC takes keys of any length: `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return [0; 32],
    };
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

impl Secrets {
    /// Derives the keys from the server secret.
    pub fn derive(server_secret: &[u8]) -> Secrets {
        let label = |l: &str| hmac(server_secret, &[b"chatixia-store/v1/", l.as_bytes()]);
        Secrets {
            hash_key: label("token-hash"),
            seal_key: label("token-seal"),
            check: label("secret-check"),
        }
    }

    /// The keyed hash of a device token or claim secret.
    pub fn token_hash(&self, kind: HashKind, secret: &str) -> TokenHash {
        let domain: &[u8] = match kind {
            HashKind::DeviceToken => b"device-token\0",
            HashKind::ClaimSecret => b"claim-secret\0",
        };
        TokenHash(hmac(&self.hash_key, &[domain, secret.as_bytes()]))
    }

    /// Whether `secret` hashes to `hash` (constant time in the hash bytes).
    pub fn verify(&self, kind: HashKind, secret: &str, hash: &TokenHash) -> bool {
        let got = self.token_hash(kind, secret);
        got.0
            .iter()
            .zip(hash.0.iter())
            .fold(0u8, |a, (x, y)| a | (x ^ y))
            == 0
    }

    /// Encrypts `token` for entry `entry_id` under a fresh random nonce.
    pub fn seal(&self, entry_id: u32, token: &str) -> SealedToken {
        let mut nonce = [0u8; 12];
        // A failing OS random source leaves the nonce zero; the ciphertext is still
        // correct, only nonce uniqueness would be lost (getrandom does not fail on Linux
        // once the pool is initialised).
        let _ = getrandom::getrandom(&mut nonce);
        let aad = entry_id.to_be_bytes();
        let ciphertext = self
            .cipher()
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: token.as_bytes(),
                    aad: &aad,
                },
            )
            .unwrap_or_default();
        SealedToken { nonce, ciphertext }
    }

    /// Decrypts a token sealed by [`seal`](Self::seal) for the same entry.
    pub fn unseal(&self, entry_id: u32, sealed: &SealedToken) -> Result<String, UnsealError> {
        let aad = entry_id.to_be_bytes();
        let plain = self
            .cipher()
            .decrypt(
                &Nonce::from(sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| UnsealError)?;
        String::from_utf8(plain).map_err(|_| UnsealError)
    }

    /// A value stored in the data directory to detect a different server secret on open
    /// (every token hash would silently stop matching otherwise). Reveals nothing about
    /// the secret beyond an HMAC output.
    pub(crate) fn check_value(&self) -> [u8; 32] {
        self.check
    }

    fn cipher(&self) -> ChaCha20Poly1305 {
        // The key is exactly 32 bytes, so `new_from_slice` cannot fail.
        ChaCha20Poly1305::new_from_slice(&self.seal_key)
            .unwrap_or_else(|_| ChaCha20Poly1305::new(&Default::default()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_keyed_and_domain_separated() {
        let a = Secrets::derive(b"secret-a");
        let b = Secrets::derive(b"secret-b");
        let t = "dt_0123456789abcdef0123456789abcdef";
        let h = a.token_hash(HashKind::DeviceToken, t);
        assert_eq!(h, a.token_hash(HashKind::DeviceToken, t));
        assert_ne!(h, b.token_hash(HashKind::DeviceToken, t));
        assert_ne!(h, a.token_hash(HashKind::ClaimSecret, t));
        assert!(a.verify(HashKind::DeviceToken, t, &h));
        assert!(!a.verify(HashKind::DeviceToken, "dt_other", &h));
        assert!(!b.verify(HashKind::DeviceToken, t, &h));
        assert_ne!(a.check_value(), b.check_value());
    }

    #[test]
    fn seal_round_trip_is_bound_to_secret_and_entry() {
        let a = Secrets::derive(b"secret-a");
        let t = "dt_0123456789abcdef0123456789abcdef";
        let s = a.seal(7, t);
        assert!(!s.ciphertext.windows(t.len()).any(|w| w == t.as_bytes()));
        assert_eq!(s.ciphertext.len(), t.len() + 16);
        assert_eq!(a.unseal(7, &s).as_deref(), Ok(t));
        assert_eq!(a.unseal(8, &s), Err(UnsealError));
        assert_eq!(Secrets::derive(b"secret-b").unseal(7, &s), Err(UnsealError));
        let mut tampered = s.clone();
        tampered.ciphertext[0] ^= 1;
        assert_eq!(a.unseal(7, &tampered), Err(UnsealError));
        // Fresh nonce each time.
        assert_ne!(a.seal(7, t).nonce, s.nonce);
    }
}

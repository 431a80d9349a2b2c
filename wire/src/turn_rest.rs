//! TURN REST API credentials (coturn `use-auth-secret`, the reference's scheme): user
//! name `"<expiry_secs>:mesh"`, password base64(HMAC-SHA1(secret, user name)). The
//! server hands them out in `GET /api/config`; the sidecar derives its own from
//! `TURN_SECRET`. One function, so both always agree.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// Credentials valid until `expiry_secs` (Unix seconds).
pub fn turn_credentials(secret: &[u8], expiry_secs: u64) -> (String, String) {
    let username = format!("{expiry_secs}:mesh");
    // HMAC accepts keys of any length; the empty-credential fallback is unreachable.
    let credential = match Hmac::<Sha1>::new_from_slice(secret) {
        Ok(mut mac) => {
            mac.update(username.as_bytes());
            STANDARD.encode(mac.finalize().into_bytes())
        }
        Err(_) => String::new(),
    };
    (username, credential)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_vectors() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let mut mac = Hmac::<Sha1>::new_from_slice(b"Jefe").unwrap();
        mac.update(b"what do ya want for nothing?");
        assert_eq!(
            STANDARD.encode(mac.finalize().into_bytes()),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
        // Computed independently with Python's hmac module.
        assert_eq!(
            turn_credentials(b"my-secret", 1_700_086_400),
            (
                "1700086400:mesh".to_owned(),
                "shlk2Nr94VRbAuH0fRljVEIVdCs=".to_owned()
            )
        );
        let (u, p) = turn_credentials(b"s", 110);
        assert_eq!(u, "110:mesh");
        assert_eq!(p.len(), 28); // base64 of 20 bytes
    }
}

//! The primitives every HMAC scheme shares: MACs over several chunks (no concatenation copy
//! of the body), signature encodings, and constant-time equality.

use hmac::{Hmac, Mac};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha1,
    Sha256,
    Sha512,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Hex,
    Base64,
}

impl Encoding {
    /// Decodes a received signature; `None` when it is not valid in this encoding.
    pub fn decode(self, s: &str) -> Option<Vec<u8>> {
        use base64::Engine;
        match self {
            Encoding::Hex => hex::decode(s).ok(),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD
                .decode(s)
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
                .ok(),
        }
    }

    pub fn encode(self, bytes: &[u8]) -> String {
        use base64::Engine;
        match self {
            Encoding::Hex => hex::encode(bytes),
            Encoding::Base64 => base64::engine::general_purpose::STANDARD.encode(bytes),
        }
    }
}

fn run<M: Mac + hmac::digest::KeyInit>(key: &[u8], chunks: &[&[u8]]) -> Vec<u8> {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut m = match <M as Mac>::new_from_slice(key) {
        Ok(m) => m,
        Err(_) => return Vec::new(),
    };
    for c in chunks {
        m.update(c);
    }
    m.finalize().into_bytes().to_vec()
}

/// HMAC of the concatenation of `chunks` under `key`.
pub fn mac(alg: Algorithm, key: &[u8], chunks: &[&[u8]]) -> Vec<u8> {
    match alg {
        Algorithm::Sha1 => run::<Hmac<sha1::Sha1>>(key, chunks),
        Algorithm::Sha256 => run::<Hmac<sha2::Sha256>>(key, chunks),
        Algorithm::Sha512 => run::<Hmac<sha2::Sha512>>(key, chunks),
    }
}

/// Constant-time equality (length is not secret).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn github_published_vector() {
        // docs.github.com: secret "It's a Secret to Everybody", payload "Hello, World!".
        let m = mac(
            Algorithm::Sha256,
            b"It's a Secret to Everybody",
            &[b"Hello, ", b"World!"],
        );
        assert_eq!(
            hex::encode(m),
            "757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"
        );
    }

    #[test]
    fn ct_eq_lengths() {
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}

//! Secret values: where they come from (`env:`, `file:`, literal) and a type that never
//! prints them. `Debug` shows `[redacted]`; there is deliberately no `Display`.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

/// Base64 as the Standard Webhooks reference libraries read it: padding optional, trailing
/// bits ignored.
pub(crate) const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_allow_trailing_bits(true)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The HMAC key of a Standard Webhooks secret, `whsec_<base64>`: the prefix optional and
/// missing `=` padding tolerated, like the reference libraries. The one decoding of this
/// format, shared by the inbound verifier and the outbound re-signer so both sides agree.
pub fn decode_whsec(s: &str) -> Option<Vec<u8>> {
    let b64 = s.trim().strip_prefix("whsec_").unwrap_or(s.trim());
    LENIENT_BASE64.decode(b64).ok().filter(|k| !k.is_empty())
}

/// A secret's bytes. Compared only through constant-time helpers in `verify`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: impl Into<Vec<u8>>) -> Self {
        Secret(bytes.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, for schemes whose secrets have a textual format (`whsec_…`).
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// Where a secret came from; `Literal` makes `check` warn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretSource {
    Env,
    File,
    Literal,
}

/// Resolves `env:NAME`, `file:/path` (one trailing newline trimmed) or a literal.
/// The error names the variable or file, never the value.
pub fn resolve(spec: &str) -> Result<(Secret, SecretSource), String> {
    resolve_noting(spec, &mut |_, _| {})
}

/// As [`resolve`], telling `read` the path and content of a file it read, `None` when it
/// could not (so the config's files can be watched from exactly what was read).
pub fn resolve_noting(
    spec: &str,
    read: &mut dyn FnMut(&str, Option<&[u8]>),
) -> Result<(Secret, SecretSource), String> {
    if let Some(name) = spec.strip_prefix("env:") {
        match std::env::var_os(name) {
            None => Err(format!("environment variable {name} is not set")),
            Some(v) if v.is_empty() => Err(format!("environment variable {name} is empty")),
            Some(v) => Ok((Secret::new(v.into_encoded_bytes()), SecretSource::Env)),
        }
    } else if let Some(path) = spec.strip_prefix("file:") {
        let read_file = super::watch::read_file(std::path::Path::new(path));
        read(path, read_file.as_deref().ok());
        let mut bytes = read_file.map_err(|e| format!("cannot read secret file {path}: {e}"))?;
        if bytes.ends_with(b"\r\n") {
            bytes.truncate(bytes.len() - 2);
        } else if bytes.ends_with(b"\n") {
            bytes.truncate(bytes.len() - 1);
        }
        if bytes.is_empty() {
            return Err(format!("secret file {path} is empty"));
        }
        Ok((Secret::new(bytes), SecretSource::File))
    } else if spec.is_empty() {
        Err("secret is empty".to_string())
    } else {
        Ok((Secret::new(spec.as_bytes()), SecretSource::Literal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "Secret([redacted])");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn env_file_literal() {
        // A variable every test process has: setting one here would race other tests'
        // reads of the environment (set_var is not thread-safe).
        let path = std::env::var_os("PATH").expect("PATH is set");
        let (s, src) = resolve("env:PATH").unwrap();
        assert_eq!(
            (s.expose(), src),
            (path.as_encoded_bytes(), SecretSource::Env)
        );
        assert_eq!(
            resolve("env:HOOKGATE_TEST_SECRET_MISSING").unwrap_err(),
            "environment variable HOOKGATE_TEST_SECRET_MISSING is not set"
        );
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "filesecret\n").unwrap();
        let (s, src) = resolve(&format!("file:{}", p.display())).unwrap();
        assert_eq!((s.expose(), src), (&b"filesecret"[..], SecretSource::File));
        assert_eq!(resolve("lit").unwrap().1, SecretSource::Literal);
    }
}

//! Password hashing with argon2 (the `argon2` crate's default, Argon2id), stored as PHC strings
//! (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`) with a random salt from the operating system. A
//! person's password exists in clear only in the caller's hands: the configuration holds its hash
//! in the secret `password_hash` field, and [`Password`] keeps a clear password out of `Debug`.

use std::fmt;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

/// Hashing a password failed (only on a broken parameter set or an unavailable random source).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("password hashing failed: {reason}")]
pub struct PasswordError {
    /// The hasher's explanation (never contains the password).
    pub reason: String,
}

/// A password in clear, whose `Debug` and `Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    /// Wraps a clear password.
    pub fn new(clear: impl Into<String>) -> Self {
        Password(clear.into())
    }

    /// The clear password, for hashing or verifying.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

impl From<&str> for Password {
    fn from(s: &str) -> Self {
        Password::new(s)
    }
}

/// Hashes `password` with Argon2id and a fresh random salt; returns the PHC string.
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| PasswordError { reason: e.to_string() })
}

/// Whether `password` matches `hash` (a PHC string). A malformed hash matches nothing.
pub fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok(),
        Err(_) => false,
    }
}

/// Whether `s` is an argon2 PHC string (what a `password_hash` field must hold).
pub fn is_password_hash(s: &str) -> bool {
    PasswordHash::new(s)
        .is_ok_and(|h| matches!(h.algorithm.as_str(), "argon2id" | "argon2i" | "argon2d") && h.hash.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_accepts_the_password_and_refuses_others() {
        let hash = hash_password("correct horse").unwrap();
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("correct horsE", &hash));
        assert!(!verify_password("", &hash));
    }

    #[test]
    fn hash_is_a_salted_phc_string_not_the_password() {
        let a = hash_password("pw").unwrap();
        let b = hash_password("pw").unwrap();
        assert_ne!(a, "pw");
        assert!(a.starts_with("$argon2id$"));
        assert_ne!(a, b, "salts differ");
        assert!(is_password_hash(&a));
        assert!(!is_password_hash("pw"));
        assert!(!is_password_hash("$md5$abc"));
    }

    #[test]
    fn malformed_hash_matches_nothing() {
        assert!(!verify_password("pw", "pw"));
        assert!(!verify_password("pw", ""));
    }

    #[test]
    fn password_debug_redacts() {
        let p = Password::new("hunter2");
        assert_eq!(format!("{p:?}"), "Password(<redacted>)");
        assert_eq!(p.expose(), "hunter2");
    }
}

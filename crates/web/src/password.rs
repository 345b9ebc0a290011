//! Password hashing with Argon2id (the crate's defaults: 19 MiB, 2 passes),
//! run off the async threads.

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};

pub const MIN_LEN: usize = 8;
pub const MAX_LEN: usize = 1024;

/// Why a new password is refused, if it is.
pub fn check_new(password: &str) -> Option<String> {
    let n = password.chars().count();
    if n < MIN_LEN {
        return Some(format!("Use at least {MIN_LEN} characters."));
    }
    if password.len() > MAX_LEN {
        return Some(format!("Use at most {MAX_LEN} bytes."));
    }
    None
}

pub async fn hash(password: &str) -> Result<String, String> {
    let password = password.to_owned();
    tokio::task::spawn_blocking(move || {
        Argon2::default().hash_password(password.as_bytes()).map(|h| h.to_string()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Checks a password against a stored hash. With no hash (unknown user, or
/// a user without a password) it still does the work, so that the answer
/// takes as long and tells nothing about which users exist.
pub async fn verify(password: &str, stored: Option<&str>) -> bool {
    const DUMMY: &str =
        "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$1Qn4Ji5mMjqBJgyQ5uOQyUPy0EC7cIu6cCd+WrK6gV8";
    let (password, stored, real) = (password.to_owned(), stored.unwrap_or(DUMMY).to_owned(), stored.is_some());
    tokio::task::spawn_blocking(move || {
        let Ok(parsed) = PasswordHash::new(&stored) else { return false };
        Argon2::default().verify_password(password.as_bytes(), &parsed).is_ok() && real
    })
    .await
    .unwrap_or(false)
}

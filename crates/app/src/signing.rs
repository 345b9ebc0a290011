//! Signed, expiring URLs for transfers that yatai serves itself (the
//! local-directory store's "presigned" and multipart URLs). Clients call them
//! with no token, exactly as they would call S3.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use yatai_core::Timestamp;

use crate::error::AppError;

type HmacSha256 = Hmac<Sha256>;

#[derive(Clone)]
pub struct UrlSigner {
    key: Vec<u8>,
}

impl UrlSigner {
    pub fn new(key: &[u8]) -> Self {
        UrlSigner { key: key.to_vec() }
    }

    fn mac(&self, method: &str, path: &str, expires: i64) -> HmacSha256 {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(method.as_bytes());
        mac.update(b"\n");
        mac.update(path.as_bytes());
        mac.update(b"\n");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    /// The query string (`expires=…&signature=…`) that authorises `method`
    /// on `path` until `expires` (Unix seconds).
    pub fn sign(&self, method: &str, path: &str, expires: i64) -> String {
        let sig = hex::encode(self.mac(method, path, expires).finalize().into_bytes());
        format!("expires={expires}&signature={sig}")
    }

    pub fn verify(&self, method: &str, path: &str, expires: i64, signature: &str) -> Result<(), AppError> {
        let bytes = hex::decode(signature).map_err(|_| AppError::forbidden("the URL signature is malformed"))?;
        self.mac(method, path, expires)
            .verify_slice(&bytes)
            .map_err(|_| AppError::forbidden("the URL signature does not match; ask the server for a new URL"))?;
        if expires < Timestamp::now().0 / 1_000_000 {
            return Err(AppError::forbidden("the URL has expired; ask the server for a new one"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_bind_method_path_and_expiry() {
        let s = UrlSigner::new(b"k");
        let exp = Timestamp::now().0 / 1_000_000 + 60;
        let q = s.sign("PUT", "/transfer/x", exp);
        let sig = q.split("signature=").nth(1).unwrap();
        assert!(s.verify("PUT", "/transfer/x", exp, sig).is_ok());
        assert!(s.verify("GET", "/transfer/x", exp, sig).is_err());
        assert!(s.verify("PUT", "/transfer/y", exp, sig).is_err());
        assert!(s.verify("PUT", "/transfer/x", exp + 1, sig).is_err());
        assert!(UrlSigner::new(b"other").verify("PUT", "/transfer/x", exp, sig).is_err());
    }

    #[test]
    fn expired_urls_are_refused() {
        let s = UrlSigner::new(b"k");
        let exp = Timestamp::now().0 / 1_000_000 - 1;
        let q = s.sign("GET", "/p", exp);
        let sig = q.split("signature=").nth(1).unwrap();
        let err = s.verify("GET", "/p", exp, sig).unwrap_err();
        assert!(err.message().contains("expired"));
    }
}

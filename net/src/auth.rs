//! Bearer tokens, kept and compared as sha256 hashes in constant time.
//!
//! Neither the memory of a process nor the timing of a refusal tells anything about a valid
//! token: tokens are hashed as soon as they are read, and a presented token's hash is compared
//! with every candidate in full.

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A token's hash.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TokenHash([u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(…)")
    }
}

impl TokenHash {
    /// The hash of `token` (surrounding whitespace ignored).
    pub fn of(token: &str) -> Self {
        TokenHash(Sha256::digest(token.trim().as_bytes()).into())
    }

    /// Whether `other` is the same hash, compared in constant time.
    pub fn matches(&self, other: &TokenHash) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

/// The hash of the `Authorization: Bearer …` token of `headers`, if there is one.
pub fn bearer(headers: &HeaderMap) -> Option<TokenHash> {
    headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_text)
        .map(TokenHash::of)
}

/// The token of an `Authorization` value `Bearer <token>` (the scheme in any case, as HTTP
/// says), if it is one.
pub fn bearer_text(value: &str) -> Option<&str> {
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bearer_token_is_found_and_compared_by_hash() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers).is_none());
        headers.insert("authorization", "Bearer  secret-token ".parse().unwrap());
        assert!(bearer(&headers).unwrap().matches(&TokenHash::of("secret-token")));
        assert!(!bearer(&headers).unwrap().matches(&TokenHash::of("secret-tokem")));
        headers.insert("authorization", "Basic secret-token".parse().unwrap());
        assert!(bearer(&headers).is_none());
        headers.insert("authorization", "bearer secret-token".parse().unwrap());
        assert!(bearer(&headers).unwrap().matches(&TokenHash::of("secret-token")), "the scheme in any case");
    }
}

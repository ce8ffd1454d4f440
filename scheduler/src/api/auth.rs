//! Tenants and their bearer tokens.
//!
//! Tokens are kept only as sha256 hashes, and a presented token is compared against every
//! tenant's hash in constant time, so neither the store nor the timing of a refusal tells
//! anything about a valid token.

use axum::http::HeaderMap;
use squilla_net::auth::{TokenHash, bearer};
use squilla_types::ids::TenantId;

use super::ApiError;

/// A tenant: its name and its token's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    /// The tenant's name (owner of its objects).
    pub name: TenantId,
    token_hash: TokenHash,
}

/// Why a tokens file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("tokens file, line {line}: {problem}")]
pub struct TokensError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong there.
    pub problem: String,
}

/// The hash of the `Authorization: Bearer …` token; 401 without one.
fn bearer_hash(headers: &HeaderMap) -> Result<TokenHash, ApiError> {
    bearer(headers).ok_or_else(ApiError::unauthorized)
}

/// The known tenants, and the console's sessions of them.
#[derive(Debug, Clone, Default)]
pub struct Tenants {
    tenants: Vec<Tenant>,
    sessions: std::sync::Arc<super::session::Sessions>,
}

impl Tenants {
    /// Tenants from `(name, token)` pairs (a pair whose name is not a valid tenant id is left
    /// out; [`Tenants::parse`] says why instead).
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let tenants = pairs
            .into_iter()
            .filter_map(|(name, token)| Some(Tenant { name: name.parse().ok()?, token_hash: TokenHash::of(token) }))
            .collect();
        Tenants { tenants, sessions: Default::default() }
    }

    /// Parses a tokens file: one `tenant token` pair per line; `#` starts a comment. Tenant
    /// names are 1 to 63 of `a-z`, `0-9`, `-`; tokens at least 16 characters.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut pairs = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let err = |problem: &str| TokensError { line: i + 1, problem: problem.to_owned() };
            let mut words = line.split_whitespace();
            let (Some(name), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(err("expected `tenant token`"));
            };
            if name.parse::<TenantId>().is_err() {
                return Err(err("a tenant name is 1 to 63 of a-z, 0-9 and '-'"));
            }
            if token.len() < 16 {
                return Err(err("a token is at least 16 characters"));
            }
            if pairs.iter().any(|(n, _)| *n == name) {
                return Err(err("tenant listed twice"));
            }
            pairs.push((name, token));
        }
        Ok(Tenants::new(pairs))
    }

    /// The tenant whose token the `Authorization: Bearer …` header carries or, without one,
    /// whose console session the cookie names.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<&Tenant, ApiError> {
        if !headers.contains_key(axum::http::header::AUTHORIZATION)
            && let Some(id) = super::session::cookie(headers)
        {
            // A cookie is sent by the browser whoever's page asks: only the console's own pages
            // may use it (sibling subdomains and other ports count as the same site).
            if !super::session::same_origin(headers) {
                return Err(ApiError::new(
                    axum::http::StatusCode::FORBIDDEN,
                    "console_header_required",
                    "a request signed in by the console's cookie must come from the console's own origin",
                ));
            }
            let name = self.sessions.tenant(id).ok_or_else(ApiError::unauthorized)?;
            return self.tenants.iter().find(|t| t.name == name).ok_or_else(ApiError::unauthorized);
        }
        self.by_token(bearer_hash(headers)?)
    }

    /// The tenant whose token hashes to `hash`, compared with every tenant's in constant time.
    pub fn by_token(&self, hash: TokenHash) -> Result<&Tenant, ApiError> {
        let mut found = None;
        for tenant in &self.tenants {
            if tenant.token_hash.matches(&hash) {
                found = Some(tenant);
            }
        }
        found.ok_or_else(ApiError::unauthorized)
    }

    /// The console's sessions.
    pub fn sessions(&self) -> &super::session::Sessions {
        &self.sessions
    }
}

/// The shared token agents present to the master (and the master to agents), kept hashed.
#[derive(Debug, Clone)]
pub struct AgentToken {
    hash: TokenHash,
}

impl AgentToken {
    /// The token `token` (at least 16 characters).
    pub fn new(token: &str) -> Result<Self, TokensError> {
        if token.trim().len() < 16 {
            return Err(TokensError { line: 0, problem: "the agent token is at least 16 characters".into() });
        }
        Ok(AgentToken { hash: TokenHash::of(token) })
    }

    /// Checks the `Authorization: Bearer …` header, in constant time.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), ApiError> {
        let hash = bearer_hash(headers)?;
        if self.hash.matches(&hash) { Ok(()) } else { Err(ApiError::unauthorized()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_files_are_checked_line_by_line() {
        let t = Tenants::parse("# tenants\nacme  0123456789abcdef0123\n\nglobex fedcba9876543210fedc # ops\n").unwrap();
        assert_eq!(t.tenants.len(), 2);
        assert_eq!(
            Tenants::parse("acme short").unwrap_err(),
            TokensError { line: 1, problem: "a token is at least 16 characters".into() }
        );
        assert_eq!(Tenants::parse("\nAcme 0123456789abcdef").unwrap_err().line, 2);
        assert!(Tenants::parse("a 0123456789abcdef\na 0123456789abcdeg").is_err());
    }
}

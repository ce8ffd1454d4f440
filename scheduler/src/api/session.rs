//! Console sessions: the web console signs in with a tenant token once and then carries an
//! opaque session id in an `HttpOnly`, `SameSite=Strict` cookie — a browser's `EventSource`
//! and page loads cannot send an `Authorization` header, and script never sees the token
//! again. Sessions live in the master's memory (a restart signs everyone out), are kept only
//! as sha256 hashes of their ids, expire after [`SESSION_TTL`], and are bounded per tenant
//! ([`PER_TENANT`], the oldest signed out first) and in all ([`MAX_SESSIONS`]).
//!
//! Requests authenticated by the cookie alone that change something (any method but `GET`
//! and `HEAD`) must also carry the `X-Squilla-Console` header, which a page of another
//! origin cannot add to a request without the master's consent (no CORS is offered): a second
//! guard against cross-site requests besides `SameSite=Strict`.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};
use squilla_types::ids::TenantId;

/// The cookie's name.
pub const COOKIE: &str = "squilla_session";
/// The header a cookie-authenticated change must carry.
pub const CONSOLE_HEADER: &str = "x-squilla-console";
/// How long a session lasts from sign-in.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);
/// Sessions one tenant may hold; a new one signs out the oldest.
pub const PER_TENANT: usize = 64;
/// Sessions in all; past it, expired ones go first, then the oldest.
pub const MAX_SESSIONS: usize = 10_000;

#[derive(Debug)]
struct Session {
    tenant: TenantId,
    created: Instant,
}

/// The open sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    open: Mutex<HashMap<[u8; 32], Session>>,
}

fn key(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Session>> {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Opens a session for `tenant`; its id (64 hex digits from the OS's random source).
    pub fn open(&self, tenant: &TenantId) -> std::io::Result<String> {
        let mut bytes = [0u8; 32];
        std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
        let id: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let mut open = self.lock();
        open.retain(|_, s| s.created.elapsed() < SESSION_TTL);
        let mut mine: Vec<([u8; 32], Instant)> =
            open.iter().filter(|(_, s)| s.tenant == *tenant).map(|(k, s)| (*k, s.created)).collect();
        mine.sort_by_key(|(_, created)| *created);
        for (k, _) in mine.iter().take((mine.len() + 1).saturating_sub(PER_TENANT)) {
            open.remove(k);
        }
        if open.len() >= MAX_SESSIONS
            && let Some(oldest) = open.iter().min_by_key(|(_, s)| s.created).map(|(k, _)| *k)
        {
            open.remove(&oldest);
        }
        open.insert(key(&id), Session { tenant: tenant.clone(), created: Instant::now() });
        Ok(id)
    }

    /// The tenant of the live session `id`.
    pub fn tenant(&self, id: &str) -> Option<TenantId> {
        let open = self.lock();
        open.get(&key(id)).filter(|s| s.created.elapsed() < SESSION_TTL).map(|s| s.tenant.clone())
    }

    /// Ends session `id`.
    pub fn close(&self, id: &str) {
        self.lock().remove(&key(id));
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// The session id the request's `Cookie` header carries, if any.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a browser's request comes from the page's own origin, as far as its headers say:
/// `Sec-Fetch-Site` (sent by current browsers) is `same-origin` or `none` (typed, bookmarked),
/// and `Origin`, when sent, names the `Host` the request went to. A request without either
/// header (a program, an old browser) passes: the cookie's `SameSite=Strict` still holds.
/// `SameSite` counts sibling subdomains and other ports as the same site; this does not.
pub fn same_origin(headers: &HeaderMap) -> bool {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = text("sec-fetch-site")
        && site != "same-origin"
        && site != "none"
    {
        return false;
    }
    match (text("origin"), text("host")) {
        (Some(origin), Some(host)) => origin.split_once("://").map(|(_, authority)| authority) == Some(host),
        (Some(_), None) => false,
        _ => true,
    }
}

/// The `Set-Cookie` value that carries session `id` (or, with `None`, removes it).
pub fn set_cookie(id: Option<&str>) -> String {
    match id {
        Some(id) => format!("{COOKIE}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}", SESSION_TTL.as_secs()),
        None => format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_names_its_tenant_until_closed() {
        let sessions = Sessions::default();
        let acme: TenantId = "acme".parse().unwrap();
        let id = sessions.open(&acme).unwrap();
        assert_eq!(id.len(), 64);
        assert_eq!(sessions.tenant(&id), Some(acme));
        assert_eq!(sessions.tenant(&"0".repeat(64)), None);
        sessions.close(&id);
        assert_eq!(sessions.tenant(&id), None);
    }

    #[test]
    fn a_tenant_holds_a_bounded_number_of_sessions() {
        let sessions = Sessions::default();
        let acme: TenantId = "acme".parse().unwrap();
        let first = sessions.open(&acme).unwrap();
        for _ in 0..PER_TENANT {
            sessions.open(&acme).unwrap();
        }
        assert_eq!(sessions.len(), PER_TENANT);
        assert_eq!(sessions.tenant(&first), None, "the oldest was signed out");
    }

    #[test]
    fn only_the_consoles_own_origin_passes() {
        let headers = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            h
        };
        assert!(same_origin(&headers(&[])));
        assert!(same_origin(&headers(&[
            ("sec-fetch-site", "same-origin"),
            ("origin", "http://m:7070"),
            ("host", "m:7070")
        ])));
        assert!(!same_origin(&headers(&[("sec-fetch-site", "same-site")])));
        assert!(!same_origin(&headers(&[("origin", "http://m:8080"), ("host", "m:7070")])));
        assert!(!same_origin(&headers(&[("origin", "http://evil.m:7070"), ("host", "m:7070")])));
    }

    #[test]
    fn the_cookie_is_found_among_others_and_must_look_like_an_id() {
        let id = "ab".repeat(32);
        let mut headers = HeaderMap::new();
        headers.insert("cookie", format!("theme=dark; {COOKIE}={id}; x=1").parse().unwrap());
        assert_eq!(cookie(&headers), Some(id.as_str()));
        headers.insert("cookie", format!("{COOKIE}=../../etc").parse().unwrap());
        assert_eq!(cookie(&headers), None);
    }
}

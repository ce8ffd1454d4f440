//! The masters a client talks to — agents, gateways and the CLI — and which of them leads.
//!
//! A fleet of masters sharing an etcd store has one leader; the others answer every request
//! with **307** `not_leader` naming it, or **503** `no_leader` during an election, and a
//! leader that has just lost its leadership refuses writes with **503** `not_leader`
//! (nothing was applied). [`Masters::send`] follows all of that: it sends to the master it
//! last found leading, goes to the leader a standby names, moves on to the next URL of the
//! list when one cannot be reached, and waits a moment while there is no leader — each
//! within a bounded number of attempts. A single URL (one master) works as before.
//!
//! Requests are repeated only when the previous attempt cannot have been applied: the
//! connection was refused, or a master answered that it does not lead. A standby answers
//! reads itself (as of the store), naming the leader in `X-Squilla-Leader`: that answer is
//! returned, and the next request goes to the leader.

use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Why no master answered.
#[derive(Debug, thiserror::Error)]
pub enum Failover {
    /// None of the masters could be reached (the last error is the source).
    #[error("cannot reach any master ({masters})")]
    Unreachable {
        /// The list tried.
        masters: String,
        /// The last failure.
        #[source]
        last: reqwest::Error,
    },
    /// The masters answered, but none leads (an election did not end in time).
    #[error("no master leads right now ({masters}); retry shortly")]
    NoLeader {
        /// The list tried.
        masters: String,
    },
    /// The request failed after it was sent (a timeout, a reset): it is not repeated,
    /// as it may have been applied.
    #[error("the request failed after it was sent, and may or may not have been applied")]
    Request(#[source] reqwest::Error),
}

/// The masters' URLs and the one believed to lead; clones share what they learn.
#[derive(Clone, Debug)]
pub struct Masters {
    urls: Arc<[String]>,
    current: Arc<Mutex<String>>,
}

impl std::fmt::Display for Masters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.urls.join(","))
    }
}

/// How long to wait before asking again while no master leads.
const ELECTION_WAIT: Duration = Duration::from_millis(300);

impl Masters {
    /// The masters of a comma-separated list of base URLs (`http://m1:7070,http://m2:7070`).
    pub fn new(list: &str) -> Masters {
        let mut urls: Vec<String> =
            list.split(',').map(|u| u.trim().trim_end_matches('/').to_owned()).filter(|u| !u.is_empty()).collect();
        if urls.is_empty() {
            urls.push(list.trim().to_owned());
        }
        let current = Arc::new(Mutex::new(urls[0].clone()));
        Masters { urls: urls.into(), current }
    }

    /// The base URL of the master believed to lead.
    pub fn current(&self) -> String {
        self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// `path` at the master believed to lead.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.current())
    }

    /// Every URL of the list.
    pub fn urls(&self) -> &[String] {
        &self.urls
    }

    /// Believes `leader` leads from now on.
    pub fn follow(&self, leader: &str) {
        *self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
            leader.trim_end_matches('/').to_owned();
    }

    /// Moves on from `tried` (unreachable, or not leading) to the next URL of the list.
    pub fn skip(&self, tried: &str) {
        let mut current = self.current.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if *current == tried {
            let at = self.urls.iter().position(|u| u == tried).map_or(0, |i| i + 1);
            *current = self.urls[at % self.urls.len()].clone();
        }
    }

    /// What a master's answer says about leadership: `Some(Some(url))` a standby naming the
    /// leader, `Some(None)` no leader known to it (or it just lost leadership), `None` an
    /// answer of its own.
    pub fn leadership(status: reqwest::StatusCode, body: &[u8]) -> Option<Option<String>> {
        if status != reqwest::StatusCode::TEMPORARY_REDIRECT && status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
            return None;
        }
        let json: serde_json::Value = serde_json::from_slice(body).ok()?;
        match json["code"].as_str()? {
            "not_leader" | "no_leader" => Some(json["leader"].as_str().map(str::to_owned)),
            _ => None,
        }
    }

    /// Sends the request `build` makes for a master's base URL, following the leader (see
    /// the module's documentation). The answer of the leader — or of the only master —
    /// whatever its status.
    pub async fn send(&self, build: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<reqwest::Response, Failover> {
        let attempts = 3 * self.urls.len() + 4;
        let mut unreachable: Vec<String> = Vec::new();
        let mut last = None;
        let mut leaderless = false;
        for _ in 0..attempts {
            let base = self.current();
            let response = match build(&base).send().await {
                Ok(response) => response,
                Err(e) if e.is_connect() => {
                    self.skip(&base);
                    if !unreachable.contains(&base) {
                        unreachable.push(base);
                    }
                    last = Some(e);
                    if self.urls.iter().all(|u| unreachable.contains(u)) {
                        break;
                    }
                    continue;
                }
                Err(e) => {
                    // Not sent again (it may have been applied); the next request starts
                    // at another master.
                    self.skip(&base);
                    return Err(Failover::Request(e));
                }
            };
            let status = response.status();
            if status != reqwest::StatusCode::TEMPORARY_REDIRECT && status != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                // A standby's read, as of the store: the next request goes to the leader it
                // names, for live answers.
                if let Some(leader) = response.headers().get("x-squilla-leader").and_then(|l| l.to_str().ok())
                    && !unreachable.iter().any(|u| u == leader.trim_end_matches('/'))
                {
                    self.follow(leader);
                }
                return Ok(response);
            }
            // Small answers: read, looked at, and rebuilt if they are the master's own.
            let headers = response.headers().clone();
            let body = response.bytes().await.map_err(Failover::Request)?;
            match Self::leadership(status, &body) {
                // A standby may still name a leader that has just died: followed only if
                // it was not found unreachable already.
                Some(Some(leader))
                    if leader.trim_end_matches('/') != base
                        && !unreachable.iter().any(|u| u == leader.trim_end_matches('/')) =>
                {
                    self.follow(&leader)
                }
                Some(_) => {
                    leaderless = true;
                    self.skip(&base);
                    tokio::time::sleep(ELECTION_WAIT).await;
                }
                None => {
                    let mut rebuilt = http::Response::new(body);
                    *rebuilt.status_mut() = status;
                    *rebuilt.headers_mut() = headers;
                    return Ok(reqwest::Response::from(rebuilt));
                }
            }
        }
        match last {
            Some(last) if !leaderless || unreachable.len() == self.urls.len() => {
                Err(Failover::Unreachable { masters: self.to_string(), last })
            }
            _ => Err(Failover::NoLeader { masters: self.to_string() }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_is_walked_in_order_and_a_named_leader_is_followed() {
        let masters = Masters::new("http://a:1/, http://b:2,,http://c:3");
        assert_eq!(masters.urls(), ["http://a:1", "http://b:2", "http://c:3"]);
        assert_eq!(masters.current(), "http://a:1");
        masters.skip("http://a:1");
        assert_eq!(masters.current(), "http://b:2");
        masters.skip("http://a:1"); // someone else moved on already
        assert_eq!(masters.current(), "http://b:2");
        masters.skip("http://b:2");
        masters.skip("http://c:3");
        assert_eq!(masters.current(), "http://a:1");
        masters.follow("http://c:3/");
        assert_eq!(masters.url("/x"), "http://c:3/x");
        assert_eq!(Masters::new("http://only").to_string(), "http://only");
    }

    #[test]
    fn only_leadership_answers_are_taken_for_leadership() {
        let redirect = reqwest::StatusCode::TEMPORARY_REDIRECT;
        let unavailable = reqwest::StatusCode::SERVICE_UNAVAILABLE;
        let named = br#"{"code":"not_leader","message":"m","leader":"http://b"}"#;
        assert_eq!(Masters::leadership(redirect, named), Some(Some("http://b".into())));
        assert_eq!(Masters::leadership(unavailable, br#"{"code":"no_leader","message":"m"}"#), Some(None));
        assert_eq!(Masters::leadership(unavailable, br#"{"code":"overloaded","message":"m"}"#), None);
        assert_eq!(Masters::leadership(reqwest::StatusCode::OK, named), None);
        assert_eq!(Masters::leadership(unavailable, b"not json"), None);
    }
}

//! The parameters of a sink subscription, as the master and the agents both read them.
//!
//! `GET /api/v1/jobs/{id}/sink` takes them (see docs/api.md); the master checks them before
//! asking any agent and passes the query string on unchanged; each agent reads them again to
//! serve its part. One parser, here, so that both agree. The query's text is checked by
//! `squilla_query` (which this crate does not depend on).

use std::time::Duration;

use serde::Deserialize;

/// Seconds between `ping` events unless the subscriber asks otherwise.
pub const DEFAULT_PING_SECS: u64 = 15;
/// The longest ping interval a subscriber may ask for, seconds (servers close connections
/// idle for longer than their idle timeout); a longer one is taken as this.
pub const MAX_PING_SECS: u64 = 60;
/// The longest `clientId`, characters.
pub const MAX_CLIENT_ID: usize = 128;

/// A subscription's parameters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::IntoParams))]
#[cfg_attr(feature = "openapi", into_params(parameter_in = Query))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SinkParams {
    /// Subscribers sharing one split the stream between them (1 to 128 characters).
    #[cfg_attr(feature = "openapi", param(min_length = 1, max_length = 128))]
    pub client_id: Option<String>,
    /// At most this many events per second for the subscriber's group.
    #[cfg_attr(feature = "openapi", param(minimum = 1, maximum = 4_294_967_295_u64))]
    pub sample: Option<u32>,
    /// A query (the SQL subset of docs/api.md, "Queries") the events are filtered and shaped
    /// by.
    pub query: Option<String>,
    /// Seconds between `ping` events (default 15; more than 60 is taken as 60, 0 as 1).
    #[cfg_attr(feature = "openapi", param(minimum = 0, maximum = 4_294_967_295_u64))]
    pub ping: Option<u32>,
}

/// Why a subscription's parameters were refused (400 `bad_request`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SinkParamsError {
    /// The query string does not parse (an unknown parameter, a value of the wrong type).
    #[error("query string: {0}")]
    Malformed(String),
    /// `sample=0`.
    #[error("sample: at least 1 event per second")]
    Sample,
    /// An empty or too long `clientId`.
    #[error("clientId: 1 to {MAX_CLIENT_ID} characters")]
    ClientId,
}

impl SinkParams {
    /// Reads and checks a URL query string (`None`: no parameters).
    pub fn parse(raw: Option<&str>) -> Result<Self, SinkParamsError> {
        let params: SinkParams =
            serde_urlencoded::from_str(raw.unwrap_or("")).map_err(|e| SinkParamsError::Malformed(e.to_string()))?;
        if params.sample == Some(0) {
            return Err(SinkParamsError::Sample);
        }
        if params.client_id.as_ref().is_some_and(|c| c.is_empty() || c.chars().count() > MAX_CLIENT_ID) {
            return Err(SinkParamsError::ClientId);
        }
        Ok(params)
    }

    /// How long the subscriber may go without hearing anything (`ping` seconds, 1 to
    /// [`MAX_PING_SECS`], default [`DEFAULT_PING_SECS`]).
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping.map_or(DEFAULT_PING_SECS, u64::from).clamp(1, MAX_PING_SECS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_read_and_checked_once() {
        let p = SinkParams::parse(Some("clientId=ops&sample=5&ping=600&query=SELECT%20*")).unwrap();
        assert_eq!(p.client_id.as_deref(), Some("ops"));
        assert_eq!((p.sample, p.query.as_deref()), (Some(5), Some("SELECT *")));
        assert_eq!(p.ping_interval(), Duration::from_secs(MAX_PING_SECS));
        assert_eq!(SinkParams::parse(None).unwrap().ping_interval(), Duration::from_secs(15));
        assert_eq!(SinkParams::parse(Some("sample=0")), Err(SinkParamsError::Sample));
        assert_eq!(SinkParams::parse(Some("clientId=")), Err(SinkParamsError::ClientId));
        assert!(matches!(SinkParams::parse(Some("nope=1")), Err(SinkParamsError::Malformed(_))));
        assert!(matches!(SinkParams::parse(Some("sample=many")), Err(SinkParamsError::Malformed(_))));
    }
}

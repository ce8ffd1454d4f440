//! What the Squilla master's and agents' HTTP servers share: the limits that keep one client
//! or tenant from taking a server from the others.
//!
//! - [`server`]: serving a router with connection limits (in all and per address), a header
//!   timeout and size cap, and an idle timeout.
//! - [`limits`]: request bodies read under a byte cap and a read timeout, after
//!   authentication and before the handler.
//! - [`auth`]: bearer tokens kept and compared as hashes, in constant time.
//! - [`rate`]: request rates per client or tenant (token buckets in a bounded table).
//! - [`budget`] and [`queue`]: memory held for streams, bounded in bytes per subscriber, per
//!   tenant and in total; a subscriber over its share loses data (and is told), a tenant or
//!   process over its share ends the stream that would pass it, with a named error.
//! - [`capability`]: short-lived signed grants to one job's sink or ingest on agents, for
//!   gateways and programs that talk to agents without the master in the path.
//! - [`tls`]: serving HTTPS from a certificate and key in PEM files.
//! - [`error`]: the JSON error body `{"code", "message"}` every server answers with.

pub mod access;
pub mod auth;
pub mod budget;
pub mod ca;
pub mod capability;
pub mod error;
pub mod extract;
pub mod limits;
pub mod masters;
pub mod queue;
pub mod rate;
pub mod server;
pub mod tls;

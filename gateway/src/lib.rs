//! The gateway: a job's sink and ingest served where the master is not in the data path.
//!
//! - [`relay`]: following a job's sink across its agents, frame by frame.
//! - [`fanout`]: one upstream per job and query string, shared by all its subscribers.
//! - [`respond`] and [`ws`]: a followed stream as server-sent events or a WebSocket.
//! - [`ingest`]: JSON events archived into batches and posted to the source's agent.
//! - [`apps`]: application streams: publishers (`squilla-publish`) and subscribers meet at the
//!   gateway, and jobs reading a stream get its events as ingest.
//! - [`server`]: the standalone gateway process (`squilla gateway`): it authenticates each
//!   request with the master (`GET /api/v1/jobs/{id}/endpoints`, which also says where the
//!   job runs and hands out a capability for its agents), serves sinks and ingest itself, and
//!   passes every other request through to the master.
//!
//! The master uses the same [`relay`], [`fanout`], [`respond`], [`ws`] and [`ingest`] for its
//! own `/sink` and `/ingest` (a gateway built in), so a request answers the same wherever it
//! is sent.

pub mod apps;
pub mod fanout;
pub mod ingest;
pub mod relay;
pub mod respond;
pub mod server;
pub mod ws;

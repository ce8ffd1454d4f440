//! The `squilla` binary's tests: real processes, real HTTP on loopback. One binary, a module
//! per area.

mod autoscale;
mod console;
mod dataport;
mod dev;
mod e2e;
mod gateway;
mod ha;
mod handoff;
mod isolation;
mod metrics;
mod observability;
mod partition;
mod publish;
mod queries;
mod run;
mod streams;
mod tls;
mod websocket;

#[path = "../support/cluster.rs"]
mod cluster;
pub use cluster::*;
#[path = "../support/etcd.rs"]
mod etcd;
#[path = "../support/netns.rs"]
mod netns;
#[path = "../support/webdriver.rs"]
mod webdriver;

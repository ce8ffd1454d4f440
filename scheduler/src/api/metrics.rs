//! `GET /metrics`: the master's view for Prometheus, in the text exposition format written
//! with the `prometheus-client` crate. It takes the agent token (an operator's credential: the
//! series name every tenant). A fresh registry per scrape, from the control plane's state:
//! jobs by tenant and state, agents, open subscriptions, and for every job that has not ended
//! each worker's last reported counters (from heartbeats; agents serve the same counters
//! first-hand at their own `/metrics`).

use axum::extract::State;
use axum::response::IntoResponse;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::AppState;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TenantState {
    tenant: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Tenant {
    tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AgentState {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    tenant: String,
    job: String,
    stage: String,
    worker: String,
    agent: String,
}

/// `GET /metrics`: the master's metrics for Prometheus.
#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "agent",
    security(("agent" = [])),
    responses((status = 200, description = "Jobs, workers, agents and subscriptions in the Prometheus text format (docs/observability.md).",
        content_type = "application/openmetrics-text", body = String)))]
pub async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let mut registry = Registry::with_prefix("squilla");
    let jobs = Family::<TenantState, Gauge>::default();
    registry.register("jobs", "Jobs by tenant and state (ended jobs included)", jobs.clone());
    for ((tenant, job_state), n) in state.control.job_counts() {
        jobs.get_or_create(&TenantState { tenant: tenant.to_string(), state: job_state })
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let agents = Family::<AgentState, Gauge>::default();
    registry.register("agents", "Agents known to the master, alive or lost", agents.clone());
    for (_, _, lost) in state.control.agents() {
        agents.get_or_create(&AgentState { state: if lost { "lost" } else { "alive" } }).inc();
    }
    let subscriptions = Family::<Tenant, Gauge>::default();
    registry.register("subscriptions", "Open sink subscriptions through the master, by tenant", subscriptions.clone());
    let open: Vec<(String, usize)> = state
        .subscriptions
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .map(|(t, n)| (t.to_string(), *n))
        .collect();
    for (tenant, n) in open {
        subscriptions.get_or_create(&Tenant { tenant }).set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    let family = |registry: &mut Registry, name: &str, help: &str| {
        let f = Family::<WorkerLabels, Counter>::default();
        registry.register(name, help, f.clone());
        f
    };
    let events_in =
        family(&mut registry, "reported_worker_events_in", "Events a worker received, as its agent last reported");
    let events_out =
        family(&mut registry, "reported_worker_events_out", "Events a worker emitted, as its agent last reported");
    let dropped = family(
        &mut registry,
        "reported_worker_dropped_batches",
        "Batches dropped on the way into a worker, as last reported",
    );
    let failed =
        family(&mut registry, "reported_worker_failed_calls", "Failed calls into a worker's stage, as last reported");
    for job in state.control.live_jobs() {
        for stage in &job.stages {
            for (index, w) in stage.workers.iter().enumerate() {
                let labels = WorkerLabels {
                    tenant: job.tenant.to_string(),
                    job: job.id.to_string(),
                    stage: stage.name.clone(),
                    worker: index.to_string(),
                    agent: w.agent.as_ref().map(ToString::to_string).unwrap_or_default(),
                };
                events_in.get_or_create(&labels).inc_by(w.events_in);
                events_out.get_or_create(&labels).inc_by(w.events_out);
                dropped.get_or_create(&labels).inc_by(w.dropped);
                failed.get_or_create(&labels).inc_by(w.failed_calls);
            }
        }
    }
    let mut text = String::new();
    // Writing to a `String` cannot fail.
    let _ = encode(&mut text, &registry);
    ([(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
}

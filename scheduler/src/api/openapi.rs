//! The API's OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and
//! the types' schemas, and served at `/api/v1/openapi.json`.
//!
//! Routes are registered with [`utoipa_axum::routes!`], which adds a handler to the router and
//! its operation to the document in one step: a route cannot exist undocumented, nor a
//! documented operation without a route. Answers that come from layers rather than from the
//! handler (the guards' 401 and 429, the body cap's 408, 413 and 503) are added here, by the
//! same code that adds the layer.

use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::path::Paths;
use utoipa::openapi::schema::{AdditionalProperties, KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, RefOr, Response, ResponseBuilder};
use utoipa::{Modify, OpenApi as _};

use super::error::ErrorBody;

/// The document's fixed parts: its description, security schemes and tags.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "Squilla master API",
        description = "Squilla's master: artifacts, job clusters, jobs, their output streams and agents (docs/api.md). \
            Every error answers `{\"code\", \"message\"}` with a stable code. Tenant routes take a tenant's bearer \
            token; `/api/v1/agent/*` takes the agent token."
    ),
    security(("bearer" = [])),
    components(schemas(ErrorBody)),
    modifiers(&SecuritySchemes),
    tags(
        (name = "artifacts", description = "Wasm components tenants upload."),
        (name = "clusters", description = "Job clusters: versioned job specs."),
        (name = "jobs", description = "Jobs: submit, inspect, scale, stream, ingest."),
        (name = "streams", description = "Application streams: published by applications, served by gateways."),
        (name = "agents", description = "The agents the master knows."),
        (name = "agent", description = "What agents call (agent token)."),
        (name = "meta", description = "Health and this document."),
    )
)]
pub(super) struct Doc;

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme("bearer", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)));
        let mut agent = Http::new(HttpAuthScheme::Bearer);
        agent.description = Some("The agent token configured on the master (not a tenant's token).".into());
        components.add_security_scheme("agent", SecurityScheme::Http(agent));
    }
}

/// The document's fixed parts.
pub(super) fn base() -> OpenApi {
    Doc::openapi()
}

/// An error answer: `description`, with the JSON error body.
fn error(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content("application/json", ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build())
        .build()
}

/// A 429, which says when to retry.
fn rate_limited(description: &str) -> Response {
    let mut response = error(description);
    let seconds = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(1));
    response.headers.insert(
        "Retry-After".into(),
        HeaderBuilder::new().schema(seconds).description(Some("Seconds until a retry may pass.")).build(),
    );
    response
}

/// Adds `response` under `status` to every operation of `paths`; where the handler already
/// documents that status, the descriptions are joined (the body is the same error body).
fn add(paths: &mut Paths, status: &str, response: impl Fn() -> Response) {
    for item in paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let new = response();
            match operation.responses.responses.get_mut(status) {
                Some(RefOr::T(old)) => {
                    old.description = format!("{} {}", old.description, new.description);
                    for (name, header) in new.headers {
                        old.headers.entry(name).or_insert(header);
                    }
                }
                Some(RefOr::Ref(_)) => {}
                None => {
                    operation.responses.responses.insert(status.to_owned(), RefOr::T(new));
                }
            }
        }
    }
}

/// What the tenant guard answers on every route it guards.
pub(super) fn tenant_guard(paths: &mut Paths) {
    add(paths, "401", || error("`unauthorized`: no or an unknown tenant token."));
    add(paths, "429", || rate_limited("`rate_limited`: over the client address's or the tenant's request rate."));
}

/// What the agent guard answers on every route it guards.
pub(super) fn agent_guard(paths: &mut Paths) {
    add(paths, "401", || error("`unauthorized`: no or a wrong agent token."));
    add(paths, "429", || rate_limited("`rate_limited`: a client address without the agent token over its rate."));
}

/// What reading a capped body answers, for a route whose cap answers `code` with 413.
pub(super) fn body_cap(paths: &mut Paths, code: &str) {
    add(paths, "400", || error("`bad_request`: the body could not be read."));
    add(paths, "408", || error("`body_timeout`: the body did not arrive in time."));
    add(paths, "413", || error(&format!("`{code}`: the body is larger than the route allows.")));
    add(paths, "503", || error("`busy`: too many bodies are being read at once; retry."));
}

/// What any operation may answer when the master itself fails (a store error): 500
/// `internal`, with the detail in the master's log.
pub(super) fn internal(paths: &mut Paths) {
    add(paths, "500", || error("`internal`: the master failed (the detail is in its log)."));
}

/// Marks every variant of the tagged enums `names` as closed: serde refuses unknown keys in
/// them (`deny_unknown_fields`), which utoipa does not carry over to enum variants.
pub(super) fn close_variants(openapi: &mut OpenApi, names: &[&str]) {
    let Some(components) = openapi.components.as_mut() else { return };
    for name in names {
        if let Some(RefOr::T(Schema::OneOf(one_of))) = components.schemas.get_mut(*name) {
            for item in &mut one_of.items {
                if let RefOr::T(Schema::Object(object)) = item {
                    object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                }
            }
        }
    }
}

/// A Wasm component's bytes, as a request or response body (`application/wasm`).
pub(super) struct Wasm;

impl utoipa::PartialSchema for Wasm {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Binary)))
            .content_media_type("application/wasm")
            .description(Some("A WebAssembly component's bytes."))
            .into()
    }
}

impl utoipa::ToSchema for Wasm {}

/// One server-sent event as a client parses it (`event`, `data`): the schema of each event of
/// a `text/event-stream` answer (OpenAPI 3.1 has no `itemSchema`; tools read `schema` so).
fn sse_event(names: &[&str], data: &str) -> RefOr<Schema> {
    let name = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(names.iter().copied()))
        .description(Some("The event's name (`message` when the frame names none)."));
    let data =
        ObjectBuilder::new().schema_type(Type::String).content_media_type("application/json").description(Some(data));
    ObjectBuilder::new().property("event", name).property("data", data).required("event").required("data").into()
}

/// An event of `GET /api/v1/jobs/{id}/status`.
pub(super) struct StatusEvent;

impl utoipa::PartialSchema for StatusEvent {
    fn schema() -> RefOr<Schema> {
        sse_event(&["status"], "The job, as `GET /api/v1/jobs/{id}` answers it.")
    }
}

impl utoipa::ToSchema for StatusEvent {}

/// An event of `GET /api/v1/jobs/{id}/metrics/stream`.
pub(super) struct MetricsEvent;

impl utoipa::PartialSchema for MetricsEvent {
    fn schema() -> RefOr<Schema> {
        sse_event(&["metrics"], "The job's metrics, as `GET /api/v1/jobs/{id}/metrics` answers them.")
    }
}

impl utoipa::ToSchema for MetricsEvent {}

/// An event of a followed worker log (`follow=true`).
pub(super) struct LogEvent;

impl utoipa::PartialSchema for LogEvent {
    fn schema() -> RefOr<Schema> {
        sse_event(&["log"], "One line of the worker's log (`LogLine`).")
    }
}

impl utoipa::ToSchema for LogEvent {}

/// An event of a sink subscription.
pub(super) struct SinkEvent;

impl utoipa::PartialSchema for SinkEvent {
    fn schema() -> RefOr<Schema> {
        sse_event(
            &["message", "meta", "ping", "error"],
            "`message`: an output event; `meta`: drops or the job's end; `ping`: `{}`; `error`: `{\"code\", \"message\"}`, the last event (docs/api.md).",
        )
    }
}

impl utoipa::ToSchema for SinkEvent {}

/// The `application/json` body of an ingest: an array of events, or one event.
pub(super) struct JsonEvents;

impl utoipa::PartialSchema for JsonEvents {
    fn schema() -> RefOr<Schema> {
        let event = || ObjectBuilder::new().schema_type(Type::Object);
        let array = utoipa::openapi::schema::ArrayBuilder::new().items(event());
        utoipa::openapi::schema::OneOfBuilder::new()
            .item(array)
            .item(event())
            .description(Some("An array of events, or one event; an event is a JSON object."))
            .into()
    }
}

impl utoipa::ToSchema for JsonEvents {}

/// Marks the request body of the operations at `path` as optional (an empty body is a valid request).
pub(super) fn optional_body(paths: &mut Paths, path: &str) {
    let Some(item) = paths.paths.get_mut(path) else { return };
    for operation in [&mut item.post, &mut item.put, &mut item.patch].into_iter().flatten() {
        if let Some(body) = operation.request_body.as_mut() {
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

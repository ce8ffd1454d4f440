//! An HTTP service (axum) that publishes one event for every request it serves to the
//! application stream `shop/requests`: `path`, `method`, `status` and `ms` (time to serve).
//! Nothing leaves the process until someone subscribes (docs/publish.md).
//!
//! `cargo run --release -p squilla-publish --example service` serves `127.0.0.1:8080` (or
//! `SERVICE_ADDR`), publishing through `SQUILLA_GATEWAY` (default `http://127.0.0.1:7070`, as
//! `squilla dev` serves) with `SQUILLA_TOKEN` (default: `squilla-data/dev.token`).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::Response;
use squilla_publish::{Config, Publisher, ValueRef};

async fn publish_each(State(publisher): State<Arc<Publisher>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (method, path) = (request.method().clone(), request.uri().path().to_owned());
    let response = next.run(request).await;
    publisher.publish(&[
        ("path", ValueRef::Text(&path)),
        ("method", ValueRef::Text(method.as_str())),
        ("status", ValueRef::Int(i64::from(response.status().as_u16()))),
        ("ms", ValueRef::Float(started.elapsed().as_secs_f64() * 1000.0)),
    ]);
    response
}

async fn page(uri: axum::http::Uri) -> (StatusCode, String) {
    match uri.path() {
        "/" | "/cart" | "/search" | "/checkout" => (StatusCode::OK, format!("served {}\n", uri.path())),
        _ => (StatusCode::NOT_FOUND, "no such page\n".into()),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let gateway = std::env::var("SQUILLA_GATEWAY").unwrap_or_else(|_| "http://127.0.0.1:7070".into());
    let token = match std::env::var("SQUILLA_TOKEN") {
        Ok(token) => token,
        Err(_) => std::fs::read_to_string("squilla-data/dev.token")
            .map_err(|e| {
                format!(
                    "cannot read squilla-data/dev.token ({e}): run from the directory `squilla dev` runs in, \
                     or set SQUILLA_TOKEN"
                )
            })?
            .trim()
            .to_owned(),
    };
    let publisher = Arc::new(Publisher::start(Config::new(gateway, "shop/requests").token(token))?);
    let app =
        axum::Router::new().fallback(page).layer(axum::middleware::from_fn_with_state(publisher.clone(), publish_each));
    let addr = std::env::var("SERVICE_ADDR").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("service: serving http://{addr}, publishing shop/requests");
    axum::serve(listener, app).await?;
    Ok(())
}

//! The HTTP endpoint: Prometheus metrics and the JSON API that `pcc-ctl status` and
//! `pcc-ctl flows` read. It owns the Prometheus registry (`metrics::Metrics`) and reads the
//! rest from `Shared` at request time.
//!
//! Served with axum (tokio's HTTP stack): a maintained server, so HTTP parsing is not ours
//! to get wrong.
pub mod api;
pub mod metrics;

use std::{net::SocketAddr, sync::Arc};

use anyhow::{Context as _, Result};
use axum::{Router, extract::State, http::header, response::IntoResponse, routing::get};

use crate::shared::Shared;

/// What the handlers see: the shared state and the endpoint's own registry.
pub struct Endpoint {
    pub shared: Arc<Shared>,
    metrics: metrics::Metrics,
}

async fn metrics_handler(State(endpoint): State<Arc<Endpoint>>) -> impl IntoResponse {
    match endpoint.metrics.render(&endpoint.shared) {
        Ok(body) => (
            axum::http::StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            body,
        ),
        Err(e) => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain")],
            format!("cannot read the dataplane: {e:#}\n"),
        ),
    }
}

/// Registers the metrics and binds the endpoint now (so a taken port is a start-up error);
/// returns the server task.
pub async fn bind(addr: SocketAddr, shared: Arc<Shared>) -> Result<impl Future<Output = ()>> {
    let metrics = metrics::Metrics::new(&shared.classifier)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for metrics"))?;
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/api/status", get(api::status_handler))
        .route("/api/flows", get(api::flows_handler))
        .with_state(Arc::new(Endpoint { shared, metrics }));
    Ok(async move {
        if let Err(e) = axum::serve(listener, app).await {
            log::error!("metrics server stopped: {e}");
        }
    })
}

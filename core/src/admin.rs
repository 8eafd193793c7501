//! The admin endpoints every service serves: `/metrics` (Prometheus text format),
//! `/healthz` (the process is alive) and `/readyz` (every dependency check passes; the body
//! says which one fails).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};

/// Named readiness checks, updated by the service's probes.
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Arc<RwLock<BTreeMap<&'static str, Result<(), String>>>>,
}

impl Readiness {
    /// Declare a check, failing until first set.
    pub fn register(&self, name: &'static str) {
        self.set(name, Err("not checked yet".into()));
    }

    pub fn set(&self, name: &'static str, state: Result<(), String>) {
        let mut checks = self.checks.write().unwrap_or_else(|e| e.into_inner());
        checks.insert(name, state);
    }

    /// The first failing check, if any.
    pub fn failing(&self) -> Option<(&'static str, String)> {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        checks
            .iter()
            .find_map(|(name, state)| state.as_ref().err().map(|e| (*name, e.clone())))
    }

    /// The first failing check among `names`, if any.
    pub fn failing_of(&self, names: &[&str]) -> Option<(&'static str, String)> {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        checks
            .iter()
            .filter(|(name, _)| names.contains(name))
            .find_map(|(name, state)| state.as_ref().err().map(|e| (*name, e.clone())))
    }

    pub fn is_ready(&self) -> bool {
        self.failing().is_none()
    }

    fn report(&self) -> serde_json::Value {
        let checks = self.checks.read().unwrap_or_else(|e| e.into_inner());
        let detail: serde_json::Map<String, serde_json::Value> = checks
            .iter()
            .map(|(name, state)| {
                let v = match state {
                    Ok(()) => serde_json::json!("ok"),
                    Err(e) => serde_json::json!(e),
                };
                ((*name).to_owned(), v)
            })
            .collect();
        serde_json::json!({ "ready": checks.values().all(Result::is_ok), "checks": detail })
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// The admin router, for merging or serving on its own listener.
pub fn router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { (StatusCode::OK, "ok") }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { registry, readiness })
}

async fn metrics(State(state): State<AdminState>) -> Response {
    let mut buf = Vec::new();
    match TextEncoder::new().encode(&state.registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], buf).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

async fn readyz(State(state): State<AdminState>) -> Response {
    let status = if state.readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(state.readiness.report())).into_response()
}

/// Serve the admin router on `addr` until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    registry: Registry,
    readiness: Readiness,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("admin.listen: cannot bind {addr}: {e}"))?;
    tracing::info!(%addr, "admin endpoints listening");
    axum::serve(listener, router(registry, readiness))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn failing_of_looks_only_at_the_named_checks() {
        let readiness = Readiness::default();
        readiness.set("kafka", Ok(()));
        readiness.set("shutdown", Err("shutting down".into()));
        assert_eq!(readiness.failing_of(&["kafka"]), None);
        assert!(!readiness.is_ready());
        readiness.set("kafka", Err("down".into()));
        assert_eq!(readiness.failing_of(&["kafka"]), Some(("kafka", "down".to_owned())));
    }
}

//! `nectar-ingest`: the HTTP front door of Nectar.
//!
//! Web forms (`POST /v1/forms/{form_id}`), app events (`POST /v1/events`) and vendor webhooks
//! (`POST /v1/webhooks/{source}`) become typed Avro records on the raw topics. The service is
//! thin: it authenticates, verifies signatures, validates, wraps and produces; it holds no
//! business logic.
//!
//! Guarantee: a 2xx answer means every record of the request was acknowledged by all in-sync
//! replicas (idempotent producer, `acks=all`). Any other answer means the caller must retry;
//! a retry carrying the same vendor id or `Idempotency-Key` yields the same event id, which
//! every downstream stage deduplicates on. Bad input is refused before anything is produced.

pub mod api;
pub mod app;
pub mod config;
pub mod error;
pub mod forms;
pub mod metrics;
pub mod signature;
pub mod webhooks;

use std::net::SocketAddr;
use std::time::Duration;

use nectar_core::admin::{self, Readiness};
use nectar_producer::NectarProducer;
use prometheus::Registry;

pub use app::{AppState, router};
pub use config::ServiceConfig;

/// Build the state the router serves: producer, metrics, readiness.
pub fn build(config: &ServiceConfig) -> anyhow::Result<(AppState, Registry)> {
    let registry = Registry::new();
    let metrics = metrics::IngestMetrics::new(&registry)?;
    let producer = NectarProducer::new(
        &config.kafka,
        &config.schema_registry,
        config.topics.clone(),
        "nectar-ingest",
    )?;
    let readiness = Readiness::default();
    // Not ready until the probes (`app::run_probes`) have seen Kafka and the registry: a
    // readiness check that exists only once the probe task has started would let /readyz
    // answer ready in between.
    readiness.register(app::KAFKA_CHECK);
    readiness.register(app::REGISTRY_CHECK);
    let state = AppState::new(config.ingest.clone(), producer, readiness, metrics);
    Ok((state, registry))
}

/// Report not ready and keep serving for `drain` (ended early by a second SIGTERM or Ctrl-C):
/// a load balancer takes a moment to see the readiness change or the pod's removal, and
/// connections it opens meanwhile would otherwise be refused or dropped unanswered.
async fn drain_before_stop(readiness: &Readiness, drain: Duration) {
    if drain.is_zero() {
        return;
    }
    readiness.set(app::SHUTDOWN_CHECK, Err("shutting down".into()));
    tracing::info!(
        drain_ms = drain.as_millis() as u64,
        "not ready; still answering requests before stopping"
    );
    tokio::select! {
        () = tokio::time::sleep(drain) => {}
        () = nectar_core::shutdown::signal() => tracing::info!("asked again: stopping now"),
    }
}

/// Run the service until `shutdown` completes: answer in-flight requests, then flush the
/// producer so nothing acknowledged to a client is left unsent.
pub async fn serve(
    config: ServiceConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (state, registry) = build(&config)?;
    let probes = tokio::spawn(app::run_probes(state.clone(), config.schema_registry.auto_register));

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let admin_task = tokio::spawn(admin::serve(
        config.admin.listen,
        registry,
        state.readiness.clone(),
        stopped(stop_rx.clone()),
    ));

    let listener = tokio::net::TcpListener::bind(config.ingest.listen)
        .await
        .map_err(|e| anyhow::anyhow!("ingest.listen: cannot bind {}: {e}", config.ingest.listen))?;
    tracing::info!(addr = %config.ingest.listen, "ingest API listening");
    let producer = state.producer.clone();
    let readiness = state.readiness.clone();
    let drain = Duration::from_millis(config.ingest.shutdown_drain_ms);
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            drain_before_stop(&readiness, drain).await;
            let _ = stop_tx.send(true);
        })
        .await?;

    probes.abort();
    tracing::info!("flushing the producer");
    if let Err(e) = producer.flush(Duration::from_secs(30)) {
        tracing::error!(error = %e, "records left unacknowledged at shutdown");
    }
    admin_task.await??;
    tracing::info!("stopped");
    Ok(())
}

//! The HTTP application: shared state, the router, and the helpers every route uses.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, request::Parts};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use nectar_core::admin::Readiness;
use nectar_producer::{NectarProducer, ProduceError};
use serde_json::json;
use tower_http::cors::{AllowOrigin, CorsLayer};

use crate::api::{self, ApiKeys};
use crate::config::IngestConfig;
use crate::error::AppError;
use crate::forms;
use crate::metrics::IngestMetrics;
use crate::webhooks::{self, Delivery, Outcome, WebhookProfile, WebhookSource};

pub const KAFKA_CHECK: &str = "kafka";
pub const REGISTRY_CHECK: &str = "schema_registry";
/// Failing from SIGTERM on: the load balancer should stop sending, but requests that still
/// arrive are served.
pub const SHUTDOWN_CHECK: &str = "shutdown";

/// Everything a request needs. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<IngestConfig>,
    pub producer: NectarProducer,
    pub readiness: Readiness,
    pub metrics: IngestMetrics,
    pub api_keys: Arc<ApiKeys>,
    webhooks: Arc<BTreeMap<String, (WebhookSource, WebhookProfile)>>,
    form_limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// `config` must have been validated (every webhook source has a profile).
    pub fn new(config: IngestConfig, producer: NectarProducer, readiness: Readiness, metrics: IngestMetrics) -> Self {
        let webhooks = config
            .webhooks
            .sources
            .iter()
            .filter_map(|(name, source)| Some((name.clone(), (source.clone(), source.profile(name)?))))
            .collect();
        let per_minute = NonZeroU32::new(config.forms.rate_limit_per_minute).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(config.forms.rate_limit_burst).unwrap_or(NonZeroU32::MIN);
        Self {
            api_keys: Arc::new(ApiKeys::from_config(&config.events.api_keys)),
            webhooks: Arc::new(webhooks),
            form_limiter: Arc::new(RateLimiter::keyed(Quota::per_minute(per_minute).allow_burst(burst))),
            config: Arc::new(config),
            producer,
            readiness,
            metrics,
        }
    }

    /// 503 at once when Kafka or the registry is known to be down, rather than after the
    /// producer's timeout. (Not while shutting down: requests still arriving are served.)
    pub fn ensure_ready(&self) -> Result<(), AppError> {
        match self.readiness.failing_of(&[KAFKA_CHECK, REGISTRY_CHECK]) {
            None => Ok(()),
            Some((check, reason)) => Err(AppError::unavailable(format!("{check} is unavailable: {reason}"))),
        }
    }

    pub fn check_form_rate(&self, ip: IpAddr) -> Result<(), AppError> {
        self.form_limiter.check_key(&ip).map_err(|not_until| {
            let wait = not_until.wait_time_from(governor::clock::Clock::now(&governor::clock::DefaultClock::default()));
            AppError::rate_limited(wait.as_secs().max(1))
        })
    }

    /// Await a send, recording its latency and, on success, the event count.
    pub async fn produce<T>(
        &self,
        route: &str,
        send: impl std::future::Future<Output = Result<T, ProduceError>>,
    ) -> Result<T, AppError> {
        let started = Instant::now();
        let result = send.await;
        self.metrics.produce_duration.observe(started.elapsed().as_secs_f64());
        match result {
            Ok(v) => {
                self.metrics.events.with_label_values(&[route]).inc();
                Ok(v)
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Forget idle rate-limit entries so the limiter's memory stays bounded.
    pub fn prune_rate_limits(&self) {
        self.form_limiter.retain_recent();
    }
}

/// The public API router. `/metrics`, `/healthz` and `/readyz` are on the admin listener.
pub fn router(state: AppState) -> Router {
    let cors = match state.config.forms.allowed_origins.as_slice() {
        [] => CorsLayer::new().allow_origin(AllowOrigin::any()),
        origins => CorsLayer::new().allow_origin(AllowOrigin::list(
            origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        )),
    }
    .allow_methods([Method::POST])
    .allow_headers([
        axum::http::header::CONTENT_TYPE,
        "idempotency-key".parse().expect("static header name"),
        "traceparent".parse().expect("static header name"),
    ])
    .max_age(Duration::from_secs(3600));

    Router::new()
        .route("/v1/forms/{form_id}", post(forms::submit).layer(cors))
        .route("/v1/events", post(api::ingest))
        .route("/v1/webhooks/{source}", post(webhook))
        .route_layer(middleware::from_fn_with_state(state.clone(), observe))
        .fallback(|| async { AppError::not_found("not_found", "no such route").into_response() })
        .with_state(state)
}

/// Metrics and the request timeout, per matched route.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let metrics = &state.metrics;
    metrics.in_flight.inc();
    let started = Instant::now();
    let timeout = Duration::from_millis(state.config.request_timeout_ms);
    let response = match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => AppError::unavailable("the request timed out waiting for Kafka").into_response(),
    };
    metrics.in_flight.dec();
    metrics
        .request_duration
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .with_label_values(&[route.as_str(), response.status().as_str()])
        .inc();
    response
}

/// `POST /v1/webhooks/{source}`.
async fn webhook(State(state): State<AppState>, Path(source): Path<String>, request: Request) -> Response {
    match accept_webhook(&state, &source, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn accept_webhook(state: &AppState, source: &str, request: Request) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let (config, profile) = state
        .webhooks
        .get(source)
        .ok_or_else(|| AppError::not_found("unknown_source", format!("webhook source `{source}` is not configured")))?;
    let body = read_body(body, &parts.headers, state.config.webhooks.max_body_bytes).await?;
    let url = public_url(&parts, state.config.public_base_url.as_deref());
    let workspace_id = config
        .workspace_id
        .as_deref()
        .unwrap_or(&state.config.default_workspace_id);
    let delivery = Delivery {
        source,
        workspace_id,
        method: parts.method.as_str(),
        url: &url,
        headers: &parts.headers,
        body: &body,
        now: SystemTime::now(),
    };
    match webhooks::process(config, profile, &delivery)? {
        Outcome::Challenge(challenge) => Ok((StatusCode::OK, Json(json!({ "challenge": challenge }))).into_response()),
        Outcome::Events(records) => {
            state.ensure_ready()?;
            let sends = records
                .iter()
                .map(|r| state.produce("webhooks", state.producer.send_webhook(r)));
            for result in futures::future::join_all(sends).await {
                result?;
            }
            let ids: Vec<&str> = records.iter().map(|r| r.envelope.event_id.as_str()).collect();
            Ok((StatusCode::OK, Json(json!({ "event_ids": ids }))).into_response())
        }
    }
}

/// The URL the vendor called: the configured public base URL, else `Host` and
/// `X-Forwarded-Proto` (default `http`), plus the path and query as received.
fn public_url(parts: &Parts, base: Option<&str>) -> String {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    match base {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let header = |n: &str| parts.headers.get(n).and_then(|v| v.to_str().ok());
            let scheme = header("x-forwarded-proto").unwrap_or("http");
            let host = header("host").unwrap_or("localhost");
            format!("{scheme}://{host}{path}")
        }
    }
}

/// The kinds of body the routes accept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentKind {
    Json,
    UrlEncoded,
}

pub fn content_kind(headers: &HeaderMap) -> Option<ContentKind> {
    let value = headers.get("content-type")?.to_str().ok()?;
    let mime = value.split(';').next()?.trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Some(ContentKind::Json),
        "application/x-www-form-urlencoded" => Some(ContentKind::UrlEncoded),
        m if m.starts_with("application/") && m.ends_with("+json") => Some(ContentKind::Json),
        _ => None,
    }
}

/// Read the whole body, refusing more than `limit` bytes with 413 (early when
/// `Content-Length` already says so).
pub async fn read_body(body: Body, headers: &HeaderMap, limit: usize) -> Result<bytes::Bytes, AppError> {
    let declared = headers
        .get("content-length")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(AppError::too_large(limit));
    }
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .any(|e| e.is::<http_body_util::LengthLimitError>());
        if too_large {
            AppError::too_large(limit)
        } else {
            AppError::bad_request("malformed_body", format!("could not read the body: {e}"))
        }
    })
}

/// The client's address: the peer, or the first `X-Forwarded-For` hop behind a trusted proxy.
pub fn client_ip(parts: &Parts, trust_forwarded_for: bool) -> Option<IpAddr> {
    if trust_forwarded_for
        && let Some(ip) = parts
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').next())
            .and_then(|v| v.trim().parse().ok())
    {
        return Some(ip);
    }
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip())
}

/// Keep the readiness checks current: Kafka metadata for the raw topics, and the registry
/// (registering the schemas once it answers, when auto-registration is on).
pub async fn run_probes(state: AppState, auto_register: bool) {
    let mut registered = !auto_register;
    let interval = Duration::from_millis(state.config.probe_interval_ms);
    let topics = state.producer.topics().clone();
    loop {
        let mut kafka = Ok(());
        for topic in [&topics.forms, &topics.webhooks, &topics.apps] {
            kafka = nectar_core::kafka::probe_topic(state.producer.kafka(), topic, Duration::from_secs(3)).await;
            if kafka.is_err() {
                break;
            }
        }
        if let Err(e) = &kafka {
            tracing::warn!(error = %e, "kafka not ready");
        }
        state.readiness.set(KAFKA_CHECK, kafka);

        let mut registry = state.producer.codec().probe().await;
        if registry.is_ok() && !registered {
            registry = state
                .producer
                .register_schemas()
                .await
                .map_err(|e| format!("registering schemas: {e}"));
            registered = registry.is_ok();
        }
        if let Err(e) = &registry {
            tracing::warn!(error = %e, "schema registry not ready");
        }
        state.readiness.set(REGISTRY_CHECK, registry);
        state.prune_rate_limits();
        tokio::time::sleep(interval).await;
    }
}

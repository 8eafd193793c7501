//! `POST /v1/events`: events from existing applications, one or a batch.
//!
//! Authenticated with a producer API key (`Authorization: Bearer <key>` or `X-Api-Key`); the
//! config holds only the key's SHA-256. A single event answers `202 {"event_id"}`. A batch
//! (a JSON array of at most `max_batch` events) answers per item: `202` when every item was
//! accepted, `207` with a result per item when some were not, and the common status when none
//! was. Invalid items never reach Kafka; valid items of the same batch do.
//!
//! The event id comes from the item's `idempotency_key`, else the `Idempotency-Key` header
//! (suffixed `#<index>` in a batch), else a new UUIDv7.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::join_all;
use nectar_core::events::{AppEvent, Consent};
use nectar_core::trace;
use nectar_producer::AppEventBuilder;
use serde::Deserialize;
use serde_json::{Value as Json_, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::app::{AppState, ContentKind, content_kind, read_body};
use crate::error::AppError;
use crate::forms::valid_email;

/// An authenticated producer.
#[derive(Debug, Clone)]
pub struct Producer {
    pub name: String,
    pub workspace_id: String,
}

/// Configured keys, decoded once at start.
#[derive(Debug, Clone)]
pub struct ApiKeys(Vec<([u8; 32], Producer)>);

impl ApiKeys {
    pub fn from_config(keys: &[crate::config::ApiKey]) -> Self {
        Self(
            keys.iter()
                .filter_map(|k| {
                    let mut hash = [0u8; 32];
                    hex::decode_to_slice(k.sha256.expose(), &mut hash).ok()?;
                    Some((
                        hash,
                        Producer {
                            name: k.name.clone(),
                            workspace_id: k.workspace_id.clone(),
                        },
                    ))
                })
                .collect(),
        )
    }

    /// Compare the presented key's hash with every configured hash in constant time.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Producer, AppError> {
        let presented = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                AppError::unauthorized(
                    "missing_api_key",
                    "send the producer API key as `Authorization: Bearer <key>` or `X-Api-Key`",
                )
            })?;
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        let mut found = None;
        for (known, producer) in &self.0 {
            if bool::from(known.ct_eq(&hash)) {
                found = Some(producer);
            }
        }
        found
            .cloned()
            .ok_or_else(|| AppError::forbidden("unknown_api_key", "the API key is not valid"))
    }
}

/// One event as an app sends it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct IncomingEvent {
    /// e.g. `trial.started`, `deal.won`.
    #[serde(rename = "type")]
    event_type: String,
    /// RFC 3339 text or milliseconds since the epoch.
    #[serde(default)]
    occurred_at: Option<Json_>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    anonymous_id: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    properties: Option<serde_json::Map<String, Json_>>,
    #[serde(default)]
    consent: Option<Consent>,
    #[serde(default)]
    idempotency_key: Option<String>,
}

pub async fn ingest(State(state): State<AppState>, request: Request) -> Response {
    match handle(&state, request).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn handle(state: &AppState, request: Request) -> Result<Response, AppError> {
    let (parts, body) = request.into_parts();
    let producer = state.api_keys.authenticate(&parts.headers)?;
    if content_kind(&parts.headers) != Some(ContentKind::Json) {
        return Err(AppError::unsupported_media_type(
            parts.headers.get("content-type").and_then(|v| v.to_str().ok()),
            "application/json",
        ));
    }
    let config = &state.config.events;
    let body = read_body(body, &parts.headers, config.max_body_bytes).await?;
    let value: Json_ = serde_json::from_slice(&body)
        .map_err(|e| AppError::bad_request("malformed_body", format!("body is not valid JSON: {e}")))?;
    let header_key = parts
        .headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| !k.is_empty());
    let traceparent = parts.headers.get(trace::TRACEPARENT).and_then(|v| v.to_str().ok());

    match value {
        Json_::Array(items) => {
            if items.is_empty() {
                return Err(AppError::bad_request("empty_batch", "the batch holds no events"));
            }
            if items.len() > config.max_batch {
                return Err(AppError::bad_request(
                    "batch_too_large",
                    format!(
                        "a batch may hold at most {} events; this one holds {}",
                        config.max_batch,
                        items.len()
                    ),
                ));
            }
            let built: Vec<Result<AppEvent, AppError>> = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| build(&producer, item, header_key.map(|k| format!("{k}#{i}")), traceparent))
                .collect();
            if built.iter().any(Result::is_ok) {
                state.ensure_ready()?;
            }
            let results = join_all(built.into_iter().map(|item| async move {
                let event = item?;
                state.produce("events", state.producer.send_app_event(&event)).await?;
                Ok::<_, AppError>(event.envelope.event_id)
            }))
            .await;
            Ok(batch_response(results))
        }
        item => {
            let event = build(&producer, item, header_key.map(str::to_owned), traceparent)?;
            state.ensure_ready()?;
            state.produce("events", state.producer.send_app_event(&event)).await?;
            Ok((
                StatusCode::ACCEPTED,
                Json(json!({ "event_id": event.envelope.event_id })),
            )
                .into_response())
        }
    }
}

fn batch_response(results: Vec<Result<String, AppError>>) -> Response {
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    let rejected = results.len() - accepted;
    let status = if rejected == 0 {
        StatusCode::ACCEPTED
    } else {
        let mut failures = results.iter().filter_map(|r| r.as_ref().err().map(|e| e.status));
        let first = failures.next().unwrap_or(StatusCode::BAD_REQUEST);
        if accepted == 0 && failures.all(|s| s == first) {
            first
        } else {
            StatusCode::MULTI_STATUS
        }
    };
    let items: Vec<Json_> = results
        .into_iter()
        .enumerate()
        .map(|(index, r)| match r {
            Ok(id) => json!({ "index": index, "status": 202, "event_id": id }),
            Err(e) => json!({ "index": index, "status": e.status.as_u16(), "error": e.body() }),
        })
        .collect();
    (
        status,
        Json(json!({ "accepted": accepted, "rejected": rejected, "results": items })),
    )
        .into_response()
}

fn build(
    producer: &Producer,
    item: Json_,
    idempotency_key: Option<String>,
    traceparent: Option<&str>,
) -> Result<AppEvent, AppError> {
    let item: IncomingEvent = serde_json::from_value(item)
        .map_err(|e| AppError::bad_request("invalid_event", format!("invalid event: {e}")))?;
    let event_type = item.event_type.trim();
    if event_type.is_empty() || event_type.len() > 128 {
        return Err(AppError::bad_request(
            "invalid_event",
            "field `type` must be 1 to 128 characters",
        ));
    }
    let mut builder = AppEventBuilder::new(&producer.workspace_id, &producer.name, event_type);
    if let Some(key) = item.idempotency_key.or(idempotency_key) {
        builder = builder.idempotency_key(key);
    }
    if let Some(at) = item.occurred_at {
        builder = builder.occurred_at(parse_time(&at)?);
    }
    if let Some(email) = item.email.map(|e| e.trim().to_owned()).filter(|e| !e.is_empty()) {
        if !valid_email(&email) {
            return Err(AppError::bad_request(
                "invalid_email",
                format!("field `email`: `{email}` is not a valid e-mail address"),
            ));
        }
        builder = builder.email(email);
    }
    if let Some(id) = item.user_id.filter(|v| !v.is_empty()) {
        builder = builder.user_id(id);
    }
    if let Some(id) = item.anonymous_id.filter(|v| !v.is_empty()) {
        builder = builder.anonymous_id(id);
    }
    if let Some(consent) = item.consent {
        builder = builder.consent(consent);
    }
    if let Some(tp) = traceparent {
        builder = builder.trace_parent(tp);
    }
    Ok(builder.properties(item.properties.unwrap_or_default()).build())
}

fn parse_time(value: &Json_) -> Result<i64, AppError> {
    let invalid = || {
        AppError::bad_request(
            "invalid_event",
            "field `occurred_at` must be RFC 3339 text or milliseconds since the epoch",
        )
    };
    match value {
        Json_::Number(n) => n.as_i64().filter(|ms| *ms >= 0).ok_or_else(invalid),
        Json_::String(s) => humantime::parse_rfc3339_weak(s)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .and_then(|d| i64::try_from(d.as_millis()).ok())
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn occurred_at_accepts_rfc3339_and_millis() {
        assert_eq!(parse_time(&json!(1_700_000_000_000_i64)).ok(), Some(1_700_000_000_000));
        assert_eq!(parse_time(&json!("2023-11-14T22:13:20Z")).ok(), Some(1_700_000_000_000));
        assert!(parse_time(&json!("yesterday")).is_err());
        assert!(parse_time(&json!(-5)).is_err());
    }

    #[test]
    fn api_key_lookup_distinguishes_missing_from_unknown() {
        let keys = ApiKeys(vec![(
            Sha256::digest(b"k-123").into(),
            Producer {
                name: "crm".into(),
                workspace_id: "acme".into(),
            },
        )]);
        let mut headers = HeaderMap::new();
        assert_eq!(
            keys.authenticate(&headers).err().map(|e| e.status),
            Some(StatusCode::UNAUTHORIZED)
        );
        headers.insert("authorization", "Bearer nope".parse().expect("header"));
        assert_eq!(
            keys.authenticate(&headers).err().map(|e| e.status),
            Some(StatusCode::FORBIDDEN)
        );
        headers.insert("authorization", "Bearer k-123".parse().expect("header"));
        assert_eq!(keys.authenticate(&headers).map(|p| p.name).ok().as_deref(), Some("crm"));
    }
}

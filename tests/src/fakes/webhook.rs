//! A receiver of signed webhooks following the Standard Webhooks convention, checked as the
//! specification says a consumer verifies a delivery.
//!
//! Sources: <https://www.standardwebhooks.com/> and the specification
//! <https://github.com/standard-webhooks/standard-webhooks/blob/main/spec/standard-webhooks.md>
//! (version 1.0.0):
//! - Headers `webhook-id`, `webhook-timestamp` (integer Unix seconds) and `webhook-signature`, a
//!   space-delimited list of `<version>,<base64 signature>`; symmetric signatures are `v1`
//!   (`v1a` is the asymmetric ed25519 scheme, which this receiver does not trust).
//! - Signed content: `{msg_id}.{timestamp}.{payload}` over the exact raw body, HMAC-SHA256 with
//!   the secret, which is serialised as `whsec_` + base64 of the key bytes (24 to 64 bytes);
//!   the HMAC key is the base64-decoded part. Signatures are compared in constant time; one
//!   matching signature in the list suffices (secret rotation).
//! - The timestamp must be within a tolerance of now; the reference libraries (and this fake) use
//!   5 minutes either way. The id and timestamp must not contain `.`.
//! - The id stays the same across retries and is the consumer's idempotency key: the receiver
//!   answers 2xx to a repeated id ([`FakeWebhookReceiver::deliveries`] keeps every delivery,
//!   [`VendorFake::stored`] one per id, the first).
//! - A delivery succeeds on any 2xx; the specification names 429 (throttle) and a `Retry-After`
//!   header as signals a sender honours, and 410 as "stop sending".
//!
//! The specification defines no receiver error bodies; this receiver's are its own: 400 for a
//! missing or malformed header, 401 `{"error": ...}` for a stale timestamp or a signature that
//! does not match. Injections: outage 500; throttle 429 with `Retry-After`; `refuse` 422 (the
//! receiver rejects the payload); `fail_once` 503 with `Retry-After: 1`.
//!
//! Test vector: the specification's example signature gives no key, so the unit test uses the
//! reference Rust library's vector (`libraries/rust/src/lib.rs`, `test_sign`).

use std::sync::{Arc, Mutex};

use aws_lc_rs::hmac;
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

/// The endpoint's signing secret (`whsec_` + base64 of 33 key bytes).
pub const SECRET: &str = "whsec_bmVjdGFyLWZha2Utc3RhbmRhcmQtd2ViaG9va3MtMzJi";
/// The path the receiver listens on.
pub const PATH: &str = "/hooks/nectar";
/// Allowed clock difference, either way.
pub const TOLERANCE_SECS: i64 = 5 * 60;

/// One accepted delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub id: String,
    pub timestamp: i64,
    pub body: Bytes,
    /// The body as JSON (a JSON string holding the text if the body is not JSON).
    pub json: Value,
}

/// A running Standard Webhooks receiver.
#[derive(Debug, Clone)]
pub struct FakeWebhookReceiver {
    pub server: FakeServer,
    script: Script,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
}

/// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>` for a `whsec_` secret.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret_key(secret).expect("whsec_ secret"));
    let tag = hmac::sign(&key, &signed_content(id, timestamp, body));
    format!("v1,{}", STANDARD.encode(tag.as_ref()))
}

fn secret_key(secret: &str) -> Option<Vec<u8>> {
    STANDARD.decode(secret.strip_prefix("whsec_")?).ok()
}

fn signed_content(id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    content
}

impl FakeWebhookReceiver {
    pub async fn start() -> Self {
        let script = Script::new();
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let state = (script.clone(), deliveries.clone());
        let router = Router::new().route(PATH, post(receive)).with_state(state);
        let contract = Contract {
            is_write: harness::non_get_writes,
            server_error: || (StatusCode::INTERNAL_SERVER_ERROR, "receiver failed").into_response(),
            throttled: |_, secs| {
                let mut r = (StatusCode::TOO_MANY_REQUESTS, "slow down").into_response();
                r.headers_mut().insert(header::RETRY_AFTER, secs.into());
                r
            },
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self {
            server,
            script,
            deliveries,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.server.base
    }

    /// The URL a sender delivers to.
    pub fn webhook_url(&self) -> String {
        format!("{}{PATH}", self.server.base)
    }

    /// Every accepted delivery, repeated ids included, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.lock().expect("deliveries").clone()
    }

    /// How many accepted deliveries carried `id`.
    pub fn count(&self, id: &str) -> usize {
        self.deliveries().iter().filter(|d| d.id == id).count()
    }
}

impl VendorFake for FakeWebhookReceiver {
    fn script(&self) -> &Script {
        &self.script
    }

    /// One entry per webhook id (the first delivery): `{"webhook_id", "timestamp", "payload"}`.
    fn stored(&self) -> Vec<Value> {
        let mut seen = std::collections::HashSet::new();
        self.deliveries()
            .into_iter()
            .filter(|d| seen.insert(d.id.clone()))
            .map(|d| json!({"webhook_id": d.id, "timestamp": d.timestamp, "payload": d.json}))
            .collect()
    }
}

fn refuse(status: StatusCode, error: &str) -> Response {
    harness::json(status, &json!({ "error": error }))
}

/// The verified `(id, timestamp)` of a delivery, or the receiver's refusal.
#[allow(clippy::result_large_err)] // the refusal is the vendor's whole answer
fn verify(headers: &HeaderMap, body: &[u8], now: i64) -> Result<(String, i64), Response> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| refuse(StatusCode::BAD_REQUEST, &format!("missing header {name}")))
    };
    let (id, timestamp, signatures) = (get("webhook-id")?, get("webhook-timestamp")?, get("webhook-signature")?);
    if id.is_empty() || id.contains('.') {
        return Err(refuse(StatusCode::BAD_REQUEST, "invalid webhook-id"));
    }
    let Ok(ts) = timestamp.parse::<i64>() else {
        return Err(refuse(StatusCode::BAD_REQUEST, "invalid webhook-timestamp"));
    };
    if now - ts > TOLERANCE_SECS {
        return Err(refuse(StatusCode::UNAUTHORIZED, "message timestamp too old"));
    }
    if ts - now > TOLERANCE_SECS {
        return Err(refuse(StatusCode::UNAUTHORIZED, "message timestamp too new"));
    }
    let key = hmac::Key::new(hmac::HMAC_SHA256, &secret_key(SECRET).expect("secret"));
    let content = signed_content(id, ts, body);
    let valid = signatures
        .split(' ')
        .filter_map(|s| s.split_once(','))
        .filter(|(version, _)| *version == "v1")
        .filter_map(|(_, sig)| STANDARD.decode(sig).ok())
        .any(|sig| hmac::verify(&key, &content, &sig).is_ok());
    if !valid {
        return Err(refuse(StatusCode::UNAUTHORIZED, "no matching signature found"));
    }
    Ok((id.to_owned(), ts))
}

type Shared = (Script, Arc<Mutex<Vec<Delivery>>>);

async fn receive(
    axum::extract::State((script, deliveries)): axum::extract::State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (id, timestamp) = match verify(&headers, &body, harness::now_secs()) {
        Ok(v) => v,
        Err(r) => return r,
    };
    match script.verdict(&String::from_utf8_lossy(&body)) {
        Verdict::Refuse => return refuse(StatusCode::UNPROCESSABLE_ENTITY, "payload refused"),
        Verdict::FailOnce => {
            let mut r = refuse(StatusCode::SERVICE_UNAVAILABLE, "try again");
            r.headers_mut().insert(header::RETRY_AFTER, 1.into());
            return r;
        }
        Verdict::Accept => {}
    }
    let json = serde_json::from_slice(&body).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&body).into()));
    deliveries.lock().expect("deliveries").push(Delivery {
        id,
        timestamp,
        body,
        json,
    });
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_the_reference_librarys_vector() {
        assert_eq!(
            sign(
                "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD",
                "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
                1_649_367_553,
                br#"{"email":"test@example.com","username":"test_user"}"#,
            ),
            "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw="
        );
    }

    async fn deliver(url: &str, id: &str, ts: i64, signature: &str, body: &str) -> reqwest::Response {
        reqwest::Client::new()
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.to_owned())
            .send()
            .await
            .expect("send")
    }

    #[tokio::test]
    async fn verifies_stores_and_dedups_by_id() {
        let fake = FakeWebhookReceiver::start().await;
        let (url, now, body) = (fake.webhook_url(), harness::now_secs(), r#"{"type":"lead.captured"}"#);
        let good = sign(SECRET, "msg_1", now, body.as_bytes());
        // Rotation: an old signature first, the current one second.
        let both = format!("v1,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= {good}");
        assert_eq!(deliver(&url, "msg_1", now, &both, body).await.status(), 204);
        assert_eq!(deliver(&url, "msg_1", now, &good, body).await.status(), 204);
        assert_eq!(fake.count("msg_1"), 2);
        assert_eq!(
            fake.stored(),
            vec![json!({"webhook_id": "msg_1", "timestamp": now,
                                               "payload": {"type": "lead.captured"}})]
        );

        let tampered = deliver(&url, "msg_2", now, &good, body).await;
        assert_eq!(tampered.status(), 401);
        let stale = sign(SECRET, "msg_3", now - 301, body.as_bytes());
        assert_eq!(deliver(&url, "msg_3", now - 301, &stale, body).await.status(), 401);
        assert_eq!(fake.deliveries().len(), 2);
    }

    #[tokio::test]
    async fn throttles_with_retry_after() {
        let fake = FakeWebhookReceiver::start().await;
        fake.script().throttle_next(1, 7);
        let now = harness::now_secs();
        let sig = sign(SECRET, "msg_9", now, b"{}");
        let r = deliver(&fake.webhook_url(), "msg_9", now, &sig, "{}").await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        assert!(fake.stored().is_empty());
    }
}

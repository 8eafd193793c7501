//! Inbound vendor webhooks, declared as data.
//!
//! A vendor is a [`WebhookProfile`]: how it signs ([`SignatureSpec`]), where its delivery id and
//! event type live (a header or a JSON pointer), whether one delivery carries an array of
//! events, and whether it performs Slack's URL-verification handshake. The built-in presets
//! below are the only vendor-specific code; a new vendor is a new preset, or a table in the
//! config file with no code at all:
//!
//! ```toml
//! [ingest.webhooks.sources.acme]
//! vendor = "generic"                      # start from the generic HMAC-SHA256 scheme
//! secrets = ["..."]
//! event_id = [{ header = "X-Acme-Delivery" }]
//! event_type = [{ json = "/kind" }]
//! ```

use std::time::SystemTime;

use axum::http::HeaderMap;
use nectar_core::Sensitive;
use nectar_core::events::{Envelope, WebhookReceived, now_millis};
use nectar_core::{ids, trace};
use serde::Deserialize;
use serde_json::Value as Json;

use crate::error::AppError;
use crate::signature::{SignatureError, SignatureSpec, SignedRequest};

/// Where a value comes from in a delivery.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum ValueSource {
    /// A request header.
    Header(String),
    /// A JSON pointer (RFC 6901) into the body, e.g. `/data/object/id`.
    Json(String),
    /// Several values joined with `:`, present only when every part is (for vendors whose
    /// ids are unique only together, like HubSpot's portal, subscription and event ids).
    All(Vec<ValueSource>),
}

/// A configured webhook source (`[ingest.webhooks.sources.<name>]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookSource {
    /// Built-in preset: `stripe`, `shopify`, `hubspot`, `slack` or `generic`. Defaults to the
    /// source's name when that is a preset (so `[...sources.stripe]` needs only its secret).
    #[serde(default)]
    pub vendor: Option<String>,
    /// Signing secrets. Several are accepted at once while a secret is being rotated.
    #[serde(default)]
    pub secrets: Vec<Sensitive<String>>,
    /// Accept deliveries without checking a signature (recorded with `verified = false`).
    /// Only for sources that cannot sign.
    #[serde(default)]
    pub allow_unsigned: bool,
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// Overrides of the preset.
    #[serde(default)]
    pub signature: Option<SignatureSpec>,
    #[serde(default)]
    pub event_id: Option<Vec<ValueSource>>,
    #[serde(default)]
    pub event_type: Option<Vec<ValueSource>>,
    #[serde(default)]
    pub split_array: Option<bool>,
    #[serde(default)]
    pub url_verification: Option<bool>,
    /// The vendor sends JSON: a body that does not parse is refused (400 `malformed_body`).
    #[serde(default)]
    pub json_body: Option<bool>,
    /// Most events one array delivery may hold (`split_array`); more is refused (400).
    #[serde(default)]
    pub max_events_per_delivery: Option<usize>,
}

/// What a vendor's deliveries look like.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookProfile {
    pub signature: SignatureSpec,
    /// Tried in order; the first present value is the vendor's delivery/event id.
    pub event_id: Vec<ValueSource>,
    pub event_type: Vec<ValueSource>,
    /// The body is a JSON array of events (HubSpot): one record per element.
    pub split_array: bool,
    /// Answer Slack's `{"type":"url_verification","challenge":...}` handshake.
    pub url_verification: bool,
    /// The vendor documents JSON deliveries: a body that is not a JSON object (an array of
    /// objects with `split_array`) cannot be one of its deliveries and is refused. Profiles
    /// that read ids or types from JSON pointers need JSON whatever this says.
    pub json_body: bool,
    /// Also accepts `application/x-www-form-urlencoded` bodies as they are (Slack's slash
    /// commands and interactivity payloads are form-encoded; its Events API is JSON).
    pub form_bodies: bool,
    /// Most events one `split_array` delivery may hold.
    pub max_events_per_delivery: usize,
}

fn json(pointer: &str) -> ValueSource {
    ValueSource::Json(pointer.into())
}
fn header(name: &str) -> ValueSource {
    ValueSource::Header(name.into())
}

/// The built-in vendor presets. See `WEBHOOKS.md` for each vendor's documented scheme.
pub fn preset(vendor: &str) -> Option<WebhookProfile> {
    let profile = match vendor {
        "stripe" => WebhookProfile {
            signature: SignatureSpec::stripe(),
            event_id: vec![json("/id")],
            event_type: vec![json("/type")],
            split_array: false,
            url_verification: false,
            json_body: true,
            form_bodies: false,
            max_events_per_delivery: 1,
        },
        "shopify" => WebhookProfile {
            signature: SignatureSpec::shopify(),
            event_id: vec![header("X-Shopify-Webhook-Id"), header("X-Shopify-Event-Id")],
            event_type: vec![header("X-Shopify-Topic")],
            split_array: false,
            url_verification: false,
            // Webhook subscriptions can be XML, but every topic Nectar maps is set up as JSON.
            json_body: true,
            form_bodies: false,
            max_events_per_delivery: 1,
        },
        "hubspot" => WebhookProfile {
            signature: SignatureSpec::hubspot_v3(),
            // HubSpot documents `eventId` as not guaranteed unique on its own.
            event_id: vec![ValueSource::All(vec![
                json("/portalId"),
                json("/subscriptionId"),
                json("/eventId"),
            ])],
            event_type: vec![json("/subscriptionType")],
            split_array: true,
            url_verification: false,
            json_body: true,
            form_bodies: false,
            // HubSpot sends up to 100 events in one request.
            max_events_per_delivery: 100,
        },
        "slack" => WebhookProfile {
            signature: SignatureSpec::slack_v0(),
            event_id: vec![json("/event_id")],
            event_type: vec![json("/event/type"), json("/type")],
            split_array: false,
            url_verification: true,
            json_body: true,
            form_bodies: true,
            max_events_per_delivery: 1,
        },
        "generic" => WebhookProfile {
            signature: SignatureSpec::generic_hmac_sha256(),
            event_id: vec![header("X-Nectar-Delivery"), json("/id")],
            event_type: vec![header("X-Nectar-Event"), json("/type")],
            split_array: false,
            url_verification: false,
            json_body: false,
            form_bodies: false,
            max_events_per_delivery: 100,
        },
        _ => return None,
    };
    Some(profile)
}

pub const PRESETS: &[&str] = &["stripe", "shopify", "hubspot", "slack", "generic"];

impl WebhookSource {
    fn vendor_name<'a>(&'a self, name: &'a str) -> Option<&'a str> {
        match &self.vendor {
            Some(v) => Some(v.as_str()),
            None if PRESETS.contains(&name) => Some(name),
            None => None,
        }
    }

    /// The preset with this source's overrides applied.
    pub fn profile(&self, name: &str) -> Option<WebhookProfile> {
        let mut profile = match self.vendor_name(name) {
            Some(v) => preset(v)?,
            None => WebhookProfile {
                signature: self.signature.clone()?,
                event_id: Vec::new(),
                event_type: Vec::new(),
                split_array: false,
                url_verification: false,
                json_body: false,
                form_bodies: false,
                max_events_per_delivery: 100,
            },
        };
        if let Some(sig) = &self.signature {
            profile.signature = sig.clone();
        }
        if let Some(v) = &self.event_id {
            profile.event_id = v.clone();
        }
        if let Some(v) = &self.event_type {
            profile.event_type = v.clone();
        }
        if let Some(v) = self.split_array {
            profile.split_array = v;
        }
        if let Some(v) = self.url_verification {
            profile.url_verification = v;
        }
        if let Some(v) = self.json_body {
            profile.json_body = v;
        }
        if let Some(v) = self.max_events_per_delivery {
            profile.max_events_per_delivery = v;
        }
        Some(profile)
    }

    pub fn validate(&self, key: &str, name: &str, errors: &mut Vec<String>) {
        if let Some(vendor) = &self.vendor
            && !PRESETS.contains(&vendor.as_str())
        {
            errors.push(format!("{key}.vendor: `{vendor}` is not one of {}", PRESETS.join(", ")));
            return;
        }
        match self.profile(name) {
            None => errors.push(format!(
                "{key}: `{name}` is not a built-in vendor ({}); set `vendor` or a `signature` table",
                PRESETS.join(", ")
            )),
            Some(profile) => {
                if let Err(e) = profile.signature.validate() {
                    errors.push(format!("{key}.signature: {e}"));
                }
            }
        }
        if self.max_events_per_delivery == Some(0) {
            errors.push(format!("{key}.max_events_per_delivery: must be at least 1"));
        }
        if self.secrets.is_empty() && !self.allow_unsigned {
            errors.push(format!(
                "{key}.secrets: at least one signing secret is required (or set allow_unsigned = true)"
            ));
        }
        if self.secrets.iter().any(|s| s.expose().is_empty()) {
            errors.push(format!("{key}.secrets: a secret must not be empty"));
        }
    }
}

/// What a delivery turned into.
#[derive(Debug)]
pub enum Outcome {
    /// Slack's URL verification: answer with this challenge, produce nothing.
    Challenge(String),
    /// Records to produce.
    Events(Vec<WebhookReceived>),
}

/// The parts of a request a delivery is checked and recorded from.
#[derive(Debug)]
pub struct Delivery<'a> {
    pub source: &'a str,
    pub workspace_id: &'a str,
    pub method: &'a str,
    /// The full URL as the vendor called it.
    pub url: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
    pub now: SystemTime,
}

/// Verify a delivery and turn it into records. Pure: no I/O.
pub fn process(config: &WebhookSource, profile: &WebhookProfile, d: &Delivery<'_>) -> Result<Outcome, AppError> {
    let verified = if config.secrets.is_empty() {
        false
    } else {
        let secrets: Vec<&[u8]> = config.secrets.iter().map(|s| s.expose().as_bytes()).collect();
        let request = SignedRequest {
            method: d.method,
            url: d.url,
            headers: d.headers,
            body: d.body,
        };
        profile
            .signature
            .verify(&request, &secrets, d.now)
            .map_err(signature_error)?;
        true
    };

    let parsed = parse_body(profile, d)?;

    if profile.url_verification
        && let Some(body) = &parsed
        && body.get("type").and_then(Json::as_str) == Some("url_verification")
    {
        let challenge = body
            .get("challenge")
            .and_then(Json::as_str)
            .ok_or_else(|| AppError::bad_request("malformed_body", "url_verification without a challenge"))?;
        return Ok(Outcome::Challenge(challenge.to_owned()));
    }

    let items: Vec<(Option<&Json>, Vec<u8>)> = match (&parsed, profile.split_array) {
        (Some(Json::Array(items)), true) => {
            if items.is_empty() {
                return Err(AppError::bad_request(
                    "malformed_body",
                    "the delivery holds no events (empty array)",
                ));
            }
            if items.len() > profile.max_events_per_delivery {
                return Err(AppError::bad_request(
                    "too_many_events",
                    format!(
                        "the delivery holds {} events; this source sends at most {} (max_events_per_delivery)",
                        items.len(),
                        profile.max_events_per_delivery
                    ),
                ));
            }
            if let Some(index) = items.iter().position(|item| !item.is_object()) {
                return Err(AppError::bad_request(
                    "malformed_body",
                    format!("event [{index}] of the delivery is not a JSON object"),
                ));
            }
            items
                .iter()
                .map(|item| (Some(item), item.to_string().into_bytes()))
                .collect()
        }
        (Some(_), true) => {
            return Err(AppError::bad_request(
                "malformed_body",
                "expected a JSON array of events",
            ));
        }
        (parsed, false) => vec![(parsed.as_ref(), d.body.to_vec())],
        (None, true) => unreachable!("split_array bodies are parsed or rejected above"),
    };

    let received_at = now_millis();
    let content_type = d
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let kept_headers: std::collections::HashMap<String, String> = d
        .headers
        .iter()
        .filter(|(name, _)| nectar_producer::keep_header(name.as_str()))
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), value.to_str().ok()?.to_owned())))
        .collect();
    let idempotency_key = d.headers.get("idempotency-key").and_then(|v| v.to_str().ok());
    let trace_parent = trace::child_or_new(d.headers.get(trace::TRACEPARENT).and_then(|v| v.to_str().ok()));
    let source = format!("webhook:{}", d.source);
    let many = items.len() > 1;

    let records = items
        .into_iter()
        .enumerate()
        .map(|(index, (json, body))| {
            let vendor_event_id = extract(&profile.event_id, d.headers, json);
            let vendor_event_type = extract(&profile.event_type, d.headers, json);
            let event_id = match (&vendor_event_id, idempotency_key) {
                (Some(id), _) => ids::derived_event_id(d.workspace_id, &source, id),
                (None, Some(key)) if many => ids::derived_event_id(d.workspace_id, &source, &format!("{key}#{index}")),
                (None, Some(key)) => ids::derived_event_id(d.workspace_id, &source, key),
                (None, None) => ids::new_event_id(),
            };
            WebhookReceived {
                envelope: Envelope {
                    event_id,
                    event_type: "webhook.received".into(),
                    occurred_at: received_at,
                    received_at,
                    source: source.clone(),
                    workspace_id: d.workspace_id.to_owned(),
                    lead_key: None,
                    trace_parent: Some(trace_parent.clone()),
                    consent: None,
                },
                vendor: d.source.to_owned(),
                vendor_event_type,
                vendor_event_id,
                verified,
                content_type: content_type.clone(),
                body,
                headers: kept_headers.clone(),
            }
        })
        .collect();
    Ok(Outcome::Events(records))
}

/// The body as JSON, where the profile needs it: after the signature check, so an unsigned
/// request is told 401 whatever its body, and a signed one that no vendor could have sent
/// (truncated, not JSON, not an object) is told 400 `malformed_body` and produces nothing.
fn parse_body(profile: &WebhookProfile, d: &Delivery<'_>) -> Result<Option<Json>, AppError> {
    let reads_json = profile
        .event_id
        .iter()
        .chain(&profile.event_type)
        .any(ValueSource::reads_json);
    let needs_json = profile.json_body || profile.split_array || profile.url_verification || reads_json;
    if !needs_json {
        return Ok(None);
    }
    let form_encoded = d
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim_start().starts_with("application/x-www-form-urlencoded"));
    if profile.form_bodies && form_encoded {
        // A Slack slash command or interaction: its ids come from headers or the
        // Idempotency-Key.
        return Ok(None);
    }
    let parsed: Json = serde_json::from_slice(d.body)
        .map_err(|e| AppError::bad_request("malformed_body", format!("body is not valid JSON: {e}")))?;
    if profile.json_body && !profile.split_array && !parsed.is_object() {
        return Err(AppError::bad_request(
            "malformed_body",
            "expected a JSON object (one event)",
        ));
    }
    Ok(Some(parsed))
}

fn signature_error(e: SignatureError) -> AppError {
    let code = match &e {
        SignatureError::MissingHeader(_) => "missing_signature",
        SignatureError::Malformed { .. } => "malformed_signature",
        SignatureError::StaleTimestamp { .. } => "stale_timestamp",
        SignatureError::Mismatch => "invalid_signature",
    };
    AppError::unauthorized(code, e.to_string())
}

impl ValueSource {
    fn reads_json(&self) -> bool {
        match self {
            Self::Header(_) => false,
            Self::Json(_) => true,
            Self::All(parts) => parts.iter().any(Self::reads_json),
        }
    }
}

/// The first source that yields a non-empty value. Numbers (HubSpot's `eventId`) become text.
fn extract(sources: &[ValueSource], headers: &HeaderMap, body: Option<&Json>) -> Option<String> {
    sources.iter().find_map(|source| value(source, headers, body))
}

fn value(source: &ValueSource, headers: &HeaderMap, body: Option<&Json>) -> Option<String> {
    let value = match source {
        ValueSource::Header(name) => headers.get(name.as_str())?.to_str().ok()?.trim().to_owned(),
        ValueSource::Json(pointer) => match body?.pointer(pointer)? {
            Json::String(s) => s.clone(),
            Json::Number(n) => n.to_string(),
            _ => return None,
        },
        ValueSource::All(parts) => {
            let parts: Option<Vec<String>> = parts.iter().map(|p| value(p, headers, body)).collect();
            parts?.join(":")
        }
    };
    (!value.is_empty()).then_some(value)
}

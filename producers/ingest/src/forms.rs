//! `POST /v1/forms/{form_id}`: web form submissions from browsers.
//!
//! Accepts JSON objects or `application/x-www-form-urlencoded` bodies. Checks, in order: the
//! client's rate limit, the `Origin` against the configured origins, the content type, the
//! size, the form's definition (known form, required fields), the e-mail's syntax. A filled-in
//! honeypot field is answered like a success and dropped, so bots learn nothing.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use nectar_core::events::{Consent, Envelope, FormSubmitted, now_millis};
use nectar_core::{ids, trace};
use serde_json::{Value as Json_, json};

use crate::app::{AppState, ContentKind, client_ip, content_kind, read_body};
use crate::error::AppError;

/// Most fields one submission may carry.
const MAX_FIELDS: usize = 100;
const MAX_FIELD_NAME: usize = 128;

/// Fields with a meaning of their own; everything else lands in `fields`.
const EMAIL: &str = "email";
const ANONYMOUS_ID: &str = "anonymous_id";
const PAGE_URL: &str = "page_url";
const REFERRER: &str = "referrer";
const CONSENT_PREFIX: &str = "consent_";

pub async fn submit(State(state): State<AppState>, Path(form_id): Path<String>, request: Request) -> Response {
    match accept(&state, &form_id, request).await {
        Ok(event_id) => (StatusCode::ACCEPTED, Json(json!({ "event_id": event_id }))).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn accept(state: &AppState, form_id: &str, request: Request) -> Result<String, AppError> {
    let (parts, body) = request.into_parts();
    let config = &state.config.forms;

    let ip = client_ip(&parts, state.config.trust_forwarded_for);
    if let Some(ip) = ip {
        state.check_form_rate(ip)?;
    }
    if let Some(origin) = parts.headers.get("origin").and_then(|v| v.to_str().ok())
        && !config.allowed_origins.is_empty()
        && !config.allowed_origins.iter().any(|o| o == origin)
    {
        return Err(AppError::forbidden(
            "origin_not_allowed",
            format!("origin `{origin}` may not post forms"),
        ));
    }
    let kind = content_kind(&parts.headers);
    if !matches!(kind, Some(ContentKind::Json | ContentKind::UrlEncoded)) {
        return Err(AppError::unsupported_media_type(
            parts.headers.get("content-type").and_then(|v| v.to_str().ok()),
            "application/json or application/x-www-form-urlencoded",
        ));
    }
    let definition = match config.definitions.get(form_id) {
        Some(d) => d.clone(),
        None if config.accept_unknown_forms => Default::default(),
        None => {
            return Err(AppError::not_found(
                "unknown_form",
                format!("form `{form_id}` is not configured"),
            ));
        }
    };
    let body = read_body(body, &parts.headers, config.max_body_bytes).await?;
    let (mut fields, consent) = match kind {
        Some(ContentKind::Json) => parse_json(&body)?,
        _ => parse_urlencoded(&body)?,
    };

    if fields.get(&config.honeypot_field).is_some_and(|v| !v.trim().is_empty()) {
        state.metrics.spam_dropped.inc();
        tracing::info!(form_id, "honeypot filled; submission dropped");
        return Ok(ids::new_event_id());
    }
    fields.remove(&config.honeypot_field);

    for required in &definition.required_fields {
        if fields.get(required).is_none_or(|v| v.trim().is_empty()) {
            return Err(AppError::bad_request(
                "missing_field",
                format!("field `{required}` is required"),
            ));
        }
    }
    let email = fields
        .remove(EMAIL)
        .map(|e| e.trim().to_owned())
        .filter(|e| !e.is_empty());
    if let Some(email) = &email
        && !valid_email(email)
    {
        return Err(AppError::bad_request(
            "invalid_email",
            format!("field `email`: `{email}` is not a valid e-mail address"),
        ));
    }
    state.ensure_ready()?;

    let workspace_id = definition
        .workspace_id
        .clone()
        .unwrap_or_else(|| state.config.default_workspace_id.clone());
    let source = format!("form:{form_id}");
    let headers = &parts.headers;
    let event_id = match header(headers, "idempotency-key") {
        Some(key) => ids::derived_event_id(&workspace_id, &source, key),
        None => ids::new_event_id(),
    };
    let anonymous_id = fields.remove(ANONYMOUS_ID).filter(|v| !v.is_empty());
    let now = now_millis();
    let event = FormSubmitted {
        envelope: Envelope {
            event_id: event_id.clone(),
            event_type: "form.submitted".into(),
            occurred_at: now,
            received_at: now,
            lead_key: ids::lead_key(&workspace_id, email.as_deref(), anonymous_id.as_deref()),
            source,
            workspace_id,
            trace_parent: Some(trace::child_or_new(header(headers, trace::TRACEPARENT))),
            consent,
        },
        form_id: form_id.to_owned(),
        form_type: definition.form_type.clone(),
        email,
        page_url: fields.remove(PAGE_URL).filter(|v| !v.is_empty()),
        referrer: fields
            .remove(REFERRER)
            .filter(|v| !v.is_empty())
            .or_else(|| header(headers, "referer").map(str::to_owned)),
        user_agent: header(headers, "user-agent").map(str::to_owned),
        client_ip: ip.map(|ip| ip.to_string()),
        anonymous_id,
        fields,
    };
    state.produce("forms", state.producer.send_form(&event)).await?;
    Ok(event_id)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

pub use nectar_core::ids::valid_email;

type Parsed = (HashMap<String, String>, Option<Consent>);

fn parse_json(body: &[u8]) -> Result<Parsed, AppError> {
    let value: Json_ = serde_json::from_slice(body)
        .map_err(|e| AppError::bad_request("malformed_body", format!("body is not valid JSON: {e}")))?;
    let Json_::Object(object) = value else {
        return Err(AppError::bad_request(
            "malformed_body",
            "body must be a JSON object of fields",
        ));
    };
    let mut pairs = Vec::with_capacity(object.len());
    let mut consent = Consent::default();
    let mut consent_given = false;
    for (key, value) in object {
        if key == "consent" {
            let Json_::Object(flags) = value else {
                return Err(AppError::bad_request(
                    "invalid_field",
                    "field `consent` must be an object of booleans",
                ));
            };
            for (flag, v) in flags {
                let Some(v) = v.as_bool() else {
                    return Err(AppError::bad_request(
                        "invalid_field",
                        format!("field `consent.{flag}` must be a boolean"),
                    ));
                };
                set_consent(&mut consent, &flag, v)?;
                consent_given = true;
            }
            continue;
        }
        let text = match value {
            Json_::String(s) => s,
            Json_::Number(n) => n.to_string(),
            Json_::Bool(b) => b.to_string(),
            Json_::Null => continue,
            _ => {
                return Err(AppError::bad_request(
                    "invalid_field",
                    format!("field `{key}` must be a string, number or boolean"),
                ));
            }
        };
        pairs.push((key, text));
    }
    let (fields, from_fields) = collect(pairs)?;
    Ok((fields, merge_consent(consent_given.then_some(consent), from_fields)))
}

fn parse_urlencoded(body: &[u8]) -> Result<Parsed, AppError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(body)
        .map_err(|e| AppError::bad_request("malformed_body", format!("body is not valid form encoding: {e}")))?;
    let (fields, consent) = collect(pairs)?;
    Ok((fields, consent))
}

/// Fold pairs into fields (repeated names, e.g. checkbox groups, are joined with `,`) and pull
/// out `consent_*` flags.
fn collect(pairs: Vec<(String, String)>) -> Result<Parsed, AppError> {
    let mut fields: HashMap<String, String> = HashMap::new();
    let mut consent = Consent::default();
    let mut consent_given = false;
    for (key, value) in pairs {
        if key.is_empty() || key.len() > MAX_FIELD_NAME {
            return Err(AppError::bad_request(
                "invalid_field",
                format!("field names must be 1 to {MAX_FIELD_NAME} characters"),
            ));
        }
        if let Some(flag) = key.strip_prefix(CONSENT_PREFIX) {
            let v = truthy(&value).ok_or_else(|| {
                AppError::bad_request(
                    "invalid_field",
                    format!("field `{key}`: `{value}` is not a yes/no value"),
                )
            })?;
            set_consent(&mut consent, flag, v)?;
            consent_given = true;
            continue;
        }
        fields
            .entry(key)
            .and_modify(|v| {
                v.push(',');
            })
            .or_default()
            .push_str(&value);
    }
    if fields.len() > MAX_FIELDS {
        return Err(AppError::bad_request(
            "too_many_fields",
            format!("a form may carry at most {MAX_FIELDS} fields"),
        ));
    }
    Ok((fields, consent_given.then_some(consent)))
}

fn merge_consent(a: Option<Consent>, b: Option<Consent>) -> Option<Consent> {
    match (a, b) {
        (Some(a), Some(b)) => Some(Consent {
            marketing: a.marketing.or(b.marketing),
            analytics: a.analytics.or(b.analytics),
            personalization: a.personalization.or(b.personalization),
        }),
        (a, b) => a.or(b),
    }
}

fn set_consent(consent: &mut Consent, flag: &str, value: bool) -> Result<(), AppError> {
    let slot = match flag {
        "marketing" => &mut consent.marketing,
        "analytics" => &mut consent.analytics,
        "personalization" => &mut consent.personalization,
        other => {
            return Err(AppError::bad_request(
                "invalid_field",
                format!("unknown consent flag `{other}` (marketing, analytics, personalization)"),
            ));
        }
    };
    *slot = Some(value);
    Ok(())
}

fn truthy(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "yes" | "1" => Some(true),
        "false" | "off" | "no" | "0" | "" => Some(false),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_syntax() {
        for ok in ["ada@example.com", "a.b+tag@sub.example.co.uk"] {
            assert!(valid_email(ok), "{ok}");
        }
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "ada@localhost",
            "Ada <ada@example.com>",
            "a@b@c.com",
        ] {
            assert!(!valid_email(bad), "{bad}");
        }
    }

    #[test]
    fn urlencoded_checkbox_groups_and_consent() {
        let (fields, consent) =
            parse_urlencoded(b"interest=a&interest=b&consent_marketing=on&name=Ada").expect("parses");
        assert_eq!(fields.get("interest").map(String::as_str), Some("a,b"));
        assert_eq!(consent.and_then(|c| c.marketing), Some(true));
        assert!(!fields.contains_key("consent_marketing"));
    }

    #[test]
    fn json_rejects_nested_values_and_unknown_consent() {
        assert!(parse_json(br#"{"a": {"b": 1}}"#).is_err());
        assert!(parse_json(br#"{"consent": {"spam": true}}"#).is_err());
        assert!(parse_json(br#"[1]"#).is_err());
        let (fields, consent) =
            parse_json(br#"{"age": 42, "ok": true, "consent": {"analytics": false}}"#).expect("parses");
        assert_eq!(fields.get("age").map(String::as_str), Some("42"));
        assert_eq!(consent.and_then(|c| c.analytics), Some(false));
    }
}

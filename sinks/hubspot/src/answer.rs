//! Reading HubSpot's answers to a batch call — every classification lives here.
//!
//! The batch endpoints answer (developers.hubspot.com/docs/api-reference/error-handling):
//! - `200`/`201`: every input was written; `results[]` (not in input order) carry each
//!   record's `id` and, when the input had one, its `objectWriteTraceId`.
//! - `207` Multi-Status: some inputs failed. Each entry of `errors[]` has `status`,
//!   `category` (`VALIDATION_ERROR`, `CONFLICT`, …), `message` and a `context` naming the
//!   failing inputs (`{"objectWriteTraceId": ["…"]}`, or `{"ids": ["…"]}`). HubSpot only
//!   answers per record when every input carries an `objectWriteTraceId`; the connector
//!   always sends one (the event id).
//! - `400` (`VALIDATION_ERROR`, e.g. "Property values were not valid: …INVALID_EMAIL…",
//!   "Duplicate IDs found in batch input"), `409` (`CONFLICT`): the whole batch was refused;
//!   the inputs its message or context names are the culprits, the others are retried.
//! - `429` with `policyName` `TEN_SECONDLY_ROLLING`/`SECONDLY`/`DAILY` and the
//!   `X-HubSpot-RateLimit-*` headers; `401` (`INVALID_AUTHENTICATION`) and `403`
//!   (`MISSING_SCOPES`); `5xx`.
//!
//! Validation errors never succeed on retry: the input is rejected (dead-lettered with
//! HubSpot's answer). Conflicts, rate limits and server errors are retried.

use std::collections::BTreeSet;
use std::time::Duration;

use nectar_sink::http::{classify_status, excerpt, retry_after};
use nectar_sink::{DeliveryError, ItemResult};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

/// A response, read in full.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

/// The result of one input of a batch call.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Written; the record's id when HubSpot's answer gave it.
    Done(Option<String>),
    Failed(ItemResult),
}

/// How long to wait after HubSpot's daily limit ran out: it resets at midnight in the
/// account's time zone, which the connector cannot know, so it looks again every so often.
pub const DAILY_LIMIT_WAIT: Duration = Duration::from_secs(600);

/// Error categories worth another attempt for the same input.
const RETRYABLE_CATEGORIES: &[&str] = &[
    "CONFLICT",
    "RATE_LIMIT",
    "RATE_LIMITS",
    "TOO_MANY_REQUESTS",
    "LOCKED",
    "TIMEOUT",
    "REQUEST_TIMEOUT",
    "INTERNAL_ERROR",
    "INTERNAL_SERVER_ERROR",
    "BAD_GATEWAY",
    "SERVICE_UNAVAILABLE",
    "GATEWAY_TIMEOUT",
    "MIGRATION_IN_PROGRESS",
];

/// What identifies the inputs of one batch call, in input order.
#[derive(Debug, Clone)]
pub struct BatchInputs {
    /// What each input is, for reasons: `contact ada@example.com`.
    pub labels: Vec<String>,
    /// Strings that identify each input in HubSpot's answer (trace id, e-mail, domain, id),
    /// lower-case.
    pub keys: Vec<Vec<String>>,
}

impl BatchInputs {
    fn len(&self) -> usize {
        self.labels.len()
    }
}

/// `category` is a string in the CRM object APIs and `{name, httpStatus}` in some v4
/// schemas; both are read.
pub fn category(error: &Value) -> Option<String> {
    match error.get("category")? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("name").and_then(Value::as_str).map(str::to_owned),
        _ => None,
    }
}

fn message(error: &Value) -> String {
    error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("(no message)")
        .to_owned()
}

/// Every string in an error's `context` (and its `id`), lower-case.
fn context_strings(error: &Value) -> BTreeSet<String> {
    fn collect(v: &Value, out: &mut BTreeSet<String>) {
        match v {
            Value::String(s) => {
                out.insert(s.to_lowercase());
            }
            Value::Array(a) => a.iter().for_each(|v| collect(v, out)),
            Value::Object(o) => o.values().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    let mut out = BTreeSet::new();
    if let Some(c) = error.get("context") {
        collect(c, &mut out);
    }
    if let Some(Value::String(id)) = error.get("id") {
        out.insert(id.to_lowercase());
    }
    out
}

/// The messages of an error and of its `errors[]` details, lower-case.
fn texts(error: &Value) -> String {
    let mut s = message(error);
    if let Some(Value::Array(details)) = error.get("errors") {
        for d in details {
            if let Some(m) = d.get("message").and_then(Value::as_str) {
                s.push('\n');
                s.push_str(m);
            }
        }
    }
    s.to_lowercase()
}

/// Whether `needle` occurs in `haystack` as a whole address/domain, not inside a longer one.
fn contains_token(haystack: &str, needle: &str) -> bool {
    if needle.is_empty() {
        return false;
    }
    let is_inner = |c: char| c.is_alphanumeric() || "._%+-@".contains(c);
    haystack.match_indices(needle).any(|(at, _)| {
        let before = haystack[..at].chars().next_back();
        let mut after = haystack[at + needle.len()..].chars();
        let ok_before = before.is_none_or(|c| !is_inner(c));
        let ok_after = match after.next() {
            None => true,
            // A sentence's full stop ends the token; `x@y.com.evil` does not.
            Some('.') => after.next().is_none_or(|c| !c.is_alphanumeric()),
            Some(c) => !is_inner(c),
        };
        ok_before && ok_after
    })
}

/// The inputs an error names: by its context (trace ids, ids, e-mails), else by an e-mail or
/// domain its messages mention.
pub fn named_inputs(error: &Value, inputs: &BatchInputs) -> Vec<usize> {
    let context = context_strings(error);
    let by_context: Vec<usize> = (0..inputs.len())
        .filter(|&i| inputs.keys[i].iter().any(|k| context.contains(k)))
        .collect();
    if !by_context.is_empty() {
        return by_context;
    }
    let text = texts(error);
    (0..inputs.len())
        .filter(|&i| {
            inputs.keys[i]
                .iter()
                .filter(|k| k.contains('@') || k.contains('.'))
                .any(|k| contains_token(&text, k))
        })
        .collect()
}

/// One input's failure: rejected unless its category (or the HTTP status) is transient.
pub fn classify_error(error: &Value, label: &str, http_status: Option<StatusCode>) -> ItemResult {
    let cat = category(error).unwrap_or_default();
    let upper = cat.to_ascii_uppercase();
    let transient = if upper.is_empty() {
        http_status.is_some_and(|s| s == StatusCode::CONFLICT || s == StatusCode::LOCKED || s.is_server_error())
    } else {
        RETRYABLE_CATEGORIES.contains(&upper.as_str())
    };
    let what = if cat.is_empty() {
        String::new()
    } else {
        format!("{cat}: ")
    };
    if transient {
        ItemResult::retry(format!(
            "HubSpot could not write {label} this time: {what}{}",
            message(error)
        ))
    } else {
        ItemResult::reject(
            format!("HubSpot refused {label}: {what}{}", message(error)),
            excerpt(&error.to_string()),
        )
    }
}

/// The wait HubSpot asks for after a 429: its `Retry-After` when sent; otherwise the rolling
/// window (`X-HubSpot-RateLimit-Interval-Milliseconds`) for the ten-secondly policy, and
/// [`DAILY_LIMIT_WAIT`] once the daily limit ran out.
pub fn rate_limit_wait(headers: &HeaderMap, body: &Value) -> Option<Duration> {
    if let Some(after) = retry_after(headers) {
        return Some(after);
    }
    let policy = body.get("policyName").and_then(Value::as_str).unwrap_or_default();
    if policy.eq_ignore_ascii_case("DAILY") {
        return Some(DAILY_LIMIT_WAIT);
    }
    headers
        .get("x-hubspot-ratelimit-interval-milliseconds")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(|ms| Duration::from_millis(ms.min(60_000)))
}

/// The whole-call meaning of statuses that do not depend on the inputs: rate limits, server
/// errors, credentials, a wrong URL. `None`: read the body per input.
pub fn whole_call_error(answer: &Answer, request: &str) -> Option<DeliveryError> {
    let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    let detail = || {
        let cat = category(&body).map(|c| format!(", {c}")).unwrap_or_default();
        let msg = body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| excerpt(&answer.body));
        (cat, msg)
    };
    if answer.status == StatusCode::TOO_MANY_REQUESTS {
        let policy = body
            .get("policyName")
            .and_then(Value::as_str)
            .map(|p| format!(", policy {p}"))
            .unwrap_or_default();
        let (_, msg) = detail();
        return Some(DeliveryError::Retry {
            reason: format!("rate limited by HubSpot (HTTP 429{policy}): {msg}"),
            after: rate_limit_wait(&answer.headers, &body),
        });
    }
    if answer.status == StatusCode::UNAUTHORIZED || answer.status == StatusCode::FORBIDDEN {
        let (cat, msg) = detail();
        return Some(DeliveryError::Fatal(format!(
            "credentials rejected by HubSpot (HTTP {}{cat}) for {request}: {msg}",
            answer.status.as_u16()
        )));
    }
    if answer.status == StatusCode::NOT_FOUND || answer.status == StatusCode::METHOD_NOT_ALLOWED {
        return Some(DeliveryError::Fatal(format!(
            "HubSpot answered HTTP {} to {request} (check target.api_url): {}",
            answer.status.as_u16(),
            excerpt(&answer.body)
        )));
    }
    if let Some(e) = classify_status(answer.status, &answer.headers, &answer.body) {
        return Some(e);
    }
    if answer.status.is_informational() || answer.status.is_redirection() {
        return Some(DeliveryError::retry(format!(
            "unexpected HTTP {} from HubSpot for {request}",
            answer.status.as_u16()
        )));
    }
    None
}

/// Read a batch call's answer into one [`Outcome`] per input. `result_keys` gives the keys
/// (lower-case) a `results[]` entry identifies its input by, `result_id` its record id.
pub fn read_batch(
    answer: &Answer,
    request: &str,
    inputs: &BatchInputs,
    result_keys: impl Fn(&Value) -> Vec<String>,
    result_id: impl Fn(&Value) -> Option<String>,
) -> Result<Vec<Outcome>, DeliveryError> {
    if let Some(e) = whole_call_error(answer, request) {
        return Err(e);
    }
    let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    let n = inputs.len();
    let find_result = |i: usize| -> Option<Option<String>> {
        body.get("results")?.as_array()?.iter().find_map(|r| {
            let keys = result_keys(r);
            inputs.keys[i].iter().any(|k| keys.contains(k)).then(|| result_id(r))
        })
    };
    if answer.status.is_success() && answer.status != StatusCode::MULTI_STATUS {
        // All written; ids where the answer can be matched to the input.
        return Ok((0..n).map(|i| Outcome::Done(find_result(i).flatten())).collect());
    }
    if answer.status == StatusCode::MULTI_STATUS {
        let mut out: Vec<Option<Outcome>> = vec![None; n];
        if let Some(errors) = body.get("errors").and_then(Value::as_array) {
            for error in errors {
                for i in named_inputs(error, inputs) {
                    if out[i].is_none() {
                        out[i] = Some(Outcome::Failed(classify_error(error, &inputs.labels[i], None)));
                    }
                }
            }
        }
        return Ok(out
            .into_iter()
            .enumerate()
            .map(|(i, o)| {
                o.unwrap_or_else(|| match find_result(i) {
                    Some(id) => Outcome::Done(id),
                    None => Outcome::Failed(ItemResult::retry(format!(
                        "HubSpot's multi-status answer to {request} did not mention {}",
                        inputs.labels[i]
                    ))),
                })
            })
            .collect());
    }
    // A 4xx refusing the whole batch: the inputs it names are the culprits.
    let error = if body.is_object() {
        body
    } else {
        serde_json::json!({ "message": excerpt(&answer.body) })
    };
    let named = named_inputs(&error, inputs);
    let status = Some(answer.status);
    if !named.is_empty() && named.len() < n {
        let culprits = named
            .iter()
            .map(|&i| inputs.labels[i].as_str())
            .collect::<Vec<_>>()
            .join(", ");
        return Ok((0..n)
            .map(|i| {
                if named.contains(&i) {
                    Outcome::Failed(classify_error(&error, &inputs.labels[i], status))
                } else {
                    Outcome::Failed(ItemResult::retry(format!(
                        "not written: HubSpot refused the whole {request} (HTTP {}) because of {culprits}",
                        answer.status.as_u16()
                    )))
                }
            })
            .collect());
    }
    Ok((0..n)
        .map(|i| Outcome::Failed(classify_error(&error, &inputs.labels[i], status)))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;
    use serde_json::json;

    fn inputs() -> BatchInputs {
        BatchInputs {
            labels: vec![
                "contact ada@example.com".into(),
                "contact bob@example.com".into(),
                "contact x@bob@example.com".into(),
            ],
            keys: vec![
                vec!["e1".into(), "ada@example.com".into()],
                vec!["e2".into(), "bob@example.com".into()],
                vec!["e3".into(), "x@bob@example.com".into()],
            ],
        }
    }

    fn answer(status: u16, body: Value) -> Answer {
        Answer {
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: body.to_string(),
        }
    }

    fn read(a: &Answer) -> Result<Vec<Outcome>, DeliveryError> {
        read_batch(
            a,
            "contacts batch/upsert",
            &inputs(),
            |r| {
                let mut k = Vec::new();
                if let Some(t) = r.get("objectWriteTraceId").and_then(Value::as_str) {
                    k.push(t.to_lowercase());
                }
                if let Some(e) = r.pointer("/properties/email").and_then(Value::as_str) {
                    k.push(e.to_lowercase());
                }
                k
            },
            |r| r.get("id").and_then(Value::as_str).map(str::to_owned),
        )
    }

    #[test]
    fn a_200_writes_everything_and_matches_ids_out_of_order() {
        let a = answer(
            200,
            json!({"status": "COMPLETE", "results": [
                {"id": "902", "properties": {"email": "bob@example.com"}},
                {"id": "901", "objectWriteTraceId": "e1", "properties": {}},
            ]}),
        );
        assert_eq!(
            read(&a).unwrap(),
            vec![
                Outcome::Done(Some("901".into())),
                Outcome::Done(Some("902".into())),
                Outcome::Done(None)
            ]
        );
    }

    #[test]
    fn a_207_fails_only_the_inputs_its_errors_name() {
        let a = answer(
            207,
            json!({"status": "COMPLETE", "numErrors": 2,
            "results": [{"id": "901", "objectWriteTraceId": "e1", "properties": {"email": "ada@example.com"}}],
            "errors": [
                {"status": "error", "category": "VALIDATION_ERROR",
                 "message": "Property values were not valid: [{\"isValid\":false,\"message\":\"Email address x@bob@example.com is invalid\",\"error\":\"INVALID_EMAIL\",\"name\":\"email\"}]",
                 "context": {"objectWriteTraceId": ["e3"]}},
                {"status": "error", "category": "CONFLICT", "message": "busy",
                 "context": {"objectWriteTraceId": ["e2"]}},
            ]}),
        );
        let out = read(&a).unwrap();
        assert_eq!(out[0], Outcome::Done(Some("901".into())));
        assert!(
            matches!(&out[1], Outcome::Failed(ItemResult::Retry { reason, .. }) if reason.contains("CONFLICT")),
            "{out:?}"
        );
        match &out[2] {
            Outcome::Failed(ItemResult::Reject { reason, response }) => {
                assert!(
                    reason.contains("VALIDATION_ERROR") && reason.contains("x@bob@example.com"),
                    "{reason}"
                );
                assert!(response.contains("INVALID_EMAIL"), "{response}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_207_input_named_nowhere_is_retried() {
        let a = answer(207, json!({"results": [], "errors": []}));
        assert!(
            read(&a)
                .unwrap()
                .iter()
                .all(|o| matches!(o, Outcome::Failed(ItemResult::Retry { .. })))
        );
    }

    #[test]
    fn a_whole_batch_400_rejects_the_named_input_and_retries_the_rest() {
        let a = answer(
            400,
            json!({"status": "error",
                "message": "Property values were not valid: [{\"isValid\":false,\"message\":\"Email address bob@example.com is invalid\",\"error\":\"INVALID_EMAIL\",\"name\":\"email\"}]",
                "correlationId": "c", "category": "VALIDATION_ERROR"}),
        );
        let out = read(&a).unwrap();
        assert!(
            matches!(&out[0], Outcome::Failed(ItemResult::Retry { reason, .. }) if reason.contains("because of contact bob@example.com")),
            "{out:?}"
        );
        assert!(matches!(&out[1], Outcome::Failed(ItemResult::Reject { .. })), "{out:?}");
        assert!(
            matches!(&out[2], Outcome::Failed(ItemResult::Retry { .. })),
            "x@bob@example.com contains bob@example.com but is another address: {out:?}"
        );
    }

    #[test]
    fn duplicate_ids_name_their_inputs_by_context() {
        let a = answer(
            400,
            json!({"status": "error", "message": "Duplicate IDs found in batch input: [ada@example.com]. IDs must be unique",
                "context": {"ids": ["ada@example.com"]}, "category": "VALIDATION_ERROR"}),
        );
        let out = read(&a).unwrap();
        assert!(matches!(&out[0], Outcome::Failed(ItemResult::Reject { .. })));
        assert!(matches!(&out[1], Outcome::Failed(ItemResult::Retry { .. })));
    }

    #[test]
    fn an_unattributable_400_rejects_all_and_a_409_retries_all() {
        let a = answer(
            400,
            json!({"status": "error", "message": "Property \"nectar_score\" does not exist", "category": "VALIDATION_ERROR"}),
        );
        assert!(
            read(&a)
                .unwrap()
                .iter()
                .all(|o| matches!(o, Outcome::Failed(ItemResult::Reject { .. })))
        );
        let a = answer(
            409,
            json!({"status": "error", "message": "Contact already exists. Existing ID: 501"}),
        );
        assert!(
            read(&a)
                .unwrap()
                .iter()
                .all(|o| matches!(o, Outcome::Failed(ItemResult::Retry { .. })))
        );
    }

    #[test]
    fn whole_call_statuses() {
        let mut a = answer(
            429,
            json!({"status": "error", "message": "You have reached your ten_secondly_rolling limit.",
                "errorType": "RATE_LIMIT", "policyName": "TEN_SECONDLY_ROLLING"}),
        );
        a.headers.insert("retry-after", HeaderValue::from_static("3"));
        match read(&a).unwrap_err() {
            DeliveryError::Retry { reason, after } => {
                assert_eq!(after, Some(Duration::from_secs(3)));
                assert!(reason.contains("TEN_SECONDLY_ROLLING"), "{reason}");
            }
            e => panic!("{e:?}"),
        }
        a.headers.clear();
        a.headers.insert(
            "x-hubspot-ratelimit-interval-milliseconds",
            HeaderValue::from_static("10000"),
        );
        assert!(
            matches!(read(&a).unwrap_err(), DeliveryError::Retry { after: Some(d), .. } if d == Duration::from_secs(10))
        );
        let daily = answer(
            429,
            json!({"policyName": "DAILY", "message": "You have reached your daily limit."}),
        );
        assert!(
            matches!(read(&daily).unwrap_err(), DeliveryError::Retry { after: Some(d), .. } if d == DAILY_LIMIT_WAIT)
        );
        assert!(matches!(
            read(&answer(502, json!({}))).unwrap_err(),
            DeliveryError::Retry { .. }
        ));
        let unauthorized = answer(
            401,
            json!({"status": "error", "message": "Authentication credentials not found.", "category": "INVALID_AUTHENTICATION"}),
        );
        match read(&unauthorized).unwrap_err() {
            DeliveryError::Fatal(m) => {
                assert!(
                    m.contains("credentials rejected") && m.contains("INVALID_AUTHENTICATION"),
                    "{m}"
                )
            }
            e => panic!("{e:?}"),
        }
        assert!(
            matches!(read(&answer(404, json!({}))).unwrap_err(), DeliveryError::Fatal(m) if m.contains("target.api_url"))
        );
    }

    #[test]
    fn tokens_match_whole_addresses_only() {
        assert!(contains_token(
            "email address ada@example.com is invalid",
            "ada@example.com"
        ));
        assert!(contains_token("invalid: ada@example.com.", "ada@example.com"));
        assert!(!contains_token("invalid: bada@example.com", "ada@example.com"));
        assert!(!contains_token("invalid: ada@example.com.au", "ada@example.com"));
        assert!(contains_token("[ada@example.com]", "ada@example.com"));
    }

    #[test]
    fn categories_as_objects_are_read() {
        let e = json!({"category": {"name": "VALIDATION_ERROR", "httpStatus": "BAD_REQUEST"}, "message": "no"});
        assert_eq!(category(&e).as_deref(), Some("VALIDATION_ERROR"));
        assert!(matches!(classify_error(&e, "x", None), ItemResult::Reject { .. }));
    }
}

//! Reading a vendor's answer: the spec's ordered `[[request.answer]]` rules, then the defaults
//! every HTTP target shares (2xx delivered; 429, 408 and 5xx retried with `Retry-After`;
//! 401/403 credentials rejected; 413 split; any other answer retried and counted, so an event
//! no retry helps reaches the dead-letter queue with the vendor's answer after
//! `sink.max_item_attempts`).

use std::time::Duration;

use nectar_sink::http::{excerpt, retry_after};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::spec::{After, AnswerRule, JsonMatch, Outcome, Partial, StatusMatch};

/// An answer as received.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    pub json: Option<Value>,
}

impl Answer {
    pub fn new(status: StatusCode, headers: HeaderMap, text: String) -> Self {
        let json = serde_json::from_str(&text).ok();
        Self {
            status,
            headers,
            text,
            json,
        }
    }

    /// `HTTP 400: <body excerpt>`.
    pub fn summary(&self) -> String {
        format!("HTTP {}: {}", self.status.as_u16(), excerpt(&self.text))
    }
}

/// What an answer means for the events of its request.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Delivered,
    Retry {
        reason: String,
        after: Option<Duration>,
    },
    RetryItems {
        reason: String,
        after: Option<Duration>,
    },
    Reject {
        reason: String,
    },
    Fatal(String),
    Split,
    /// Per event of the request, in order: `None` delivered, or what it failed with.
    Partial(Vec<Option<Verdict>>),
}

/// Classify `answer` to a request of `keys.len()` events (their idempotency keys, in order).
pub fn classify(rules: &[AnswerRule], answer: &Answer, keys: &[&str]) -> Verdict {
    for rule in rules {
        if matches(rule, answer) {
            return apply(rule, answer, keys);
        }
    }
    default_verdict(answer)
}

fn default_verdict(answer: &Answer) -> Verdict {
    let status = answer.status;
    if status.is_success() {
        return Verdict::Delivered;
    }
    if let Some(e) = nectar_sink::http::classify_status(status, &answer.headers, &answer.text) {
        return match e {
            nectar_sink::DeliveryError::Retry { reason, after } => Verdict::Retry { reason, after },
            nectar_sink::DeliveryError::Fatal(reason) => Verdict::Fatal(reason),
        };
    }
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return Verdict::Split;
    }
    Verdict::RetryItems {
        reason: answer.summary(),
        after: retry_after(&answer.headers),
    }
}

fn status_matches(m: &StatusMatch, status: StatusCode) -> bool {
    let code = status.as_u16();
    match m {
        StatusMatch::One(c) => *c == code,
        StatusMatch::Many(cs) => cs.contains(&code),
        StatusMatch::Class(class) => class.as_bytes().first() == Some(&(b'0' + (code / 100) as u8)),
    }
}

/// Whether `m` holds on `value`.
pub fn json_matches(m: &JsonMatch, value: Option<&Value>) -> bool {
    let found = value.and_then(|v| v.pointer(&m.pointer));
    if let Some(exists) = m.exists
        && exists != found.is_some()
    {
        return false;
    }
    if let Some(expected) = &m.equals
        && found != Some(expected)
    {
        return false;
    }
    if let Some(needle) = &m.contains
        && !found
            .and_then(Value::as_str)
            .is_some_and(|s| s.contains(needle.as_str()))
    {
        return false;
    }
    if let Some(options) = &m.one_of
        && !found.is_some_and(|f| options.contains(f))
    {
        return false;
    }
    true
}

fn matches(rule: &AnswerRule, answer: &Answer) -> bool {
    rule.status.as_ref().is_none_or(|s| status_matches(s, answer.status))
        && rule.json.as_ref().is_none_or(|j| json_matches(j, answer.json.as_ref()))
        && rule
            .header
            .as_ref()
            .is_none_or(|h| answer.headers.contains_key(h.as_str()))
}

/// A value as reason text: strings as they are, anything else as JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn reason(rule: &AnswerRule, answer: &Answer) -> String {
    let found = rule
        .reason
        .as_ref()
        .and_then(|p| answer.json.as_ref()?.pointer(p))
        .map(text_of);
    match (&rule.message, found) {
        (Some(m), Some(r)) => format!("{m}: {r}"),
        (Some(m), None) => format!("{m} ({})", answer.summary()),
        (None, Some(r)) => format!("HTTP {}: {r}", answer.status.as_u16()),
        (None, None) => answer.summary(),
    }
}

fn after(spec: Option<&After>, answer: &Answer) -> Option<Duration> {
    let Some(spec) = spec else {
        return retry_after(&answer.headers);
    };
    let n = if let Some(h) = &spec.header {
        if h.eq_ignore_ascii_case("retry-after") {
            return retry_after(&answer.headers);
        }
        answer
            .headers
            .get(h.as_str())?
            .to_str()
            .ok()?
            .trim()
            .parse::<f64>()
            .ok()?
    } else {
        answer.json.as_ref()?.pointer(spec.json.as_deref()?)?.as_f64()?
    };
    let seconds = match spec.unit.as_deref() {
        Some("ms") => n / 1000.0,
        Some("epoch") => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            (n - now).max(0.0)
        }
        _ => n,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds.min(3600.0)))
}

fn apply(rule: &AnswerRule, answer: &Answer, keys: &[&str]) -> Verdict {
    match rule.outcome {
        Outcome::Delivered => Verdict::Delivered,
        Outcome::Retry => Verdict::Retry {
            reason: reason(rule, answer),
            after: after(rule.after.as_ref(), answer),
        },
        Outcome::RetryItems => Verdict::RetryItems {
            reason: reason(rule, answer),
            after: after(rule.after.as_ref(), answer),
        },
        Outcome::Reject => Verdict::Reject {
            reason: reason(rule, answer),
        },
        Outcome::Fatal => Verdict::Fatal(reason(rule, answer)),
        Outcome::Split => Verdict::Split,
        Outcome::Partial => match &rule.partial {
            Some(p) => partial(p, answer, keys),
            None => Verdict::RetryItems {
                reason: answer.summary(),
                after: None,
            },
        },
    }
}

/// The values at `pointer`, where a `*` segment stands for every member of an object or
/// array; each with its concrete path.
pub fn select<'v>(value: &'v Value, pointer: &str) -> Vec<(String, &'v Value)> {
    let mut found = vec![(String::new(), value)];
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        let mut next = Vec::new();
        for (path, v) in found {
            match (segment.as_str(), v) {
                ("*", Value::Object(map)) => next.extend(map.iter().map(|(k, c)| (format!("{path}/{k}"), c))),
                ("*", Value::Array(list)) => {
                    next.extend(list.iter().enumerate().map(|(i, c)| (format!("{path}/{i}"), c)))
                }
                (s, Value::Object(map)) => next.extend(map.get(s).map(|c| (format!("{path}/{s}"), c))),
                (s, Value::Array(list)) => next.extend(
                    s.parse::<usize>()
                        .ok()
                        .and_then(|i| list.get(i))
                        .map(|c| (format!("{path}/{s}"), c)),
                ),
                _ => {}
            }
        }
        found = next;
    }
    found
}

fn partial(p: &Partial, answer: &Answer, keys: &[&str]) -> Verdict {
    let n = keys.len();
    let mut results: Vec<Option<Verdict>> = vec![None; n];
    let rest = match p.rest {
        Outcome::RetryItems => Some(Verdict::RetryItems {
            reason: format!("sent again: the vendor took none of the request ({})", answer.summary()),
            after: None,
        }),
        _ => None,
    };
    let failed = |reason: String| match p.failed {
        Outcome::Reject => Verdict::Reject { reason },
        _ => Verdict::RetryItems { reason, after: None },
    };
    let body = answer.json.as_ref().unwrap_or(&Value::Null);
    let mut matched = 0usize;
    if let Some(items) = &p.items {
        let Some(Value::Array(entries)) = body.pointer(items) else {
            return Verdict::RetryItems {
                reason: format!("no per-event results at `{items}`: {}", answer.summary()),
                after: None,
            };
        };
        for (position, entry) in entries.iter().enumerate() {
            if p.ok.as_ref().is_some_and(|ok| json_matches(ok, Some(entry))) {
                continue;
            }
            let index = if let Some(ip) = &p.index {
                entry.pointer(ip).and_then(Value::as_u64).map(|i| i as usize)
            } else if let Some(kp) = &p.key {
                entry
                    .pointer(kp)
                    .and_then(Value::as_str)
                    .and_then(|k| keys.iter().position(|key| *key == k))
            } else {
                Some(position)
            };
            let Some(index) = index.filter(|i| *i < n) else {
                continue;
            };
            let why = p
                .reason
                .as_ref()
                .and_then(|rp| entry.pointer(rp))
                .map(text_of)
                .unwrap_or_else(|| entry.to_string());
            results[index] = Some(failed(format!("HTTP {}: {why}", answer.status.as_u16())));
            matched += 1;
        }
    }
    for pointer in &p.index_lists {
        for (path, value) in select(body, pointer) {
            let indices: Vec<u64> = match value {
                Value::Array(list) => list.iter().filter_map(Value::as_u64).collect(),
                other => other.as_u64().into_iter().collect(),
            };
            for i in indices.into_iter().map(|i| i as usize).filter(|i| *i < n) {
                let why = format!(
                    "HTTP {}: {} ({})",
                    answer.status.as_u16(),
                    path.trim_start_matches('/'),
                    excerpt(&answer.text)
                );
                results[i].get_or_insert_with(|| failed(why));
                matched += 1;
            }
        }
    }
    if matched == 0 && !answer.status.is_success() {
        // A failure that names no event: the whole request failed.
        return Verdict::RetryItems {
            reason: answer.summary(),
            after: None,
        };
    }
    if rest.is_some() {
        for r in &mut results {
            if r.is_none() {
                *r = rest.clone();
            }
        }
    }
    Verdict::Partial(results)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Spec;
    use crate::target::BUILT_IN;
    use reqwest::header::HeaderValue;

    fn spec(name: &str) -> Spec {
        let (file, text) = BUILT_IN.iter().find(|(f, _)| f.starts_with(name)).unwrap();
        Spec::parse(file, text).unwrap()
    }

    fn answer(status: u16, headers: &[(&'static str, &str)], body: &str) -> Answer {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        Answer::new(StatusCode::from_u16(status).unwrap(), h, body.to_owned())
    }

    fn classify_with(vendor: &str, a: &Answer, keys: &[&str]) -> Verdict {
        classify(&spec(vendor).request[0].answers, a, keys)
    }

    #[test]
    fn defaults_read_statuses_every_api_shares() {
        assert_eq!(classify(&[], &answer(204, &[], ""), &["a"]), Verdict::Delivered);
        assert!(matches!(
            classify(&[], &answer(503, &[("retry-after", "7")], ""), &["a"]),
            Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(7)
        ));
        assert!(
            matches!(classify(&[], &answer(401, &[], "no"), &["a"]), Verdict::Fatal(m) if m.contains("credentials rejected"))
        );
        assert_eq!(classify(&[], &answer(413, &[], ""), &["a"]), Verdict::Split);
        assert!(matches!(
            classify(&[], &answer(422, &[], "bad"), &["a"]),
            Verdict::RetryItems { .. }
        ));
    }

    #[test]
    fn select_expands_wildcards() {
        let v = serde_json::json!({"a": {"x": [1, 2], "y": [3]}});
        let got: Vec<String> = select(&v, "/a/*").into_iter().map(|(p, _)| p).collect();
        assert_eq!(got, ["/a/x", "/a/y"]);
    }

    // Answers below are the vendors' documented shapes (URLs in each spec's `docs`).

    #[test]
    fn telegram_flood_control_waits_parameters_retry_after() {
        let a = answer(
            429,
            &[],
            r#"{"ok":false,"error_code":429,"description":"Too Many Requests: retry after 5","parameters":{"retry_after":5}}"#,
        );
        assert!(matches!(classify_with("telegram", &a, &["k"]),
            Verdict::Retry { after: Some(d), .. } if d == Duration::from_secs(5)));
        let a = answer(
            400,
            &[],
            r#"{"ok":false,"error_code":400,"description":"Bad Request: chat not found"}"#,
        );
        assert!(matches!(classify_with("telegram", &a, &["k"]),
            Verdict::Reject { reason } if reason.contains("chat not found")));
        let a = answer(
            200,
            &[],
            r#"{"ok":false,"error_code":400,"description":"Bad Request: message text is empty"}"#,
        );
        assert!(
            matches!(classify_with("telegram", &a, &["k"]), Verdict::Reject { .. }),
            "ok:false is not delivered"
        );
    }

    #[test]
    fn discord_429_waits_the_body_retry_after() {
        let a = answer(
            429,
            &[],
            r#"{"message":"You are being rate limited.","retry_after":0.5,"global":false}"#,
        );
        assert!(matches!(classify_with("discord", &a, &["k"]),
            Verdict::Retry { after: Some(d), .. } if d == Duration::from_millis(500)));
        let a = answer(404, &[], r#"{"message":"Unknown Webhook","code":10015}"#);
        assert!(matches!(classify_with("discord", &a, &["k"]), Verdict::Fatal(m) if m.contains("Unknown Webhook")));
    }

    #[test]
    fn mixpanel_partial_success_retries_only_the_failed_records() {
        let a = answer(
            400,
            &[],
            r#"{"code":400,"error":"some data points in the request failed validation","failed_records":[{"index":1,"insert_id":"b","field":"properties.time","message":"'properties.time' is invalid: must be specified as seconds since epoch"}],"num_records_imported":2,"status":"Bad Request"}"#,
        );
        let Verdict::Partial(results) = classify_with("mixpanel", &a, &["a", "b", "c"]) else {
            panic!("not partial");
        };
        assert_eq!(results[0], None);
        assert!(matches!(&results[1], Some(Verdict::RetryItems { reason, .. }) if reason.contains("properties.time")));
        assert_eq!(results[2], None);
    }

    #[test]
    fn amplitude_invalid_events_are_named_by_index() {
        let a = answer(
            400,
            &[],
            r#"{"code":400,"error":"Request missing required field","events_with_invalid_fields":{"time":[1]},"events_with_missing_fields":{"event_type":[2]}}"#,
        );
        let Verdict::Partial(results) = classify_with("amplitude", &a, &["a", "b", "c"]) else {
            panic!("not partial");
        };
        assert!(matches!(&results[0], Some(Verdict::RetryItems { reason, .. }) if reason.contains("sent again")));
        assert!(
            matches!(&results[1], Some(Verdict::Reject { reason }) if reason.contains("events_with_invalid_fields/time"))
        );
        assert!(matches!(&results[2], Some(Verdict::Reject { .. })));
        let a = answer(400, &[], r#"{"code":400,"error":"Invalid API key: xyz"}"#);
        assert!(matches!(classify_with("amplitude", &a, &["a"]), Verdict::Fatal(_)));
    }
}

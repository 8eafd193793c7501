//! A fault-injecting reverse proxy for real HTTP targets that cannot be told to fail
//! (OpenSearch, a registry, any HTTP service): an axum server on `127.0.0.1:0` forwarding every
//! request to an upstream base URL, recording each one, and misbehaving on demand:
//!
//! - [`Proxy::fail_next`]: the next N matching requests get a given status, `Retry-After`
//!   and body instead of reaching the upstream;
//! - [`Proxy::require_auth`]: requests without the exact `Authorization` value get a `401`
//!   shaped like Elasticsearch's security error (the upstream may have no security at all);
//! - [`Proxy::fail_bulk_items_once`]: the next `_bulk` answer (with at least two items) has
//!   some of its items rewritten to `429 es_rejected_execution_exception` after the upstream
//!   indexed them, as a cluster under write pressure answers (a partial failure);
//! - [`Proxy::set_delay`]: every answer is held back after the upstream answered (a crash
//!   window: the target has the data, the client has not heard).
//!
//! Every request is recorded with its arrival time, method, path, the status it got, and,
//! for `_bulk` requests, the `_id` of each action it carried, so tests can tell what was sent
//! and when.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

/// An injected answer in place of the upstream's.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: u16,
    /// `Retry-After` value to send, if any.
    pub retry_after: Option<String>,
    pub body: String,
    /// Only requests whose path (with query) contains this are failed; others pass.
    pub path_contains: Option<String>,
}

impl Failure {
    /// `status` with an Elasticsearch-shaped error body, for requests whose path contains
    /// `path_contains`.
    pub fn status(status: u16, path_contains: &str) -> Self {
        let ty = match status {
            429 => "es_rejected_execution_exception",
            503 => "unavailable_shards_exception",
            _ => "exception",
        };
        Self {
            status,
            retry_after: None,
            body: json!({
                "error": { "root_cause": [{ "type": ty, "reason": "injected by the test proxy" }],
                           "type": ty, "reason": "injected by the test proxy" },
                "status": status
            })
            .to_string(),
            path_contains: Some(path_contains.to_owned()),
        }
    }

    pub fn retry_after(mut self, value: &str) -> Self {
        self.retry_after = Some(value.to_owned());
        self
    }
}

/// One request the proxy saw.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    /// Path and query.
    pub path: String,
    /// The status the client got (0 while the answer is pending).
    pub status: u16,
    /// `Retry-After` the client got, if any.
    pub retry_after: Option<String>,
    /// Whether the request reached the upstream.
    pub forwarded: bool,
    /// `_bulk` only: the `_id` of every action, in order.
    pub ids: Vec<String>,
    /// `_bulk` only: the ids whose item results the proxy rewrote to a 429.
    pub rewritten: Vec<String>,
}

#[derive(Debug, Default)]
struct Behaviour {
    failures: VecDeque<Failure>,
    require_auth: Option<String>,
    fail_bulk_items: usize,
    delay: Duration,
}

#[derive(Debug)]
struct Shared {
    upstream: String,
    client: reqwest::Client,
    behaviour: Mutex<Behaviour>,
    requests: Mutex<Vec<Recorded>>,
}

/// A running proxy (stops with the test's runtime).
#[derive(Debug, Clone)]
pub struct Proxy {
    url: String,
    shared: Arc<Shared>,
}

impl Proxy {
    /// Start a proxy to `upstream` (a base URL like `http://127.0.0.1:9200`).
    pub async fn start(upstream: &str) -> Self {
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_owned(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("client"),
            behaviour: Mutex::new(Behaviour::default()),
            requests: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().fallback(handle).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            url: format!("http://{addr}"),
            shared,
        }
    }

    /// The base URL to give the client instead of the upstream's.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Answer the next `n` requests matching `failure.path_contains` with `failure`.
    pub fn fail_next(&self, n: usize, failure: Failure) {
        let mut b = self.shared.behaviour.lock().unwrap();
        b.failures.extend(std::iter::repeat_n(failure, n));
    }

    /// Demand this exact `Authorization` value (None: accept anything).
    pub fn require_auth(&self, value: Option<&str>) {
        self.shared.behaviour.lock().unwrap().require_auth = value.map(str::to_owned);
    }

    /// In the next `_bulk` answer with at least two items, rewrite every other item (the 1st,
    /// 3rd, ...), at most `count` and never all of them, to a 429 rejected execution.
    pub fn fail_bulk_items_once(&self, count: usize) {
        self.shared.behaviour.lock().unwrap().fail_bulk_items = count;
    }

    /// Hold every answer back by `delay` after the upstream answered.
    pub fn set_delay(&self, delay: Duration) {
        self.shared.behaviour.lock().unwrap().delay = delay;
    }

    /// Every request so far, in arrival order.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// The `_bulk` requests so far.
    pub fn bulk_requests(&self) -> Vec<Recorded> {
        self.requests().into_iter().filter(|r| is_bulk(&r.path)).collect()
    }
}

fn is_bulk(path: &str) -> bool {
    path.split('?').next().is_some_and(|p| p.ends_with("/_bulk"))
}

/// The `_id` of every action line of an NDJSON bulk body.
pub fn bulk_ids(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    let mut ids = Vec::new();
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    while let Some(line) = lines.next() {
        let Ok(Value::Object(action)) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let Some((op, meta)) = action.iter().next() else {
            continue;
        };
        if let Some(id) = meta.get("_id").and_then(Value::as_str) {
            ids.push(id.to_owned());
        }
        if op != "delete" {
            lines.next(); // the document
        }
    }
    ids
}

async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let at = Instant::now();
    let (parts, body) = request.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    let body = match axum::body::to_bytes(body, 512 * 1024 * 1024).await {
        Ok(b) => b,
        Err(e) => return plain(StatusCode::BAD_REQUEST, &format!("proxy: body: {e}")),
    };
    let bulk = is_bulk(&path);
    let index = {
        let mut requests = shared.requests.lock().unwrap();
        requests.push(Recorded {
            at,
            method: parts.method.to_string(),
            path: path.clone(),
            status: 0,
            retry_after: None,
            forwarded: false,
            ids: if bulk { bulk_ids(&body) } else { Vec::new() },
            rewritten: Vec::new(),
        });
        requests.len() - 1
    };
    let update = |f: &dyn Fn(&mut Recorded)| f(&mut shared.requests.lock().unwrap()[index]);

    // Decide without holding the lock across awaits.
    let (auth_ok, failure, delay) = {
        let mut b = shared.behaviour.lock().unwrap();
        let auth_ok = match &b.require_auth {
            None => true,
            Some(want) => parts
                .headers
                .get(header::AUTHORIZATION)
                .is_some_and(|v| v.as_bytes() == want.as_bytes()),
        };
        let failure = if auth_ok
            && b.failures
                .front()
                .is_some_and(|f| f.path_contains.as_deref().is_none_or(|p| path.contains(p)))
        {
            b.failures.pop_front()
        } else {
            None
        };
        (auth_ok, failure, b.delay)
    };

    if !auth_ok {
        update(&|r| r.status = 401);
        return unauthorized();
    }
    if let Some(failure) = failure {
        update(&|r| {
            r.status = failure.status;
            r.retry_after = failure.retry_after.clone();
        });
        let mut response = Response::builder()
            .status(StatusCode::from_u16(failure.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(after) = &failure.retry_after {
            response = response.header(header::RETRY_AFTER, after);
        }
        return response.body(Body::from(failure.body)).expect("response");
    }

    let mut upstream = shared
        .client
        .request(parts.method.clone(), format!("{}{path}", shared.upstream))
        .body(body.to_vec());
    for (name, value) in &parts.headers {
        if !is_hop_by_hop(name.as_str()) && name != header::HOST && name != header::CONTENT_LENGTH {
            upstream = upstream.header(name, value);
        }
    }
    let answer = match upstream.send().await {
        Ok(a) => a,
        Err(e) => {
            update(&|r| r.status = 502);
            return plain(StatusCode::BAD_GATEWAY, &format!("proxy: upstream: {e}"));
        }
    };
    update(&|r| r.forwarded = true);
    let status = answer.status();
    let headers = answer.headers().clone();
    let mut bytes = answer.bytes().await.map(|b| b.to_vec()).unwrap_or_default();

    if bulk && status.is_success() {
        let rewrite = {
            let mut b = shared.behaviour.lock().unwrap();
            std::mem::take(&mut b.fail_bulk_items)
        };
        if rewrite > 0 {
            match rewrite_bulk_items(&bytes, rewrite) {
                Some((rewritten_body, ids)) => {
                    bytes = rewritten_body;
                    update(&|r| r.rewritten = ids.clone());
                }
                // Too few items this time: keep the order for the next answer.
                None => shared.behaviour.lock().unwrap().fail_bulk_items = rewrite,
            }
        }
    }
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    update(&|r| r.status = status.as_u16());
    let mut response = Response::builder().status(status.as_u16());
    for (name, value) in &headers {
        if !is_hop_by_hop(name.as_str()) && name != header::CONTENT_LENGTH {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    response.body(Body::from(bytes)).expect("response")
}

/// Rewrite the 1st, 3rd, ... item (at most `count`, at most half) of a bulk answer to a 429.
fn rewrite_bulk_items(body: &[u8], count: usize) -> Option<(Vec<u8>, Vec<String>)> {
    let mut answer: Value = serde_json::from_slice(body).ok()?;
    let items = answer.get_mut("items")?.as_array_mut()?;
    if items.len() < 2 {
        return None;
    }
    let mut ids = Vec::new();
    let take = count.min(items.len() / 2);
    for item in items.iter_mut().step_by(2).take(take) {
        let result = item.as_object_mut()?.values_mut().next()?;
        let index = result.get("_index").cloned().unwrap_or(Value::Null);
        let id = result.get("_id").cloned().unwrap_or(Value::Null);
        ids.push(id.as_str().unwrap_or_default().to_owned());
        *result = json!({
            "_index": index,
            "_id": id,
            "status": 429,
            "error": {
                "type": "es_rejected_execution_exception",
                "reason": "rejected execution of primary operation [coordinating_and_primary_bytes=0, replica_bytes=0, all_bytes=0, primary_operation_bytes=0, max_coordinating_and_primary_bytes=0] (injected by the test proxy)"
            }
        });
    }
    answer["errors"] = Value::Bool(true);
    Some((serde_json::to_vec(&answer).ok()?, ids))
}

/// What Elasticsearch answers a request with missing or wrong credentials.
fn unauthorized() -> Response {
    let body = json!({
        "error": {
            "root_cause": [{
                "type": "security_exception",
                "reason": "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
                "additional_unsuccessful_credentials": "API key: invalid ApiKey value",
                "header": { "WWW-Authenticate": ["Basic realm=\"security\" charset=\"UTF-8\"", "ApiKey"] }
            }],
            "type": "security_exception",
            "reason": "unable to authenticate with provided credentials and anonymous access is not allowed for this request",
            "additional_unsuccessful_credentials": "API key: invalid ApiKey value",
            "header": { "WWW-Authenticate": ["Basic realm=\"security\" charset=\"UTF-8\"", "ApiKey"] }
        },
        "status": 401
    });
    let mut headers = HeaderMap::new();
    headers.append(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"security\" charset=\"UTF-8\""),
    );
    headers.append(header::WWW_AUTHENTICATE, HeaderValue::from_static("ApiKey"));
    let mut response = Response::builder()
        .status(StatusCode::UNAUTHORIZED)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .expect("response");
    response.headers_mut().extend(headers);
    response
}

fn plain(status: StatusCode, text: &str) -> Response {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(text.to_owned()))
        .expect("response")
}

fn is_hop_by_hop(name: &str) -> bool {
    matches!(
        name.to_ascii_lowercase().as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_ids_skips_documents_and_handles_deletes() {
        let body = b"{\"index\":{\"_index\":\"i\",\"_id\":\"a\"}}\n{\"x\":{\"_id\":\"not-me\"}}\n{\"delete\":{\"_index\":\"i\",\"_id\":\"b\"}}\n{\"create\":{\"_id\":\"c\"}}\n{}\n";
        assert_eq!(bulk_ids(body), ["a", "b", "c"]);
    }

    #[test]
    fn rewrite_touches_every_other_item_and_never_all() {
        let answer = json!({ "errors": false, "items": [
            { "index": { "_index": "i", "_id": "a", "status": 201 } },
            { "index": { "_index": "i", "_id": "b", "status": 201 } },
            { "index": { "_index": "i", "_id": "c", "status": 201 } },
        ]});
        let (body, ids) = rewrite_bulk_items(answer.to_string().as_bytes(), 5).unwrap();
        assert_eq!(ids, ["a"], "at most half of 3");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["errors"], true);
        assert_eq!(body["items"][0]["index"]["status"], 429);
        assert_eq!(body["items"][1]["index"]["status"], 201);
        let one = json!({ "errors": false, "items": [{ "index": { "_id": "a", "status": 201 } }] });
        assert!(rewrite_bulk_items(one.to_string().as_bytes(), 1).is_none());
    }
}

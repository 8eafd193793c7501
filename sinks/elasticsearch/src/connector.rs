//! The connector: checks the cluster at start, installs the index template, and turns a
//! delivery into `_bulk` requests whose answers it classifies (see `bulk.rs`).
//!
//! Whole-call answers: `429`, `408`, `5xx` and transport errors retry the whole call (with
//! the cluster's `Retry-After`, if a proxy in front of it sends one); `401`/`403` are fatal
//! (credentials rejected); `413` (the request is over the cluster's `http.max_content_length`)
//! rejects a lone document and is fatal for several (lower `target.max_bulk_bytes`); any
//! other `4xx` means the request itself is wrong for this cluster and is fatal too, so the
//! sink stops instead of dead-lettering every event.
//!
//! An erasure request splits the delivery: the events before it are indexed, then the lead's
//! documents are deleted (`erasure.rs`), then the request (without personal data) and the
//! events after it are indexed. An event of the lead after an erasure that could not run yet
//! is not sent: it waits with the request.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use nectar_sink::http::{classify_status, error_chain, excerpt, transport_error};
use nectar_sink::{Connector, Delivery, DeliveryError, Item, ItemResult, StartError};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue};
use serde_json::Value;

use crate::bulk::{self, BulkEntry, MAX_ID_BYTES};
use crate::config::{Auth, ElasticsearchConfig};
use crate::erasure::{self, Lead};
use crate::index::IndexTemplate;
use crate::mapping::{self, TemplateSettings};

/// Delivers events to an Elasticsearch or OpenSearch cluster.
#[derive(Debug)]
pub struct ElasticsearchConnector {
    client: reqwest::Client,
    base: String,
    index: IndexTemplate,
    pipeline: Option<String>,
    template: Option<(String, Value)>,
    max_bulk_bytes: usize,
    max_bulk_items: usize,
    /// Set once the cluster answered that it has no `_delete_by_query` (see `erasure.rs`).
    no_delete_by_query: AtomicBool,
}

impl ElasticsearchConnector {
    /// A connector for `config`; `request_timeout` bounds each HTTP request.
    pub fn new(config: &ElasticsearchConfig, request_timeout: Duration) -> anyhow::Result<Self> {
        let index = config.index_template().map_err(anyhow::Error::msg)?;
        let mut headers = HeaderMap::new();
        match config.auth() {
            Auth::None => {}
            Auth::Basic { username, password } => {
                use base64::Engine;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()));
                headers.insert(AUTHORIZATION, sensitive(&format!("Basic {token}"))?);
            }
            Auth::ApiKey(key) => {
                headers.insert(AUTHORIZATION, sensitive(&format!("ApiKey {}", key.expose().trim()))?);
            }
        }
        let mut builder = nectar_sink::http::client_builder(request_timeout).default_headers(headers);
        if let Some(path) = &config.ca_file {
            let pem = std::fs::read(path).map_err(|e| anyhow::anyhow!("target.ca_file: {}: {e}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| anyhow::anyhow!("target.ca_file: {}: {e}", path.display()))?;
            builder = builder.tls_certs_only(certs);
        }
        let client = builder.build()?;
        let template = config.install_template.then(|| {
            let settings = TemplateSettings {
                number_of_shards: config.number_of_shards,
                number_of_replicas: config.number_of_replicas,
            };
            (
                config.template_name(),
                mapping::index_template(&index, config.template_priority, &settings),
            )
        });
        Ok(Self {
            client,
            base: config.base_url(),
            index,
            pipeline: config.pipeline.clone(),
            template,
            max_bulk_bytes: config.max_bulk_bytes,
            max_bulk_items: config.max_bulk_items,
            no_delete_by_query: AtomicBool::new(false),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.base)
    }

    /// The `_bulk` URL, with the pipeline if one is configured.
    pub fn bulk_url(&self) -> String {
        match &self.pipeline {
            Some(p) => self.url(&format!("_bulk?pipeline={p}")),
            None => self.url("_bulk"),
        }
    }

    /// The NDJSON entry for `item`, or why the item can never be a document.
    pub fn entry(&self, item: &Item) -> Result<BulkEntry, ItemResult> {
        let id = item.event_id();
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return Err(ItemResult::reject(
                format!(
                    "event id of {} bytes cannot be a document _id (1 to {MAX_ID_BYTES} bytes)",
                    id.len()
                ),
                String::new(),
            ));
        }
        let envelope = &item.event.envelope;
        let index = self
            .index
            .render(envelope.occurred_at, &envelope.workspace_id)
            .map_err(|e| ItemResult::reject(format!("no index for this event: {e}"), String::new()))?;
        let recorded;
        let event = if item.event.is_erasure() {
            recorded = item.event.erasure_record();
            &recorded
        } else {
            &*item.event
        };
        let document = mapping::document(event)
            .map_err(|e| ItemResult::reject(format!("event does not serialize to JSON: {e}"), String::new()))?;
        BulkEntry::new(&index, id, &document)
            .map_err(|e| ItemResult::reject(format!("event does not serialize to JSON: {e}"), String::new()))
    }

    /// Index `entries` (taken), in requests of at most `max_bulk_bytes`, one after another
    /// (a whole-call failure of a later one fails the call, and the earlier ones are sent
    /// again on the retry, overwriting the same `_id`s); each answer goes to its item.
    async fn index(
        &self,
        entries: &mut Vec<(usize, BulkEntry)>,
        results: &mut [Option<ItemResult>],
    ) -> Result<(), DeliveryError> {
        let taken = std::mem::take(entries);
        let (positions, entries): (Vec<usize>, Vec<BulkEntry>) = taken.into_iter().unzip();
        for range in bulk::chunks(&entries, self.max_bulk_bytes) {
            let chunk: Vec<&BulkEntry> = entries[range.clone()].iter().collect();
            let answers = self.send(&chunk).await?;
            for (answer, &position) in answers.into_iter().zip(&positions[range]) {
                results[position] = Some(answer);
            }
        }
        Ok(())
    }

    /// Delete every document of `lead` in the sink's indices (see `erasure.rs`).
    async fn erase(&self, lead: &Lead, event_id: &str) -> Result<(), DeliveryError> {
        let pattern = self.index.pattern();
        self.post("_refresh", &erasure::refresh_path(&pattern), Body::None)
            .await?;
        let deleted = if self.no_delete_by_query.load(Ordering::Relaxed) {
            self.search_and_delete(lead, &pattern).await?
        } else {
            let path = erasure::delete_path(&pattern);
            match self
                .post("_delete_by_query", &path, Body::Json(&erasure::lead_query(lead)))
                .await
            {
                Ok(body) => erasure::classify_delete(&body)?,
                Err(Answer::NoSuchEndpoint) => {
                    tracing::warn!(
                        "the cluster has no _delete_by_query (no reindex module): erasure requests \
                         search the lead's documents and delete them by id"
                    );
                    self.no_delete_by_query.store(true, Ordering::Relaxed);
                    self.search_and_delete(lead, &pattern).await?
                }
                Err(Answer::Failed(e)) => return Err(e),
            }
        };
        tracing::info!(
            event_id,
            workspace_id = %lead.workspace_id,
            documents = deleted,
            index = %pattern,
            "erasure request: the lead's documents are deleted"
        );
        Ok(())
    }

    /// The fallback without `_delete_by_query`: search the lead's documents, delete them by
    /// id (refreshing), until none is found. Returns how many were deleted.
    async fn search_and_delete(&self, lead: &Lead, pattern: &str) -> Result<u64, DeliveryError> {
        let mut deleted = 0;
        loop {
            let body = erasure::search_body(lead);
            let answer = self
                .post("_search", &erasure::search_path(pattern), Body::Json(&body))
                .await?;
            let found = erasure::hits(&answer)?;
            if found.is_empty() {
                return Ok(deleted);
            }
            let answer = self
                .post(
                    "_bulk",
                    "_bulk?refresh=true",
                    Body::Ndjson(erasure::delete_body(&found)),
                )
                .await?;
            erasure::classify_bulk_delete(&answer)?;
            deleted += found.len() as u64;
        }
    }

    /// `POST` to `path`, classified like `_bulk`: the answer's text when it is a success.
    async fn post(&self, what: &str, path: &str, body: Body<'_>) -> Result<String, Answer> {
        let mut request = self.client.post(self.url(path));
        request = match body {
            Body::None => request,
            Body::Json(json) => request.json(json),
            Body::Ndjson(text) => request.header(CONTENT_TYPE, "application/x-ndjson").body(text),
        };
        let response = request.send().await.map_err(|e| transport_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| transport_error(&e))?;
        if erasure::no_such_endpoint(status.as_u16(), &text) && what == "_delete_by_query" {
            return Err(Answer::NoSuchEndpoint);
        }
        if let Some(e) = classify_status(status, &headers, &text) {
            return Err(Answer::Failed(match e {
                DeliveryError::Fatal(m) => DeliveryError::Fatal(format!("{what} for an erasure request: {m}")),
                retry => retry,
            }));
        }
        if !status.is_success() {
            return Err(Answer::Failed(DeliveryError::Fatal(format!(
                "{what} for an erasure request answered HTTP {}: {}",
                status.as_u16(),
                excerpt(&text)
            ))));
        }
        Ok(text)
    }

    /// Send one `_bulk` request with `entries`; one result per entry.
    async fn send(&self, entries: &[&BulkEntry]) -> Result<Vec<ItemResult>, DeliveryError> {
        let body: String = entries.iter().map(|e| e.lines.as_str()).collect();
        let response = self
            .client
            .post(self.bulk_url())
            .header(CONTENT_TYPE, "application/x-ndjson")
            .body(body)
            .send()
            .await
            .map_err(|e| transport_error(&e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.map_err(|e| transport_error(&e))?;
        if let Some(e) = classify_status(status, &headers, &text) {
            return Err(e);
        }
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            if let [entry] = entries {
                return Ok(vec![ItemResult::reject(
                    format!(
                        "document of {} bytes is larger than the cluster accepts (HTTP 413, http.max_content_length)",
                        entry.lines.len()
                    ),
                    excerpt(&text),
                )]);
            }
            return Err(DeliveryError::Fatal(format!(
                "HTTP 413: a _bulk request of {} documents is over the cluster's http.max_content_length; \
                 lower target.max_bulk_bytes (now {}): {}",
                entries.len(),
                self.max_bulk_bytes,
                excerpt(&text)
            )));
        }
        if !status.is_success() {
            return Err(DeliveryError::Fatal(format!(
                "_bulk answered HTTP {}: {}",
                status.as_u16(),
                excerpt(&text)
            )));
        }
        bulk::classify_response(&text, entries)
    }

    async fn get_root(&self) -> Result<Value, StartError> {
        let response = self
            .client
            .get(self.url(""))
            .send()
            .await
            .map_err(|e| StartError::Unreachable(format!("{}: {}", self.base, error_chain(&e))))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match start_status(status, &text, "GET /") {
            Some(e) => Err(e),
            None => serde_json::from_str(&text).map_err(|e| {
                StartError::Config(format!(
                    "{} is not Elasticsearch or OpenSearch (GET / is not JSON: {e}): {}",
                    self.base,
                    excerpt(&text)
                ))
            }),
        }
    }

    async fn check_pipeline(&self, pipeline: &str) -> Result<(), StartError> {
        let response = self
            .client
            .get(self.url(&format!("_ingest/pipeline/{pipeline}")))
            .send()
            .await
            .map_err(|e| StartError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match status {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND => Err(StartError::Config(format!(
                "target.pipeline: the cluster has no ingest pipeline `{pipeline}`"
            ))),
            // Reading pipelines needs a cluster privilege a write-only key may lack.
            StatusCode::FORBIDDEN => {
                tracing::warn!(pipeline, "cannot check that the ingest pipeline exists (HTTP 403)");
                Ok(())
            }
            s => match start_status(s, &text, "GET _ingest/pipeline") {
                Some(e) => Err(e),
                None => Ok(()),
            },
        }
    }

    async fn install_template(&self, name: &str, body: &Value) -> Result<(), StartError> {
        let response = self
            .client
            .put(self.url(&format!("_index_template/{name}")))
            .json(body)
            .send()
            .await
            .map_err(|e| StartError::Unreachable(error_chain(&e)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        match start_status(status, &text, &format!("PUT _index_template/{name}")) {
            Some(StartError::Credentials(m)) => Err(StartError::Credentials(format!(
                "{m} (installing the index template needs the manage_index_templates privilege; \
                 or set target.install_template = false)"
            ))),
            Some(e) => Err(e),
            None => {
                tracing::info!(template = name, pattern = %self.index.pattern(), "index template installed");
                Ok(())
            }
        }
    }
}

/// A request body of [`ElasticsearchConnector::post`].
enum Body<'a> {
    None,
    Json(&'a Value),
    Ndjson(String),
}

/// Why [`ElasticsearchConnector::post`] has no answer to read.
enum Answer {
    /// The cluster has no such endpoint (a module is missing).
    NoSuchEndpoint,
    Failed(DeliveryError),
}

impl From<DeliveryError> for Answer {
    fn from(e: DeliveryError) -> Self {
        Self::Failed(e)
    }
}

impl From<Answer> for DeliveryError {
    fn from(answer: Answer) -> Self {
        match answer {
            Answer::Failed(e) => e,
            Answer::NoSuchEndpoint => DeliveryError::Fatal("the cluster has no such endpoint".into()),
        }
    }
}

/// A header value that is never printed.
fn sensitive(value: &str) -> anyhow::Result<HeaderValue> {
    let mut v =
        HeaderValue::from_str(value).map_err(|_| anyhow::anyhow!("target: credentials are not a valid header"))?;
    v.set_sensitive(true);
    Ok(v)
}

/// The start-check meaning of a status: credentials, unreachable (retried), or wrong config.
/// The shared start-check rule, `None` for a 2xx.
fn start_status(status: StatusCode, body: &str, what: &str) -> Option<StartError> {
    (!status.is_success()).then(|| nectar_sink::http::start_status(status, what, body))
}

/// `(distribution, version)` from `GET /`: Elasticsearch has no `distribution`.
fn product(root: &Value) -> (String, String) {
    let version = &root["version"];
    let number = version["number"].as_str().unwrap_or("unknown").to_owned();
    let distribution = version["distribution"].as_str().unwrap_or("elasticsearch").to_owned();
    (distribution, number)
}

/// Whether this cluster has composable index templates (Elasticsearch 7.8+, every OpenSearch).
fn has_composable_templates(distribution: &str, version: &str) -> bool {
    if distribution == "opensearch" {
        return true;
    }
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (7, 8)
}

impl Connector for ElasticsearchConnector {
    fn name(&self) -> &str {
        "elasticsearch"
    }

    async fn start(&self) -> Result<(), StartError> {
        let root = self.get_root().await?;
        let (distribution, version) = product(&root);
        tracing::info!(url = %self.base, %distribution, %version, "cluster reachable");
        if let Some(pipeline) = &self.pipeline {
            self.check_pipeline(pipeline).await?;
        }
        if let Some((name, body)) = &self.template {
            if !has_composable_templates(&distribution, &version) {
                return Err(StartError::Config(format!(
                    "{distribution} {version} has no composable index templates (_index_template needs \
                     Elasticsearch 7.8+ or OpenSearch); set target.install_template = false"
                )));
            }
            self.install_template(name, body).await?;
        }
        Ok(())
    }

    fn max_items(&self) -> usize {
        self.max_bulk_items
    }

    async fn deliver(&self, delivery: Delivery<'_>) -> Result<Vec<ItemResult>, DeliveryError> {
        let items = delivery.items;
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        // Entries not sent yet, with their item's position.
        let mut pending: Vec<(usize, BulkEntry)> = Vec::with_capacity(items.len());
        // Leads whose erasure request waits for a retry: their later events wait with it.
        let mut waiting: HashSet<Lead> = HashSet::new();
        for (i, item) in items.iter().enumerate() {
            let lead = item.event.lead();
            if lead.as_ref().is_some_and(|l| waiting.contains(l)) {
                results[i] = Some(ItemResult::retry(
                    "an erasure request of this lead before it is not applied yet",
                ));
                continue;
            }
            if item.event.is_erasure() {
                let lead = match item.event.lead_to_erase() {
                    Ok(lead) => lead,
                    Err(reason) => {
                        results[i] = Some(ItemResult::reject(reason, String::new()));
                        continue;
                    }
                };
                // The events before the request are indexed before the delete runs.
                self.index(&mut pending, &mut results).await?;
                let earlier_not_indexed = items[..i].iter().zip(&results).any(|(earlier, result)| {
                    matches!(result, Some(ItemResult::Retry { .. })) && earlier.event.lead().as_ref() == Some(&lead)
                });
                if earlier_not_indexed {
                    results[i] = Some(ItemResult::retry(
                        "an earlier event of this lead is not indexed yet; the erasure runs after it is",
                    ));
                    waiting.insert(lead);
                    continue;
                }
                self.erase(&lead, item.event_id()).await?;
            }
            match self.entry(item) {
                Ok(entry) => pending.push((i, entry)),
                Err(rejected) => results[i] = Some(rejected),
            }
        }
        self.index(&mut pending, &mut results).await?;
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::retry("no answer for this document")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nectar_core::events::{Envelope, Event};

    use super::*;

    fn connector(toml: &str) -> ElasticsearchConnector {
        #[derive(serde::Deserialize)]
        struct Wrapper {
            target: ElasticsearchConfig,
        }
        let config = <figment::providers::Toml as figment::providers::Format>::string(toml);
        let config: Wrapper = figment::Figment::from(config).extract().unwrap();
        ElasticsearchConnector::new(&config.target, Duration::from_secs(5)).unwrap()
    }

    fn item(id: &str, occurred_at: i64) -> Item {
        let event = Event::new(Envelope {
            event_id: id.into(),
            event_type: "form.submitted".into(),
            occurred_at,
            received_at: occurred_at,
            source: "form:contact".into(),
            workspace_id: "acme".into(),
            lead_key: None,
            trace_parent: None,
            consent: None,
        });
        Item {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            value: Vec::new(),
            headers: Vec::new(),
            timestamp: None,
            event: Arc::new(event),
            attempts: 0,
            maybe_delivered: false,
        }
    }

    #[test]
    fn entry_targets_the_event_day_with_the_event_id() {
        let c = connector("[target]");
        let entry = c.entry(&item("ev-1", 1_700_000_000_000)).unwrap();
        assert_eq!(entry.index, "nectar-events-2023.11.14");
        assert_eq!(entry.id, "ev-1");
        let doc: Value = serde_json::from_str(entry.lines.lines().nth(1).unwrap()).unwrap();
        assert_eq!(doc["envelope"]["event_id"], "ev-1");
        assert_eq!(doc["@timestamp"], 1_700_000_000_000_i64);
        assert_eq!(c.bulk_url(), "http://127.0.0.1:9200/_bulk");
        assert_eq!(c.max_items(), 1000);
    }

    #[test]
    fn events_that_cannot_be_documents_are_rejected_before_sending() {
        let c = connector("[target]");
        let long = "x".repeat(MAX_ID_BYTES + 1);
        assert!(matches!(c.entry(&item(&long, 0)), Err(ItemResult::Reject { reason, .. }) if reason.contains("_id")));
        assert!(
            matches!(c.entry(&item("ev", i64::MAX)), Err(ItemResult::Reject { reason, .. }) if reason.contains("no index"))
        );
    }

    #[test]
    fn pipeline_and_path_prefix_shape_the_bulk_url() {
        let c = connector("[target]\nurl = \"https://es.example.com/es/\"\npipeline = \"nectar\"");
        assert_eq!(c.bulk_url(), "https://es.example.com/es/_bulk?pipeline=nectar");
    }

    #[test]
    fn start_statuses_are_classified() {
        assert!(
            matches!(start_status(StatusCode::UNAUTHORIZED, "{}", "GET /"), Some(StartError::Credentials(m)) if m.contains("401"))
        );
        assert!(matches!(
            start_status(StatusCode::FORBIDDEN, "", "GET /"),
            Some(StartError::Credentials(_))
        ));
        assert!(matches!(
            start_status(StatusCode::SERVICE_UNAVAILABLE, "", "GET /"),
            Some(StartError::Unreachable(_))
        ));
        assert!(matches!(
            start_status(StatusCode::BAD_REQUEST, "", "PUT"),
            Some(StartError::Config(_))
        ));
        assert_eq!(start_status(StatusCode::OK, "", "GET /"), None);
    }

    #[test]
    fn versions_with_composable_templates() {
        let os: Value = serde_json::json!({"version": {"distribution": "opensearch", "number": "1.3.0"}});
        let (d, v) = product(&os);
        assert!(has_composable_templates(&d, &v));
        let es: Value = serde_json::json!({"version": {"number": "8.11.1", "build_flavor": "default"}});
        assert_eq!(product(&es).0, "elasticsearch");
        assert!(has_composable_templates("elasticsearch", "8.11.1"));
        assert!(has_composable_templates("elasticsearch", "7.8.0"));
        assert!(!has_composable_templates("elasticsearch", "7.7.1"));
        assert!(!has_composable_templates("elasticsearch", "6.8.23"));
    }

    #[test]
    fn credentials_are_sent_but_never_printed() {
        let c = connector("[target]\napi_key = \"c2VjcmV0\"");
        assert!(!format!("{c:?}").contains("c2VjcmV0"));
        let c = connector("[target]\nusername = \"elastic\"\npassword = \"changeme\"");
        assert!(!format!("{c:?}").contains("changeme"));
    }
}

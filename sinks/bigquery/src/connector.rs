//! The BigQuery connector: prepares the table at start and streams each batch with
//! `tabledata.insertAll`.
//!
//! Guarantee: every event is inserted with `insertId` = its event id, and offsets are
//! committed only after BigQuery answered that the row was inserted. BigQuery deduplicates
//! rows with the same `insertId` on a best-effort basis for at least one minute
//! (<https://cloud.google.com/bigquery/docs/streaming-data-into-bigquery#dataconsistency>),
//! so a redelivery after a crash or a lost answer within that window shows once; a
//! redelivery after it (a sink down for minutes with a batch in flight) can show twice.
//! Queries that must be exact deduplicate on `event_id`. Exactly-once needs the Storage
//! Write API's committed streams with offsets (gRPC), the planned path.

use std::time::Duration;

use nectar_sink::http::{error_chain, excerpt, transport_error};
use nectar_sink::{Connector, Delivery, DeliveryError, Item, ItemResult, StartError};
use reqwest::header::HeaderMap;
use reqwest::{RequestBuilder, StatusCode};
use serde::Deserialize;
use serde_json::json;

use crate::answer::{InsertAnswer, api_error, is_quota_reason, read_insert_answer};
use crate::auth::ServiceAccountKey;
use crate::config::BigQueryConfig;
use crate::request;
use crate::schema::{self, Column};
use nectar_sink::auth::{AuthError, TokenSource};

/// The record whose fields become top-level columns.
const HOISTED: &[&str] = &["envelope"];

/// Streams events into one BigQuery table.
#[derive(Debug)]
pub struct BigQueryConnector {
    http: reqwest::Client,
    tokens: TokenSource,
    /// The service account (for messages).
    account: String,
    config: BigQueryConfig,
    columns: Vec<Column>,
    table_url: String,
}

/// A call's answer, read whole.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

enum CallError {
    Token(AuthError),
    Transport(reqwest::Error),
}

impl BigQueryConnector {
    pub fn new(config: &BigQueryConfig, request_timeout: Duration) -> anyhow::Result<Self> {
        let key = match (&config.credentials_file, &config.credentials_json) {
            (Some(path), _) => {
                ServiceAccountKey::from_file(path).map_err(|e| anyhow::anyhow!("target.credentials_file: {e}"))?
            }
            (None, Some(json)) => ServiceAccountKey::from_json(json.expose())
                .map_err(|e| anyhow::anyhow!("target.credentials_json: {e}"))?,
            (None, None) => anyhow::bail!("target.credentials_file: required"),
        };
        let http = nectar_sink::http::client(request_timeout)?;
        let key_name = if config.credentials_file.is_some() {
            "target.credentials_file"
        } else {
            "target.credentials_json"
        };
        let tokens = key
            .token_source(&config.scope, http.clone())
            .map_err(|e| anyhow::anyhow!("{key_name}: {e}"))?;
        let account = key.client_email.clone();
        let columns = event_columns()?;
        let api = config.api_url.trim_end_matches('/');
        let table_url = format!(
            "{api}/bigquery/v2/projects/{}/datasets/{}/tables/{}",
            config.project, config.dataset, config.table
        );
        Ok(Self {
            http,
            tokens,
            account,
            config: config.clone(),
            columns,
            table_url,
        })
    }

    fn tables_url(&self) -> String {
        self.table_url
            .rsplit_once('/')
            .map(|(base, _)| base.to_owned())
            .unwrap_or_default()
    }

    /// Send a request with the current access token; on 401, once more with a new one.
    async fn call(&self, build: impl Fn(&str) -> RequestBuilder) -> Result<Answer, CallError> {
        let mut token = self.tokens.token().await.map_err(CallError::Token)?;
        let mut refreshed = false;
        loop {
            let response = build(&token)
                .bearer_auth(&token)
                .send()
                .await
                .map_err(CallError::Transport)?;
            let status = response.status();
            let headers = response.headers().clone();
            let body = response.text().await.map_err(CallError::Transport)?;
            if status == StatusCode::UNAUTHORIZED && !refreshed {
                tracing::info!("BigQuery refused the access token (HTTP 401); getting a new one");
                token = self.tokens.refresh(&token).await.map_err(CallError::Token)?;
                refreshed = true;
                continue;
            }
            return Ok(Answer { status, headers, body });
        }
    }

    /// The table's schema fields, or `None` when it does not exist.
    async fn get_table(&self) -> Result<Option<Vec<schema::TableField>>, StartError> {
        let answer = self
            .call(|_| self.http.get(&self.table_url))
            .await
            .map_err(|e| start_error(e, "reading the table"))?;
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(self.start_status(&answer, "reading the table (tables.get)"));
        }
        #[derive(Deserialize)]
        struct Table {
            #[serde(default)]
            schema: Option<TableSchema>,
        }
        #[derive(Deserialize)]
        struct TableSchema {
            #[serde(default)]
            fields: Vec<schema::TableField>,
        }
        let table: Table = serde_json::from_str(&answer.body).map_err(|e| {
            StartError::Unreachable(format!("unreadable tables.get answer ({e}): {}", excerpt(&answer.body)))
        })?;
        Ok(Some(table.schema.map(|s| s.fields).unwrap_or_default()))
    }

    /// `tables.insert` with the derived schema. `Ok(false)`: it exists already (another
    /// instance created it first).
    async fn create_table(&self) -> Result<bool, StartError> {
        let mut table = json!({
            "tableReference": {
                "projectId": self.config.project,
                "datasetId": self.config.dataset,
                "tableId": self.config.table,
            },
            "description": "Nectar events (io.nectar.Event), streamed by nectar-sink-bigquery; insertId = event_id.",
            "schema": {"fields": schema::table_fields(&self.columns)},
        });
        if self.config.partition_by_day {
            table["timePartitioning"] = json!({"type": "DAY", "field": "occurred_at"});
            table["clustering"] = json!({"fields": ["workspace_id", "event_type"]});
        }
        let url = self.tables_url();
        let answer = self
            .call(|_| self.http.post(&url).json(&table))
            .await
            .map_err(|e| start_error(e, "creating the table"))?;
        match answer.status {
            s if s.is_success() => Ok(true),
            StatusCode::CONFLICT => Ok(false),
            StatusCode::NOT_FOUND => Err(StartError::Config(format!(
                "dataset {}:{} does not exist ({}); create it, or fix target.project/target.dataset",
                self.config.project,
                self.config.dataset,
                google_detail(&answer.body)
            ))),
            StatusCode::BAD_REQUEST => Err(StartError::Config(format!(
                "BigQuery refused to create {} with the derived schema: {}",
                self.config.table_name(),
                google_detail(&answer.body)
            ))),
            _ => Err(self.start_status(&answer, "creating the table (tables.insert)")),
        }
    }

    fn start_status(&self, answer: &Answer, doing: &str) -> StartError {
        let detail = google_detail(&answer.body);
        let reason = api_error(&answer.body)
            .map(|e| e.reason().to_owned())
            .unwrap_or_default();
        if answer.status == StatusCode::FORBIDDEN && is_quota_reason(&reason) {
            return StartError::Unreachable(format!("{doing}: BigQuery quota (HTTP 403 {detail})"));
        }
        // The shared rule, with what to check when the account is refused.
        match nectar_sink::http::start_status(answer.status, doing, &detail) {
            StartError::Credentials(m) => StartError::Credentials(format!(
                "{m}: {} was refused; the service account needs the BigQuery Data Editor role on dataset {}:{}",
                self.account.as_str(),
                self.config.project,
                self.config.dataset
            )),
            other => other,
        }
    }

    fn check(&self, fields: &[schema::TableField]) -> Result<(), StartError> {
        let problems = schema::check_table(&self.columns, fields);
        if problems.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
        Err(StartError::Config(format!(
            "table {} cannot take the events: {}. Add or change these columns (bq update), or point \
             target.table at a new table for the sink to create",
            self.config.table_name(),
            list.join("; ")
        )))
    }

    /// One `insertAll` of `rows` (serialized); the answer per row.
    async fn insert(&self, rows: &[&str]) -> Result<InsertAnswer, DeliveryError> {
        let body = request::body(
            rows.iter().copied(),
            self.config.skip_invalid_rows,
            self.config.ignore_unknown_values,
        );
        let url = format!("{}/insertAll", self.table_url);
        let answer = match self
            .call(|_| {
                self.http
                    .post(&url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body.clone())
            })
            .await
        {
            Ok(a) => a,
            Err(CallError::Transport(e)) => return Err(transport_error(&e)),
            Err(CallError::Token(e)) => return Err(delivery_token_error(e)),
        };
        let table = self.config.table_name();
        Ok(
            match read_insert_answer(answer.status, &answer.headers, &answer.body, rows.len(), &table) {
                InsertAnswer::Unauthorized(detail) => InsertAnswer::Whole(DeliveryError::Fatal(format!(
                    "credentials rejected: BigQuery refused a fresh access token for {} (HTTP 401 {detail})",
                    self.account.as_str()
                ))),
                other => other,
            },
        )
    }
}

/// The table's columns, derived from `io.nectar.Event`.
pub fn event_columns() -> anyhow::Result<Vec<Column>> {
    schema::derive_columns(&nectar_core::schema::EVENT.resolved_json(), HOISTED)
        .map_err(|e| anyhow::anyhow!("io.nectar.Event has no BigQuery table schema: {e}"))
}

fn google_detail(body: &str) -> String {
    match api_error(body) {
        Some(e) if !e.message.is_empty() => match e.reason() {
            "" => e.message,
            reason => format!("{reason}: {}", e.message),
        },
        _ => excerpt(body),
    }
}

fn start_error(e: CallError, doing: &str) -> StartError {
    match e {
        CallError::Token(AuthError::Rejected(detail)) => StartError::Credentials(format!(
            "{detail}. Check the key file (target.credentials_file): the key may be deleted or the account disabled"
        )),
        CallError::Token(e @ AuthError::Unavailable(_)) => StartError::Unreachable(e.to_string()),
        CallError::Transport(e) => StartError::Unreachable(format!("{doing}: {}", error_chain(&e.without_url()))),
    }
}

fn delivery_token_error(e: AuthError) -> DeliveryError {
    match e {
        AuthError::Rejected(m) => DeliveryError::Fatal(format!("credentials rejected: {m}")),
        e @ AuthError::Unavailable(_) => DeliveryError::retry(e.to_string()),
    }
}

/// A row ready to send: which item it is, and its serialized `{insertId, json}`.
struct Prepared {
    item: usize,
    text: String,
}

impl Connector for BigQueryConnector {
    fn name(&self) -> &str {
        "bigquery"
    }

    async fn start(&self) -> Result<(), StartError> {
        match self.get_table().await? {
            Some(fields) => self.check(&fields),
            None if self.config.create_table => {
                if self.create_table().await? {
                    tracing::info!(table = %self.config.table_name(), "created the table");
                    return Ok(());
                }
                let fields = self.get_table().await?.ok_or_else(|| {
                    StartError::Unreachable("the table exists (HTTP 409) but cannot be read yet".into())
                })?;
                self.check(&fields)
            }
            None => Err(StartError::Config(format!(
                "table {} does not exist and target.create_table is false",
                self.config.table_name()
            ))),
        }
    }

    fn max_items(&self) -> usize {
        self.config.max_rows_per_request
    }

    async fn deliver(&self, delivery: Delivery<'_>) -> Result<Vec<ItemResult>, DeliveryError> {
        let items: &[Item] = delivery.items;
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut prepared = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match self.prepare(item) {
                Ok(text) => prepared.push(Prepared { item: i, text }),
                Err(rejected) => results[i] = Some(rejected),
            }
        }
        let sizes: Vec<usize> = prepared.iter().map(|p| p.text.len()).collect();
        // Requests to send, each a list of indexes into `prepared`; a request BigQuery refuses
        // as a whole (400) is split in halves until the row it refuses stands alone.
        let mut queue: Vec<Vec<usize>> = request::plan(&sizes, self.config.max_request_bytes)
            .into_iter()
            .rev()
            .map(|run| run.collect())
            .collect();
        let mut sent_any = false;
        while let Some(run) = queue.pop() {
            if let [only] = run.as_slice()
                && !request::fits(sizes[*only], self.config.max_request_bytes)
            {
                results[prepared[*only].item] = Some(ItemResult::reject(
                    format!(
                        "the row is {} bytes; an insertAll request takes at most {} (target.max_request_bytes)",
                        sizes[*only], self.config.max_request_bytes
                    ),
                    "",
                ));
                continue;
            }
            let rows: Vec<&str> = run.iter().map(|i| prepared[*i].text.as_str()).collect();
            match self.insert(&rows).await? {
                InsertAnswer::Rows(row_results) => {
                    sent_any = true;
                    for (i, result) in run.iter().zip(row_results) {
                        results[prepared[*i].item] = Some(result);
                    }
                }
                InsertAnswer::BadRequest(detail) if run.len() > 1 => {
                    tracing::warn!(
                        rows = run.len(),
                        "BigQuery refused the request ({detail}); splitting it"
                    );
                    let (first, second) = run.split_at(run.len() / 2);
                    queue.push(second.to_vec());
                    queue.push(first.to_vec());
                }
                InsertAnswer::BadRequest(detail) => {
                    results[prepared[run[0]].item] = Some(ItemResult::reject(
                        format!("BigQuery refused the row: {detail}"),
                        detail,
                    ));
                }
                InsertAnswer::Whole(e @ DeliveryError::Fatal(_)) => return Err(e),
                InsertAnswer::Whole(e) if !sent_any => return Err(e),
                InsertAnswer::Whole(DeliveryError::Retry { reason, after }) => {
                    // Earlier requests of this call went in: report them, retry the rest.
                    for i in run.iter().chain(queue.iter().flatten()) {
                        results[prepared[*i].item] = Some(ItemResult::Retry {
                            reason: reason.clone(),
                            after,
                        });
                    }
                    queue.clear();
                }
                InsertAnswer::Unauthorized(detail) => {
                    return Err(DeliveryError::Fatal(format!("credentials rejected: {detail}")));
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::retry("internal: no answer for the row")))
            .collect())
    }
}

impl BigQueryConnector {
    /// The serialized row of an item, or its rejection when the event does not fit the table.
    fn prepare(&self, item: &Item) -> Result<String, ItemResult> {
        let event = serde_json::to_value(&*item.event)
            .map_err(|e| ItemResult::reject(format!("the event cannot be written as JSON: {e}"), ""))?;
        let row = schema::to_row(&self.columns, &event)
            .map_err(|e| ItemResult::reject(format!("the event does not fit the table schema: {e}"), ""))?;
        Ok(request::row_text(&request::insert_id(item.event_id()), &row))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_schema_derives() {
        let columns = event_columns().expect("derives");
        assert_eq!(columns[0].name, "event_id");
        assert!(columns.iter().any(|c| c.name == "occurred_at"));
    }
}

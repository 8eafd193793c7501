//! The Slack connector: one message per event, posted with `chat.postMessage` (bot mode) or an
//! incoming webhook (webhook mode).
//!
//! Guarantee, bot mode: each event is posted once. Slack has no idempotency key, so the event
//! id travels as message metadata and an event that may already have been posted is looked up
//! in the channel's history first ([`crate::lookup`]): every record the runtime flags
//! `maybe_delivered` (read after an assignment, before this instance committed: a crashed
//! previous owner may have posted it), and every event whose own earlier post failed without
//! a clear answer (a timeout, a 5xx, Slack's `internal_error`/`fatal_error`, a call the runtime
//! abandoned). The guarantee ends where the lookup does: messages older than
//! `lookup_window_secs`, a message deleted from the channel, or a zombie's post that lands
//! after the lookup read the history.
//!
//! Guarantee, webhook mode: at least once. A webhook message cannot be looked up; an event is
//! posted again when a crash or an unclear answer came between its post and the commit.
//! Duplicates are bounded by the requests in flight: one (`max_items` = 1, concurrency 1).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use nectar_sink::http::{error_chain, excerpt, transport_error};
use nectar_sink::{Connector, Delivery, DeliveryError, Item, ItemResult, StartError};
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use serde_json::Value;

use crate::classify::{self, Failure};
use crate::config::{Mode, SlackConfig, check_webhook_url};
use crate::lookup::{Ledger, MAX_PAGES, PAGE_LIMIT, now_secs, ts_arg};
use crate::request::{self, JSON_CONTENT_TYPE};
use crate::template::{Rendered, Templates};

/// At most this many events are remembered as possibly posted (a bound on memory; an event
/// forgotten here is still looked up when the runtime flags it `maybe_delivered`).
const MAX_UNCERTAIN: usize = 10_000;

/// Posts events to Slack. See the module documentation for the guarantee.
#[derive(Debug)]
pub struct SlackConnector {
    config: SlackConfig,
    templates: Templates,
    http: reqwest::Client,
    /// Web API base URL.
    api: Url,
    /// `Bearer xoxb-…` (bot mode).
    authorization: Option<String>,
    webhook: Option<Url>,
    ledger: Ledger,
    /// Events whose post was sent but not clearly answered.
    uncertain: Mutex<HashSet<String>>,
    /// Slack asked (`Retry-After`) for no requests before this instant.
    lookup_window: Duration,
}

impl SlackConnector {
    pub fn new(config: SlackConfig, request_timeout: Duration) -> anyhow::Result<Self> {
        let templates = Templates::new(&config).map_err(anyhow::Error::msg)?;
        let http = nectar_sink::http::client(request_timeout)?;
        let webhook = match (&config.mode, &config.webhook_url) {
            (Mode::Webhook, Some(url)) => {
                Some(check_webhook_url(url.expose()).map_err(|e| anyhow::anyhow!("target.webhook_url: {e}"))?)
            }
            _ => None,
        };
        let api = Url::parse(&config.api_url).map_err(|e| anyhow::anyhow!("target.api_url: {e}"))?;
        Ok(Self {
            api,
            authorization: config.token.as_ref().map(|t| format!("Bearer {}", t.expose().trim())),
            webhook,
            templates,
            http,
            ledger: Ledger::default(),
            uncertain: Mutex::new(HashSet::new()),
            lookup_window: Duration::from_secs(config.lookup_window_secs),
            config,
        })
    }

    /// `<api_url>/<method>?<params>`.
    fn method_url(&self, method: &str, params: &[(&str, &str)]) -> Url {
        let mut url = self.api.clone();
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.pop_if_empty().push(method);
        }
        if !params.is_empty() {
            url.query_pairs_mut().extend_pairs(params);
        }
        url
    }

    fn with_auth(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.authorization {
            Some(a) => request.header(AUTHORIZATION, a),
            None => request,
        }
    }

    /// Send a Web API request and read its answer.
    async fn call(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value, Failure> {
        let (status, headers, body) = send(request).await.map_err(|e| Failure::Call {
            // A request that never connected was never posted.
            maybe_posted: !e.is_connect(),
            error: transport_error(&e).prefixed(&format!("{what}: ")),
        })?;
        let json = classify::web_api(status, &headers, &body, what)?;
        log_warnings(&json, what);
        Ok(json)
    }

    /// `chat.postMessage`; the posted message's `ts` (seconds).
    async fn post_message(&self, channel: &str, message: &Rendered, event_id: &str) -> Result<f64, Failure> {
        let body = request::post_message(channel, message, event_id, self.config.unfurl);
        let request = self
            .with_auth(self.http.post(self.method_url("chat.postMessage", &[])))
            .header(CONTENT_TYPE, JSON_CONTENT_TYPE)
            .body(body.to_string());
        let json = self.call(request, &format!("chat.postMessage to {channel}")).await?;
        Ok(json
            .get("ts")
            .and_then(Value::as_str)
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(now_secs))
    }

    /// Whether `channel` already holds the message of `event_id` (see [`crate::lookup`]).
    async fn already_posted(&self, channel: &str, event_id: &str) -> Result<bool, Failure> {
        let log = self.ledger.channel(channel);
        let mut log = log.lock().await;
        if log.contains(event_id) {
            return Ok(true);
        }
        let started = now_secs();
        let oldest = ts_arg(log.read_from(started, self.lookup_window));
        let what = format!("conversations.history of {channel}");
        let mut cursor: Option<String> = None;
        let mut pages = 0;
        loop {
            let limit = PAGE_LIMIT.to_string();
            let mut query = vec![
                ("channel", channel),
                ("oldest", oldest.as_str()),
                ("inclusive", "true"),
                ("include_all_metadata", "true"),
                ("limit", limit.as_str()),
            ];
            if let Some(c) = &cursor {
                query.push(("cursor", c.as_str()));
            }
            let request = self.with_auth(self.http.get(self.method_url("conversations.history", &query)));
            let json = self.call(request, &what).await?;
            let messages = json.get("messages").and_then(Value::as_array);
            log.add_page(messages.map(Vec::as_slice).unwrap_or_default());
            pages += 1;
            cursor = json
                .pointer("/response_metadata/next_cursor")
                .and_then(Value::as_str)
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            let has_more = json.get("has_more").and_then(Value::as_bool).unwrap_or(false);
            if cursor.is_none() || !has_more {
                break;
            }
            if pages >= MAX_PAGES {
                tracing::warn!(
                    channel,
                    pages,
                    "the duplicate lookup stopped after {MAX_PAGES} pages of history; older messages are not checked"
                );
                break;
            }
        }
        log.read_done(started, self.lookup_window);
        tracing::debug!(channel, event_id, pages, "read the channel's history for posted events");
        Ok(log.contains(event_id))
    }

    fn is_uncertain(&self, event_id: &str) -> bool {
        self.uncertain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(event_id)
    }

    /// Remember that `event_id`'s post is being sent: if the answer never comes (a timeout,
    /// the runtime abandoning the call), the next attempt looks it up first.
    fn mark_uncertain(&self, event_id: &str) {
        let mut set = self.uncertain.lock().unwrap_or_else(|e| e.into_inner());
        if set.len() >= MAX_UNCERTAIN {
            set.clear();
        }
        set.insert(event_id.to_owned());
    }

    fn settle(&self, event_id: &str) {
        self.uncertain
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(event_id);
    }

    async fn deliver_bot(&self, item: &Item) -> Result<ItemResult, DeliveryError> {
        let event_id = item.event_id();
        let route = match request::route(&self.config, &item.event.envelope.event_type) {
            Ok(r) => r,
            Err(reason) => return Ok(ItemResult::reject(reason, "")),
        };
        let Some(channel) = route.channel else {
            return Ok(ItemResult::reject("bot mode route without a channel", ""));
        };
        let message = match self
            .templates
            .render(self.templates.for_route(route.index), &item.event)
        {
            Ok(m) => m,
            Err(reason) => return Ok(ItemResult::reject(reason, "")),
        };
        if item.maybe_delivered || self.is_uncertain(event_id) {
            match self.already_posted(channel, event_id).await {
                Ok(true) => {
                    tracing::info!(event_id, channel, "already posted (found in the channel's history)");
                    self.settle(event_id);
                    return Ok(ItemResult::Delivered);
                }
                Ok(false) => {}
                Err(failure) => return into_result(failure),
            }
        }
        self.mark_uncertain(event_id);
        match self.post_message(channel, &message, event_id).await {
            Ok(ts) => {
                self.settle(event_id);
                self.ledger.record(channel, event_id, ts).await;
                Ok(ItemResult::Delivered)
            }
            Err(failure) => {
                if !failure.maybe_posted() {
                    self.settle(event_id);
                }
                into_result(failure)
            }
        }
    }

    async fn deliver_webhook(&self, item: &Item) -> Result<ItemResult, DeliveryError> {
        let Some(url) = &self.webhook else {
            return Err(DeliveryError::Fatal("webhook mode without target.webhook_url".into()));
        };
        let route = match request::route(&self.config, &item.event.envelope.event_type) {
            Ok(r) => r,
            Err(reason) => return Ok(ItemResult::reject(reason, "")),
        };
        let message = match self
            .templates
            .render(self.templates.for_route(route.index), &item.event)
        {
            Ok(m) => m,
            Err(reason) => return Ok(ItemResult::reject(reason, "")),
        };
        let body = request::webhook(&message, self.config.unfurl);
        let request = self
            .http
            .post(url.clone())
            .header(CONTENT_TYPE, JSON_CONTENT_TYPE)
            .body(body.to_string());
        let (status, headers, text) = send(request)
            .await
            .map_err(|e| transport_error(&e).prefixed("incoming webhook: "))?;
        match classify::webhook(status, &headers, &text) {
            Ok(()) => Ok(ItemResult::Delivered),
            Err(failure) => into_result(failure),
        }
    }

    /// The templates render a sample lead: a template that fails on it is a configuration
    /// error, found before any event is consumed.
    fn check_templates(&self) -> Result<(), StartError> {
        let sample = nectar_sink::template::sample_event();
        let mut refs = vec![("target.template", self.templates.for_route(None))];
        for i in 0..self.config.routes.len() {
            if self.config.routes[i].text.is_some() {
                refs.push(("target.routes", self.templates.for_route(Some(i))));
            }
        }
        for (key, template) in refs {
            self.templates
                .render(template, &sample)
                .map_err(|e| StartError::Config(format!("{key}: {e} (rendering a sample lead)")))?;
        }
        Ok(())
    }

    /// A Web API call of the start check.
    async fn start_call(&self, request: reqwest::RequestBuilder, what: &str) -> Result<Value, StartError> {
        let (status, _, body) = send(request)
            .await
            .map_err(|e| StartError::Unreachable(format!("{what}: {}", error_chain(&e))))?;
        classify::start_answer(status, &body, what)
    }

    async fn start_bot(&self) -> Result<(), StartError> {
        let auth = self
            .start_call(
                self.with_auth(self.http.post(self.method_url("auth.test", &[])))
                    .header(CONTENT_TYPE, JSON_CONTENT_TYPE)
                    .body("{}"),
                "auth.test",
            )
            .await?;
        let field = |k: &str| auth.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let (team, user, bot_id) = (field("team"), field("user"), field("bot_id"));
        tracing::info!(team, user, bot_id, "Slack accepted the token");
        if !self.config.check_channels {
            return Ok(());
        }
        for (key, channel) in self.config.channels() {
            let info = self
                .start_call(
                    self.with_auth(
                        self.http
                            .get(self.method_url("conversations.info", &[("channel", channel.as_str())])),
                    ),
                    &format!("{key}: conversations.info of {channel}"),
                )
                .await?;
            let name = info.pointer("/channel/name").and_then(Value::as_str).unwrap_or("?");
            if info.pointer("/channel/is_archived").and_then(Value::as_bool) == Some(true) {
                return Err(StartError::Config(format!(
                    "{key}: channel {channel} (#{name}) is archived"
                )));
            }
            if info.pointer("/channel/is_member").and_then(Value::as_bool) == Some(false) {
                return Err(StartError::Config(format!(
                    "{key}: the app is not a member of channel {channel} (#{name}): invite it (`/invite @<app>`); \
                     the duplicate lookup reads the channel's history"
                )));
            }
            // The permission the duplicate lookup needs (channels:history / groups:history).
            self.start_call(
                self.with_auth(self.http.get(self.method_url(
                    "conversations.history",
                    &[("channel", channel.as_str()), ("limit", "1")],
                ))),
                &format!("{key}: conversations.history of {channel}"),
            )
            .await?;
        }
        Ok(())
    }
}

impl Connector for SlackConnector {
    fn name(&self) -> &str {
        "slack"
    }

    async fn start(&self) -> Result<(), StartError> {
        self.check_templates()?;
        match self.config.mode {
            Mode::Bot => self.start_bot().await,
            Mode::Webhook => {
                // A webhook cannot be tested without posting to its channel: its URL's shape is
                // all there is to check (done when the configuration was read).
                tracing::info!(
                    "webhook mode: the webhook URL cannot be tested without posting; delivery is at least once"
                );
                Ok(())
            }
        }
    }

    /// One message per call: Slack takes one message per request.
    fn max_items(&self) -> usize {
        1
    }

    async fn deliver(&self, delivery: Delivery<'_>) -> Result<Vec<ItemResult>, DeliveryError> {
        // A 429's Retry-After (whole request or item) is held by the runtime: no request of
        // this sink leaves before it has passed (Slack's limit is per app and channel).
        let mut results = Vec::with_capacity(delivery.items.len());
        for (i, item) in delivery.items.iter().enumerate() {
            let result = match self.config.mode {
                Mode::Bot => self.deliver_bot(item).await,
                Mode::Webhook => self.deliver_webhook(item).await,
            };
            match result {
                Ok(r) => results.push(r),
                // Items before this one are posted: fail only the rest, counted.
                Err(DeliveryError::Retry { reason, after }) if i > 0 => {
                    results.push(ItemResult::Retry { reason, after });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(results)
    }
}

async fn send(
    request: reqwest::RequestBuilder,
) -> Result<(reqwest::StatusCode, reqwest::header::HeaderMap, String), reqwest::Error> {
    let response = request.send().await?;
    let status = response.status();
    let headers = response.headers().clone();
    let body = response.text().await?;
    Ok((status, headers, body))
}

fn into_result(failure: Failure) -> Result<ItemResult, DeliveryError> {
    match failure {
        Failure::Call { error, .. } => Err(error),
        Failure::Item(result) => Ok(result),
    }
}

/// Slack's warnings on a successful call (`missing_charset`, `message_truncated`, …).
fn log_warnings(json: &Value, what: &str) {
    let warnings: Vec<&str> = json
        .pointer("/response_metadata/warnings")
        .or_else(|| json.get("warnings"))
        .and_then(Value::as_array)
        .map(|w| w.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if !warnings.is_empty() {
        tracing::warn!("{what}: Slack warned: {}", excerpt(&warnings.join(", ")));
    }
}

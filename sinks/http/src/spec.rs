//! The vendor spec format: what a TOML file in `vendors/` (or the operator's `specs_dir`)
//! may say, as Rust types. `deny_unknown_fields` everywhere, so a typo is an error naming the
//! key; [`Spec::validate`] checks what types cannot (one idempotency place per guarantee,
//! batches only where a request can carry several events, pointers that parse). The JSON
//! Schema in `spec.schema.json` is generated from these types (`nectar-sink-http
//! spec-schema`); the field docs below are the format's documentation.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A vendor: how to deliver events to it over HTTP.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Spec {
    /// The vendor's name, as operators select it (`target.vendor`): lower case, digits, `_`.
    pub name: String,
    /// One sentence: what the sink does at this vendor.
    pub about: String,
    /// The vendor's pages this spec follows (endpoints, limits, errors).
    pub docs: Vec<String>,
    /// What a delivery guarantees, and why.
    pub guarantee: Guarantee,
    /// The settings an operator supplies under `[target]` (`NECTAR_TARGET__<NAME>`);
    /// templates see them as `settings.<name>`.
    #[serde(default)]
    pub settings: BTreeMap<String, Setting>,
    /// How requests are authenticated. Templates here see only `settings`.
    #[serde(default)]
    pub auth: AuthSpec,
    /// Batch size, request size and the vendor's published quota.
    #[serde(default)]
    pub limits: Limits,
    /// Which events the vendor takes; the others are acknowledged and skipped (counted).
    #[serde(default)]
    pub filter: Filter,
    /// How template output is escaped: `none` (JSON bodies escape themselves) or `html`
    /// (Telegram's `parse_mode = "HTML"`): every body string is then a text template, HTML-
    /// escaped, even a sole `{{ expression }}` (so body values are strings). URLs and headers
    /// are never escaped.
    #[serde(default)]
    pub escape: Escape,
    /// The requests that deliver one event (or one batch): several steps run in order, each
    /// seeing the earlier answers as `steps[i]`; the event is delivered when every step is.
    pub request: Vec<Step>,
    /// The request for `lead.erasure_requested` events (delete the person at the vendor).
    /// Without it, erasure requests are skipped unless `filter.event_types` takes them.
    #[serde(default)]
    pub erasure: Option<Step>,
    /// One cheap authenticated call made at start (and by `check`).
    #[serde(default)]
    pub start: Option<Start>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum GuaranteeKind {
    /// The vendor deduplicates by the idempotency key (or the write is an upsert): a replay
    /// after a crash is not shown twice.
    EffectivelyOnce,
    /// Nothing deduplicates: a replay after a crash can duplicate the events whose answers
    /// were lost, at most the requests in flight.
    AtLeastOnce,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Guarantee {
    pub kind: GuaranteeKind,
    /// Where the idempotency key (the event id) goes.
    pub idempotency: Idempotency,
    /// One sentence for the README's guarantee column.
    pub note: String,
}

/// Where the idempotency key goes. The key is the event id (`item.key` in templates).
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema, PartialEq)]
#[serde(tag = "in", rename_all = "snake_case", deny_unknown_fields)]
pub enum Idempotency {
    /// A request header (`Idempotency-Key`). One event per request only.
    Header { name: String },
    /// A field of each event's body, by JSON pointer (Mixpanel `/properties/$insert_id`): the
    /// body template sets it from `item.key`; the start check verifies it is set.
    Body { pointer: String },
    /// The URL: its template uses `item.key` (a path segment or a query value).
    Url,
    /// The write is an upsert by a natural key of the event (Mailchimp's subscriber hash of
    /// the email): `by` names it.
    Upsert { by: String },
    /// None: the guarantee must be `at_least_once`.
    None,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SettingType {
    String,
    /// A string never logged.
    Secret,
    /// An `http(s)://` URL (no trailing `/` needed: templates add paths).
    Url,
    Integer,
    /// A list of strings (a TOML array, or comma-separated in an environment variable).
    List,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Setting {
    #[serde(rename = "type")]
    pub kind: SettingType,
    /// What it is and where the operator finds it.
    pub doc: String,
    /// Required settings have no default.
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub default: Option<Value>,
}

/// How requests are authenticated. Every string is a template over `settings`.
#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthSpec {
    /// No credential, or one the URL carries (a webhook URL is its own secret).
    #[default]
    None,
    /// `Authorization: Bearer <token>`.
    Bearer { token: String },
    /// HTTP Basic.
    Basic { username: String, password: String },
    /// An API key in a header or the query string (a key in the body is a body template).
    ApiKey {
        #[serde(rename = "in")]
        place: KeyPlace,
        name: String,
        value: String,
    },
    /// OAuth 2.0 client credentials grant (RFC 6749 §4.4).
    Oauth2ClientCredentials {
        token_url: String,
        client_id: String,
        client_secret: String,
        #[serde(default)]
        scope: Option<String>,
        /// Client id and secret as HTTP Basic (`basic`, the default) or form fields (`body`).
        #[serde(default)]
        client_auth: ClientAuth,
        /// Extra form fields of the token request (Zoom's `account_id`).
        #[serde(default)]
        extra: BTreeMap<String, String>,
    },
    /// OAuth 2.0 refresh token grant (RFC 6749 §6); a rotated refresh token replaces the old.
    Oauth2RefreshToken {
        token_url: String,
        client_id: String,
        client_secret: String,
        refresh_token: String,
    },
    /// OAuth 2.0 JWT bearer grant (RFC 7523) with an RS256 assertion signed by `private_key`
    /// (PEM): Salesforce, Google service accounts (`subject` for domain-wide delegation).
    JwtBearer {
        token_url: String,
        issuer: String,
        audience: String,
        #[serde(default)]
        subject: Option<String>,
        #[serde(default)]
        scope: Option<String>,
        private_key: String,
        #[serde(default)]
        key_id: Option<String>,
    },
    /// Sign each request as the Standard Webhooks convention says (`webhook-id` = the event
    /// id, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`); `secret` is
    /// `whsec_<base64>`.
    StandardWebhooks { secret: String },
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum KeyPlace {
    Header,
    Query,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    Basic,
    Body,
}

/// Limits from the vendor's documentation. The rate and concurrency are the `[sink]`
/// defaults for this vendor; an operator's `[sink]` settings override them.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Events per request: 1 sends each event on its own; more batches them (`request.batch`).
    #[serde(default = "one")]
    pub max_items: usize,
    /// Most bytes of a request body; a larger batch is split, a single larger event rejected.
    #[serde(default)]
    pub max_bytes: Option<usize>,
    /// Deliveries per second (`sink.rate_limit_per_second`): one event with all its steps, or
    /// one batch. A spec with chained steps divides the vendor's request quota by its steps.
    #[serde(default)]
    pub rate_per_second: Option<f64>,
    /// Burst above the rate (`sink.rate_limit_burst`).
    #[serde(default)]
    pub burst: Option<u32>,
    /// Requests in flight (`sink.concurrency`).
    #[serde(default)]
    pub concurrency: Option<usize>,
    /// An expression whose value may appear once per batch request (Salesforce refuses two
    /// records with the same external id in one call): later events with a value already in
    /// the request go in a following request, in order.
    #[serde(default)]
    pub distinct_by: Option<String>,
}

fn one() -> usize {
    1
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_items: 1,
            max_bytes: None,
            rate_per_second: None,
            burst: None,
            concurrency: None,
            distinct_by: None,
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Event types delivered: exact names or prefixes ending in `*` (`lead.*`). Empty: all
    /// but erasure requests.
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Expressions every delivered event must satisfy (`lead.email`, `lead.event_type in
    /// settings.event_types`); an event failing one is skipped (counted) with the expression
    /// as the reason: the vendor can do nothing with it.
    #[serde(default)]
    pub require: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Escape {
    #[default]
    None,
    Html,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// `application/json`: the body (or the batch) as JSON. GraphQL is JSON with `query` and
    /// `variables`.
    #[default]
    Json,
    /// `application/x-www-form-urlencoded`: the body must be an object of scalars.
    Form,
    /// `application/x-ndjson`: one JSON body per line (batches).
    Ndjson,
}

/// One HTTP request.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// For logs and dead-letter reasons (`upsert member`).
    #[serde(default)]
    pub name: Option<String>,
    pub method: Method,
    /// URL template. Values from events must be `|urlencode`d.
    pub url: String,
    /// Header templates.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub encoding: Encoding,
    /// The body of one event: a value whose strings are templates. A string that is exactly
    /// `{{ expression }}` keeps the expression's JSON type; an object key whose expression is
    /// none or undefined is left out.
    #[serde(default)]
    pub body: Option<Value>,
    /// How a batch (`limits.max_items` > 1) wraps its events: a value where `"{{ items }}"`
    /// is the list of event bodies (Amplitude `{api_key, events: "{{ items }}"}`). Without
    /// it a JSON batch is an array of the bodies.
    #[serde(default)]
    pub batch: Option<Value>,
    /// How the vendor's answers read, first match wins; then the defaults (2xx delivered;
    /// 429, 408, 5xx retried with `Retry-After`; 401/403 credentials rejected; 413 split;
    /// any other answer retried and counted, so it reaches the dead-letter queue).
    #[serde(default, rename = "answer")]
    pub answers: Vec<AnswerRule>,
}

/// Which answers a rule matches: every given condition must hold.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnswerRule {
    /// Status codes: `200`, `[200, 204]`, or a class `"2xx"`.
    #[serde(default)]
    pub status: Option<StatusMatch>,
    /// A condition on the JSON body.
    #[serde(default)]
    pub json: Option<JsonMatch>,
    /// A header that must be present.
    #[serde(default)]
    pub header: Option<String>,
    /// What the answer means.
    pub outcome: Outcome,
    /// When to retry (`retry`, `retry_items`): a header or a body field.
    #[serde(default)]
    pub after: Option<After>,
    /// The reason, from a JSON pointer into the body (`/description`).
    #[serde(default)]
    pub reason: Option<String>,
    /// A fixed explanation put before the reason.
    #[serde(default)]
    pub message: Option<String>,
    /// `outcome = "partial"`: the per-event results of a batch.
    #[serde(default)]
    pub partial: Option<Partial>,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(untagged)]
pub enum StatusMatch {
    One(u16),
    Many(Vec<u16>),
    Class(String),
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonMatch {
    /// JSON pointer (RFC 6901) into the body.
    pub pointer: String,
    /// The value there equals this.
    #[serde(default)]
    pub equals: Option<Value>,
    /// The value there is one of these.
    #[serde(default, rename = "in")]
    pub one_of: Option<Vec<Value>>,
    /// Something is (true) or is not (false) there.
    #[serde(default)]
    pub exists: Option<bool>,
    /// The value there is a string containing this.
    #[serde(default)]
    pub contains: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every event of the request was durably accepted.
    Delivered,
    /// The vendor is unavailable or throttling: send the request again later (not counted
    /// against the events).
    Retry,
    /// Something about these events failed this time: retry them, counted; after
    /// `sink.max_item_attempts` they are dead-lettered with the answer.
    RetryItems,
    /// These events will never be accepted: dead-letter them with the reason and the answer.
    Reject,
    /// Retrying cannot help (credentials, a deleted webhook): stop the sink.
    Fatal,
    /// The request is too large: split it in halves (a single event: rejected).
    Split,
    /// Some events failed: `partial` says which.
    Partial,
}

#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct After {
    /// A header: `Retry-After` (seconds or an HTTP date) or another in seconds.
    #[serde(default)]
    pub header: Option<String>,
    /// A JSON pointer to a number in the body.
    #[serde(default)]
    pub json: Option<String>,
    /// The unit: `s` (default), `ms`, or `epoch` (a time in epoch seconds to wait until, as
    /// SendGrid's `X-RateLimit-Reset`).
    #[serde(default)]
    pub unit: Option<String>,
}

/// Per-event results of a batch answer.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    /// JSON pointer to the list of per-event entries (`""`: the body is the list).
    #[serde(default)]
    pub items: Option<String>,
    /// Within an entry: the pointer to the event's index in the request. Without `index` and
    /// `key`, entries are in request order (one per event).
    #[serde(default)]
    pub index: Option<String>,
    /// Within an entry: the pointer to the event's idempotency key.
    #[serde(default)]
    pub key: Option<String>,
    /// Which entries are successes (position lists); without it every listed entry failed.
    #[serde(default)]
    pub ok: Option<JsonMatch>,
    /// Within an entry: the pointer to the reason.
    #[serde(default)]
    pub reason: Option<String>,
    /// Instead of `items`: pointers to lists of failed indices, `*` matching every key of an
    /// object (Amplitude `/events_with_invalid_fields/*`).
    #[serde(default)]
    pub index_lists: Vec<String>,
    /// What the failed events get: `retry_items` (default) or `reject`.
    #[serde(default = "retry_items")]
    pub failed: Outcome,
    /// What the other events get: `delivered` (default: the vendor took them) or
    /// `retry_items` (the vendor took none of the request: Amplitude).
    #[serde(default = "delivered")]
    pub rest: Outcome,
}

fn delivered() -> Outcome {
    Outcome::Delivered
}

fn retry_items() -> Outcome {
    Outcome::RetryItems
}

/// The start check: one request and how its answer reads.
#[derive(Debug, Clone, Deserialize, Serialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Start {
    pub method: Method,
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Send the first request step's body rendered on a sample event (GA4's validation
    /// endpoint), encoded like that step.
    #[serde(default)]
    pub sample: bool,
    /// A JSON pointer to a list of problems in the answer (GA4 `/validationMessages`): a
    /// non-empty list fails the check with them.
    #[serde(default)]
    pub problems: Option<String>,
    /// A condition the answer must meet beyond a 2xx status (Telegram `/ok` = true).
    #[serde(default)]
    pub expect: Option<JsonMatch>,
}

impl Spec {
    /// Parse a spec; `origin` (its file) prefixes every error.
    pub fn parse(origin: &str, text: &str) -> Result<Self, String> {
        let spec: Spec = toml::from_str(text).map_err(|e| format!("{origin}: {e}"))?;
        let mut errors = Vec::new();
        spec.validate(&mut errors);
        if errors.is_empty() {
            Ok(spec)
        } else {
            Err(format!("{origin}: {}", errors.join(&format!("\n{origin}: "))))
        }
    }

    /// Whether a step sends a batch.
    pub fn batched(&self) -> bool {
        self.limits.max_items > 1
    }

    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        {
            errors.push("name: lower-case letters, digits and `_`".into());
        }
        if self.docs.is_empty() {
            errors.push("docs: cite the vendor's pages the spec follows".into());
        }
        match (&self.guarantee.kind, &self.guarantee.idempotency) {
            (GuaranteeKind::EffectivelyOnce, Idempotency::None) => errors.push(
                "guarantee.idempotency: `none` cannot be effectively once; say `kind = \"at_least_once\"`".into(),
            ),
            (GuaranteeKind::AtLeastOnce, i) if *i != Idempotency::None => {
                errors.push("guarantee.kind: with an idempotency key the guarantee is `effectively_once`".into())
            }
            _ => {}
        }
        for (name, setting) in &self.settings {
            if setting.required && setting.default.is_some() {
                errors.push(format!("settings.{name}: a required setting has no default"));
            }
            if !name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            {
                errors.push(format!("settings.{name}: lower-case letters, digits and `_`"));
            }
            if ["vendor", "spec_file", "specs_dir"].contains(&name.as_str()) {
                errors.push(format!("settings.{name}: reserved for the sink's own keys"));
            }
        }
        if self.request.is_empty() {
            errors.push("request: at least one request step".into());
        }
        if self.limits.max_items == 0 {
            errors.push("limits.max_items: at least 1".into());
        }
        if self.batched() && self.request.len() > 1 {
            errors.push("request: chained steps send one event each (limits.max_items = 1)".into());
        }
        match &self.guarantee.idempotency {
            Idempotency::Header { .. } if self.batched() => {
                errors.push("guarantee.idempotency: a header key needs one event per request".into())
            }
            Idempotency::Body { pointer } if !pointer.starts_with('/') => {
                errors.push("guarantee.idempotency.pointer: a JSON pointer starts with `/`".into())
            }
            Idempotency::Url if !self.request.iter().any(|s| s.url.contains("item.key")) => {
                errors.push("guarantee.idempotency: `url` needs `item.key` in a request URL".into())
            }
            _ => {}
        }
        let steps = self
            .request
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("request[{i}]"), s));
        for (key, step) in steps.chain(self.erasure.iter().map(|s| ("erasure".to_owned(), s))) {
            if step.batch.is_some() && !self.batched() {
                errors.push(format!("{key}.batch: only with limits.max_items > 1"));
            }
            if step.encoding == Encoding::Form && self.batched() {
                errors.push(format!("{key}.encoding: a form body carries one event"));
            }
            if step.encoding == Encoding::Ndjson && !self.batched() {
                errors.push(format!("{key}.encoding: ndjson is for batches"));
            }
            for (i, rule) in step.answers.iter().enumerate() {
                let rkey = format!("{key}.answer[{i}]");
                if (rule.outcome == Outcome::Partial) != rule.partial.is_some() {
                    errors.push(format!(
                        "{rkey}: `partial` goes with outcome = \"partial\", and only there"
                    ));
                }
                if let Some(StatusMatch::Class(c)) = &rule.status
                    && !matches!(c.as_str(), "1xx" | "2xx" | "3xx" | "4xx" | "5xx")
                {
                    errors.push(format!("{rkey}.status: a class is `1xx` … `5xx`"));
                }
                let mut pointers: Vec<&str> = Vec::new();
                pointers.extend(rule.json.iter().map(|j| j.pointer.as_str()));
                pointers.extend(rule.reason.as_deref());
                pointers.extend(rule.after.iter().filter_map(|a| a.json.as_deref()));
                if let Some(p) = &rule.partial {
                    pointers.extend(p.items.as_deref());
                    pointers.extend(p.index.as_deref());
                    pointers.extend(p.key.as_deref());
                    pointers.extend(p.reason.as_deref());
                    pointers.extend(p.index_lists.iter().map(String::as_str));
                    if !matches!(p.failed, Outcome::RetryItems | Outcome::Reject) {
                        errors.push(format!("{rkey}.partial.failed: `retry_items` or `reject`"));
                    }
                    if !matches!(p.rest, Outcome::Delivered | Outcome::RetryItems) {
                        errors.push(format!("{rkey}.partial.rest: `delivered` or `retry_items`"));
                    }
                    if p.items.is_none() == p.index_lists.is_empty() {
                        errors.push(format!("{rkey}.partial: either `items` or `index_lists`"));
                    }
                }
                for p in pointers {
                    if !(p.is_empty() || p.starts_with('/')) {
                        errors.push(format!("{rkey}: `{p}` is not a JSON pointer (starts with `/`)"));
                    }
                }
                if let Some(after) = &rule.after
                    && (after.header.is_some() == after.json.is_some()
                        || !matches!(after.unit.as_deref(), None | Some("s" | "ms" | "epoch")))
                {
                    errors.push(format!(
                        "{rkey}.after: a `header` or a `json` pointer (unit `s`, `ms` or `epoch`)"
                    ));
                }
            }
        }
    }
}

//! A fake HubSpot API: the endpoints `nectar-sink-hubspot` calls, checked and answered as
//! HubSpot documents them.
//!
//! Endpoints (HubSpot's API reference and guides):
//! - `POST /crm/v3/objects/contacts/batch/upsert` and `POST /crm/v3/objects/companies/batch/upsert`
//!   — <https://developers.hubspot.com/docs/api-reference/legacy/crm/objects/contacts/batch/upsert-contacts>:
//!   `{"inputs": [{"idProperty", "id", "properties", "objectWriteTraceId"}]}`, at most 100
//!   inputs; `idProperty` must be a property with unique values (`email` for contacts; for
//!   companies `domain` is *not* unique: "Unable to perform update/upsert by non-unique 0-2
//!   property domain"); two inputs with the same id refuse the batch (400 "Duplicate IDs found
//!   in batch input: [..]. IDs must be unique", `context.ids`). Answer `200` `{"status":
//!   "COMPLETE", "results": [{id, properties, createdAt, updatedAt, archived, new,
//!   objectWriteTraceId}]}`.
//! - Multi-status — <https://developers.hubspot.com/docs/api-reference/error-handling#multi-status-errors>:
//!   when every input carries a unique `objectWriteTraceId`, invalid inputs are listed in
//!   `errors[]` (`status`, `category`, `message`, `context: {"objectWriteTraceId": [..]}`)
//!   of a `207` while the others are written; without trace ids one invalid input refuses the
//!   whole request with a `400` and nothing is written. (The docs describe this for batch
//!   create; upsert was observed to behave the same.) An invalid e-mail is HubSpot's
//!   `VALIDATION_ERROR` "Property values were not valid: [{\"isValid\":false,\"message\":\"Email
//!   address x is invalid\",\"error\":\"INVALID_EMAIL\",\"name\":\"email\"}]".
//! - `POST /crm/v4/associations/contacts/companies/batch/associate/default` —
//!   <https://developers.hubspot.com/docs/api-reference/crm-associations-v4/guide>:
//!   `{"inputs": [{"from": {"id"}, "to": {"id"}}]}` → `results[]` with `associationSpec`
//!   (`HUBSPOT_DEFINED` 279, the unlabeled contact-to-company type).
//! - `GET /crm/v3/objects/contacts?limit=1` and `GET /crm/v3/properties/{contacts,companies}`
//!   (`results[]` with `name`, `hasUniqueValue`, `modificationMetadata.readOnlyValue`).
//! - `POST /oauth/v3/token` (and `/oauth/v1/token`), form-encoded `grant_type=refresh_token`,
//!   `client_id`, `client_secret`, `refresh_token` → `{"token_type": "bearer", "access_token",
//!   "refresh_token", "expires_in"}`; a bad one → 400 `{"status": "BAD_REFRESH_TOKEN",
//!   "message": "missing or invalid refresh token"}` —
//!   <https://developers.hubspot.com/docs/api-reference/auth-oauth-v3/guide>.
//! - Auth: `Authorization: Bearer <token>`; otherwise 401 `{"status": "error", "message":
//!   "Authentication credentials not found. …", "category": "INVALID_AUTHENTICATION"}`, or
//!   `EXPIRED_AUTHENTICATION` for an expired OAuth token.
//! - Rate limits — <https://developers.hubspot.com/docs/developer-tooling/platform/usage-guidelines>:
//!   every answer carries `X-HubSpot-RateLimit-Max`, `-Remaining`, `-Interval-Milliseconds`
//!   (10 000), `-Daily`, `-Daily-Remaining`; a 429 has the body `{"status": "error",
//!   "message": "You have reached your ten_secondly_rolling limit.", "errorType":
//!   "RATE_LIMIT", "correlationId", "policyName": "TEN_SECONDLY_ROLLING", "requestId"}`.
//!   HubSpot does not promise a `Retry-After`; the injected 429s send one so tests can check
//!   it is honoured.
//!
//! Counting: each contact input written is counted per e-mail and per event id. The event id
//! is the value of the [`EVENT_ID_PROPERTY`] contact property (the fake's account has it, as
//! an operator would create it): tests set the sink's `target.event_id_property` to it, so
//! what is counted is what HubSpot would have stored, and a repeated write counts twice.
//!
//! Failure injection applies to the batch write endpoints only (not the start check, not the
//! token endpoint): [`FakeHubspot::fail_next`] (5xx), [`FakeHubspot::rate_limit_next`] (429
//! with `Retry-After`), [`FakeHubspot::fail_once`] (one e-mail fails once inside a 207, as a
//! `CONFLICT`; the message is the fake's own), [`FakeHubspot::reject_email`] (an e-mail is
//! invalid until [`FakeHubspot::fix_email`]). The start check and the token endpoint can be
//! broken with [`FakeHubspot::revoke_token`].

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// The private-app token the fake accepts from the start.
pub const ACCESS_TOKEN: &str = "pat-na1-11111111-2222-3333-4444-555555555555";
/// The custom contact property the fake's account has for event ids.
pub const EVENT_ID_PROPERTY: &str = "nectar_event_id";
/// The custom company property with unique values companies are upserted by.
pub const COMPANY_ID_PROPERTY: &str = "nectar_company_domain";
/// The fake account's id (HubSpot puts it in some messages).
pub const PORTAL_ID: u64 = 24_681_357;

pub const CONTACTS_UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
pub const COMPANIES_UPSERT: &str = "/crm/v3/objects/companies/batch/upsert";
pub const ASSOCIATE_DEFAULT: &str = "/crm/v4/associations/contacts/companies/batch/associate/default";

const MAX_INPUTS: usize = 100;
const WINDOW: Duration = Duration::from_secs(10);

/// One request the fake received.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub status: u16,
    /// The inputs' ids (e-mails, company keys, association `from` ids), lower-case.
    pub ids: Vec<String>,
    /// The inputs' event ids ([`EVENT_ID_PROPERTY`]), where present.
    pub event_ids: Vec<String>,
    /// Whether the answer has been sent (with [`FakeHubspot::set_delay`] a write is applied
    /// first and answered later).
    pub answered: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub properties: BTreeMap<String, String>,
}

#[derive(Debug, Clone)]
struct PropertyDef {
    unique: bool,
    read_only: bool,
}

#[derive(Debug, Clone)]
enum Injection {
    Status(u16),
    RateLimit(Duration),
}

#[derive(Debug, Clone)]
struct OAuthApp {
    client_id: String,
    client_secret: String,
    refresh_token: String,
    expires_in: u64,
}

#[derive(Debug, Default)]
struct State_ {
    /// Accepted bearer tokens → expiry (OAuth tokens expire).
    tokens: HashMap<String, Option<Instant>>,
    oauth: Option<OAuthApp>,
    token_requests: usize,
    contact_properties: BTreeMap<String, PropertyDef>,
    company_properties: BTreeMap<String, PropertyDef>,
    contacts: BTreeMap<String, Record>,
    companies: BTreeMap<String, Record>,
    associations: BTreeSet<(String, String)>,
    next_id: u64,
    by_email: HashMap<String, usize>,
    by_event: HashMap<String, usize>,
    requests: Vec<Recorded>,
    inject: VecDeque<Injection>,
    fail_once: HashSet<String>,
    invalid: HashSet<String>,
    window: VecDeque<Instant>,
    limit_per_window: Option<usize>,
    delay: Duration,
}

type Shared = Arc<Mutex<State_>>;

/// The fake, serving on `127.0.0.1` until dropped.
#[derive(Debug)]
pub struct FakeHubspot {
    url: String,
    state: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeHubspot {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn defs(names: &[&str], read_only: &[&str]) -> BTreeMap<String, PropertyDef> {
    names
        .iter()
        .map(|n| {
            (
                n.to_string(),
                PropertyDef {
                    unique: false,
                    read_only: false,
                },
            )
        })
        .chain(read_only.iter().map(|n| {
            (
                n.to_string(),
                PropertyDef {
                    unique: false,
                    read_only: true,
                },
            )
        }))
        .collect()
}

impl FakeHubspot {
    /// Start on an ephemeral port, accepting [`ACCESS_TOKEN`].
    pub async fn start() -> Self {
        let mut state = State_ {
            contact_properties: defs(
                &[
                    "email",
                    "firstname",
                    "lastname",
                    "phone",
                    "mobilephone",
                    "company",
                    "jobtitle",
                    "website",
                    "address",
                    "city",
                    "state",
                    "zip",
                    "country",
                    "lifecyclestage",
                    "hs_lead_status",
                    EVENT_ID_PROPERTY,
                ],
                &["hs_object_id", "createdate", "lastmodifieddate"],
            ),
            company_properties: defs(
                &[
                    "name", "domain", "phone", "city", "state", "country", "industry", "website",
                ],
                &["hs_object_id", "createdate", "hs_lastmodifieddate"],
            ),
            next_id: 1000,
            ..State_::default()
        };
        state.tokens.insert(ACCESS_TOKEN.to_owned(), None);
        state.company_properties.insert(
            COMPANY_ID_PROPERTY.to_owned(),
            PropertyDef {
                unique: true,
                read_only: false,
            },
        );
        let state = Arc::new(Mutex::new(state));
        let app = Router::new().fallback(handle).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind the fake HubSpot");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { url, state, server }
    }

    /// The base URL (`target.api_url`).
    pub fn url(&self) -> &str {
        &self.url
    }

    fn with<T>(&self, f: impl FnOnce(&mut State_) -> T) -> T {
        f(&mut self.state.lock().expect("fake state"))
    }

    // ---- accounts and credentials ----

    /// Accept an OAuth app: the token endpoint trades `refresh_token` for access tokens that
    /// live `expires_in`.
    pub fn enable_oauth(&self, client_id: &str, client_secret: &str, refresh_token: &str, expires_in: Duration) {
        self.with(|s| {
            s.oauth = Some(OAuthApp {
                client_id: client_id.into(),
                client_secret: client_secret.into(),
                refresh_token: refresh_token.into(),
                expires_in: expires_in.as_secs(),
            })
        });
    }

    /// Stop accepting a token (a revoked private-app token, or every OAuth access token
    /// issued so far with [`FakeHubspot::expire_oauth_tokens`]).
    pub fn revoke_token(&self, token: &str) {
        self.with(|s| s.tokens.remove(token));
    }

    /// Expire every OAuth access token issued so far (they answer 401 from now on).
    pub fn expire_oauth_tokens(&self) {
        let past = Instant::now()
            .checked_sub(Duration::from_secs(1))
            .unwrap_or_else(Instant::now);
        self.with(|s| {
            for expiry in s.tokens.values_mut().filter(|e| e.is_some()) {
                *expiry = Some(past);
            }
        });
    }

    /// Calls to the token endpoint so far.
    pub fn token_requests(&self) -> usize {
        self.with(|s| s.token_requests)
    }

    /// Create a custom contact property.
    pub fn add_contact_property(&self, name: &str) {
        self.with(|s| {
            s.contact_properties.insert(
                name.into(),
                PropertyDef {
                    unique: false,
                    read_only: false,
                },
            )
        });
    }

    /// Create a custom company property.
    pub fn add_company_property(&self, name: &str, unique: bool) {
        self.with(|s| {
            s.company_properties.insert(
                name.into(),
                PropertyDef {
                    unique,
                    read_only: false,
                },
            )
        });
    }

    // ---- failure injection (batch write endpoints) ----

    /// The next `n` batch writes answer `status` (a 5xx) with HubSpot's error body.
    pub fn fail_next(&self, n: usize, status: u16) {
        self.with(|s| s.inject.extend(std::iter::repeat_n(Injection::Status(status), n)));
    }

    /// The next `n` batch writes answer 429 (`TEN_SECONDLY_ROLLING`) with `Retry-After`.
    pub fn rate_limit_next(&self, n: usize, retry_after: Duration) {
        self.with(|s| {
            s.inject
                .extend(std::iter::repeat_n(Injection::RateLimit(retry_after), n))
        });
    }

    /// Hold every batch write's answer back for `delay` after applying it (a crash in that
    /// window leaves written contacts whose offsets were never committed).
    pub fn set_delay(&self, delay: Duration) {
        self.with(|s| s.delay = delay);
    }

    /// Enforce HubSpot's rolling limit: more than `max` requests in 10 s answer 429.
    pub fn enforce_rate_limit(&self, max: usize) {
        self.with(|s| s.limit_per_window = Some(max));
    }

    /// The next write of `email` fails inside a 207 (a transient `CONFLICT`), once.
    pub fn fail_once(&self, email: &str) {
        self.with(|s| s.fail_once.insert(email.to_lowercase()));
    }

    /// Treat `email` as invalid (`INVALID_EMAIL`) until [`FakeHubspot::fix_email`].
    pub fn reject_email(&self, email: &str) {
        self.with(|s| s.invalid.insert(email.to_lowercase()));
    }

    pub fn fix_email(&self, email: &str) {
        self.with(|s| s.invalid.remove(&email.to_lowercase()));
    }

    // ---- what the fake holds ----

    pub fn contact(&self, email: &str) -> Option<Record> {
        self.with(|s| s.contacts.get(&email.to_lowercase()).cloned())
    }

    pub fn contacts(&self) -> BTreeMap<String, Record> {
        self.with(|s| s.contacts.clone())
    }

    /// Companies by their unique key.
    pub fn companies(&self) -> BTreeMap<String, Record> {
        self.with(|s| s.companies.clone())
    }

    /// `(contact id, company id)` pairs.
    pub fn associations(&self) -> BTreeSet<(String, String)> {
        self.with(|s| s.associations.clone())
    }

    /// Contact writes accepted, per e-mail.
    pub fn upserts_by_email(&self) -> HashMap<String, usize> {
        self.with(|s| s.by_email.clone())
    }

    /// Contact writes accepted, per event id ([`EVENT_ID_PROPERTY`]).
    pub fn upserts_by_event(&self) -> HashMap<String, usize> {
        self.with(|s| s.by_event.clone())
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// Requests to `path` (e.g. [`CONTACTS_UPSERT`]).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.with(|s| s.requests.iter().filter(|r| r.path == path).cloned().collect())
    }
}

// ---- serving ----

fn correlation_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [("content-type", "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn error_body(message: &str, category: &str) -> Value {
    json!({"status": "error", "message": message, "correlationId": correlation_id(), "category": category})
}

/// Now as HubSpot writes times (`YYYY-MM-DDTHH:MM:SS.mmmZ`).
fn iso_now() -> String {
    super::harness::iso8601_z(super::harness::now_millis())
}

/// What a handler decided, before the common headers are added and the request recorded.
struct Handled {
    status: StatusCode,
    body: Value,
    headers: Vec<(&'static str, String)>,
    ids: Vec<String>,
    event_ids: Vec<String>,
}

impl Handled {
    fn new(status: StatusCode, body: Value) -> Self {
        Self {
            status,
            body,
            headers: Vec::new(),
            ids: Vec::new(),
            event_ids: Vec::new(),
        }
    }
}

async fn handle(State(state): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().to_owned();
    let is_token = method == Method::POST && (path == "/oauth/v1/token" || path == "/oauth/v3/token");
    let (response, index, delay) = {
        let mut s = state.lock().expect("fake state");
        let handled = if is_token {
            token(&mut s, &headers, &body)
        } else {
            api(&mut s, &method, &uri, &headers, &body)
        };
        let delay = if method == Method::POST && !is_token {
            s.delay
        } else {
            Duration::ZERO
        };
        s.requests.push(Recorded {
            at: Instant::now(),
            method: method.to_string(),
            path: path.clone(),
            status: handled.status.as_u16(),
            ids: handled.ids.clone(),
            event_ids: handled.event_ids.clone(),
            answered: delay.is_zero(),
        });
        let index = s.requests.len() - 1;
        let mut response = json_response(handled.status, handled.body);
        if !is_token {
            let now = Instant::now();
            let used = s.window.iter().filter(|t| now.duration_since(**t) < WINDOW).count();
            let max = s.limit_per_window.unwrap_or(100);
            let h = response.headers_mut();
            h.insert("x-hubspot-ratelimit-max", HeaderValue::from(max));
            h.insert(
                "x-hubspot-ratelimit-remaining",
                HeaderValue::from(max.saturating_sub(used)),
            );
            h.insert(
                "x-hubspot-ratelimit-interval-milliseconds",
                HeaderValue::from(10_000u32),
            );
            h.insert("x-hubspot-ratelimit-daily", HeaderValue::from(250_000u32));
            h.insert(
                "x-hubspot-ratelimit-daily-remaining",
                HeaderValue::from(250_000usize.saturating_sub(s.requests.len())),
            );
        }
        for (name, value) in handled.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, v);
            }
        }
        (response, index, delay)
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
        state.lock().expect("fake state").requests[index].answered = true;
    }
    response
}

fn token(s: &mut State_, headers: &HeaderMap, body: &Bytes) -> Handled {
    s.token_requests += 1;
    let form_ok = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !form_ok {
        return Handled::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({"status": "error", "message": "Content-Type must be application/x-www-form-urlencoded"}),
        );
    }
    let form: HashMap<String, String> = url_form(body);
    let bad = |status: &str, message: &str| {
        Handled::new(
            StatusCode::BAD_REQUEST,
            json!({"status": status, "message": message, "correlationId": correlation_id()}),
        )
    };
    let Some(app) = s.oauth.clone() else {
        return bad("BAD_CLIENT_ID", "missing or unknown client id");
    };
    if form.get("grant_type").map(String::as_str) != Some("refresh_token") {
        return bad("BAD_GRANT_TYPE", "missing or unknown grant type");
    }
    if form.get("client_id") != Some(&app.client_id) {
        return bad("BAD_CLIENT_ID", "missing or unknown client id");
    }
    if form.get("client_secret") != Some(&app.client_secret) {
        return bad("BAD_CLIENT_SECRET", "missing or invalid client secret");
    }
    if form.get("refresh_token") != Some(&app.refresh_token) {
        return bad("BAD_REFRESH_TOKEN", "missing or invalid refresh token");
    }
    s.next_id += 1;
    let access = format!("oauth-access-{}", s.next_id);
    s.tokens.insert(
        access.clone(),
        Some(Instant::now() + Duration::from_secs(app.expires_in)),
    );
    Handled::new(
        StatusCode::OK,
        json!({"token_type": "bearer", "refresh_token": app.refresh_token, "access_token": access, "expires_in": app.expires_in}),
    )
}

fn url_form(body: &[u8]) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                },
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn api(s: &mut State_, method: &Method, uri: &Uri, headers: &HeaderMap, body: &Bytes) -> Handled {
    // Authentication first, as HubSpot does.
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    match s.tokens.get(token) {
        None => {
            return Handled::new(
                StatusCode::UNAUTHORIZED,
                error_body(
                    "Authentication credentials not found. This API supports OAuth 2.0 authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                    "INVALID_AUTHENTICATION",
                ),
            );
        }
        Some(Some(expiry)) if *expiry <= Instant::now() => {
            return Handled::new(
                StatusCode::UNAUTHORIZED,
                error_body(
                    "The OAuth token used to make this call expired.",
                    "EXPIRED_AUTHENTICATION",
                ),
            );
        }
        Some(_) => {}
    }
    let now = Instant::now();
    while s.window.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
        s.window.pop_front();
    }
    if let Some(max) = s.limit_per_window
        && s.window.len() >= max
    {
        return rate_limited(None);
    }
    s.window.push_back(now);

    let path = uri.path();
    let writes = [CONTACTS_UPSERT, COMPANIES_UPSERT, ASSOCIATE_DEFAULT];
    if *method == Method::POST && writes.contains(&path) {
        let json_ok = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if !json_ok {
            return Handled::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                error_body("Content-Type must be application/json", "VALIDATION_ERROR"),
            );
        }
        let body: Value = match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => {
                return Handled::new(
                    StatusCode::BAD_REQUEST,
                    error_body(&format!("Invalid input JSON: {e}"), "VALIDATION_ERROR"),
                );
            }
        };
        if let Some(injection) = s.inject.pop_front() {
            let mut h = match injection {
                Injection::Status(status) => Handled::new(
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    json!({"status": "error", "message": "internal error", "correlationId": correlation_id()}),
                ),
                Injection::RateLimit(after) => rate_limited(Some(after)),
            };
            // Recorded with the ids it refused, so tests can find their retry.
            (h.ids, h.event_ids) = input_ids(&body);
            return h;
        }
        return match path {
            CONTACTS_UPSERT => upsert(s, Object::Contacts, &body),
            COMPANIES_UPSERT => upsert(s, Object::Companies, &body),
            _ => associate(s, &body),
        };
    }
    if *method == Method::GET {
        match path {
            "/crm/v3/objects/contacts" => {
                let limit: usize = uri
                    .query()
                    .and_then(|q| url_form(q.as_bytes()).get("limit").and_then(|l| l.parse().ok()))
                    .unwrap_or(10);
                let results: Vec<Value> = s
                    .contacts
                    .values()
                    .take(limit)
                    .map(|c| record_json(c, None, false))
                    .collect();
                return Handled::new(StatusCode::OK, json!({"results": results}));
            }
            "/crm/v3/properties/contacts" | "/crm/v3/properties/companies" => {
                let (defs, group) = if path.ends_with("contacts") {
                    (&s.contact_properties, "contactinformation")
                } else {
                    (&s.company_properties, "companyinformation")
                };
                let results: Vec<Value> = defs
                    .iter()
                    .map(|(name, d)| {
                        json!({
                            "name": name, "label": name, "type": "string", "fieldType": "text",
                            "groupName": group, "hasUniqueValue": d.unique, "hidden": false,
                            "formField": true, "calculated": false, "externalOptions": false,
                            "modificationMetadata": {"archivable": !d.read_only, "readOnlyDefinition": d.read_only, "readOnlyValue": d.read_only},
                        })
                    })
                    .collect();
                return Handled::new(StatusCode::OK, json!({"results": results}));
            }
            _ => {}
        }
    }
    Handled::new(
        StatusCode::NOT_FOUND,
        json!({"status": "error", "message": format!("Unable to route {method} {path}"), "correlationId": correlation_id()}),
    )
}

/// The ids (and event ids) of a batch write's inputs, for the record.
fn input_ids(body: &Value) -> (Vec<String>, Vec<String>) {
    let inputs = body
        .get("inputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ids = inputs
        .iter()
        .filter_map(|i| i.get("id").or_else(|| i.pointer("/from/id")).and_then(Value::as_str))
        .map(|id| id.trim().to_lowercase())
        .collect();
    let events = inputs
        .iter()
        .filter_map(|i| {
            i.pointer(&format!("/properties/{EVENT_ID_PROPERTY}"))
                .and_then(Value::as_str)
        })
        .map(str::to_owned)
        .collect();
    (ids, events)
}

fn rate_limited(retry_after: Option<Duration>) -> Handled {
    let mut h = Handled::new(
        StatusCode::TOO_MANY_REQUESTS,
        json!({
            "status": "error",
            "message": "You have reached your ten_secondly_rolling limit.",
            "errorType": "RATE_LIMIT",
            "correlationId": correlation_id(),
            "policyName": "TEN_SECONDLY_ROLLING",
            "requestId": uuid::Uuid::new_v4().to_string(),
        }),
    );
    if let Some(after) = retry_after {
        h.headers.push(("retry-after", after.as_secs().max(1).to_string()));
    }
    h
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Object {
    Contacts,
    Companies,
}

fn store_of(s: &mut State_, object: Object) -> &mut BTreeMap<String, Record> {
    match object {
        Object::Contacts => &mut s.contacts,
        Object::Companies => &mut s.companies,
    }
}

fn record_json(r: &Record, trace: Option<&str>, new: bool) -> Value {
    let now = iso_now();
    let mut v = json!({
        "id": r.id, "properties": r.properties, "createdAt": now, "updatedAt": now,
        "archived": false, "new": new,
    });
    if let Some(t) = trace {
        v["objectWriteTraceId"] = json!(t);
    }
    v
}

fn invalid_property_values(errors: &[Value]) -> String {
    format!("Property values were not valid: {}", Value::Array(errors.to_vec()))
}

/// `POST /crm/v3/objects/{contacts,companies}/batch/upsert`.
fn upsert(s: &mut State_, object: Object, body: &Value) -> Handled {
    let Some(inputs) = body.get("inputs").and_then(Value::as_array) else {
        return Handled::new(
            StatusCode::BAD_REQUEST,
            error_body("Invalid input JSON: `inputs` is required", "VALIDATION_ERROR"),
        );
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Handled::new(
            StatusCode::BAD_REQUEST,
            error_body(
                &format!(
                    "The maximum number of inputs supported in a batch request is {MAX_INPUTS}. Please reduce the number of items and try again"
                ),
                "VALIDATION_ERROR",
            ),
        );
    }
    let (defs, type_id) = match object {
        Object::Contacts => (s.contact_properties.clone(), "0-1"),
        Object::Companies => (s.company_properties.clone(), "0-2"),
    };
    // Shape of every input.
    let mut parsed = Vec::with_capacity(inputs.len());
    for input in inputs {
        let id = input.get("id").and_then(Value::as_str).map(|v| v.trim().to_lowercase());
        let id_property = input.get("idProperty").and_then(Value::as_str);
        let properties = input.get("properties").and_then(Value::as_object);
        let (Some(id), Some(id_property), Some(properties)) = (id, id_property, properties) else {
            return Handled::new(
                StatusCode::BAD_REQUEST,
                error_body(
                    "Invalid input JSON: each input needs `id`, `idProperty` and `properties`",
                    "VALIDATION_ERROR",
                ),
            );
        };
        if id.is_empty() {
            return Handled::new(
                StatusCode::BAD_REQUEST,
                error_body("id must not be blank", "VALIDATION_ERROR"),
            );
        }
        let unique = defs.get(id_property).is_some_and(|d| d.unique);
        let email = object == Object::Contacts && id_property == "email";
        if !(unique || email) {
            return Handled::new(
                StatusCode::BAD_REQUEST,
                error_body(
                    &format!(
                        "Unable to perform update/upsert by non-unique {type_id} property {id_property} in portal ID {PORTAL_ID}"
                    ),
                    "VALIDATION_ERROR",
                ),
            );
        }
        let mut props = BTreeMap::new();
        for (k, v) in properties {
            let Some(v) = v.as_str() else {
                return Handled::new(
                    StatusCode::BAD_REQUEST,
                    error_body(
                        &format!("Invalid input JSON: property `{k}` must be a string"),
                        "VALIDATION_ERROR",
                    ),
                );
            };
            props.insert(k.clone(), v.to_owned());
        }
        let trace = input
            .get("objectWriteTraceId")
            .and_then(Value::as_str)
            .map(str::to_owned);
        parsed.push((id, id_property.to_owned(), props, trace));
    }
    // Duplicate ids refuse the batch, trace ids or not.
    let mut seen = BTreeSet::new();
    let dups: BTreeSet<&String> = parsed.iter().map(|p| &p.0).filter(|id| !seen.insert(*id)).collect();
    if !dups.is_empty() {
        let list = dups.iter().map(|d| d.as_str()).collect::<Vec<_>>();
        let mut body = error_body(
            &format!(
                "Duplicate IDs found in batch input: [{}]. IDs must be unique",
                list.join(", ")
            ),
            "VALIDATION_ERROR",
        );
        body["context"] = json!({"ids": list});
        return Handled::new(StatusCode::BAD_REQUEST, body);
    }
    let traces: Vec<&String> = parsed.iter().filter_map(|p| p.3.as_ref()).collect();
    let multi_status = traces.len() == parsed.len() && traces.iter().collect::<BTreeSet<_>>().len() == traces.len();

    // Per-input validation.
    let mut errors: Vec<(usize, Value)> = Vec::new();
    for (i, (id, _, props, trace)) in parsed.iter().enumerate() {
        let mut problems = Vec::new();
        for name in props.keys() {
            if !defs.contains_key(name) {
                let m = format!("Property \"{name}\" does not exist");
                problems.push(json!({"isValid": false, "message": m, "error": "PROPERTY_DOESNT_EXIST", "name": name, "localizedErrorMessage": m}));
            }
        }
        if object == Object::Contacts && (!nectar_core::ids::valid_email(id) || s.invalid.contains(id)) {
            let m = format!("Email address {id} is invalid");
            problems.push(json!({"isValid": false, "message": m, "error": "INVALID_EMAIL", "name": "email", "localizedErrorMessage": m}));
        }
        if !problems.is_empty() {
            let mut e = json!({
                "status": "error", "category": "VALIDATION_ERROR",
                "message": invalid_property_values(&problems),
                "errors": problems.iter().map(|p| json!({"message": p["message"], "code": p["error"], "in": p["name"]})).collect::<Vec<_>>(),
            });
            if let Some(t) = trace {
                e["context"] = json!({"objectWriteTraceId": [t]});
            }
            errors.push((i, e));
        } else if object == Object::Contacts && s.fail_once.remove(id) {
            let mut e = json!({
                "status": "error", "category": "CONFLICT",
                "message": format!("Contact {id} was being modified by another request; try again"),
            });
            if let Some(t) = trace {
                e["context"] = json!({"objectWriteTraceId": [t]});
            }
            errors.push((i, e));
        }
    }
    let ids: Vec<String> = parsed.iter().map(|p| p.0.clone()).collect();
    let event_ids: Vec<String> = parsed
        .iter()
        .filter_map(|p| p.2.get(EVENT_ID_PROPERTY).cloned())
        .collect();
    if !errors.is_empty() && !multi_status {
        // Without trace ids one bad input refuses the whole request; nothing is written.
        let (_, first) = &errors[0];
        let status = if first["category"] == "CONFLICT" {
            StatusCode::CONFLICT
        } else {
            StatusCode::BAD_REQUEST
        };
        let mut body = error_body(
            first["message"].as_str().unwrap_or_default(),
            first["category"].as_str().unwrap_or_default(),
        );
        if let Some(details) = first.get("errors") {
            body["errors"] = details.clone();
        }
        let mut h = Handled::new(status, body);
        h.ids = ids;
        h.event_ids = event_ids;
        return h;
    }
    let failed: BTreeSet<usize> = errors.iter().map(|(i, _)| *i).collect();
    let mut results = Vec::new();
    for (i, (id, id_property, props, trace)) in parsed.into_iter().enumerate() {
        if failed.contains(&i) {
            continue;
        }
        let new = !store_of(s, object).contains_key(&id);
        if new {
            s.next_id += 1;
        }
        let next = s.next_id;
        let record = store_of(s, object).entry(id.clone()).or_insert_with(|| Record {
            id: next.to_string(),
            properties: BTreeMap::new(),
        });
        record.properties.extend(props.clone());
        record.properties.insert(id_property.clone(), id.clone());
        record.properties.insert("hs_object_id".into(), record.id.clone());
        let json = record_json(record, trace.as_deref(), new);
        results.push(json);
        if object == Object::Contacts {
            *s.by_email.entry(id.clone()).or_default() += 1;
            if let Some(event) = props.get(EVENT_ID_PROPERTY) {
                *s.by_event.entry(event.clone()).or_default() += 1;
            }
        }
    }
    let now = iso_now();
    let mut h = if errors.is_empty() {
        Handled::new(
            StatusCode::OK,
            json!({"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}),
        )
    } else {
        Handled::new(
            StatusCode::MULTI_STATUS,
            json!({
                "status": "COMPLETE", "results": results, "numErrors": errors.len(),
                "errors": errors.into_iter().map(|(_, e)| e).collect::<Vec<_>>(),
                "startedAt": now, "completedAt": now,
            }),
        )
    };
    h.ids = ids;
    h.event_ids = event_ids;
    h
}

/// `POST /crm/v4/associations/contacts/companies/batch/associate/default`.
fn associate(s: &mut State_, body: &Value) -> Handled {
    let Some(inputs) = body.get("inputs").and_then(Value::as_array).filter(|a| !a.is_empty()) else {
        return Handled::new(
            StatusCode::BAD_REQUEST,
            error_body("Invalid input JSON: `inputs` is required", "VALIDATION_ERROR"),
        );
    };
    let contact_ids: BTreeSet<String> = s.contacts.values().map(|c| c.id.clone()).collect();
    let company_ids: BTreeSet<String> = s.companies.values().map(|c| c.id.clone()).collect();
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut ids = Vec::new();
    for input in inputs {
        let from = input.pointer("/from/id").and_then(Value::as_str);
        let to = input.pointer("/to/id").and_then(Value::as_str);
        let (Some(from), Some(to)) = (from, to) else {
            return Handled::new(
                StatusCode::BAD_REQUEST,
                error_body(
                    "Invalid input JSON: each input needs `from.id` and `to.id`",
                    "VALIDATION_ERROR",
                ),
            );
        };
        ids.push(from.to_owned());
        if !contact_ids.contains(from) || !company_ids.contains(to) {
            errors.push(json!({
                "status": "error", "category": "VALIDATION_ERROR",
                "message": format!("No object found for contact {from} or company {to}"),
                "context": {"fromObjectId": [from], "toObjectId": [to]},
            }));
            continue;
        }
        s.associations.insert((from.to_owned(), to.to_owned()));
        results.push(json!({
            "from": {"id": from}, "to": {"id": to},
            "associationSpec": {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": 279},
        }));
    }
    let now = iso_now();
    let mut h = if errors.is_empty() {
        Handled::new(
            StatusCode::OK,
            json!({"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now}),
        )
    } else {
        Handled::new(
            StatusCode::MULTI_STATUS,
            json!({"status": "COMPLETE", "results": results, "numErrors": errors.len(), "errors": errors, "startedAt": now, "completedAt": now}),
        )
    };
    h.ids = ids;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(fake: &FakeHubspot, path: &str, body: Value) -> (u16, Value, HeaderMap) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", fake.url()))
            .bearer_auth(ACCESS_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        (status, r.json().await.unwrap(), headers)
    }

    fn input(email: &str, trace: Option<&str>) -> Value {
        let mut v = json!({"idProperty": "email", "id": email, "properties": {"email": email, "firstname": "A", EVENT_ID_PROPERTY: format!("ev-{}", email.to_lowercase())}});
        if let Some(t) = trace {
            v["objectWriteTraceId"] = json!(t);
        }
        v
    }

    #[tokio::test]
    async fn upserts_count_per_email_and_event() {
        let fake = FakeHubspot::start().await;
        let (status, body, headers) = post(
            &fake,
            CONTACTS_UPSERT,
            json!({"inputs": [input("a@example.com", Some("t1"))]}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["results"][0]["objectWriteTraceId"], "t1");
        assert_eq!(body["results"][0]["new"], true);
        assert!(headers.contains_key("x-hubspot-ratelimit-remaining"));
        post(
            &fake,
            CONTACTS_UPSERT,
            json!({"inputs": [input("A@example.com", None)]}),
        )
        .await;
        assert_eq!(fake.upserts_by_email()["a@example.com"], 2);
        assert_eq!(
            fake.upserts_by_event()["ev-a@example.com"],
            2,
            "a repeated write counts twice"
        );
        assert_eq!(fake.contacts().len(), 1);
    }

    #[tokio::test]
    async fn invalid_emails_are_per_record_with_trace_ids_and_whole_batch_without() {
        let fake = FakeHubspot::start().await;
        fake.reject_email("b@example.com");
        let (status, body, _) = post(
            &fake,
            CONTACTS_UPSERT,
            json!({"inputs": [input("a@example.com", Some("t1")), input("b@example.com", Some("t2"))]}),
        )
        .await;
        assert_eq!(status, 207, "{body}");
        assert_eq!(body["errors"][0]["context"]["objectWriteTraceId"][0], "t2");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("INVALID_EMAIL"));
        assert!(fake.contact("a@example.com").is_some());
        let (status, body, _) = post(
            &fake,
            CONTACTS_UPSERT,
            json!({"inputs": [input("c@example.com", None), input("b@example.com", None)]}),
        )
        .await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["category"], "VALIDATION_ERROR");
        assert!(fake.contact("c@example.com").is_none(), "nothing written");
        fake.fix_email("b@example.com");
        let (status, _, _) = post(
            &fake,
            CONTACTS_UPSERT,
            json!({"inputs": [input("b@example.com", None)]}),
        )
        .await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn duplicates_limits_auth_and_injections_answer_as_hubspot() {
        let fake = FakeHubspot::start().await;
        let (status, body, _) = post(
            &fake,
            CONTACTS_UPSERT,
            json!({"inputs": [input("a@example.com", Some("t1")), input("A@example.com", Some("t2"))]}),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .starts_with("Duplicate IDs found in batch input")
        );
        let many: Vec<Value> = (0..101).map(|i| input(&format!("u{i}@example.com"), None)).collect();
        assert_eq!(post(&fake, CONTACTS_UPSERT, json!({"inputs": many})).await.0, 400);
        let (status, body, _) = post(
            &fake,
            COMPANIES_UPSERT,
            json!({"inputs": [{"idProperty": "domain", "id": "x.example", "properties": {"domain": "x.example"}}]}),
        )
        .await;
        assert_eq!(status, 400);
        assert!(
            body["message"]
                .as_str()
                .unwrap()
                .contains("non-unique 0-2 property domain")
        );
        let r = reqwest::Client::new()
            .post(format!("{}{CONTACTS_UPSERT}", fake.url()))
            .bearer_auth("wrong")
            .json(&json!({"inputs": []}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        fake.fail_next(1, 503);
        fake.rate_limit_next(1, Duration::from_secs(2));
        let one = json!({"inputs": [input("a@example.com", None)]});
        assert_eq!(post(&fake, CONTACTS_UPSERT, one.clone()).await.0, 503);
        let (status, body, headers) = post(&fake, CONTACTS_UPSERT, one.clone()).await;
        assert_eq!(status, 429);
        assert_eq!(body["policyName"], "TEN_SECONDLY_ROLLING");
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(post(&fake, CONTACTS_UPSERT, one).await.0, 200);
    }

    #[tokio::test]
    async fn oauth_tokens_are_issued_and_expire() {
        let fake = FakeHubspot::start().await;
        fake.enable_oauth("cid", "secret", "refresh", Duration::from_secs(1800));
        let r = reqwest::Client::new()
            .post(format!("{}/oauth/v3/token", fake.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=refresh_token&client_id=cid&client_secret=secret&refresh_token=refresh")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let body: Value = r.json().await.unwrap();
        let token = body["access_token"].as_str().unwrap().to_owned();
        let get = |t: String| {
            let url = format!("{}/crm/v3/objects/contacts?limit=1", fake.url());
            async move {
                reqwest::Client::new()
                    .get(url)
                    .bearer_auth(t)
                    .send()
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }
        };
        assert_eq!(get(token.clone()).await, 200);
        fake.expire_oauth_tokens();
        assert_eq!(get(token).await, 401);
        let r = reqwest::Client::new()
            .post(format!("{}/oauth/v3/token", fake.url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("grant_type=refresh_token&client_id=cid&client_secret=secret&refresh_token=nope")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(r.json::<Value>().await.unwrap()["status"], "BAD_REFRESH_TOKEN");
    }

    #[test]
    fn iso_times_look_like_hubspots() {
        let t = iso_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T', "{t}");
    }
}

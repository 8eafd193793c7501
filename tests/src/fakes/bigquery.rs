//! Fake BigQuery REST API (v2) and Google OAuth 2.0 token endpoint, for `nectar-sink-bigquery`.
//!
//! What it follows, from Google's documentation:
//! - `tabledata.insertAll`
//!   (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll>):
//!   `POST /bigquery/v2/projects/{projectId}/datasets/{datasetId}/tables/{tableId}/insertAll`,
//!   body `{kind, skipInvalidRows, ignoreUnknownValues, templateSuffix, rows: [{insertId, json}]}`,
//!   answer `{"kind": "bigquery#tableDataInsertAllResponse", "insertErrors": [{index, errors:
//!   [ErrorProto]}]}`. An invalid row gets reason `invalid`; with `skipInvalidRows` false
//!   nothing of the request is inserted and every other row gets reason `stopped`; unknown
//!   fields are invalid unless `ignoreUnknownValues`.
//! - Streaming semantics (<https://cloud.google.com/bigquery/docs/streaming-data-into-bigquery>):
//!   `insertId` deduplication is best effort, for at least one minute. Here the window is
//!   configurable ([`FakeBigQuery::set_dedup_window`]) and every row actually stored is
//!   counted, so a test sees duplicates whenever the window would not have hidden them.
//! - Limits (<https://cloud.google.com/bigquery/quotas#streaming_inserts>): 10 MB per request,
//!   50,000 rows per request, `insertId` at most 128 characters.
//! - Errors (<https://cloud.google.com/bigquery/docs/error-messages>): `{"error": {code,
//!   message, errors: [{message, domain, reason}], status}}`; 401 `authError`, 403
//!   `accessDenied` / `rateLimitExceeded` / `quotaExceeded`, 404 `notFound`, 409 `duplicate`,
//!   500 `internalError`, 503 `backendError`; 429 for injected throttling with `Retry-After`.
//! - `tables.get` / `tables.insert` and the Table resource (`tableReference`,
//!   `schema.fields` of TableFieldSchema, `timePartitioning`, `clustering`):
//!   <https://cloud.google.com/bigquery/docs/reference/rest/v2/tables>.
//! - OAuth 2.0 for Server to Server Applications
//!   (<https://developers.google.com/identity/protocols/oauth2/service-account#httprest>):
//!   `POST token_uri` form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&assertion=<JWT>`,
//!   RS256-signed with the service account's key, claims `iss`, `scope`, `aud` = token_uri,
//!   `iat`, `exp` (at most one hour after `iat`); answer `{access_token, expires_in,
//!   token_type: "Bearer"}`, or 400 `{"error": "invalid_grant", "error_description": ...}`.
//!
//! The service account's RSA key is generated per fake (test-only, never written outside the
//! temp directory), and the fake verifies each assertion's signature with its public key.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Map, Value as Json, json};

pub const PROJECT: &str = "nectar-test";
pub const DATASET: &str = "nectar";
pub const CLIENT_EMAIL: &str = "nectar-sink@nectar-test.iam.gserviceaccount.com";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;
const MAX_ROWS: usize = 50_000;
const MAX_INSERT_ID: usize = 128;

/// A test-only RSA key pair, as a service-account key file holds it.
#[derive(Debug, Clone)]
pub struct TestKey {
    pub id: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), as Google's key files have it.
    pub private_pem: String,
    /// PKCS#1 `RSAPublicKey` DER.
    pub public_der: Vec<u8>,
}

impl TestKey {
    pub fn generate() -> Self {
        let pair = KeyPair::generate(KeySize::Rsa2048).expect("RSA key generation");
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("PKCS#8");
        let b64 = STANDARD.encode(der.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).expect("base64"));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            private_pem: pem,
            public_der: pair.public_key().as_ref().to_vec(),
        }
    }
}

/// One `insertAll` request as the fake saw it.
#[derive(Debug, Clone)]
pub struct InsertRequest {
    pub at: Instant,
    pub table: String,
    /// The rows' `insertId`s, in request order (empty string when a row had none).
    pub insert_ids: Vec<String>,
    pub skip_invalid_rows: bool,
    /// The status the fake answered.
    pub status: u16,
}

/// A row the fake stored (inserted).
#[derive(Debug, Clone)]
pub struct StoredRow {
    pub table: String,
    pub insert_id: Option<String>,
    pub json: Json,
}

#[derive(Debug, Clone)]
enum Injected {
    Status(u16),
    TooMany(Duration),
    Quota(&'static str),
}

#[derive(Debug, Clone)]
struct RejectRule {
    column: String,
    value: String,
    message: String,
}

#[derive(Debug)]
struct Account {
    public_der: Vec<u8>,
    deleted: bool,
}

#[derive(Debug)]
struct Issued {
    expires: Instant,
    scopes: Vec<String>,
}

#[derive(Debug, Default)]
struct FakeState {
    datasets: HashSet<String>,
    /// `dataset.table` → the Table resource.
    tables: HashMap<String, Json>,
    accounts: HashMap<String, Account>,
    tokens: HashMap<String, Issued>,
    token_lifetime: u64,
    token_requests: usize,
    dedup_window: Option<Duration>,
    /// `(table, insertId)` → when it was last stored.
    seen: HashMap<(String, String), Instant>,
    stored: Vec<StoredRow>,
    deduplicated: usize,
    requests: Vec<InsertRequest>,
    inject: VecDeque<Injected>,
    reject_rules: Vec<RejectRule>,
    fail_once: HashMap<String, String>,
    /// Requests served per path kind, for assertions on start behaviour.
    table_gets: usize,
    table_inserts: usize,
    /// Time each `insertAll` takes before it is answered.
    latency: Duration,
}

/// A running fake BigQuery + token endpoint on `127.0.0.1:<random port>`.
#[derive(Debug, Clone)]
pub struct FakeBigQuery {
    /// Base URL (`http://127.0.0.1:<port>`): `target.api_url`.
    pub base: String,
    pub key: TestKey,
    state: Arc<Mutex<FakeState>>,
}

impl FakeBigQuery {
    /// Start a fake with project [`PROJECT`], dataset [`DATASET`] and the service account
    /// [`CLIENT_EMAIL`], BigQuery's one-minute `insertId` deduplication, and one-hour tokens.
    pub async fn start() -> Self {
        let key = TestKey::generate();
        let mut state = FakeState {
            token_lifetime: 3599,
            dedup_window: Some(Duration::from_secs(60)),
            ..FakeState::default()
        };
        state.datasets.insert(DATASET.to_owned());
        state.accounts.insert(
            CLIENT_EMAIL.to_owned(),
            Account {
                public_der: key.public_der.clone(),
                deleted: false,
            },
        );
        let state = Arc::new(Mutex::new(state));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let app = router(Shared {
            state: state.clone(),
            token_uri: format!("{base}/token"),
        });
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { base, key, state }
    }

    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn token_uri(&self) -> String {
        format!("{}/token", self.base)
    }

    /// A service-account key file for `key`, shaped as the Cloud console downloads it.
    pub fn key_file_json(&self, key: &TestKey) -> String {
        json!({
            "type": "service_account",
            "project_id": PROJECT,
            "private_key_id": key.id,
            "private_key": key.private_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/nectar-sink%40nectar-test.iam.gserviceaccount.com",
            "universe_domain": "googleapis.com"
        })
        .to_string()
    }

    /// Write the account's key file to a temp file; its path.
    pub fn key_file(&self) -> PathBuf {
        write_temp(&self.key_file_json(&self.key))
    }

    /// A key file for the same account but with a key Google does not know (deleted or
    /// never registered): the token endpoint answers `invalid_grant`.
    pub fn unknown_key_file(&self) -> PathBuf {
        write_temp(&self.key_file_json(&TestKey::generate()))
    }

    /// The environment pointing `nectar-sink-bigquery` at this fake and `table`.
    pub fn target_env(&self, table: &str, key_file: &std::path::Path) -> Vec<(String, String)> {
        [
            ("NECTAR_TARGET__API_URL", self.base.clone()),
            ("NECTAR_TARGET__PROJECT", PROJECT.to_owned()),
            ("NECTAR_TARGET__DATASET", DATASET.to_owned()),
            ("NECTAR_TARGET__TABLE", table.to_owned()),
            ("NECTAR_TARGET__CREDENTIALS_FILE", key_file.display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    /// BigQuery keeps `insertId`s "for at least one minute"; `None` turns deduplication off,
    /// so every row sent twice is stored twice.
    pub fn set_dedup_window(&self, window: Option<Duration>) {
        self.lock().dedup_window = window;
    }

    /// `expires_in` of the tokens issued from now on.
    pub fn set_token_lifetime(&self, seconds: u64) {
        self.lock().token_lifetime = seconds;
    }

    /// Delete the service account: its tokens stop working and new assertions get
    /// `invalid_grant`.
    pub fn delete_account(&self) {
        let mut s = self.lock();
        if let Some(a) = s.accounts.get_mut(CLIENT_EMAIL) {
            a.deleted = true;
        }
        s.tokens.clear();
    }

    /// Answer every `insertAll` `latency` after processing it (the rows are already stored),
    /// so a client killed meanwhile has sent rows it never learns were inserted.
    pub fn set_latency(&self, latency: Duration) {
        self.lock().latency = latency;
    }

    /// Expire every issued token now (BigQuery then answers 401).
    pub fn expire_tokens(&self) {
        self.lock().tokens.clear();
    }

    /// The next `n` `insertAll` requests fail with `status` (500 `internalError` or 503
    /// `backendError`), inserting nothing.
    pub fn fail_next(&self, n: usize, status: u16) {
        let mut s = self.lock();
        s.inject.extend(std::iter::repeat_n(Injected::Status(status), n));
    }

    /// The next `n` `insertAll` requests are throttled: 429 with `Retry-After: <after>`.
    pub fn throttle_next(&self, n: usize, after: Duration) {
        let mut s = self.lock();
        s.inject.extend(std::iter::repeat_n(Injected::TooMany(after), n));
    }

    /// The next `n` `insertAll` requests get BigQuery's quota answer: 403 with `reason`
    /// (`rateLimitExceeded` or `quotaExceeded`).
    pub fn quota_next(&self, n: usize, reason: &'static str) {
        let mut s = self.lock();
        s.inject.extend(std::iter::repeat_n(Injected::Quota(reason), n));
    }

    /// Rows whose top-level `column` equals `value` are `invalid` with `message` until
    /// [`FakeBigQuery::fix`] (e.g. a value the table refuses).
    pub fn reject_rows_where(&self, column: &str, value: &str, message: &str) {
        self.lock().reject_rules.push(RejectRule {
            column: column.to_owned(),
            value: value.to_owned(),
            message: message.to_owned(),
        });
    }

    /// The cause of every rejection is fixed.
    pub fn fix(&self) {
        self.lock().reject_rules.clear();
    }

    /// The rows with these `event_id`s fail once with `reason` (`backendError`, `timeout`)
    /// the next time they are sent; the other rows of their request are inserted.
    pub fn fail_rows_once(&self, event_ids: &[String], reason: &str) {
        let mut s = self.lock();
        for id in event_ids {
            s.fail_once.insert(id.clone(), reason.to_owned());
        }
    }

    /// Create `table` with `fields` (TableFieldSchema JSON), as a user would beforehand.
    pub fn create_table(&self, table: &str, fields: Json) {
        let resource = table_resource(table, json!({"fields": fields}), None, None);
        self.lock().tables.insert(format!("{DATASET}.{table}"), resource);
    }

    /// The Table resource of `table`, if it exists.
    pub fn table(&self, table: &str) -> Option<Json> {
        self.lock().tables.get(&format!("{DATASET}.{table}")).cloned()
    }

    /// Rows stored in `table`.
    pub fn stored_rows(&self, table: &str) -> Vec<StoredRow> {
        self.lock()
            .stored
            .iter()
            .filter(|r| r.table == table)
            .cloned()
            .collect()
    }

    /// How many rows of `table` were stored per `event_id` column value (duplicates count).
    pub fn stored_counts(&self, table: &str) -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for row in self.stored_rows(table) {
            let id = row.json.get("event_id").and_then(Json::as_str).unwrap_or("").to_owned();
            *counts.entry(id).or_insert(0) += 1;
        }
        counts
    }

    /// Rows not stored because their `insertId` was seen within the dedup window.
    pub fn deduplicated(&self) -> usize {
        self.lock().deduplicated
    }

    /// Every `insertAll` request so far.
    pub fn requests(&self) -> Vec<InsertRequest> {
        self.lock().requests.clone()
    }

    /// Token requests answered so far (successful or not).
    pub fn token_requests(&self) -> usize {
        self.lock().token_requests
    }

    /// `(tables.get, tables.insert)` calls so far.
    pub fn table_calls(&self) -> (usize, usize) {
        let s = self.lock();
        (s.table_gets, s.table_inserts)
    }
}

fn write_temp(text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.json", crate::unique("nectar-test-sa-key")));
    std::fs::write(&path, text).expect("writing the test key file");
    path
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<FakeState>>,
    token_uri: String,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, FakeState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn router(shared: Shared) -> Router {
    Router::new()
        .route("/token", post(token))
        .route(
            "/bigquery/v2/projects/{project}/datasets/{dataset}/tables",
            post(tables_insert),
        )
        .route(
            "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}",
            get(tables_get),
        )
        .route(
            "/bigquery/v2/projects/{project}/datasets/{dataset}/tables/{table}/insertAll",
            post(insert_all),
        )
        // The limit is checked by the handler, to answer as BigQuery does.
        .layer(DefaultBodyLimit::max(4 * MAX_REQUEST_BYTES))
        .with_state(shared)
}

/// Google's error envelope.
fn google_error(status: StatusCode, reason: &str, message: &str) -> Response {
    let google_status = match status.as_u16() {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ALREADY_EXISTS",
        429 => "RESOURCE_EXHAUSTED",
        503 => "UNAVAILABLE",
        _ => "INTERNAL",
    };
    let body = json!({"error": {
        "code": status.as_u16(),
        "message": message,
        "errors": [{"message": message, "domain": "global", "reason": reason}],
        "status": google_status
    }});
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::UNAUTHORIZED {
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"https://accounts.google.com/\""),
        );
    }
    response
}

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        axum::Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
}

/// `POST /token`: the JWT bearer grant.
async fn token(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mut state = shared.lock();
    state.token_requests += 1;
    let form_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !form_type.starts_with("application/x-www-form-urlencoded") {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Bad Request");
    }
    let form: HashMap<String, String> = match serde_urlencoded::from_bytes(&body) {
        Ok(f) => f,
        Err(_) => return oauth_error(StatusCode::BAD_REQUEST, "invalid_request", "Bad Request"),
    };
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER) => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("Invalid grant_type: {other}"),
            );
        }
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "Missing required parameter: grant_type",
            );
        }
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let parts: Vec<&str> = assertion.split('.').collect();
    let [head, claims_b64, signature] = parts.as_slice() else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: not a JWS compact serialization.",
        );
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    let (Some(head_json), Some(claims_json), Some(signature)) = (
        decode(head).and_then(|b| serde_json::from_slice::<Json>(&b).ok()),
        decode(claims_b64).and_then(|b| serde_json::from_slice::<Json>(&b).ok()),
        decode(signature),
    ) else {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid JWT: Unparseable.");
    };
    if head_json.get("alg").and_then(Json::as_str) != Some("RS256") {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: the algorithm must be RS256.",
        );
    }
    let claim = |k: &str| claims_json.get(k).cloned().unwrap_or(Json::Null);
    let iss = claim("iss").as_str().unwrap_or("").to_owned();
    let Some(account) = state.accounts.get(&iss).filter(|a| !a.deleted) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid grant: account not found",
        );
    };
    let signed = format!("{head}.{claims_b64}");
    if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &account.public_der)
        .verify(signed.as_bytes(), &signature)
        .is_err()
    {
        return oauth_error(StatusCode::BAD_REQUEST, "invalid_grant", "Invalid JWT Signature.");
    }
    if claim("aud").as_str() != Some(shared.token_uri.as_str()) {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: Failed audience check.",
        );
    }
    let (Some(iat), Some(exp)) = (claim("iat").as_u64(), claim("exp").as_u64()) else {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: iat and exp are required.",
        );
    };
    let now = now_secs();
    if exp <= iat || exp - iat > 3600 || exp < now || iat > now + 60 {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    let scopes: Vec<String> = claim("scope")
        .as_str()
        .unwrap_or("")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    if scopes.is_empty() {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "Invalid oauth scope or ID token audience provided.",
        );
    }
    let access_token = format!("ya29.fake-{}", uuid::Uuid::new_v4().simple());
    let lifetime = state.token_lifetime;
    state.tokens.insert(
        access_token.clone(),
        Issued {
            expires: Instant::now() + Duration::from_secs(lifetime),
            scopes,
        },
    );
    axum::Json(json!({"access_token": access_token, "expires_in": lifetime, "token_type": "Bearer"})).into_response()
}

const BIGQUERY_SCOPE: &str = "https://www.googleapis.com/auth/bigquery";
const INSERTDATA_SCOPE: &str = "https://www.googleapis.com/auth/bigquery.insertdata";
const CLOUD_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";

/// A refusal, answered as is.
type Refused = Box<Response>;

/// Check `Authorization: Bearer <token>` against the tokens issued and their scopes.
fn authorize(state: &FakeState, headers: &HeaderMap, scopes: &[&str]) -> Result<(), Refused> {
    let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Err(Box::new(google_error(
            StatusCode::UNAUTHORIZED,
            "required",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential.",
        )));
    };
    let issued = auth
        .strip_prefix("Bearer ")
        .and_then(|t| state.tokens.get(t))
        .filter(|i| Instant::now() < i.expires);
    let Some(issued) = issued else {
        return Err(Box::new(google_error(
            StatusCode::UNAUTHORIZED,
            "authError",
            "Invalid Credentials",
        )));
    };
    if !issued.scopes.iter().any(|s| scopes.contains(&s.as_str())) {
        return Err(Box::new(google_error(
            StatusCode::FORBIDDEN,
            "insufficientPermissions",
            "Request had insufficient authentication scopes.",
        )));
    }
    Ok(())
}

fn check_path(state: &FakeState, project: &str, dataset: &str) -> Result<(), Refused> {
    if project != PROJECT {
        return Err(Box::new(google_error(
            StatusCode::FORBIDDEN,
            "accessDenied",
            &format!("Access Denied: Project {project}: User does not have bigquery.datasets.get permission"),
        )));
    }
    if !state.datasets.contains(dataset) {
        return Err(Box::new(google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Not found: Dataset {project}:{dataset}"),
        )));
    }
    Ok(())
}

async fn tables_get(
    State(shared): State<Shared>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let mut state = shared.lock();
    state.table_gets += 1;
    let scopes = [BIGQUERY_SCOPE, CLOUD_SCOPE];
    if let Err(r) = authorize(&state, &headers, &scopes).and_then(|()| check_path(&state, &project, &dataset)) {
        return *r;
    }
    match state.tables.get(&format!("{dataset}.{table}")) {
        Some(resource) => axum::Json(resource.clone()).into_response(),
        None => google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Not found: Table {project}:{dataset}.{table}"),
        ),
    }
}

async fn tables_insert(
    State(shared): State<Shared>,
    Path((project, dataset)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut state = shared.lock();
    state.table_inserts += 1;
    let scopes = [BIGQUERY_SCOPE, CLOUD_SCOPE];
    if let Err(r) = authorize(&state, &headers, &scopes).and_then(|()| check_path(&state, &project, &dataset)) {
        return *r;
    }
    let bad = |m: &str| google_error(StatusCode::BAD_REQUEST, "invalid", m);
    let Ok(table) = serde_json::from_slice::<Json>(&body) else {
        return bad("Invalid JSON payload received.");
    };
    let reference = &table["tableReference"];
    if reference["projectId"].as_str() != Some(project.as_str())
        || reference["datasetId"].as_str() != Some(dataset.as_str())
    {
        return bad("Invalid value for tableReference: it must name the project and dataset of the request path.");
    }
    let Some(table_id) = reference["tableId"].as_str().filter(|t| valid_table_id(t)) else {
        return bad("Invalid table ID.");
    };
    let Some(fields) = table["schema"]["fields"].as_array() else {
        return bad("Schema has no fields.");
    };
    if let Err(m) = check_schema(fields, "") {
        return bad(&m);
    }
    let partitioning = table.get("timePartitioning").cloned();
    if let Some(p) = &partitioning
        && let Err(m) = check_partitioning(p, fields)
    {
        return bad(&m);
    }
    let clustering = table.get("clustering").cloned();
    if let Some(c) = &clustering
        && let Err(m) = check_clustering(c, fields)
    {
        return bad(&m);
    }
    let key = format!("{dataset}.{table_id}");
    if state.tables.contains_key(&key) {
        return google_error(
            StatusCode::CONFLICT,
            "duplicate",
            &format!("Already Exists: Table {project}:{dataset}.{table_id}"),
        );
    }
    let resource = table_resource(table_id, table["schema"].clone(), partitioning, clustering);
    state.tables.insert(key, resource.clone());
    axum::Json(resource).into_response()
}

fn table_resource(table: &str, schema: Json, partitioning: Option<Json>, clustering: Option<Json>) -> Json {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut resource = json!({
        "kind": "bigquery#table",
        "etag": format!("\"{}\"", uuid::Uuid::new_v4().simple()),
        "id": format!("{PROJECT}:{DATASET}.{table}"),
        "selfLink": format!("https://bigquery.googleapis.com/bigquery/v2/projects/{PROJECT}/datasets/{DATASET}/tables/{table}"),
        "tableReference": {"projectId": PROJECT, "datasetId": DATASET, "tableId": table},
        "schema": schema,
        "numBytes": "0",
        "numRows": "0",
        "creationTime": created.to_string(),
        "lastModifiedTime": created.to_string(),
        "type": "TABLE",
        "location": "US"
    });
    if let Some(p) = partitioning {
        resource["timePartitioning"] = p;
    }
    if let Some(c) = clustering {
        resource["clustering"] = c;
    }
    resource
}

fn valid_table_id(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 1024
        && t.chars()
            .all(|c| c.is_alphanumeric() || c == '_' || c == '-' || c == ' ')
}

const TYPES: &[&str] = &[
    "STRING",
    "BYTES",
    "INTEGER",
    "INT64",
    "FLOAT",
    "FLOAT64",
    "NUMERIC",
    "BIGNUMERIC",
    "BOOLEAN",
    "BOOL",
    "TIMESTAMP",
    "DATE",
    "TIME",
    "DATETIME",
    "GEOGRAPHY",
    "JSON",
    "RECORD",
    "STRUCT",
];

fn check_schema(fields: &[Json], path: &str) -> Result<(), String> {
    let mut names = HashSet::new();
    for f in fields {
        let name = f["name"].as_str().unwrap_or("");
        let full = if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        let mut chars = name.chars();
        let valid = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
            && name.len() <= 300;
        if !valid {
            return Err(format!(
                "Invalid field name \"{name}\". Fields must contain only letters, numbers, and underscores, start with a letter or underscore, and be at most 300 characters long."
            ));
        }
        if !names.insert(name.to_ascii_lowercase()) {
            return Err(format!("Field {full} already exists in schema"));
        }
        let field_type = f["type"].as_str().unwrap_or("");
        if !TYPES.contains(&field_type) {
            return Err(format!("Invalid value for type: {field_type} is not a valid value"));
        }
        if let Some(mode) = f.get("mode").and_then(Json::as_str)
            && !["NULLABLE", "REQUIRED", "REPEATED"].contains(&mode)
        {
            return Err(format!("Invalid value for mode: {mode} is not a valid value"));
        }
        let sub = f.get("fields").and_then(Json::as_array);
        match (field_type, sub) {
            ("RECORD" | "STRUCT", Some(sub)) if !sub.is_empty() => check_schema(sub, &full)?,
            ("RECORD" | "STRUCT", _) => return Err(format!("Field {full} is type RECORD but has no schema")),
            (_, Some(sub)) if !sub.is_empty() => {
                return Err(format!("Field {full} is type {field_type} but has a schema"));
            }
            _ => {}
        }
        if let Some(d) = f.get("description").and_then(Json::as_str)
            && d.len() > 1024
        {
            return Err(format!("Field {full}: description is longer than 1024 characters"));
        }
    }
    Ok(())
}

fn top_field<'a>(fields: &'a [Json], name: &str) -> Option<&'a Json> {
    fields
        .iter()
        .find(|f| f["name"].as_str().is_some_and(|n| n.eq_ignore_ascii_case(name)))
}

fn check_partitioning(p: &Json, fields: &[Json]) -> Result<(), String> {
    if !["DAY", "HOUR", "MONTH", "YEAR"].contains(&p["type"].as_str().unwrap_or("")) {
        return Err("Invalid value for timePartitioning.type".into());
    }
    if let Some(name) = p.get("field").and_then(Json::as_str) {
        let Some(f) = top_field(fields, name) else {
            return Err(format!(
                "The field specified for partitioning cannot be found in the schema: {name}"
            ));
        };
        let ok_type = ["TIMESTAMP", "DATE", "DATETIME"].contains(&f["type"].as_str().unwrap_or(""));
        if !ok_type || f["mode"].as_str() == Some("REPEATED") {
            return Err(format!(
                "Partitioning field {name} must be a top-level TIMESTAMP, DATE or DATETIME column"
            ));
        }
    }
    Ok(())
}

fn check_clustering(c: &Json, fields: &[Json]) -> Result<(), String> {
    let names = c["fields"].as_array().cloned().unwrap_or_default();
    if names.is_empty() || names.len() > 4 {
        return Err("Clustering must specify 1 to 4 fields".into());
    }
    for n in names {
        let name = n.as_str().unwrap_or("");
        let Some(f) = top_field(fields, name) else {
            return Err(format!(
                "The field specified for clustering cannot be found in the schema: {name}"
            ));
        };
        let t = f["type"].as_str().unwrap_or("");
        if matches!(t, "RECORD" | "STRUCT" | "FLOAT" | "FLOAT64" | "JSON") || f["mode"].as_str() == Some("REPEATED") {
            return Err(format!("Field {name} of type {t} cannot be used for clustering"));
        }
    }
    Ok(())
}

async fn insert_all(
    State(shared): State<Shared>,
    Path((project, dataset, table)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (response, latency) = {
        let mut guard = shared.lock();
        let state = &mut *guard;
        let parsed: Option<Json> = serde_json::from_slice(&body).ok();
        let insert_ids: Vec<String> = parsed
            .as_ref()
            .and_then(|b| b["rows"].as_array())
            .map(|rows| {
                rows.iter()
                    .map(|r| r["insertId"].as_str().unwrap_or("").to_owned())
                    .collect()
            })
            .unwrap_or_default();
        let skip_invalid_rows = parsed
            .as_ref()
            .and_then(|b| b["skipInvalidRows"].as_bool())
            .unwrap_or(false);
        let response = insert_all_answer(state, &project, &dataset, &table, &headers, &body, parsed.as_ref());
        state.requests.push(InsertRequest {
            at: Instant::now(),
            table,
            insert_ids,
            skip_invalid_rows,
            status: response.status().as_u16(),
        });
        (response, state.latency)
    };
    // The rows are in before the answer leaves: a client that dies meanwhile never learns
    // they were inserted, as with a lost answer from BigQuery.
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    response
}

fn insert_all_answer(
    state: &mut FakeState,
    project: &str,
    dataset: &str,
    table: &str,
    headers: &HeaderMap,
    body: &[u8],
    parsed: Option<&Json>,
) -> Response {
    let scopes = [BIGQUERY_SCOPE, INSERTDATA_SCOPE, CLOUD_SCOPE];
    if let Err(r) = authorize(state, headers, &scopes).and_then(|()| check_path(state, project, dataset)) {
        return *r;
    }
    if let Some(injected) = state.inject.pop_front() {
        return match injected {
            Injected::Status(503) => google_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "backendError",
                "Error encountered during execution. Retrying may solve the problem.",
            ),
            Injected::Status(code) => google_error(
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                "internalError",
                "An internal error occurred and the request could not be completed.",
            ),
            Injected::TooMany(after) => {
                let mut r = google_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rateLimitExceeded",
                    "Exceeded rate limits: too many api requests per user per method for this user_method.",
                );
                r.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_str(&after.as_secs().to_string()).expect("header"),
                );
                r
            }
            Injected::Quota(reason) => google_error(
                StatusCode::FORBIDDEN,
                reason,
                "Exceeded rate limits: too many table update operations for this table.",
            ),
        };
    }
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return google_error(
            StatusCode::BAD_REQUEST,
            "parseError",
            "This API does not support parsing form-encoded input.",
        );
    }
    if body.len() > MAX_REQUEST_BYTES {
        return google_error(
            StatusCode::BAD_REQUEST,
            "badRequest",
            &format!("Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."),
        );
    }
    let Some(Json::Object(request)) = parsed else {
        return google_error(StatusCode::BAD_REQUEST, "parseError", "Parse Error");
    };
    for key in request.keys() {
        if ![
            "kind",
            "skipInvalidRows",
            "ignoreUnknownValues",
            "templateSuffix",
            "rows",
            "traceId",
        ]
        .contains(&key.as_str())
        {
            return google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("Invalid JSON payload received. Unknown name \"{key}\": Cannot find field."),
            );
        }
    }
    if request
        .get("kind")
        .is_some_and(|k| k != "bigquery#tableDataInsertAllRequest")
    {
        return google_error(StatusCode::BAD_REQUEST, "invalid", "Invalid value for kind.");
    }
    let flag = |k: &str| match request.get(k) {
        None => Some(false),
        Some(Json::Bool(b)) => Some(*b),
        Some(_) => None,
    };
    let not_boolean = |k: &str| {
        google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!("Invalid JSON payload received. Invalid value at '{k}': expected a boolean."),
        )
    };
    let Some(skip_invalid) = flag("skipInvalidRows") else {
        return not_boolean("skipInvalidRows");
    };
    let Some(ignore_unknown) = flag("ignoreUnknownValues") else {
        return not_boolean("ignoreUnknownValues");
    };
    let rows = match request.get("rows").and_then(Json::as_array) {
        Some(rows) if !rows.is_empty() => rows,
        _ => return google_error(StatusCode::BAD_REQUEST, "invalid", "No rows present in the request."),
    };
    if rows.len() > MAX_ROWS {
        return google_error(
            StatusCode::BAD_REQUEST,
            "invalid",
            &format!(
                "too many rows present in the request, limit: {MAX_ROWS} row count: {}.",
                rows.len()
            ),
        );
    }
    let Some(resource) = state.tables.get(&format!("{dataset}.{table}")) else {
        return google_error(
            StatusCode::NOT_FOUND,
            "notFound",
            &format!("Not found: Table {project}:{dataset}.{table}"),
        );
    };
    let fields = resource["schema"]["fields"].as_array().cloned().unwrap_or_default();
    // Per row: its json, insertId and errors.
    let mut checked: Vec<CheckedRow> = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let Some(obj) = row.as_object() else {
            return google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("Invalid value at 'rows[{i}]'."),
            );
        };
        if let Some(k) = obj.keys().find(|k| *k != "insertId" && *k != "json") {
            return google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("Invalid JSON payload received. Unknown name \"{k}\" at 'rows[{i}]': Cannot find field."),
            );
        }
        let insert_id = match obj.get("insertId") {
            None => None,
            Some(Json::String(id)) if id.len() <= MAX_INSERT_ID => Some(id.clone()),
            Some(_) => {
                return google_error(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    &format!("Invalid value at 'rows[{i}].insert_id': at most {MAX_INSERT_ID} characters."),
                );
            }
        };
        let Some(Json::Object(json)) = obj.get("json") else {
            return google_error(
                StatusCode::BAD_REQUEST,
                "invalid",
                &format!("Invalid value at 'rows[{i}].json'."),
            );
        };
        let mut errors = Vec::new();
        check_record(&fields, json, "", ignore_unknown, &mut errors);
        for rule in &state.reject_rules {
            if json.get(&rule.column).and_then(Json::as_str) == Some(rule.value.as_str()) {
                errors.push(error_proto("invalid", &rule.column, &rule.message));
            }
        }
        checked.push(CheckedRow {
            json: json.clone(),
            insert_id,
            errors,
        });
    }
    let any_invalid = checked.iter().any(|r| !r.errors.is_empty());
    let mut insert_errors = Vec::new();
    for (
        i,
        CheckedRow {
            json,
            insert_id,
            errors,
        },
    ) in checked.into_iter().enumerate()
    {
        if !errors.is_empty() {
            insert_errors.push(json!({"index": i, "errors": errors}));
            continue;
        }
        if any_invalid && !skip_invalid {
            insert_errors.push(json!({"index": i, "errors": [error_proto("stopped", "", "")]}));
            continue;
        }
        let event_id = json.get("event_id").and_then(Json::as_str).unwrap_or("").to_owned();
        if let Some(reason) = state.fail_once.remove(&event_id) {
            let message = if reason == "timeout" {
                "The operation timed out."
            } else {
                "Backend error. Please try again."
            };
            insert_errors.push(json!({"index": i, "errors": [error_proto(&reason, "", message)]}));
            continue;
        }
        let now = Instant::now();
        if let (Some(window), Some(id)) = (state.dedup_window, &insert_id) {
            let key = (table.to_owned(), id.clone());
            if state.seen.get(&key).is_some_and(|at| now.duration_since(*at) < window) {
                state.deduplicated += 1;
                continue;
            }
            state.seen.insert(key, now);
        }
        state.stored.push(StoredRow {
            table: table.to_owned(),
            insert_id,
            json: Json::Object(json),
        });
    }
    let mut answer = json!({"kind": "bigquery#tableDataInsertAllResponse"});
    if !insert_errors.is_empty() {
        answer["insertErrors"] = Json::Array(insert_errors);
    }
    axum::Json(answer).into_response()
}

/// A row of a request, with the errors the table's schema finds in it.
struct CheckedRow {
    json: Map<String, Json>,
    insert_id: Option<String>,
    errors: Vec<Json>,
}

fn error_proto(reason: &str, location: &str, message: &str) -> Json {
    json!({"reason": reason, "location": location, "debugInfo": "", "message": message})
}

/// Validate a row's record against the table's fields, pushing BigQuery-style errors.
fn check_record(fields: &[Json], row: &Map<String, Json>, path: &str, ignore_unknown: bool, errors: &mut Vec<Json>) {
    let join = |name: &str| {
        if path.is_empty() {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        }
    };
    for key in row.keys() {
        if top_field(fields, key).is_none() && !ignore_unknown {
            let location = join(key);
            errors.push(error_proto(
                "invalid",
                &location,
                &format!("no such field: {location}."),
            ));
        }
    }
    for field in fields {
        let name = field["name"].as_str().unwrap_or("");
        let location = join(name);
        let value = row
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .unwrap_or(&Json::Null);
        match field["mode"].as_str().unwrap_or("NULLABLE") {
            "REPEATED" => match value {
                Json::Null => {}
                Json::Array(items) => {
                    for item in items {
                        check_value(field, item, &location, ignore_unknown, errors);
                    }
                }
                _ => errors.push(error_proto(
                    "invalid",
                    &location,
                    &format!("Array specified for non-repeated field: {location}."),
                )),
            },
            "REQUIRED" if value.is_null() => {
                errors.push(error_proto(
                    "invalid",
                    &location,
                    &format!("Missing required field: {location}."),
                ));
            }
            _ if value.is_null() => {}
            _ => check_value(field, value, &location, ignore_unknown, errors),
        }
    }
}

fn check_value(field: &Json, value: &Json, location: &str, ignore_unknown: bool, errors: &mut Vec<Json>) {
    let field_type = field["type"].as_str().unwrap_or("");
    let text = value.as_str();
    let ok = match field_type {
        "STRING" => value.is_string(),
        "INTEGER" | "INT64" => value.is_i64() || text.is_some_and(|s| s.parse::<i64>().is_ok()),
        "FLOAT" | "FLOAT64" => value.is_number() || text.is_some_and(|s| s.parse::<f64>().is_ok()),
        "BOOLEAN" | "BOOL" => value.is_boolean() || text.is_some_and(|s| s == "true" || s == "false"),
        "TIMESTAMP" => value.is_number() || text.is_some_and(is_timestamp),
        "DATE" => text.is_some_and(is_date),
        "BYTES" => text.is_some_and(|s| STANDARD.decode(s).is_ok()),
        "RECORD" | "STRUCT" => match value.as_object() {
            Some(obj) => {
                let sub = field["fields"].as_array().cloned().unwrap_or_default();
                check_record(&sub, obj, location, ignore_unknown, errors);
                true
            }
            None => false,
        },
        _ => true,
    };
    if !ok {
        let message = match field_type {
            "TIMESTAMP" => format!(
                "Couldn't convert value to timestamp: Could not parse '{}' as a timestamp. Required format is YYYY-MM-DD HH:MM[:SS[.SSSSSS]] or YYYY/MM/DD HH:MM[:SS[.SSSSSS]]",
                text.unwrap_or("")
            ),
            "RECORD" | "STRUCT" => format!("This field: {location} is not a record."),
            t => format!("Cannot convert value to {}.", t.to_ascii_lowercase()),
        };
        errors.push(error_proto("invalid", location, &message));
    }
}

fn digits(s: &str, min: usize, max: usize) -> Option<u32> {
    (s.len() >= min && s.len() <= max && s.chars().all(|c| c.is_ascii_digit())).then(|| s.parse().ok())?
}

fn is_date(s: &str) -> bool {
    let mut parts = s.splitn(3, '-');
    let (Some(y), Some(m), Some(d)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    digits(y, 4, 4).is_some_and(|y| y >= 1)
        && digits(m, 1, 2).is_some_and(|m| (1..=12).contains(&m))
        && digits(d, 1, 2).is_some_and(|d| (1..=31).contains(&d))
}

/// BigQuery's canonical timestamp text: `YYYY-[M]M-[D]D[( |T)[H]H:[M]M[:[S]S[.F]]][time zone]`.
fn is_timestamp(s: &str) -> bool {
    let s = s.trim();
    let (date, rest) = match s.find(['T', ' ']) {
        Some(i) => (&s[..i], &s[i + 1..]),
        None => (s, ""),
    };
    if !is_date(date) {
        return false;
    }
    if rest.is_empty() {
        return true;
    }
    let rest = rest
        .strip_suffix(" UTC")
        .or_else(|| rest.strip_suffix('Z'))
        .unwrap_or(rest);
    let (time, _zone) = match rest.rfind(['+', '-']) {
        Some(i) if i > 0 => (&rest[..i], &rest[i..]),
        _ => (rest, ""),
    };
    let mut parts = time.split(':');
    let (Some(h), Some(m)) = (parts.next(), parts.next()) else {
        return false;
    };
    let seconds_ok = match parts.next() {
        None => true,
        Some(sec) => {
            let (whole, frac) = sec.split_once('.').unwrap_or((sec, "0"));
            digits(whole, 1, 2).is_some_and(|s| s < 60) && digits(frac, 1, 6).is_some()
        }
    };
    digits(h, 1, 2).is_some_and(|h| h < 24)
        && digits(m, 1, 2).is_some_and(|m| m < 60)
        && seconds_ok
        && parts.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_parsed_like_bigquery() {
        for ok in [
            "2023-11-14T22:13:20.123000Z",
            "2023-11-14 22:13:20 UTC",
            "2023-11-14",
            "2023-1-4T2:13",
            "2023-11-14T22:13:20+02:00",
        ] {
            assert!(is_timestamp(ok), "{ok}");
        }
        for bad in ["yesterday", "2023-13-14", "2023-11-14T25:00", "1700000000"] {
            assert!(!is_timestamp(bad), "{bad}");
        }
    }

    #[test]
    fn rows_are_checked_against_the_schema() {
        let fields = json!([
            {"name": "event_id", "type": "STRING", "mode": "REQUIRED"},
            {"name": "n", "type": "INTEGER"},
            {"name": "tags", "type": "RECORD", "mode": "REPEATED", "fields": [
                {"name": "key", "type": "STRING", "mode": "REQUIRED"},
                {"name": "value", "type": "STRING"}
            ]}
        ]);
        let fields = fields.as_array().unwrap();
        let check = |row: Json, ignore| {
            let mut errors = Vec::new();
            check_record(fields, row.as_object().unwrap(), "", ignore, &mut errors);
            errors
        };
        assert!(check(json!({"event_id": "e", "n": 3, "tags": [{"key": "a"}]}), false).is_empty());
        let e = check(json!({"n": "x", "extra": 1, "tags": [{"value": "v"}]}), false);
        let messages: Vec<&str> = e.iter().map(|e| e["message"].as_str().unwrap()).collect();
        assert_eq!(
            messages,
            [
                "no such field: extra.",
                "Missing required field: event_id.",
                "Cannot convert value to integer.",
                "Missing required field: tags.key."
            ]
        );
        assert_eq!(check(json!({"event_id": "e", "extra": 1}), true), Vec::<Json>::new());
    }
}

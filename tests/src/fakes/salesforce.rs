//! A fake Salesforce org: the OAuth 2.0 JWT bearer token endpoint and the sObject Collections
//! upsert a CRM sink uses, checked and answered as Salesforce documents them.
//!
//! Sources:
//! - JWT bearer flow — <https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_jwt_flow.htm>:
//!   `POST /services/oauth2/token`, form `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer`
//!   and `assertion`; the JWT is RS256-signed with the key whose certificate is on the connected
//!   app; claims `iss` (consumer key), `sub` (username), `aud` (`https://login.salesforce.com`,
//!   `https://test.salesforce.com`, or a community URL — here also the fake's own base URL), `exp`
//!   (within 3 minutes). The answer `{"access_token", "scope", "instance_url", "id",
//!   "token_type": "Bearer"}` has no refresh token. Errors `{"error", "error_description"}`.
//! - Upsert with sObject Collections — <https://developer.salesforce.com/docs/platform/api-rest/guide/resources-composite-sobjects-collections-upsert.html>:
//!   `PATCH /services/data/vXX.X/composite/sobjects/{SObject}/{ExternalIdField}` (v46.0 and
//!   later), `Authorization: Bearer`, body `{"allOrNone"?, "records": [{"attributes": {"type"},
//!   …}]}`; up to 200 records, all of the URI's type, no `Id`; a malformed request is 400, else
//!   200 with one `{"id", "success", "errors": [{"statusCode", "message", "fields"}], "created"}`
//!   per record in order; `allOrNone` rolls everything back if one fails.
//! - Upserting — <https://developer.salesforce.com/docs/atlas.en-us.api.meta/api/sforce_api_calls_upsert.htm>:
//!   "If the key is matched multiple times, then an error is generated and the object record is
//!   neither inserted or updated" — here each record whose external id repeats in the request
//!   fails `DUPLICATE_VALUE` "Duplicate external id specified: <value>" (the wording Salesforce
//!   answers, as reported on salesforce.stackexchange.com/questions/104048).
//! - Errors — <https://developer.salesforce.com/docs/atlas.en-us.api_rest.meta/api_rest/errorcodes.htm>:
//!   `[{"message", "errorCode"}]`; 401 `INVALID_SESSION_ID`; over the org's API allocation
//!   **403 `REQUEST_LIMIT_EXCEEDED`, not 429**
//!   (<https://developer.salesforce.com/docs/platform/salesforce-app-limits-cheatsheet/guide/salesforce-app-limits-platform-api.html>);
//!   `SERVER_UNAVAILABLE` 503.
//!
//! The org: `Contact` (LastName required on create) and `Lead` (LastName and Company), each with
//! the external id field [`EXTERNAL_ID`]. Wording of per-record messages other than
//! `REQUIRED_FIELD_MISSING` and `ALL_OR_NONE_OPERATION_ROLLED_BACK`, and of the token errors, is
//! the fake's. Injections: throttle → 403 `REQUEST_LIMIT_EXCEEDED` (no retry delay); `refuse` →
//! that record fails `FIELD_CUSTOM_VALIDATION_EXCEPTION`; `fail_once` → `UNABLE_TO_LOCK_ROW` once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use aws_lc_rs::signature::{RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::Response;
use axum::routing::{patch, post};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::bigquery::TestKey;
use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const CONSUMER_KEY: &str = "3MVG9nectarFakeConsumerKey.0123456789abcdefghijklmnopqrstuvwxyzABCDEFGH";
pub const USERNAME: &str = "integration@nectar.example";
pub const EXTERNAL_ID: &str = "Nectar_Id__c";
pub const MAX_RECORDS: usize = 200;
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ORG_ID: &str = "00D5g000004NECTAR";

#[derive(Debug, Default)]
struct Org {
    public_key: Vec<u8>,
    tokens: Vec<String>,
    /// (SObject, external id) → record.
    records: BTreeMap<(String, String), Value>,
}

type Shared = Arc<Mutex<Org>>;

/// A running fake Salesforce org (login and instance on one host).
#[derive(Debug, Clone)]
pub struct FakeSalesforce {
    pub server: FakeServer,
    script: Script,
    org: Shared,
}

impl FakeSalesforce {
    /// An org whose connected app trusts `public_key` (PKCS#1 `RSAPublicKey` DER).
    pub async fn start(public_key: Vec<u8>) -> Self {
        let script = Script::new();
        let org = Arc::new(Mutex::new(Org {
            public_key,
            ..Org::default()
        }));
        let router = Router::new()
            .route("/services/oauth2/token", post(token))
            .route(
                "/services/data/{version}/composite/sobjects/{sobject}/{field}",
                patch(upsert),
            )
            .with_state((script.clone(), org.clone()));
        let contract = Contract {
            is_write: |method, _| method == Method::PATCH,
            server_error: || {
                api_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "SERVER_UNAVAILABLE",
                    "Server unavailable.",
                )
            },
            throttled: |_, _| {
                api_error(
                    StatusCode::FORBIDDEN,
                    "REQUEST_LIMIT_EXCEEDED",
                    "TotalRequests Limit exceeded.",
                )
            },
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self { server, script, org }
    }

    /// An org trusting a freshly generated key; the key (with its PKCS#8 PEM) is returned.
    pub async fn start_with_new_key() -> (Self, TestKey) {
        let key = TestKey::generate();
        (Self::start(key.public_der.clone()).await, key)
    }

    /// The login URL (`https://login.salesforce.com` in production); the token endpoint is
    /// `{login_url}/services/oauth2/token`.
    pub fn login_url(&self) -> &str {
        &self.server.base
    }
}

impl VendorFake for FakeSalesforce {
    fn script(&self) -> &Script {
        &self.script
    }

    /// The org's records, one per (SObject, external id), with `attributes.type` and `Id`.
    fn stored(&self) -> Vec<Value> {
        self.org.lock().expect("salesforce").records.values().cloned().collect()
    }
}

fn api_error(status: StatusCode, code: &str, message: &str) -> Response {
    harness::json(status, &json!([{"message": message, "errorCode": code}]))
}

fn oauth_error(error: &str, description: &str) -> Response {
    harness::json(
        StatusCode::BAD_REQUEST,
        &json!({"error": error, "error_description": description}),
    )
}

/// The verified claims of an assertion, or the token endpoint's refusal.
fn verify_assertion(assertion: &str, public_key: &[u8], base: &str) -> Result<Value, (&'static str, &'static str)> {
    let invalid = ("invalid_grant", "invalid assertion");
    let parts: Vec<&str> = assertion.split('.').collect();
    let [head, claims, signature] = parts[..] else {
        return Err(invalid);
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).ok();
    let header: Value = decode(head)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(invalid)?;
    let claims: Value = decode(claims)
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(invalid)?;
    if header["alg"] != "RS256" {
        return Err(("invalid_grant", "invalid assertion: the algorithm must be RS256"));
    }
    let signed = format!("{head}.{}", parts[1]);
    let signature = decode(signature).ok_or(invalid)?;
    if UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, public_key)
        .verify(signed.as_bytes(), &signature)
        .is_err()
    {
        return Err(("invalid_grant", "invalid assertion: signature does not verify"));
    }
    if claims["iss"] != CONSUMER_KEY {
        return Err(("invalid_client_id", "client identifier invalid"));
    }
    if claims["sub"] != USERNAME {
        return Err(("invalid_grant", "user hasn't approved this consumer"));
    }
    if !["https://login.salesforce.com", "https://test.salesforce.com", base]
        .iter()
        .any(|a| claims["aud"] == *a)
    {
        return Err(("invalid_grant", "audience is invalid"));
    }
    let now = harness::now_secs();
    match claims["exp"].as_i64() {
        Some(exp) if exp > now && exp <= now + 180 + 30 => Ok(claims),
        Some(exp) if exp <= now => Err(("invalid_grant", "expired assertion")),
        _ => Err(("invalid_grant", "invalid assertion: exp must be within 3 minutes")),
    }
}

type Ctx = State<(Script, Shared)>;

async fn token(State((_, org)): Ctx, headers: HeaderMap, body: Bytes) -> Response {
    let form: BTreeMap<String, String> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    if form.get("grant_type").map(String::as_str) != Some(JWT_BEARER) {
        return oauth_error("unsupported_grant_type", "grant type not supported");
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let base = format!("http://{host}");
    let mut org = org.lock().expect("salesforce");
    let assertion = form.get("assertion").map(String::as_str).unwrap_or_default();
    if let Err((error, description)) = verify_assertion(assertion, &org.public_key, &base) {
        return oauth_error(error, description);
    }
    let token = format!("{ORG_ID}!AQ{}", uuid::Uuid::new_v4().simple());
    org.tokens.push(token.clone());
    let answer = json!({"access_token": token, "scope": "api", "instance_url": base, "token_type": "Bearer",
                        "id": format!("https://login.salesforce.com/id/{ORG_ID}/0055g00000NECTAR"),
                        "issued_at": harness::now_millis().to_string()});
    harness::json(StatusCode::OK, &answer)
}

/// Why Salesforce would refuse one record: `(statusCode, message, fields)`.
fn check_record(record: &Value, sobject: &str, field: &str, exists: bool) -> Option<(String, String, Vec<String>)> {
    if record["attributes"]["type"] != sobject {
        return Some((
            "INVALID_TYPE".into(),
            format!("Records must all be of type {sobject}"),
            vec![],
        ));
    }
    if record.get("Id").is_some() {
        return Some((
            "INVALID_FIELD".into(),
            "Don't set Id; upsert by the external id field".into(),
            vec!["Id".into()],
        ));
    }
    let required: &[&str] = match (sobject, exists) {
        (_, true) => &[],
        ("Lead", false) => &["LastName", "Company"],
        _ => &["LastName"],
    };
    let missing: Vec<String> = std::iter::once(field)
        .chain(required.iter().copied())
        .filter(|f| record[*f].as_str().is_none_or(str::is_empty))
        .map(str::to_owned)
        .collect();
    (!missing.is_empty()).then(|| {
        let message = format!("Required fields are missing: [{}]", missing.join(", "));
        ("REQUIRED_FIELD_MISSING".into(), message, missing)
    })
}

async fn upsert(
    State((script, org)): Ctx,
    Path((version, sobject, field)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let supported = version
        .strip_prefix('v')
        .and_then(|v| v.parse::<f64>().ok())
        .is_some_and(|v| v >= 46.0);
    if !supported || !["Contact", "Lead"].contains(&sobject.as_str()) {
        return api_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    }
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let mut org = org.lock().expect("salesforce");
    if !token.is_some_and(|t| org.tokens.iter().any(|known| known == t)) {
        return api_error(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        );
    }
    if field != EXTERNAL_ID {
        let message = format!("Provided external ID field does not exist or is not accessible: {field}");
        return api_error(StatusCode::NOT_FOUND, "NOT_FOUND", &message);
    }
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return api_error(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "The request body is not valid JSON.",
        );
    };
    let Some(records) = request["records"].as_array() else {
        return api_error(StatusCode::BAD_REQUEST, "INVALID_FIELD", "records is required");
    };
    if records.len() > MAX_RECORDS {
        return api_error(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit exceeded. Cannot exceed 200 records",
        );
    }
    let mut results = Vec::new();
    let mut writes = Vec::new();
    // "If the key is matched multiple times, then an error is generated and the object record
    // is neither inserted or updated": every record whose external id repeats in the request.
    let mut uses: BTreeMap<String, usize> = BTreeMap::new();
    for record in records {
        *uses
            .entry(record[&field].as_str().unwrap_or_default().to_owned())
            .or_default() += 1;
    }
    for record in records {
        let value = record[&field].as_str().unwrap_or_default().to_owned();
        let key = (sobject.clone(), value.clone());
        let exists = org.records.contains_key(&key);
        let duplicate = (uses[&value] > 1).then(|| {
            let message = format!("Duplicate external id specified: {value}");
            ("DUPLICATE_VALUE".to_owned(), message, vec![field.clone()])
        });
        let failure = duplicate
            .or_else(|| check_record(record, &sobject, &field, exists))
            .or_else(|| match script.verdict(&record.to_string()) {
                Verdict::Accept => None,
                Verdict::Refuse => Some((
                    "FIELD_CUSTOM_VALIDATION_EXCEPTION".into(),
                    "Refused by a validation rule".into(),
                    vec![],
                )),
                Verdict::FailOnce => Some((
                    "UNABLE_TO_LOCK_ROW".into(),
                    "unable to obtain exclusive access to this record".into(),
                    vec![],
                )),
            });
        match failure {
            Some((code, message, fields)) => results.push(
                json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": fields}]}),
            ),
            None => {
                let prefix = if sobject == "Lead" { "00Q" } else { "003" };
                let id = org.records.get(&key).map_or_else(
                    || format!("{prefix}5g{:010}", org.records.len() + writes.len() + 1),
                    |r| r["Id"].as_str().unwrap_or_default().to_owned(),
                );
                results.push(json!({"id": id, "success": true, "errors": [], "created": !exists}));
                writes.push((key, id, record.clone()));
            }
        }
    }
    let failed = results.iter().any(|r| r["success"] == false);
    if failed && request["allOrNone"] == true {
        let rolled_back = json!({"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK", "fields": [],
            "message": "Record rolled back because not all records were valid and the request was using AllOrNone header"});
        for r in results.iter_mut().filter(|r| r["success"] == true) {
            *r = json!({"success": false, "errors": [rolled_back]});
        }
        return harness::json(StatusCode::OK, &Value::Array(results));
    }
    for (key, id, record) in writes {
        let stored = org
            .records
            .entry(key)
            .or_insert_with(|| json!({"attributes": {"type": sobject}, "Id": id}));
        for (k, v) in record
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| *k != "attributes")
        {
            stored[k] = v.clone();
        }
    }
    harness::json(StatusCode::OK, &Value::Array(results))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rsa::KeyPair;
    use aws_lc_rs::signature::RSA_PKCS1_SHA256;

    fn assertion(key: &TestKey, claims: &Value) -> String {
        let pem: String = key.private_pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(pem).expect("pem");
        let pair = KeyPair::from_pkcs8(&der).expect("pkcs8");
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut signature = vec![0; pair.public_modulus_len()];
        pair.sign(
            &RSA_PKCS1_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
            signed.as_bytes(),
            &mut signature,
        )
        .expect("sign");
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    async fn token(fake: &FakeSalesforce, key: &TestKey, sub: &str) -> (u16, Value) {
        let claims = json!({"iss": CONSUMER_KEY, "sub": sub, "aud": "https://login.salesforce.com", "exp": harness::now_secs() + 120});
        let form = serde_urlencoded::to_string([("grant_type", JWT_BEARER), ("assertion", &assertion(key, &claims))])
            .expect("form");
        let r = reqwest::Client::new()
            .post(format!("{}/services/oauth2/token", fake.login_url()))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    #[tokio::test]
    async fn jwt_bearer_then_collections_upsert_with_per_record_results() {
        let (fake, key) = FakeSalesforce::start_with_new_key().await;
        assert_eq!(token(&fake, &key, "someone@else.example").await.0, 400);
        let (status, answer) = token(&fake, &key, USERNAME).await;
        assert_eq!((status, answer["token_type"].as_str()), (200, Some("Bearer")));
        let url = format!(
            "{}/services/data/v61.0/composite/sobjects/Contact/{EXTERNAL_ID}",
            answer["instance_url"].as_str().expect("url")
        );
        let bearer = answer["access_token"].as_str().expect("token").to_owned();
        let contact =
            |id: &str, last: &str| json!({"attributes": {"type": "Contact"}, EXTERNAL_ID: id, "LastName": last});
        let body = json!({"allOrNone": false, "records": [contact("e-1", "Lovelace"), contact("e-2", "")]});
        let client = reqwest::Client::new();
        let r = client
            .patch(&url)
            .bearer_auth(&bearer)
            .json(&body)
            .send()
            .await
            .expect("send");
        let results: Value = r.json().await.expect("json");
        assert_eq!(
            (
                results[0]["created"].as_bool(),
                results[1]["errors"][0]["statusCode"].as_str()
            ),
            (Some(true), Some("REQUIRED_FIELD_MISSING"))
        );
        let again = json!({"allOrNone": true, "records": [contact("e-1", "Byron"), contact("e-3", "")]});
        let results: Value = client
            .patch(&url)
            .bearer_auth(&bearer)
            .json(&again)
            .send()
            .await
            .expect("send")
            .json()
            .await
            .expect("json");
        assert_eq!(
            results[0]["errors"][0]["statusCode"],
            "ALL_OR_NONE_OPERATION_ROLLED_BACK"
        );
        assert_eq!(
            fake.stored(),
            vec![
                json!({"attributes": {"type": "Contact"}, "Id": "0035g0000000001", EXTERNAL_ID: "e-1", "LastName": "Lovelace"})
            ]
        );

        let r = client
            .patch(&url)
            .bearer_auth("00D!wrong")
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        fake.script().throttle_next(1, 60);
        let r = client
            .patch(&url)
            .bearer_auth(&bearer)
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.json::<Value>().await.expect("json")[0]["errorCode"],
            "REQUEST_LIMIT_EXCEEDED"
        );
    }
}

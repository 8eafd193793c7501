//! The ingest service against the real local stack: every route's success path read back from
//! Kafka and decoded through the registry, every vendor's valid and forged signatures, every
//! kind of bad input answered as documented with nothing produced, and the service's answers
//! when Kafka or the registry is down.
//!
//! Needs `deploy/local/stack up` (`.ci/run` does it).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use http::HeaderMap;
use nectar_core::config::RawTopics;
use nectar_core::events::{AppEvent, FormSubmitted, WebhookReceived};
use nectar_tests::ingest::{
    API_KEY, GENERIC_SECRET, HUBSPOT_SECRET, InProcessIngest, SHOPIFY_SECRET, SLACK_SECRET, STRIPE_SECRET,
    extra_config, extra_config_with, now_secs, vendor_headers,
};
use nectar_tests::{TestIngest, count_raw, fresh_topics, ingest_config, read_topic};
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn start(topics: &RawTopics) -> TestIngest {
    TestIngest::start(ingest_config(topics, &extra_config()), true).await
}

/// A sample delivery: source name, secret, body, extra headers, expected vendor ids.
type Sample = (
    &'static str,
    &'static str,
    Vec<u8>,
    Vec<(&'static str, &'static str)>,
    Vec<&'static str>,
);

/// A sample delivery per vendor.
fn sample(vendor: &str) -> Sample {
    match vendor {
        "stripe" => (
            "stripe",
            STRIPE_SECRET,
            json!({"id": "evt_1NG8Du2eZvKYlo2CUI79vXWy", "object": "event", "type": "invoice.paid", "created": 1686089970, "data": {"object": {"id": "in_1", "customer_email": "ada@example.com"}}}).to_string().into_bytes(),
            vec![],
            vec!["evt_1NG8Du2eZvKYlo2CUI79vXWy"],
        ),
        "shopify" => (
            "shopify",
            SHOPIFY_SECRET,
            json!({"id": 820982911946154508_u64, "email": "jon@example.com", "total_price": "10.00"}).to_string().into_bytes(),
            vec![("x-shopify-topic", "orders/create"), ("x-shopify-webhook-id", "b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"), ("x-shopify-shop-domain", "example.myshopify.com")],
            vec!["b54557e4-bdd9-4b37-8a5f-bf7d70bcd043"],
        ),
        "hubspot" => (
            "hubspot",
            HUBSPOT_SECRET,
            json!([
                {"eventId": 100, "subscriptionId": 7, "portalId": 62515, "occurredAt": 1686089970000_i64, "subscriptionType": "contact.creation", "attemptNumber": 0, "objectId": 123, "changeSource": "CRM"},
                {"eventId": 101, "subscriptionId": 7, "portalId": 62515, "occurredAt": 1686089970001_i64, "subscriptionType": "contact.propertyChange", "attemptNumber": 0, "objectId": 123, "propertyName": "email", "propertyValue": "ada@example.com"}
            ])
            .to_string()
            .into_bytes(),
            vec![],
            vec!["62515:7:100", "62515:7:101"],
        ),
        "slack" => (
            "slack",
            SLACK_SECRET,
            json!({"token": "x", "team_id": "T1", "type": "event_callback", "event_id": "Ev08MFMKH6", "event_time": 1686089970, "event": {"type": "team_join", "user": {"id": "U1"}}}).to_string().into_bytes(),
            vec![],
            vec!["Ev08MFMKH6"],
        ),
        _ => (
            "billing",
            GENERIC_SECRET,
            json!({"id": "inv-42", "type": "invoice.settled", "email": "ada@example.com"}).to_string().into_bytes(),
            vec![("x-nectar-delivery", "dlv-42")],
            vec!["dlv-42"],
        ),
    }
}

/// A request to `/v1/webhooks/<vendor>` with `body` signed as the vendor signs it, plus `extra` headers.
fn signed(
    http: &reqwest::Client,
    ingest: &TestIngest,
    vendor: &str,
    secret: &str,
    body: Vec<u8>,
    extra: &[(&'static str, &'static str)],
) -> reqwest::RequestBuilder {
    let url = ingest.url(&format!("/v1/webhooks/{vendor}"));
    let mut headers = vendor_headers(vendor, secret, &url, &body, now_secs());
    for (name, value) in extra {
        headers.insert(*name, value.parse().expect("value"));
    }
    http.post(&url).headers(headers).body(body)
}

async fn post_webhook(ingest: &TestIngest, source: &str, headers: HeaderMap, body: Vec<u8>) -> (StatusCode, Value) {
    ingest.post(&format!("/v1/webhooks/{source}"), headers, body).await
}

#[tokio::test(flavor = "multi_thread")]
async fn json_form_is_produced_and_decodes_with_envelope_headers_and_key() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    // The browser's CORS preflight.
    let preflight = ingest
        .http
        .request(reqwest::Method::OPTIONS, ingest.url("/v1/forms/contact"))
        .header("origin", "https://www.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{}", preflight.status());
    assert_eq!(
        preflight
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://www.example.com"[..])
    );
    assert_eq!(count_raw(&topics).await, 0, "a preflight produces nothing");

    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = ingest
        .http
        .post(ingest.url("/v1/forms/contact"))
        .header("origin", "https://www.example.com")
        .header("traceparent", traceparent)
        .header("user-agent", "Mozilla/5.0 test")
        .json(&json!({
            "email": " Ada@Example.com ",
            "name": "Ada Lovelace",
            "company": "Analytical Engines",
            "page_url": "https://www.example.com/contact?utm_source=newsletter",
            "consent": {"marketing": true, "analytics": false},
            "_hp": ""
        }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"https://www.example.com"[..])
    );
    let event_id = response.json::<Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("event_id")
        .to_owned();

    let records = read_topic(&topics.forms, 1).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    let form: FormSubmitted = nectar_tests::codec()
        .decode(&record.payload)
        .await
        .expect("decodes through the registry");
    assert_eq!(form.envelope.event_id, event_id);
    assert_eq!(form.envelope.event_type, "form.submitted");
    assert_eq!(form.envelope.workspace_id, "acme");
    assert_eq!(form.envelope.source, "form:contact");
    assert_eq!(form.form_type.as_deref(), Some("contact"));
    assert_eq!(form.email.as_deref(), Some("Ada@Example.com"));
    assert_eq!(form.fields.get("name").map(String::as_str), Some("Ada Lovelace"));
    assert!(!form.fields.contains_key("_hp"), "the honeypot field is not kept");
    assert_eq!(
        form.page_url.as_deref(),
        Some("https://www.example.com/contact?utm_source=newsletter")
    );
    assert_eq!(form.user_agent.as_deref(), Some("Mozilla/5.0 test"));
    assert_eq!(form.client_ip.as_deref(), Some("127.0.0.1"));
    let consent = form.envelope.consent.expect("consent recorded");
    assert_eq!(
        (consent.marketing, consent.analytics, consent.personalization),
        (Some(true), Some(false), None)
    );
    let lead_key = nectar_core::ids::lead_key("acme", Some("ada@example.com"), None);
    assert_eq!(form.envelope.lead_key, lead_key);
    assert_eq!(record.key, lead_key, "the lead key is the message key");
    assert_eq!(record.header("nectar-event-id"), Some(event_id.as_str()));
    let tp = record.header("traceparent").expect("traceparent header");
    assert!(
        tp.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "the caller's trace continues: {tp}"
    );
    assert_eq!(form.envelope.trace_parent.as_deref(), Some(tp));
    assert_eq!(&record.payload[..1], &[0], "Confluent magic byte");
}

#[tokio::test(flavor = "multi_thread")]
async fn urlencoded_form_with_idempotency_key_gets_a_deterministic_event_id() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    let mut ids = Vec::new();
    for _ in 0..2 {
        let response = ingest
            .http
            .post(ingest.url("/v1/forms/newsletter"))
            .header("content-type", "application/x-www-form-urlencoded")
            .header("idempotency-key", "submission-7f3a")
            .body("email=grace%40example.com&interest=ai&interest=ml&consent_marketing=on")
            .send()
            .await
            .expect("request");
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        ids.push(
            response.json::<Value>().await.expect("json")["event_id"]
                .as_str()
                .expect("id")
                .to_owned(),
        );
    }
    assert_eq!(ids[0], ids[1], "a re-sent submission keeps its event id");
    let records = read_topic(&topics.forms, 2).await;
    assert_eq!(records.len(), 2);
    for record in records {
        let form: FormSubmitted = nectar_tests::codec().decode(&record.payload).await.expect("decodes");
        assert_eq!(form.envelope.event_id, ids[0]);
        assert_eq!(form.envelope.workspace_id, "default");
        assert_eq!(form.email.as_deref(), Some("grace@example.com"));
        assert_eq!(form.fields.get("interest").map(String::as_str), Some("ai,ml"));
        assert_eq!(form.envelope.consent.and_then(|c| c.marketing), Some(true));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn app_events_single_and_batch_answer_per_item_and_only_valid_items_are_produced() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    let single = ingest
        .http
        .post(ingest.url("/v1/events"))
        .bearer_auth(API_KEY)
        .header("idempotency-key", "deal-9")
        .json(&json!({"type": "deal.won", "email": "ada@example.com", "occurred_at": "2026-11-20T10:00:00Z", "properties": {"amount": 1200, "currency": "EUR"}}))
        .send()
        .await
        .expect("request");
    assert_eq!(single.status(), StatusCode::ACCEPTED);
    let single_id = single.json::<Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let expected = nectar_core::ids::derived_event_id("acme", "app:crm-app", "deal-9");
    assert_eq!(single_id, expected, "Idempotency-Key derives the event id");

    let batch = ingest
        .http
        .post(ingest.url("/v1/events"))
        .header("x-api-key", API_KEY)
        .json(&json!([
            {"type": "trial.started", "user_id": "u-1", "properties": {"plan": "pro"}},
            {"type": "trial.started", "email": "not-an-email"},
            {"type": "page.viewed", "anonymous_id": "anon-1", "idempotency_key": "pv-1"},
            {"typo": "x"}
        ]))
        .send()
        .await
        .expect("request");
    assert_eq!(batch.status(), StatusCode::MULTI_STATUS);
    let body: Value = batch.json().await.expect("json");
    assert_eq!(body["accepted"], 2);
    assert_eq!(body["rejected"], 2);
    let results = body["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], 202);
    assert_eq!(results[1]["status"], 400);
    assert_eq!(results[1]["error"]["code"], "invalid_email");
    assert_eq!(
        results[2]["event_id"],
        nectar_core::ids::derived_event_id("acme", "app:crm-app", "pv-1")
    );
    assert_eq!(results[3]["error"]["code"], "invalid_event");

    let records = read_topic(&topics.apps, 3).await;
    assert_eq!(records.len(), 3, "the two invalid items never reached Kafka");
    let mut seen = HashSet::new();
    for record in &records {
        let event: AppEvent = nectar_tests::codec().decode(&record.payload).await.expect("decodes");
        assert_eq!(event.producer, "crm-app");
        assert_eq!(event.envelope.workspace_id, "acme");
        if event.envelope.event_id == single_id {
            assert_eq!(event.envelope.occurred_at, 1_795_168_800_000);
            let props: Value = serde_json::from_str(&event.properties_json).expect("json");
            assert_eq!(props["amount"], 1200);
        }
        seen.insert(event.envelope.event_id);
    }
    assert!(seen.contains(&single_id));
}

#[tokio::test(flavor = "multi_thread")]
async fn every_vendor_signature_is_verified_and_forgeries_are_refused() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    let mut produced = 0;
    for vendor in ["stripe", "shopify", "hubspot", "slack", "generic"] {
        let (source, secret, body, extra, vendor_ids) = sample(vendor);
        let url = ingest.url(&format!("/v1/webhooks/{source}"));

        // Forged: signed with the wrong secret.
        let mut forged = vendor_headers(vendor, "not-the-secret", &url, &body, now_secs());
        for (k, v) in &extra {
            forged.insert(*k, v.parse().expect("value"));
        }
        let (status, error) = post_webhook(&ingest, source, forged, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{vendor}: {error}");
        assert_eq!(error["error"]["code"], "invalid_signature", "{vendor}");

        // Tampered: valid signature over a different body.
        let mut tampered = vendor_headers(vendor, secret, &url, b"{\"id\":\"evt_other\"}", now_secs());
        for (k, v) in &extra {
            tampered.insert(*k, v.parse().expect("value"));
        }
        let (status, _) = post_webhook(&ingest, source, tampered, body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{vendor}");
        assert_eq!(
            count_raw(&topics).await,
            produced,
            "{vendor}: a refused delivery produces nothing"
        );

        // Valid.
        let mut headers = vendor_headers(vendor, secret, &url, &body, now_secs());
        for (k, v) in &extra {
            headers.insert(*k, v.parse().expect("value"));
        }
        let (status, answer) = post_webhook(&ingest, source, headers, body.clone()).await;
        assert_eq!(status, StatusCode::OK, "{vendor}: {answer}");
        let ids = answer["event_ids"].as_array().expect("event_ids");
        assert_eq!(ids.len(), vendor_ids.len(), "{vendor}");
        produced += vendor_ids.len() as i64;
    }

    let records = read_topic(&topics.webhooks, produced as usize).await;
    assert_eq!(records.len() as i64, produced);
    let mut by_vendor: HashMap<String, Vec<WebhookReceived>> = HashMap::new();
    for record in &records {
        let hook: WebhookReceived = nectar_tests::codec().decode(&record.payload).await.expect("decodes");
        assert!(hook.verified);
        assert!(
            !hook
                .headers
                .keys()
                .any(|h| h.contains("signature") || h.contains("hmac")),
            "signature headers are not stored: {:?}",
            hook.headers.keys()
        );
        by_vendor.entry(hook.vendor.clone()).or_default().push(hook);
    }
    for vendor in ["stripe", "shopify", "hubspot", "slack", "generic"] {
        let (source, _, body, _, vendor_ids) = sample(vendor);
        let hooks = by_vendor.get(source).unwrap_or_else(|| panic!("{source} records"));
        let mut got: Vec<&str> = hooks.iter().filter_map(|h| h.vendor_event_id.as_deref()).collect();
        got.sort_unstable();
        assert_eq!(got, vendor_ids, "{vendor}");
        for hook in hooks {
            let id = hook.vendor_event_id.as_deref().expect("id");
            let workspace = if source == "stripe" { "acme" } else { "default" };
            assert_eq!(
                hook.envelope.event_id,
                nectar_core::ids::derived_event_id(workspace, &format!("webhook:{source}"), id)
            );
            if vendor != "hubspot" {
                assert_eq!(hook.body, body, "{vendor}: the raw body is kept byte for byte");
            }
        }
    }
    let stripe = &by_vendor["stripe"][0];
    assert_eq!(stripe.vendor_event_type.as_deref(), Some("invoice.paid"));
    assert_eq!(
        by_vendor["shopify"][0].vendor_event_type.as_deref(),
        Some("orders/create")
    );
    assert_eq!(by_vendor["slack"][0].vendor_event_type.as_deref(), Some("team_join"));
    let hubspot_types: HashSet<_> = by_vendor["hubspot"]
        .iter()
        .filter_map(|h| h.vendor_event_type.clone())
        .collect();
    assert_eq!(
        hubspot_types,
        HashSet::from(["contact.creation".to_owned(), "contact.propertyChange".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_same_webhook_delivered_twice_yields_one_event_id() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    let (source, secret, body, _, _) = sample("stripe");
    let url = ingest.url("/v1/webhooks/stripe");
    let mut ids = Vec::new();
    for attempt in 0..2 {
        // Stripe's retry carries a new timestamp and signature but the same event.
        let headers = vendor_headers("stripe", secret, &url, &body, now_secs() - attempt);
        let (status, answer) = post_webhook(&ingest, source, headers, body.clone()).await;
        assert_eq!(status, StatusCode::OK);
        ids.push(answer["event_ids"][0].as_str().expect("id").to_owned());
    }
    assert_eq!(ids[0], ids[1]);
    let records = read_topic(&topics.webhooks, 2).await;
    let mut decoded = HashSet::new();
    for record in &records {
        let hook: WebhookReceived = nectar_tests::codec().decode(&record.payload).await.expect("decodes");
        decoded.insert(hook.envelope.event_id);
    }
    assert_eq!(
        decoded,
        HashSet::from([ids[0].clone()]),
        "both deliveries carry one event id for the sinks to deduplicate"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn slack_url_verification_is_answered_without_producing() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    let body = json!({"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P", "type": "url_verification"}).to_string().into_bytes();
    let url = ingest.url("/v1/webhooks/slack");
    let headers = vendor_headers("slack", SLACK_SECRET, &url, &body, now_secs());
    let (status, answer) = post_webhook(&ingest, "slack", headers, body).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["challenge"],
        "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count_raw(&topics).await, 0);
}

/// Every kind of bad input gets its status and a JSON error naming the problem, and nothing
/// reaches Kafka.
#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_a_json_error_and_nothing_reaches_kafka() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    // No pooled connections: a 413 is answered without reading the body and the server then
    // closes the connection, which a pooled client could pick for the next case before it
    // sees the close ("error sending request").
    let unpooled = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("client");
    let http = &unpooled;
    let form = ingest.url("/v1/forms/contact");
    let events = ingest.url("/v1/events");
    let stripe_url = ingest.url("/v1/webhooks/stripe");
    let (_, _, stripe_body, _, _) = sample("stripe");
    let huge = "x".repeat(70_000);
    let too_many: Vec<Value> = (0..101).map(|_| json!({"type": "t"})).collect();

    let cases: Vec<(&str, reqwest::RequestBuilder, StatusCode, &str)> = vec![
        (
            "malformed JSON form",
            http.post(&form)
                .header("content-type", "application/json")
                .body("{\"email\": "),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "form that is not an object",
            http.post(&form).json(&json!(["a"])),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "nested form field",
            http.post(&form).json(&json!({"email": "a@example.com", "x": {"y": 1}})),
            StatusCode::BAD_REQUEST,
            "invalid_field",
        ),
        (
            "invalid e-mail",
            http.post(&form).json(&json!({"email": "ada@"})),
            StatusCode::BAD_REQUEST,
            "invalid_email",
        ),
        (
            "missing required field",
            http.post(&form).json(&json!({"name": "Ada"})),
            StatusCode::BAD_REQUEST,
            "missing_field",
        ),
        (
            "unknown form",
            http.post(ingest.url("/v1/forms/nope"))
                .json(&json!({"email": "a@example.com"})),
            StatusCode::NOT_FOUND,
            "unknown_form",
        ),
        (
            "origin not allowed",
            http.post(&form)
                .header("origin", "https://evil.example")
                .json(&json!({"email": "a@example.com"})),
            StatusCode::FORBIDDEN,
            "origin_not_allowed",
        ),
        (
            "form body too large",
            http.post(&form).json(&json!({"email": "a@example.com", "notes": huge})),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            "form content type",
            http.post(&form)
                .header("content-type", "text/plain")
                .body("email=a@example.com"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "missing API key",
            http.post(&events).json(&json!({"type": "t"})),
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
        ),
        (
            "unknown API key",
            http.post(&events).bearer_auth("nk_wrong").json(&json!({"type": "t"})),
            StatusCode::FORBIDDEN,
            "unknown_api_key",
        ),
        (
            "events content type",
            http.post(&events)
                .bearer_auth(API_KEY)
                .header("content-type", "application/x-www-form-urlencoded")
                .body("type=t"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        ),
        (
            "malformed events JSON",
            http.post(&events)
                .bearer_auth(API_KEY)
                .header("content-type", "application/json")
                .body("[{"),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "event without type",
            http.post(&events)
                .bearer_auth(API_KEY)
                .json(&json!({"email": "a@example.com"})),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            "bad occurred_at",
            http.post(&events)
                .bearer_auth(API_KEY)
                .json(&json!({"type": "t", "occurred_at": "yesterday"})),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            "batch over the limit",
            http.post(&events).bearer_auth(API_KEY).json(&too_many),
            StatusCode::BAD_REQUEST,
            "batch_too_large",
        ),
        (
            "batch of only invalid items",
            http.post(&events)
                .bearer_auth(API_KEY)
                .json(&json!([{"x": 1}, {"type": ""}])),
            StatusCode::BAD_REQUEST,
            "invalid_event",
        ),
        (
            "unknown webhook source",
            http.post(ingest.url("/v1/webhooks/nope")).body("{}"),
            StatusCode::NOT_FOUND,
            "unknown_source",
        ),
        (
            "webhook without signature",
            http.post(&stripe_url)
                .header("content-type", "application/json")
                .body(stripe_body.clone()),
            StatusCode::UNAUTHORIZED,
            "missing_signature",
        ),
        (
            "malformed signature header",
            http.post(&stripe_url)
                .header("stripe-signature", "garbage")
                .body(stripe_body.clone()),
            StatusCode::UNAUTHORIZED,
            "malformed_signature",
        ),
        (
            "stale timestamp",
            http.post(&stripe_url)
                .headers(vendor_headers(
                    "stripe",
                    STRIPE_SECRET,
                    &stripe_url,
                    &stripe_body,
                    now_secs() - 3600,
                ))
                .body(stripe_body.clone()),
            StatusCode::UNAUTHORIZED,
            "stale_timestamp",
        ),
        (
            "hubspot body that is not an array",
            {
                let body = br#"{"eventId": 1}"#.to_vec();
                let url = ingest.url("/v1/webhooks/hubspot");
                http.post(&url)
                    .headers(vendor_headers("hubspot", HUBSPOT_SECRET, &url, &body, now_secs()))
                    .body(body)
            },
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "unsigned webhook whose body is not JSON either: the signature is checked first",
            http.post(&stripe_url)
                .header("content-type", "application/json")
                .body(stripe_body[..20].to_vec()),
            StatusCode::UNAUTHORIZED,
            "missing_signature",
        ),
        (
            "signed stripe body that is not JSON (truncated)",
            signed(http, &ingest, "stripe", STRIPE_SECRET, stripe_body[..20].to_vec(), &[]),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "signed stripe body that is JSON but not an event object",
            signed(http, &ingest, "stripe", STRIPE_SECRET, b"[1, 2]".to_vec(), &[]),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "signed slack body that is not JSON",
            signed(
                http,
                &ingest,
                "slack",
                SLACK_SECRET,
                b"{\"type\": \"event_callback\", \"event_id\"".to_vec(),
                &[],
            ),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "signed shopify body that is not JSON",
            signed(
                http,
                &ingest,
                "shopify",
                SHOPIFY_SECRET,
                b"<order><id>1</id>".to_vec(),
                &[
                    ("x-shopify-topic", "orders/create"),
                    ("x-shopify-webhook-id", "b54557e4-0000-4b37-8a5f-bf7d70bcd043"),
                ],
            ),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "signed hubspot array of strings instead of event objects",
            signed(
                http,
                &ingest,
                "hubspot",
                HUBSPOT_SECRET,
                json!(["a", "b", "c"]).to_string().into_bytes(),
                &[],
            ),
            StatusCode::BAD_REQUEST,
            "malformed_body",
        ),
        (
            "signed hubspot array over 100 events",
            {
                let events: Vec<Value> = (0..101)
                    .map(|i| json!({"eventId": i, "subscriptionId": 7, "portalId": 62515, "subscriptionType": "contact.creation", "objectId": i}))
                    .collect();
                signed(
                    http,
                    &ingest,
                    "hubspot",
                    HUBSPOT_SECRET,
                    json!(events).to_string().into_bytes(),
                    &[],
                )
            },
            StatusCode::BAD_REQUEST,
            "too_many_events",
        ),
        (
            "webhook body too large",
            {
                let body = vec![b'x'; 1_048_577];
                http.post(&stripe_url)
                    .headers(vendor_headers("stripe", STRIPE_SECRET, &stripe_url, &body, now_secs()))
                    .body(body)
            },
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (name, request, status, code) in cases {
        let response = request.send().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(response.status(), status, "{name}");
        assert!(
            response
                .headers()
                .get("content-type")
                .is_some_and(|v| v.as_bytes().starts_with(b"application/json")),
            "{name}: JSON error body"
        );
        let body: Value = response.json().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        let error = if body.get("error").is_some() {
            &body["error"]
        } else {
            &body["results"][0]["error"]
        };
        assert_eq!(error["code"], code, "{name}: {body}");
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{name}: a message says what is wrong"
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_raw(&topics).await, 0, "no refused request produced anything");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_over_its_form_rate_gets_429_with_retry_after() {
    let topics = fresh_topics().await;
    let extra = extra_config_with("rate_limit_per_minute = 1\nrate_limit_burst = 2");
    let ingest = TestIngest::start(ingest_config(&topics, &extra), true).await;
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for i in 0..3 {
        let response = ingest
            .http
            .post(ingest.url("/v1/forms/newsletter"))
            .json(&json!({"email": format!("p{i}@example.com")}))
            .send()
            .await
            .expect("request");
        statuses.push(response.status());
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            let body: Value = response.json().await.expect("json");
            assert_eq!(body["error"]["code"], "rate_limited");
        }
    }
    assert_eq!(
        statuses,
        [
            StatusCode::ACCEPTED,
            StatusCode::ACCEPTED,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
    assert!(
        retry_after.is_some_and(|s| (1..=60).contains(&s)),
        "Retry-After in seconds: {retry_after:?}"
    );
    assert_eq!(
        read_topic(&topics.forms, 2).await.len(),
        2,
        "the limited request produced nothing"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_filled_honeypot_is_answered_like_success_and_dropped() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    let response = ingest
        .http
        .post(ingest.url("/v1/forms/newsletter"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("email=bot%40spam.example.com&_hp=http%3A%2F%2Fspam")
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    assert!(response.json::<Value>().await.expect("json")["event_id"].is_string());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(count_raw(&topics).await, 0);
    assert_eq!(ingest.state.metrics.spam_dropped.get(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn kafka_down_answers_503_and_readyz_names_kafka() {
    let topics = RawTopics::default();
    let mut config = ingest_config(&topics, &extra_config());
    // Nothing listens on port 1.
    config.kafka.bootstrap_servers = "127.0.0.1:1".into();
    let ingest = TestIngest::start(config, false).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (status, report) = ingest.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(report["ready"], false);
    assert_ne!(report["checks"]["kafka"], "ok", "{report}");
    let health = ingest
        .http
        .get(format!("{}/healthz", ingest.admin))
        .send()
        .await
        .expect("healthz");
    assert_eq!(health.status(), StatusCode::OK, "alive even when not ready");

    let response = ingest
        .http
        .post(ingest.url("/v1/forms/newsletter"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().get("retry-after").is_some());
    let body: Value = response.json().await.expect("json");
    assert_eq!(body["error"]["code"], "unavailable");
    assert!(
        body["error"]["message"].as_str().is_some_and(|m| m.contains("kafka")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_down_answers_503_and_nothing_is_produced() {
    let topics = fresh_topics().await;
    let mut config = ingest_config(&topics, &extra_config());
    config.schema_registry.url = "http://127.0.0.1:1/apis/ccompat/v7".into();
    let ingest = TestIngest::start(config, false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (status, report) = ingest.readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_ne!(report["checks"]["schema_registry"], "ok", "{report}");

    let response = ingest
        .http
        .post(ingest.url("/v1/events"))
        .bearer_auth(API_KEY)
        .json(&json!({"type": "t"}))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(count_raw(&topics).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_and_status() {
    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    ingest
        .http
        .post(ingest.url("/v1/forms/newsletter"))
        .json(&json!({"email": "a@example.com"}))
        .send()
        .await
        .expect("request");
    ingest
        .http
        .post(ingest.url("/v1/events"))
        .json(&json!({"type": "t"}))
        .send()
        .await
        .expect("request");
    let text = ingest
        .http
        .get(format!("{}/metrics", ingest.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(r#"nectar_ingest_requests_total{route="/v1/forms/{form_id}",status="202"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"nectar_ingest_requests_total{route="/v1/events",status="401"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("nectar_ingest_produce_duration_seconds_count 1"),
        "{text}"
    );
    assert!(text.contains("nectar_ingest_in_flight_requests 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_producer_library_emits_events_the_registry_decodes() {
    let topics = fresh_topics().await;
    let producer = nectar_producer::NectarProducer::new(
        &nectar_tests::kafka_config(),
        &nectar_tests::registry_config(),
        topics.clone(),
        "lib-test",
    )
    .expect("producer");
    producer.register_schemas().await.expect("register");
    let event = nectar_producer::AppEventBuilder::new("acme", "billing", "invoice.sent")
        .email("ada@example.com")
        .idempotency_key("inv-1")
        .property("amount", 10)
        .build();
    let delivery = producer.send_app_event(&event).await.expect("acknowledged");
    assert!(delivery.offset >= 0);
    let records = read_topic(&topics.apps, 1).await;
    let back: AppEvent = nectar_tests::codec()
        .decode(&records[0].payload)
        .await
        .expect("decodes");
    assert_eq!(back, event);
}

/// Any Confluent-compatible client can read the raw topics: Confluent's own Python client with
/// its Avro deserializer and schema registry client decodes what ingest wrote.
#[tokio::test(flavor = "multi_thread")]
async fn confluents_python_client_decodes_every_raw_topic() {
    let setup = std::process::Command::new(nectar_tests::repo_root().join("tests/python/setup"))
        .output()
        .expect("tests/python/setup runs");
    assert!(
        setup.status.success(),
        "tests/python/setup failed: {}",
        String::from_utf8_lossy(&setup.stderr)
    );
    let python = String::from_utf8_lossy(&setup.stdout)
        .lines()
        .last()
        .expect("python path")
        .trim()
        .to_owned();

    let topics = fresh_topics().await;
    let ingest = start(&topics).await;
    let form = ingest
        .http
        .post(ingest.url("/v1/forms/contact"))
        .json(&json!({"email": "ada@example.com", "consent": {"marketing": true}}))
        .send()
        .await
        .expect("form");
    assert_eq!(form.status(), StatusCode::ACCEPTED);
    let form_id = form.json::<Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let app = ingest
        .http
        .post(ingest.url("/v1/events"))
        .bearer_auth(API_KEY)
        .json(&json!({"type": "deal.won", "properties": {"amount": 5}}))
        .send()
        .await
        .expect("event");
    assert_eq!(app.status(), StatusCode::ACCEPTED);
    let app_id = app.json::<Value>().await.expect("json")["event_id"]
        .as_str()
        .expect("id")
        .to_owned();
    let (source, secret, body, _, _) = sample("stripe");
    let url = ingest.url("/v1/webhooks/stripe");
    let (status, answer) = post_webhook(
        &ingest,
        source,
        vendor_headers("stripe", secret, &url, &body, now_secs()),
        body.clone(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let hook_id = answer["event_ids"][0].as_str().expect("id").to_owned();

    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(nectar_tests::repo_root().join("tests/python/read_topics.py"))
            .args([
                "--bootstrap",
                &nectar_tests::kafka_config().bootstrap_servers,
                "--registry",
                &nectar_tests::registry_config().url,
            ])
            .args([
                "--topic",
                &topics.forms,
                "--topic",
                &topics.apps,
                "--topic",
                &topics.webhooks,
                "--expect",
                "3",
            ])
            .output()
            .expect("python runs")
    })
    .await
    .expect("thread");
    assert!(
        output.status.success(),
        "read_topics.py: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let records: Vec<Value> = serde_json::from_slice(&output.stdout).expect("JSON from read_topics.py");
    let by_id: HashMap<String, &Value> = records
        .iter()
        .map(|r| {
            (
                r["value"]["envelope"]["event_id"]
                    .as_str()
                    .expect("event_id")
                    .to_owned(),
                &r["value"],
            )
        })
        .collect();
    assert_eq!(by_id.len(), 3);
    assert_eq!(by_id[&form_id]["email"], "ada@example.com");
    assert_eq!(by_id[&form_id]["envelope"]["consent"]["marketing"], true);
    assert_eq!(by_id[&app_id]["envelope"]["event_type"], "deal.won");
    assert_eq!(by_id[&hook_id]["vendor_event_id"], "evt_1NG8Du2eZvKYlo2CUI79vXWy");
    assert_eq!(by_id[&hook_id]["verified"], true);
}

/// Shutdown answers the requests already in flight and flushes the producer: every request
/// that was answered 202 is on the topic, and no accepted request is cut off with an error.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_answers_requests_in_flight_and_every_acknowledged_event_is_on_kafka() {
    let topics = fresh_topics().await;
    let mut ingest = InProcessIngest::start(ingest_config(&topics, &extra_config())).await;
    let base = ingest.base.clone();
    let http = reqwest::Client::new();

    // Shutdown starts as soon as the first request has been answered, with the others in
    // flight.
    let (answered, mut first_answer) = tokio::sync::mpsc::unbounded_channel::<()>();
    let requests: Vec<_> = (0..40)
        .map(|i| {
            let (http, url, answered) = (http.clone(), format!("{base}/v1/events"), answered.clone());
            tokio::spawn(async move {
                let response = http
                    .post(url)
                    .bearer_auth(API_KEY)
                    .json(&json!({"type": "t", "properties": {"i": i}}))
                    .send()
                    .await
                    .ok()?;
                let _ = answered.send(());
                let status = response.status();
                let body: Value = response.json().await.ok()?;
                Some((status, body["event_id"].as_str().map(str::to_owned)))
            })
        })
        .collect();
    first_answer.recv().await.expect("a request is answered");
    ingest.begin_shutdown();
    let mut acknowledged = HashSet::new();
    for request in requests {
        // None: the connection was refused after shutdown began, which a client retries.
        if let Some((status, id)) = request.await.expect("task") {
            assert_eq!(
                status,
                StatusCode::ACCEPTED,
                "an accepted request is answered, not cut off"
            );
            acknowledged.insert(id.expect("event_id"));
        }
    }
    ingest.shutdown().await;
    assert!(!acknowledged.is_empty());
    let records = read_topic(&topics.apps, acknowledged.len()).await;
    let mut on_kafka = HashSet::new();
    for record in &records {
        let event: AppEvent = nectar_tests::codec().decode(&record.payload).await.expect("decodes");
        on_kafka.insert(event.envelope.event_id);
    }
    assert!(acknowledged.is_subset(&on_kafka), "every 202 is on Kafka");
}

/// On SIGTERM (here the shutdown future) ingest first reports not ready and keeps answering
/// for `ingest.shutdown_drain_ms`, so a load balancer that has not yet seen the change loses
/// no request; then it stops.
#[tokio::test(flavor = "multi_thread")]
async fn shutdown_reports_not_ready_and_keeps_answering_during_the_drain() {
    let topics = fresh_topics().await;
    let mut config = ingest_config(&topics, &extra_config());
    config.ingest.shutdown_drain_ms = 3_000;
    let mut ingest = InProcessIngest::start(config).await;
    let (base, admin) = (ingest.base.clone(), ingest.admin.clone());
    let http = reqwest::Client::new();

    let stop_sent = std::time::Instant::now();
    ingest.begin_shutdown();
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let readyz = loop {
        let response = http
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .expect("admin still up");
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break response.text().await.expect("body");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "/readyz still 200 after the shutdown signal"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(readyz.contains("shutting down"), "/readyz says why: {readyz}");

    // A request on a new connection, after the signal, is still answered and written.
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/events"))
        .bearer_auth(API_KEY)
        .json(&json!({"type": "t", "properties": {"late": true}}))
        .send()
        .await
        .expect("answered during the drain");
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let body: Value = response.json().await.expect("json");
    let id = body["event_id"].as_str().expect("event_id").to_owned();

    ingest.shutdown().await;
    assert!(
        stop_sent.elapsed() >= Duration::from_millis(3_000),
        "stopped before the drain ended ({:?})",
        stop_sent.elapsed()
    );
    assert!(
        http.get(format!("{base}/healthz")).send().await.is_err(),
        "the listener is closed after the drain"
    );
    let records = read_topic(&topics.apps, 1).await;
    let event: AppEvent = nectar_tests::codec()
        .decode(&records[0].payload)
        .await
        .expect("decodes");
    assert_eq!(event.envelope.event_id, id);
}

//! Once per event, end to end: vendor retries and re-sent requests reach ingest as several
//! deliveries of one event id, ingest writes a raw record per delivery (at least once), and
//! from normalize on every topic holds that event id once and score applies it once.
//!
//! Real ingest (in this process), the four processor binaries, the local Kafka and registry.

use std::collections::HashMap;
use std::time::Duration;

use http::HeaderMap;
use nectar_core::events::{EVENT_ID_HEADER, Event, LeadState};
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_tests::ingest::{
    API_KEY, HUBSPOT_SECRET, SLACK_SECRET, STRIPE_SECRET, extra_config, now_secs, vendor_headers,
};
use nectar_tests::{
    Record, ServiceProcess, TestIngest, codec, count_raw, count_records, fresh_changelog, fresh_topics, ingest_config,
    processor_env, read_topic, service_binary, unique, wait_caught_up,
};
use serde_json::{Value, json};

/// How many times each vendor delivery is sent (the first try and two retries).
const TRIES: usize = 3;

#[tokio::test(flavor = "multi_thread")]
async fn retried_deliveries_and_resent_requests_reach_every_topic_once_and_score_once() {
    let raw = fresh_topics().await;
    let run = unique("t");
    let (events, enriched, scored) = (
        format!("{run}.events"),
        format!("{run}.enriched"),
        format!("{run}.scored"),
    );
    let deliver_prefix = format!("{run}.deliver.");
    let dlq = format!("{run}.dlq");
    ensure_topics(
        &nectar_tests::kafka_config(),
        &[
            TopicSpec::new(&events, 3),
            TopicSpec::new(&enriched, 3),
            TopicSpec::new(&scored, 3),
            TopicSpec::new(&dlq, 1),
        ],
    )
    .await
    .expect("topics");
    let (dedup, changelog) = (fresh_changelog("dedup").await, fresh_changelog("score").await);
    let stage = |name: &str, topics: &[(&str, &str)]| {
        ServiceProcess::start(
            service_binary(&format!("nectar-{name}")),
            processor_env(&format!("{run}-{name}"), "a", &dlq, topics),
        )
    };
    let mut normalize = stage(
        "normalize",
        &[
            ("NECTAR_TOPICS__FORMS", &raw.forms),
            ("NECTAR_TOPICS__WEBHOOKS", &raw.webhooks),
            ("NECTAR_TOPICS__APPS", &raw.apps),
            ("NECTAR_OUTPUT__TOPIC", &events),
            ("NECTAR_DEDUP__CHANGELOG", &dedup),
        ],
    );
    let _enrich = stage(
        "enrich",
        &[("NECTAR_TOPICS__INPUT", &events), ("NECTAR_TOPICS__OUTPUT", &enriched)],
    );
    let _score = stage(
        "score",
        &[
            ("NECTAR_TOPICS__INPUT", &enriched),
            ("NECTAR_TOPICS__OUTPUT", &scored),
            ("NECTAR_TOPICS__CHANGELOG", &changelog),
        ],
    );
    let _route = stage(
        "route",
        &[
            ("NECTAR_TOPICS__INPUT", &scored),
            ("NECTAR_TOPICS__DELIVER_PREFIX", &deliver_prefix),
        ],
    );

    let ingest = TestIngest::start(ingest_config(&raw, &extra_config()), true).await;
    let mut ids = Vec::new();
    ids.extend(stripe_retries(&ingest).await);
    ids.extend(slack_retries(&ingest).await);
    ids.extend(hubspot_retries(&ingest).await);
    ids.extend(form_resent(&ingest).await);
    ids.extend(app_event_resent(&ingest).await);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6, "six events: {ids:?}");
    assert_eq!(
        count_raw(&raw).await,
        (3 + 3 + 3 * 2 + 2 + 2) as i64,
        "ingest writes a raw record per delivery (at least once)"
    );

    wait_caught_up(
        &format!("{run}-normalize"),
        &[raw.forms.clone(), raw.webhooks.clone(), raw.apps.clone()],
        &mut [&mut normalize],
    )
    .await;
    let on_events = event_ids(&read_topic(&events, ids.len()).await).await;
    assert_eq!(
        on_events.keys().cloned().collect::<std::collections::BTreeSet<_>>(),
        ids.iter().cloned().collect(),
        "nectar.events holds exactly the six events"
    );
    assert_once(&events, &on_events);
    // Give enrich, score and route time to pass on whatever normalize wrote.
    tokio::time::sleep(Duration::from_secs(5)).await;
    for topic in [&enriched, &scored] {
        let counts = event_ids(&read_topic(topic, ids.len()).await).await;
        for id in &ids {
            assert!(counts.contains_key(id), "{topic} has {id}");
        }
        assert_once(topic, &counts);
    }
    for sink in [
        "postgres",
        "elasticsearch",
        "hubspot",
        "bigquery",
        "slack",
        "salesforce",
    ] {
        let topic = format!("{deliver_prefix}{sink}");
        // Rules may send nothing to a sink (no lead is hot enough for Slack here).
        if count_records(&topic).await == 0 {
            continue;
        }
        let records = read_topic(&topic, 1).await;
        let counts = event_ids(&records).await;
        assert_once(&topic, &counts);
        if sink == "postgres" {
            for id in &ids {
                assert!(counts.contains_key(id), "{topic} has every event: {id}");
            }
        }
    }

    // One score increment per lead: the final state of each lead has applied one event.
    let mut leads: HashMap<String, LeadState> = HashMap::new();
    let codec = codec();
    for record in read_topic(&changelog, 1).await {
        let state: LeadState = codec.decode(&record.payload).await.expect("lead state");
        leads.insert(record.key.clone().expect("keyed by lead"), state);
    }
    assert_eq!(leads.len(), 5, "five leads have an e-mail: {leads:?}");
    for state in leads.values() {
        assert_eq!(state.events, 1, "one event applied to {state:?}");
        assert_eq!(state.recent_event_ids.len(), 1, "{state:?}");
    }
}

fn assert_once(topic: &str, counts: &HashMap<String, usize>) {
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "{topic}: event ids more than once: {repeated:?}");
}

/// Event id -> how many records carry it (by the decoded envelope, checked against the header).
async fn event_ids(records: &[Record]) -> HashMap<String, usize> {
    let codec = codec();
    let mut counts = HashMap::new();
    for record in records {
        let event: Event = codec.decode(&record.payload).await.expect("an io.nectar.Event");
        assert_eq!(record.header(EVENT_ID_HEADER), Some(event.envelope.event_id.as_str()));
        *counts.entry(event.envelope.event_id).or_insert(0) += 1;
    }
    counts
}

async fn post(ingest: &TestIngest, path: &str, headers: HeaderMap, body: Vec<u8>) -> Value {
    let (status, answer) = ingest.post(path, headers, body).await;
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer
}

/// A webhook delivery signed as `vendor` signs it, with `extra` headers.
async fn deliver(ingest: &TestIngest, vendor: &str, secret: &str, body: &Value, extra: &[(&str, String)]) -> Value {
    let body = body.to_string().into_bytes();
    let url = ingest.url(&format!("/v1/webhooks/{vendor}"));
    let mut headers = vendor_headers(vendor, secret, &url, &body, now_secs());
    for (name, value) in extra {
        headers.insert(
            http::HeaderName::from_bytes(name.as_bytes()).expect("name"),
            value.parse().expect("value"),
        );
    }
    post(ingest, &format!("/v1/webhooks/{vendor}"), headers, body).await
}

fn returned_ids(answer: &Value) -> Vec<String> {
    answer["event_ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .or_else(|| answer["event_id"].as_str().map(|id| vec![id.to_owned()]))
        .unwrap_or_default()
}

/// Stripe retries an undelivered event with the same body and a fresh signature.
async fn stripe_retries(ingest: &TestIngest) -> Vec<String> {
    let event = json!({
        "id": "evt_once_1", "object": "event", "type": "invoice.paid", "created": now_secs(),
        "data": {"object": {"id": "in_once_1", "customer_email": "buyer@acme-corp.com", "amount_paid": 4900, "currency": "usd"}}
    });
    let mut ids = Vec::new();
    for _ in 0..TRIES {
        ids.extend(returned_ids(
            &deliver(ingest, "stripe", STRIPE_SECRET, &event, &[]).await,
        ));
        // A new signature timestamp each time.
        tokio::time::sleep(Duration::from_millis(1100)).await;
    }
    assert_eq!(ids.len(), TRIES);
    assert!(
        ids.iter().all(|id| *id == ids[0]),
        "one event id for every try: {ids:?}"
    );
    ids
}

/// Slack retries with `X-Slack-Retry-Num` and `X-Slack-Retry-Reason`.
async fn slack_retries(ingest: &TestIngest) -> Vec<String> {
    let event = json!({
        "token": "x", "team_id": "T1", "type": "event_callback", "event_id": "Ev0ONCE1", "event_time": now_secs(),
        "event": {"type": "team_join", "user": {"id": "U1", "is_bot": false, "profile": {"email": "member@acme-corp.com", "first_name": "Mem"}}}
    });
    let mut ids = Vec::new();
    for attempt in 0..TRIES {
        let retry = if attempt == 0 {
            vec![]
        } else {
            vec![
                ("x-slack-retry-num", attempt.to_string()),
                ("x-slack-retry-reason", "http_timeout".to_owned()),
            ]
        };
        ids.extend(returned_ids(
            &deliver(ingest, "slack", SLACK_SECRET, &event, &retry).await,
        ));
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    ids
}

/// HubSpot retries a batch with each event's `attemptNumber` raised.
async fn hubspot_retries(ingest: &TestIngest) -> Vec<String> {
    let mut ids = Vec::new();
    for attempt in 0..TRIES {
        let batch = json!([
            {"eventId": 500, "subscriptionId": 7, "portalId": 62515, "occurredAt": now_secs() * 1000, "subscriptionType": "contact.propertyChange",
             "attemptNumber": attempt, "objectId": 123, "propertyName": "email", "propertyValue": "hs@acme-corp.com", "changeSource": "CRM"},
            {"eventId": 501, "subscriptionId": 7, "portalId": 62515, "occurredAt": now_secs() * 1000, "subscriptionType": "contact.creation",
             "attemptNumber": attempt, "objectId": 124, "changeSource": "CRM"}
        ]);
        let answer = returned_ids(&deliver(ingest, "hubspot", HUBSPOT_SECRET, &batch, &[]).await);
        assert_eq!(answer.len(), 2, "one record per event of the batch");
        ids.extend(answer);
    }
    ids
}

/// A JSON body posted twice to `path` with the same `Idempotency-Key` (and `auth`, if any):
/// both answers carry one event id.
async fn resent(ingest: &TestIngest, path: &str, auth: Option<&str>, key: &str, body: Value) -> Vec<String> {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut headers = HeaderMap::new();
        headers.insert("content-type", "application/json".parse().expect("value"));
        headers.insert("idempotency-key", key.parse().expect("value"));
        if let Some(auth) = auth {
            headers.insert("authorization", auth.parse().expect("value"));
        }
        ids.extend(returned_ids(
            &post(ingest, path, headers, body.to_string().into_bytes()).await,
        ));
    }
    assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    ids
}

/// A browser re-posts a form with the same `Idempotency-Key`.
async fn form_resent(ingest: &TestIngest) -> Vec<String> {
    let body = json!({"email": "form@acme-corp.com", "name": "Form Person"});
    resent(ingest, "/v1/forms/contact", None, "form-once-1", body).await
}

/// An app re-sends an event with the same `Idempotency-Key`.
async fn app_event_resent(ingest: &TestIngest) -> Vec<String> {
    let body = json!({"type": "demo.requested", "email": "app@acme-corp.com"});
    let auth = format!("Bearer {API_KEY}");
    resent(ingest, "/v1/events", Some(&auth), "app-once-1", body).await
}

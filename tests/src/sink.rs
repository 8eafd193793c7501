//! Harness for sink tests: fresh delivery and dead-letter topics, sample events produced the
//! way `nectar-route` produces them (Avro `io.nectar.Event` through the registry, key = lead
//! key, `nectar-event-id` header), the environment a sink binary runs with, and helpers to
//! read dead letters, run `replay` and wait for a condition.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

use nectar_core::events::{
    Activity, Commerce, Consent, EVENT_ID_HEADER, Envelope, Event, FormInfo, LeadScore, Person, now_millis,
};
use nectar_core::kafka::{TopicSpec, ensure_topics, idempotent_producer};
use nectar_core::schema;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::{Record, codec, kafka_config, read_topic_within, registry_config, unique};

/// One test's topics and consumer group.
#[derive(Debug, Clone)]
pub struct SinkTopics {
    pub deliver: String,
    pub dlq: String,
    pub group: String,
}

/// Fresh topics for one test: the delivery topic (3 partitions) and the DLQ (1 partition).
pub async fn fresh_sink_topics(name: &str) -> SinkTopics {
    let run = unique("t");
    let topics = SinkTopics {
        deliver: format!("{run}.deliver.{name}"),
        dlq: format!("{run}.dlq.sink-{name}"),
        group: format!("{run}-sink-{name}"),
    };
    ensure_topics(
        &kafka_config(),
        &[TopicSpec::new(&topics.deliver, 3), TopicSpec::new(&topics.dlq, 1)],
    )
    .await
    .expect("the local stack is up (deploy/local/stack up)");
    codec()
        .register(&topics.deliver, &schema::EVENT)
        .await
        .expect("registering io.nectar.Event");
    topics
}

/// `n` events with distinct ids and persons `lead-<tag>-<i>@example.com`, of several types
/// (forms, purchases, activities), each with a score.
pub fn sample_events(n: usize, tag: &str) -> Vec<Event> {
    let types = ["form.submitted", "lead.captured", "payment.succeeded", "email.clicked"];
    (0..n)
        .map(|i| {
            let email = format!("lead-{tag}-{i}@example.com");
            let event_type = types[i % types.len()];
            let now = now_millis();
            let mut event = Event::new(Envelope {
                event_id: uuid::Uuid::new_v4().to_string(),
                event_type: event_type.to_owned(),
                occurred_at: now - 60_000 + i as i64,
                received_at: now,
                source: "test".to_owned(),
                workspace_id: "ws-test".to_owned(),
                lead_key: Some(format!("ws-test:{email}")),
                trace_parent: None,
                consent: Some(Consent {
                    marketing: Some(true),
                    analytics: Some(true),
                    personalization: None,
                }),
            });
            event.person = Some(Person {
                email: Some(email),
                first_name: Some(format!("Ada{i}")),
                last_name: Some("Lovelace".to_owned()),
                full_name: Some(format!("Ada{i} Lovelace")),
                company: Some("Analytical Engines".to_owned()),
                job_title: Some("Engineer".to_owned()),
                ..Person::default()
            });
            match event_type {
                "form.submitted" | "lead.captured" => {
                    event.form = Some(FormInfo {
                        form_id: "contact".to_owned(),
                        form_type: Some("contact".to_owned()),
                        fields: HashMap::from([("message".to_owned(), format!("hello {i}"))]),
                    });
                }
                "payment.succeeded" => {
                    event.commerce = Some(Commerce {
                        amount_minor: Some(1000 + i as i64),
                        currency: Some("EUR".to_owned()),
                        order_id: Some(format!("order-{i}")),
                        status: Some("paid".to_owned()),
                        ..Commerce::default()
                    });
                }
                _ => {
                    event.activity = Some(Activity {
                        channel: "email".to_owned(),
                        action: "clicked".to_owned(),
                        campaign: Some("launch".to_owned()),
                        ..Activity::default()
                    });
                }
            }
            event.score = Some(LeadScore {
                value: (i % 100) as f64,
                delta: 5.0,
                stage: "mql".to_owned(),
                crossed: None,
            });
            event
        })
        .collect()
}

pub use nectar_core::events::ERASURE;

/// `events` made one lead's: `envelope.lead_key` (and so the record key and partition) set
/// to `lead_key`.
pub fn for_lead(mut events: Vec<Event>, lead_key: &str) -> Vec<Event> {
    for event in &mut events {
        event.envelope.lead_key = Some(lead_key.to_owned());
    }
    events
}

/// An erasure request for `lead_key` in workspace `ws-test` as normalize emits it: with the
/// person to erase (`email`), which no sink may keep.
pub fn erasure_event(lead_key: &str, email: &str) -> Event {
    let now = now_millis();
    let mut event = Event::new(Envelope {
        event_id: uuid::Uuid::new_v4().to_string(),
        event_type: ERASURE.to_owned(),
        occurred_at: now - 30_000,
        received_at: now,
        source: "test".to_owned(),
        workspace_id: "ws-test".to_owned(),
        lead_key: Some(lead_key.to_owned()),
        trace_parent: None,
        consent: None,
    });
    event.person = Some(Person {
        email: Some(email.to_owned()),
        ..Person::default()
    });
    event
}

/// The event ids of `events`.
pub fn event_ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.envelope.event_id.clone()).collect()
}

/// Produce `events` to `topic` as `nectar-route` does, waiting for every acknowledgement.
pub async fn produce_events(topic: &str, events: &[Event]) {
    let codec = codec();
    let producer = idempotent_producer(&kafka_config(), "sink-tests").expect("producer");
    let mut pending = Vec::with_capacity(events.len());
    for event in events {
        let payload = codec.encode(topic, &schema::EVENT, event).await.expect("encode");
        let key = event.envelope.lead_key.clone().unwrap_or_default();
        let headers = OwnedHeaders::new().insert(Header {
            key: EVENT_ID_HEADER,
            value: Some(event.envelope.event_id.as_str()),
        });
        let record = FutureRecord::to(topic).payload(&payload).key(&key).headers(headers);
        pending.push(producer.send_result(record).map_err(|(e, _)| e).expect("enqueue"));
    }
    for delivery in pending {
        delivery.await.expect("delivery").map_err(|(e, _)| e).expect("acked");
    }
}

/// The environment a sink binary runs with in tests: the local stack, an ephemeral admin
/// port, the test's topics and group, short linger and retry delays, plus `extra`.
pub fn sink_env(topics: &SinkTopics, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        (
            "NECTAR_KAFKA__BOOTSTRAP_SERVERS",
            kafka_config().bootstrap_servers.as_str(),
        ),
        ("NECTAR_SCHEMA_REGISTRY__URL", registry_config().url.as_str()),
        ("NECTAR_ADMIN__LISTEN", "127.0.0.1:0"),
        ("NECTAR_LOG__FILTER", "info"),
        ("NECTAR_SINK__TOPIC", topics.deliver.as_str()),
        ("NECTAR_SINK__DLQ_TOPIC", topics.dlq.as_str()),
        ("NECTAR_SINK__GROUP_ID", topics.group.as_str()),
        ("NECTAR_SINK__LINGER_MS", "20"),
        ("NECTAR_SINK__RETRY_INITIAL_MS", "50"),
        ("NECTAR_SINK__RETRY_MAX_MS", "1000"),
        ("NECTAR_SINK__START_TIMEOUT_MS", "10000"),
        // A SIGKILLed instance's partitions move on after 6 s (the broker's minimum), not 45.
        ("NECTAR_SINK__SESSION_TIMEOUT_MS", "6000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        env.retain(|(key, _)| key != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

/// The dead letters on `topic`: waits up to 60 s for `expected` of them.
pub async fn read_dlq(topic: &str, expected: usize) -> Vec<Record> {
    read_topic_within(topic, expected, Duration::from_secs(60)).await
}

/// Run `<bin> replay <args>` with `env` and wait for it.
pub fn replay(bin: impl AsRef<Path>, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let output = std::process::Command::new(bin.as_ref())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("replay")
        .args(args)
        .output()
        .expect("running replay");
    assert!(
        output.status.success(),
        "replay failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Wait until `condition` holds, checking every 200 ms; panics with `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Run a sink binary to its end (a start failure) and return its exit status and output;
/// panics if it is still running after `timeout`.
pub fn run_to_exit(
    bin: impl AsRef<Path>,
    env: &[(String, String)],
    timeout: Duration,
) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(bin.as_ref())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let output = child.wait_with_output().expect("output");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            return (status, text);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!(
                "the sink kept running; it should have stopped at start:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Per dead letter: (event id, reason, response, attempts, origin topic/partition/offset).
pub fn dlq_summary(records: &[Record]) -> Vec<HashMap<&'static str, String>> {
    records
        .iter()
        .map(|r| {
            let get = |k: &str| r.header(k).unwrap_or_default().to_owned();
            HashMap::from([
                ("event_id", get(EVENT_ID_HEADER)),
                ("reason", get("nectar-dlq-reason")),
                ("response", get("nectar-dlq-response")),
                ("attempts", get("nectar-dlq-attempts")),
                ("topic", get("nectar-dlq-topic")),
                ("partition", get("nectar-dlq-partition")),
                ("offset", get("nectar-dlq-offset")),
            ])
        })
        .collect()
}

/// The positions the PostgreSQL sink stored with its rows: partition → next offset of
/// `group` on `topic`, from `<schema>.nectar_sink_offsets`.
pub async fn pg_stored_positions(pool: &sqlx::PgPool, schema: &str, group: &str, topic: &str) -> BTreeMap<i32, i64> {
    sqlx::query_as::<_, (i32, i64)>(&format!(
        "SELECT partition, next_offset FROM {schema}.nectar_sink_offsets WHERE consumer_group = $1 AND topic = $2"
    ))
    .bind(group)
    .bind(topic)
    .fetch_all(pool)
    .await
    .expect("positions")
    .into_iter()
    .collect()
}

/// The OpenSearch the local stack runs (`NECTAR_OS_URL`, else 127.0.0.1:9200).
pub fn opensearch_url() -> String {
    std::env::var("NECTAR_OS_URL").unwrap_or_else(|_| "http://127.0.0.1:9200".into())
}

/// Every document of the indices `<prefix>-*`, after a refresh, as search hits. `search` is
/// the rest of the search body (`_source`, `version`, ...); `size` and `query` are set here.
pub async fn os_hits(http: &reqwest::Client, prefix: &str, mut search: serde_json::Value) -> Vec<serde_json::Value> {
    let base = opensearch_url();
    http.post(format!("{base}/{prefix}-*/_refresh"))
        .send()
        .await
        .expect("refresh");
    search["size"] = 10_000.into();
    search["query"] = serde_json::json!({ "match_all": {} });
    let mut answer: serde_json::Value = http
        .post(format!("{base}/{prefix}-*/_search"))
        .json(&search)
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("search answer");
    match answer["hits"]["hits"].take() {
        serde_json::Value::Array(hits) => hits,
        _ => Vec::new(),
    }
}

/// The event id of an OpenSearch hit (`_source.envelope.event_id`), asserting that the
/// document's `_id` is that event id, as the sink writes it.
pub fn hit_event_id(hit: &serde_json::Value) -> String {
    let id = hit["_source"]["envelope"]["event_id"]
        .as_str()
        .unwrap_or("?")
        .to_owned();
    assert_eq!(
        hit["_id"].as_str(),
        Some(id.as_str()),
        "the document _id is the event id"
    );
    id
}

//! `nectar-sink-bigquery` against the fake BigQuery and Google token endpoint
//! (`nectar_tests::fakes::bigquery`), which checks each request as Google documents it, and,
//! for the service tests, the real local Kafka and registry (`deploy/local/stack up`).
//!
//! Counting: the fake stores every row it inserts and counts rows per `event_id` column, so a
//! duplicate shows unless BigQuery's own best-effort `insertId` deduplication would have
//! hidden it. Tests of the sink's own behaviour (retries, partial failures, dead letters)
//! turn that deduplication off, so they prove the sink sends nothing twice; the crash test
//! keeps BigQuery's one-minute window on, because that window is exactly the guarantee the
//! sink relies on after a crash (see the README).
//!
//! The first tests drive the connector in-process (no Kafka); the rest run the binary.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use nectar_core::Sensitive;
use nectar_core::events::Event;
use nectar_sink::{Connector, Delivery, DeliveryError, Item, ItemResult, StartError};
use nectar_sink_bigquery::{BigQueryConfig, BigQueryConnector};
use nectar_tests::fakes::bigquery::{DATASET, FakeBigQuery, PROJECT};
use nectar_tests::sink::{
    SinkTopics, dlq_summary, event_ids, fresh_sink_topics, produce_events, read_dlq, replay, run_to_exit,
    sample_events, sink_env,
};
use nectar_tests::{ServiceProcess, assert_exactly_once, unique, wait_caught_up};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_nectar-sink-bigquery");

fn table_name() -> String {
    unique("events").replace('-', "_")
}

fn config(fake: &FakeBigQuery, table: &str, key_file: PathBuf) -> BigQueryConfig {
    BigQueryConfig {
        api_url: fake.base.clone(),
        project: PROJECT.into(),
        dataset: DATASET.into(),
        table: table.into(),
        credentials_file: Some(key_file),
        credentials_json: None,
        scope: "https://www.googleapis.com/auth/bigquery".into(),
        create_table: true,
        partition_by_day: true,
        skip_invalid_rows: true,
        ignore_unknown_values: false,
        max_rows_per_request: 500,
        max_request_bytes: 10_000_000,
    }
}

fn items(events: &[Event]) -> Vec<Item> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| Item {
            topic: "t".into(),
            partition: 0,
            offset: i as i64,
            key: None,
            value: Vec::new(),
            headers: Vec::new(),
            timestamp: None,
            event: Arc::new(e.clone()),
            attempts: 0,
            maybe_delivered: false,
        })
        .collect()
}

async fn deliver(connector: &BigQueryConnector, items: &[Item]) -> Result<Vec<ItemResult>, DeliveryError> {
    connector.deliver(Delivery { items, positions: None }).await
}

// ---------------------------------------------------------------------------------------
// The connector in-process.

#[tokio::test(flavor = "multi_thread")]
async fn start_creates_the_partitioned_table_with_the_event_schema() {
    let fake = FakeBigQuery::start().await;
    let table = table_name();
    let connector =
        BigQueryConnector::new(&config(&fake, &table, fake.key_file()), Duration::from_secs(30)).expect("connector");
    connector.start().await.expect("start");

    let resource = fake.table(&table).expect("the sink created the table");
    let fields = resource["schema"]["fields"].as_array().expect("fields");
    let names: Vec<&str> = fields.iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(&names[..4], ["event_id", "event_type", "occurred_at", "received_at"]);
    assert!(names.contains(&"person") && names.contains(&"attributes") && names.contains(&"score"));
    assert_eq!(
        resource["timePartitioning"],
        json!({"type": "DAY", "field": "occurred_at"})
    );
    assert_eq!(
        resource["clustering"],
        json!({"fields": ["workspace_id", "event_type"]})
    );

    // A second instance (with the key inline) finds it and checks it; the token is fetched
    // once per instance.
    let mut inline = config(&fake, &table, fake.key_file());
    inline.credentials_file = None;
    inline.credentials_json = Some(Sensitive::new(fake.key_file_json(&fake.key)));
    let again = BigQueryConnector::new(&inline, Duration::from_secs(30)).expect("connector");
    again.start().await.expect("start against the existing table");
    assert_eq!(fake.table_calls(), (2, 1), "(gets, inserts)");
    assert_eq!(fake.token_requests(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn start_names_the_columns_an_existing_table_lacks() {
    let fake = FakeBigQuery::start().await;
    let table = table_name();
    fake.create_table(
        &table,
        json!([
            {"name": "event_id", "type": "STRING", "mode": "REQUIRED"},
            {"name": "event_type", "type": "STRING"},
            {"name": "occurred_at", "type": "INTEGER"}
        ]),
    );
    let connector =
        BigQueryConnector::new(&config(&fake, &table, fake.key_file()), Duration::from_secs(30)).expect("connector");
    let Err(StartError::Config(message)) = connector.start().await else {
        panic!("a config error")
    };
    assert!(message.contains(&format!("{PROJECT}:{DATASET}.{table}")), "{message}");
    assert!(
        message.contains("`occurred_at` is INTEGER in the table; the rows need TIMESTAMP"),
        "{message}"
    );
    assert!(message.contains("`received_at` is missing"), "{message}");
    assert!(message.contains("`person` is missing"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn start_reports_rejected_credentials_and_a_missing_dataset() {
    let fake = FakeBigQuery::start().await;
    let table = table_name();
    let connector = BigQueryConnector::new(&config(&fake, &table, fake.unknown_key_file()), Duration::from_secs(30))
        .expect("connector");
    let Err(StartError::Credentials(message)) = connector.start().await else {
        panic!("credentials rejected")
    };
    assert!(message.contains("invalid_grant: Invalid JWT Signature."), "{message}");

    let mut wrong_dataset = config(&fake, &table, fake.key_file());
    wrong_dataset.dataset = "no_such_dataset".into();
    let connector = BigQueryConnector::new(&wrong_dataset, Duration::from_secs(30)).expect("connector");
    let Err(StartError::Config(message)) = connector.start().await else {
        panic!("a config error")
    };
    assert!(
        message.contains("dataset nectar-test:no_such_dataset does not exist"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn rows_are_the_events_with_insert_ids_and_rfc3339_timestamps() {
    let fake = FakeBigQuery::start().await;
    fake.set_dedup_window(None);
    let table = table_name();
    let connector =
        BigQueryConnector::new(&config(&fake, &table, fake.key_file()), Duration::from_secs(30)).expect("connector");
    connector.start().await.expect("start");
    let events = sample_events(12, "rows");
    let results = deliver(&connector, &items(&events)).await.expect("delivered");
    assert_eq!(results, vec![ItemResult::Delivered; 12]);

    let rows = fake.stored_rows(&table);
    assert_eq!(rows.len(), 12);
    for row in &rows {
        assert_eq!(
            row.insert_id.as_deref(),
            row.json["event_id"].as_str(),
            "insertId = event id"
        );
    }
    let first = rows
        .iter()
        .find(|r| r.json["event_id"] == events[0].envelope.event_id.as_str())
        .expect("row");
    let occurred = first.json["occurred_at"].as_str().expect("text");
    assert!(occurred.ends_with('Z') && occurred.contains('T'), "{occurred}");
    assert_eq!(first.json["person"]["email"], "lead-rows-0@example.com");
    assert_eq!(
        first.json["form"]["fields"],
        json!([{"key": "message", "value": "hello 0"}])
    );
    assert_eq!(fake.requests().len(), 1, "one insertAll for the batch");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_invalid_row_is_rejected_and_the_stopped_rows_are_retried() {
    let fake = FakeBigQuery::start().await;
    fake.set_dedup_window(None);
    let table = table_name();
    let mut cfg = config(&fake, &table, fake.key_file());
    cfg.skip_invalid_rows = false;
    let connector = BigQueryConnector::new(&cfg, Duration::from_secs(30)).expect("connector");
    connector.start().await.expect("start");
    let events = sample_events(5, "stopped");
    let bad = events[2].envelope.event_id.clone();
    fake.reject_rows_where("event_id", &bad, "The value is outside the table's partition range.");

    let results = deliver(&connector, &items(&events)).await.expect("answered");
    for (i, result) in results.iter().enumerate() {
        if i == 2 {
            let ItemResult::Reject { reason, response } = result else {
                panic!("row 2 rejected, got {result:?}")
            };
            assert_eq!(
                reason,
                "BigQuery refused the row: The value is outside the table's partition range. (at `event_id`)"
            );
            assert!(response.contains("\"reason\":\"invalid\""), "{response}");
        } else {
            assert!(
                matches!(result, ItemResult::Retry { reason, .. } if reason.contains("stopped")),
                "{result:?}"
            );
        }
    }
    assert!(
        fake.stored_rows(&table).is_empty(),
        "skipInvalidRows=false inserts nothing"
    );

    let stopped: Vec<Item> = items(&events).into_iter().filter(|i| i.event_id() != bad).collect();
    let results = deliver(&connector, &stopped).await.expect("answered");
    assert_eq!(results, vec![ItemResult::Delivered; 4]);
    assert_eq!(fake.stored_rows(&table).len(), 4);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_token_is_refreshed_once_and_a_deleted_account_stops_the_sink() {
    let fake = FakeBigQuery::start().await;
    fake.set_dedup_window(None);
    let table = table_name();
    let connector =
        BigQueryConnector::new(&config(&fake, &table, fake.key_file()), Duration::from_secs(30)).expect("connector");
    connector.start().await.expect("start");
    assert_eq!(fake.token_requests(), 1);

    fake.expire_tokens();
    let events = sample_events(3, "refresh");
    assert_eq!(
        deliver(&connector, &items(&events)).await.expect("delivered"),
        vec![ItemResult::Delivered; 3]
    );
    assert_eq!(fake.token_requests(), 2, "one new token after the 401");
    let statuses: Vec<u16> = fake.requests().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [401, 200]);

    fake.delete_account();
    let Err(DeliveryError::Fatal(message)) = deliver(&connector, &items(&sample_events(1, "gone"))).await else {
        panic!("fatal")
    };
    assert!(message.starts_with("credentials rejected"), "{message}");
    assert!(message.contains("account not found"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_renewed_before_they_expire() {
    let fake = FakeBigQuery::start().await;
    fake.set_token_lifetime(2);
    let table = table_name();
    let connector =
        BigQueryConnector::new(&config(&fake, &table, fake.key_file()), Duration::from_secs(30)).expect("connector");
    connector.start().await.expect("start");
    deliver(&connector, &items(&sample_events(1, "a")))
        .await
        .expect("delivered");
    assert_eq!(fake.token_requests(), 1, "cached");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    deliver(&connector, &items(&sample_events(1, "b")))
        .await
        .expect("delivered");
    assert_eq!(fake.token_requests(), 2, "renewed halfway through a 2 s life");
    assert!(fake.requests().iter().all(|r| r.status == 200), "never a 401");
}

#[tokio::test(flavor = "multi_thread")]
async fn whole_request_failures_are_classified() {
    let fake = FakeBigQuery::start().await;
    let table = table_name();
    let connector =
        BigQueryConnector::new(&config(&fake, &table, fake.key_file()), Duration::from_secs(30)).expect("connector");
    connector.start().await.expect("start");
    let batch = items(&sample_events(2, "whole"));

    fake.quota_next(1, "rateLimitExceeded");
    assert!(
        matches!(deliver(&connector, &batch).await, Err(DeliveryError::Retry { reason, .. }) if reason.contains("rateLimitExceeded"))
    );
    fake.throttle_next(1, Duration::from_secs(4));
    assert!(
        matches!(deliver(&connector, &batch).await, Err(DeliveryError::Retry { after: Some(d), .. }) if d == Duration::from_secs(4))
    );
    fake.fail_next(1, 503);
    assert!(
        matches!(deliver(&connector, &batch).await, Err(DeliveryError::Retry { reason, .. }) if reason.contains("HTTP 503"))
    );

    let mut gone = config(&fake, "never_created", fake.key_file());
    gone.create_table = false;
    let connector = BigQueryConnector::new(&gone, Duration::from_secs(30)).expect("connector");
    let Err(DeliveryError::Fatal(message)) = deliver(&connector, &batch).await else {
        panic!("fatal")
    };
    assert!(
        message.contains("nectar-test:nectar.never_created was not found"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn large_batches_are_split_under_the_request_limit_and_an_oversized_row_is_rejected() {
    let fake = FakeBigQuery::start().await;
    fake.set_dedup_window(None);
    let table = table_name();
    let mut cfg = config(&fake, &table, fake.key_file());
    cfg.max_request_bytes = 8 * 1024;
    let connector = BigQueryConnector::new(&cfg, Duration::from_secs(30)).expect("connector");
    connector.start().await.expect("start");
    let mut events = sample_events(30, "split");
    events[7].attributes.insert("blob".into(), "x".repeat(20 * 1024));
    let results = deliver(&connector, &items(&events)).await.expect("answered");
    for (i, r) in results.iter().enumerate() {
        if i == 7 {
            assert!(
                matches!(r, ItemResult::Reject { reason, .. } if reason.contains("target.max_request_bytes")),
                "{r:?}"
            );
        } else {
            assert_eq!(r, &ItemResult::Delivered);
        }
    }
    assert!(fake.requests().len() > 1, "split into several requests");
    assert_eq!(fake.stored_rows(&table).len(), 29);
}

// ---------------------------------------------------------------------------------------
// The service: Kafka → nectar-sink-bigquery → fake BigQuery.

struct Setup {
    fake: FakeBigQuery,
    topics: SinkTopics,
    table: String,
    env: Vec<(String, String)>,
}

async fn setup(extra: &[(&str, &str)]) -> Setup {
    let fake = FakeBigQuery::start().await;
    let topics = fresh_sink_topics("bigquery").await;
    let table = table_name();
    let key_file = fake.key_file();
    let target = fake.target_env(&table, &key_file);
    let mut all: Vec<(&str, &str)> = target.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    all.extend_from_slice(extra);
    let env = sink_env(&topics, &all);
    Setup {
        fake,
        topics,
        table,
        env,
    }
}

impl Setup {
    async fn wait_stored(&self, sink: &mut ServiceProcess, expected: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while self.fake.stored_counts(&self.table).len() < expected {
            if let Some(status) = sink.exited() {
                panic!("the sink exited with {status}:\n{}", sink.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "only {} of {expected} events stored:\n{}",
                self.fake.stored_counts(&self.table).len(),
                sink.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Wait until more than `count` rows are stored (the sink is delivering).
    async fn wait_stored_more_than(&self, sink: &mut ServiceProcess, count: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while self.fake.stored_rows(&self.table).len() <= count {
            if let Some(status) = sink.exited() {
                panic!("the sink exited with {status}:\n{}", sink.log());
            }
            assert!(std::time::Instant::now() < deadline, "no progress:\n{}", sink.log());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn caught_up(&self, sink: &mut ServiceProcess) {
        wait_caught_up(
            &self.topics.group,
            std::slice::from_ref(&self.topics.deliver),
            &mut [sink],
        )
        .await;
    }
}

/// Done-when 1: SIGKILL mid-batch, restart, every event stored once. The fake answers each
/// insertAll 200 ms after inserting the rows, and each kill lands while the sink is
/// delivering (rows are being stored), so the sink dies with rows inserted that it never
/// learned about and never committed. After the restart it sends them again, and BigQuery's
/// `insertId` deduplication (one minute, on in this test) keeps them from showing twice:
/// every row's `insertId` is its event id, which is what makes that work. The test checks
/// redeliveries did happen, so it proves the deduplication path, not a lucky kill.
#[tokio::test(flavor = "multi_thread")]
async fn a_crash_mid_batch_and_a_restart_store_every_event_once() {
    use rand::Rng;
    let s = setup(&[("NECTAR_SINK__MAX_BATCH", "50"), ("NECTAR_SINK__CONCURRENCY", "2")]).await;
    s.fake.set_latency(Duration::from_millis(200));
    let events = sample_events(1500, "crash");
    produce_events(&s.topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(BIN, s.env.clone());
    for _ in 0..3 {
        // Wait until this instance is delivering, then kill it somewhere in a batch.
        let before = s.fake.stored_rows(&s.table).len();
        s.wait_stored_more_than(&mut sink, before).await;
        let pause = rand::rng().random_range(20..300);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        sink.restart();
    }
    s.caught_up(&mut sink).await;

    let counts = s.fake.stored_counts(&s.table);
    assert_exactly_once(&event_ids(&events), &counts);
    for row in s.fake.stored_rows(&s.table) {
        assert_eq!(row.insert_id.as_deref(), row.json["event_id"].as_str());
    }
    let sent: usize = s
        .fake
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| r.insert_ids.len())
        .sum();
    eprintln!(
        "{sent} rows sent for {} events; {} redeliveries deduplicated by insertId",
        events.len(),
        s.fake.deduplicated()
    );
    assert!(
        s.fake.deduplicated() > 0,
        "no kill left inserted rows uncommitted; the test proved nothing"
    );
}

/// Done-when 2: 500s and 503s, BigQuery's 403 `rateLimitExceeded`, then 429s with
/// `Retry-After: 2`: nothing lost or doubled, and the request after each 429 comes no earlier
/// than two seconds later.
#[tokio::test(flavor = "multi_thread")]
async fn an_outage_of_500s_then_429s_loses_nothing_and_honours_retry_after() {
    let s = setup(&[("NECTAR_SINK__CONCURRENCY", "1")]).await;
    s.fake.set_dedup_window(None);
    s.fake.fail_next(2, 500);
    s.fake.fail_next(1, 503);
    s.fake.quota_next(1, "rateLimitExceeded");
    s.fake.throttle_next(2, Duration::from_secs(2));
    let events = sample_events(60, "outage");
    produce_events(&s.topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(BIN, s.env.clone());
    s.wait_stored(&mut sink, events.len()).await;
    s.caught_up(&mut sink).await;

    assert_exactly_once(&event_ids(&events), &s.fake.stored_counts(&s.table));
    let requests = s.fake.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(&statuses[..6], [500, 500, 503, 403, 429, 429], "{statuses:?}");
    for pair in requests.windows(2) {
        if pair[0].status == 429 {
            let waited = pair[1].at.duration_since(pair[0].at);
            assert!(
                waited >= Duration::from_secs(2),
                "the next request came after {waited:?}"
            );
        }
    }
    assert!(sink.exited().is_none(), "still running");
}

/// Done-when 3: some rows of a request fail (`backendError`, `timeout`) while the others are
/// inserted; the retry carries only the failed rows.
#[tokio::test(flavor = "multi_thread")]
async fn a_partial_failure_retries_only_the_failed_rows() {
    let s = setup(&[("NECTAR_SINK__CONCURRENCY", "1")]).await;
    s.fake.set_dedup_window(None);
    let events = sample_events(40, "partial");
    let ids = event_ids(&events);
    let failing: HashSet<String> = ids.iter().step_by(6).cloned().collect();
    let (backend, timeout): (Vec<String>, Vec<String>) =
        failing.iter().cloned().partition(|id| id.as_bytes()[0] % 2 == 0);
    s.fake.fail_rows_once(&backend, "backendError");
    s.fake.fail_rows_once(&timeout, "timeout");
    produce_events(&s.topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(BIN, s.env.clone());
    s.wait_stored(&mut sink, events.len()).await;
    s.caught_up(&mut sink).await;

    assert_exactly_once(&ids, &s.fake.stored_counts(&s.table));
    // Every request that carried a failing row: the first ones carried others too; every
    // one after a failing row's first attempt carries failed rows only.
    let mut attempted = HashSet::new();
    let mut retries = 0;
    for request in s.fake.requests() {
        let carried: Vec<&String> = request.insert_ids.iter().filter(|id| failing.contains(*id)).collect();
        if carried.iter().any(|id| attempted.contains(*id)) {
            retries += 1;
            assert!(
                request
                    .insert_ids
                    .iter()
                    .all(|id| failing.contains(id) && attempted.contains(id)),
                "a retry carried rows that had not failed: {:?}",
                request.insert_ids
            );
        }
        attempted.extend(carried.into_iter().cloned());
    }
    assert!(retries >= 1, "the failed rows were sent again");
    assert_eq!(attempted, failing);
}

/// Done-when 4 and 5: a row BigQuery refuses (`invalid`) is dead-lettered with the reason,
/// BigQuery's answer and its origin, the other rows are inserted (here with
/// `skipInvalidRows = false`, so BigQuery stops them and the sink sends them again); once the
/// cause is fixed, `replay --reason` puts it back and it is inserted, once.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_row_is_dead_lettered_the_rest_delivered_and_replay_delivers_it_once_fixed() {
    let s = setup(&[("NECTAR_TARGET__SKIP_INVALID_ROWS", "false")]).await;
    s.fake.set_dedup_window(None);
    let events = sample_events(20, "dlq");
    let ids = event_ids(&events);
    let bad = ids[5].clone();
    s.fake
        .reject_rows_where("event_id", &bad, "The value is outside the table's partition range.");
    produce_events(&s.topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(BIN, s.env.clone());
    s.wait_stored(&mut sink, events.len() - 1).await;
    s.caught_up(&mut sink).await;

    let counts = s.fake.stored_counts(&s.table);
    let good: Vec<String> = ids.iter().filter(|id| **id != bad).cloned().collect();
    assert_exactly_once(&good, &counts);
    let stopped_again = s
        .fake
        .requests()
        .iter()
        .any(|r| r.status == 200 && !r.insert_ids.contains(&bad) && r.insert_ids.len() > 1);
    assert!(
        stopped_again,
        "the stopped rows were sent again without the invalid one"
    );

    let letters = read_dlq(&s.topics.dlq, 1).await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let letter = &dlq_summary(&letters)[0];
    assert_eq!(letter["event_id"], bad);
    assert_eq!(
        letter["reason"],
        "BigQuery refused the row: The value is outside the table's partition range. (at `event_id`)"
    );
    let response: Value = serde_json::from_str(&letter["response"]).expect("BigQuery's insertErrors entry");
    assert_eq!(response["errors"][0]["reason"], "invalid");
    assert_eq!(letter["attempts"], "1");
    assert_eq!(letter["topic"], s.topics.deliver);
    assert!(!letter["partition"].is_empty() && !letter["offset"].is_empty());

    // Fix the cause, replay by reason: the event is inserted, once.
    s.fake.fix();
    replay(BIN, &s.env, &["--reason", "partition range"]);
    s.wait_stored(&mut sink, events.len()).await;
    s.caught_up(&mut sink).await;
    assert_exactly_once(&ids, &s.fake.stored_counts(&s.table));
}

/// Done-when 6: a key Google does not accept (`invalid_grant`) stops the sink at start with
/// a non-zero exit and a message that says the credentials were rejected.
#[tokio::test(flavor = "multi_thread")]
async fn rejected_credentials_stop_the_sink_at_start() {
    let s = setup(&[]).await;
    let unknown = s.fake.unknown_key_file();
    let env: Vec<(String, String)> = s
        .env
        .iter()
        .map(|(k, v)| {
            if k == "NECTAR_TARGET__CREDENTIALS_FILE" {
                (k.clone(), unknown.display().to_string())
            } else {
                (k.clone(), v.clone())
            }
        })
        .collect();
    let (status, output) = run_to_exit(BIN, &env, Duration::from_secs(30));
    assert!(!status.success(), "exit status {status}");
    assert!(output.contains("credentials rejected"), "{output}");
    assert!(output.contains("invalid_grant: Invalid JWT Signature."), "{output}");
    assert!(s.fake.table(&s.table).is_none(), "nothing was created");

    // A deleted service account: the same, with Google's reason.
    s.fake.delete_account();
    let (status, output) = run_to_exit(BIN, &s.env, Duration::from_secs(30));
    assert!(!status.success());
    assert!(
        output.contains("credentials rejected") && output.contains("account not found"),
        "{output}"
    );
}

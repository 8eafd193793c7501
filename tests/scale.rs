//! Issue 5's "done when": two instances of every stage at once, as a Kubernetes Deployment
//! with two replicas runs them, and events flowing end to end with no loss and no duplicate
//! while one instance of each stage is stopped and started again, one stage at a time.
//!
//! The whole pipeline runs on the local stack with this test's own topics, consumer groups,
//! PostgreSQL schema and OpenSearch indices: two in-process ingest services (the real
//! `nectar_ingest::serve`, with its graceful shutdown), two processes each of
//! `nectar-normalize`, `-enrich`, `-score` and `-route`, and two each of
//! `nectar-sink-postgres` and `nectar-sink-elasticsearch`. Route sends every event to both
//! sinks. While 2,000 forms and app events arrive at a steady pace (alternately at the two
//! ingest instances), one instance of each stage is stopped and started again:
//!
//! | stage | stopped with | started again as |
//! |---|---|---|
//! | normalize, score, sink-postgres | SIGKILL | the same instance (a container restarted in its pod: same `instance_id`, so its `transactional.id` fences the zombie) |
//! | enrich, route, sink-elasticsearch | SIGTERM | a new instance (a replaced pod: a new `instance_id`) |
//! | ingest | graceful shutdown, begun while a burst of 20 requests is on its way to it | a new instance on a new address |
//!
//! Every request answered 2xx is an event that must arrive. A request that failed may have
//! been produced or not, but never twice; only the stopped ingest instance may fail one, and
//! only without an answer (a connection it no longer accepts): every request it answered was
//! answered 2xx. Then, with `read_committed` readers: the raw topics, `events`, `enriched`,
//! `scored` and both delivery topics hold each event id exactly once (the `nectar-event-id`
//! header; on `scored` also score's own `lead.stage_changed` events, each once); PostgreSQL
//! holds one row per event, written by exactly one committed transaction (a `BEFORE INSERT`
//! trigger logs every proposed row, so a redelivery that `ON CONFLICT DO NOTHING` absorbed
//! still shows), and the positions stored with the rows are the end of the delivery topic;
//! OpenSearch holds one document per event; no dead letters anywhere; every instance,
//! including each restarted one, had partitions; and while each instance was down, its
//! stage kept going: the other instance wrote records stamped in that window (processors,
//! ingest) or delivered batches logged in it (sinks).
//!
//! Processes get `[kafka.properties] "session.timeout.ms" = "6000"` through a config file
//! (`NECTAR_CONFIG`), so a SIGKILLed instance's partitions move on after 6 s, not 45 s.
//!
//! Needs the local stack with PostgreSQL and OpenSearch, and the service binaries built
//! (`cargo build --workspace --bins`; `cargo test --workspace` builds them). Cargo does not
//! rebuild other packages' binaries for this test, so after changing a service, build them
//! again before running it alone: `cargo build --workspace --bins && cargo test -p
//! nectar-tests --test scale -- --nocapture` (the timeline and where the logs are).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use nectar_core::config::RawTopics;
use nectar_core::events::{EVENT_ID_HEADER, Event, now_millis};
use nectar_core::ids::derived_event_id;
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_tests::ingest::InProcessIngest;
use nectar_tests::sink::{SinkTopics, hit_event_id, opensearch_url, os_hits, pg_stored_positions, sink_env};
use nectar_tests::{
    Record, ServiceProcess, assert_exactly_once, codec, fresh_topics, ingest_config, kafka_config, processor_env,
    read_topic_within, service_binary, unique,
};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

/// Events sent, at a steady pace over `SEND_TIME`.
const EVENTS: usize = 2_000;
const SEND_TIME: Duration = Duration::from_secs(30);
/// The first stop, after the start of sending, and the time between two stops.
const FIRST_STOP: Duration = Duration::from_secs(2);
const STOP_EVERY: Duration = Duration::from_secs(4);
/// Requests sent at the ingest instance that is stopped, as its shutdown begins.
const BURST: usize = 20;
/// How long a stopped instance stays down.
const DOWN: Duration = Duration::from_secs(3);
/// Partitions of the topics between the stages (the raw topics have 3).
const PARTITIONS: i32 = 4;

const WORKSPACE: &str = "acme";
const API_KEY: &str = "nk_scale_7d41e9";
const APP_NAME: &str = "scale-app";

/// Every service: a SIGKILLed instance's partitions move on after 6 s.
const KAFKA_PROPERTIES: &str =
    "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n";

/// Route: every event to both sinks (erasure requests too).
const ROUTE_RULES: &str = r#"
[route]
erasure_sinks = ["postgres", "elasticsearch"]

[[route.rules]]
name = "everything"
when = "true"
sinks = ["postgres", "elasticsearch"]
"#;

fn since(start: Instant) -> String {
    format!("{:6.1}s", start.elapsed().as_secs_f64())
}

// ---------------------------------------------------------------------------------------
// Binaries and processes.

/// A TOML file passed to a service as `NECTAR_CONFIG`.
fn config_file(dir: &Path, name: &str, toml: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, toml).expect("config file");
    path
}

/// How a stage's instance is stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGKILL, then the same instance (same instance id) starts again.
    Kill,
    /// SIGTERM (graceful), then a new instance (a new instance id) takes its place.
    Term,
}

/// One run of one instance: its id and process.
#[derive(Debug)]
struct Run {
    id: String,
    process: ServiceProcess,
}

/// The two instances of one stage, with the runs that were replaced.
#[derive(Debug)]
struct Stage {
    name: &'static str,
    bin: PathBuf,
    /// Processors take `NECTAR_PROCESSOR__INSTANCE_ID`; sinks have no such key.
    processor: bool,
    env: Vec<(String, String)>,
    /// Slot 0 and 1: the Deployment's two replicas.
    slots: [Run; 2],
    /// Replaced runs, by slot.
    retired: Vec<(usize, Run)>,
}

impl Stage {
    fn start(name: &'static str, processor: bool, env: Vec<(String, String)>) -> Self {
        let bin = service_binary(&format!("nectar-{name}"));
        let slots = [0, 1].map(|slot| {
            let id = format!("{name}-{}", ["a", "b"][slot]);
            Run {
                process: ServiceProcess::start(&bin, Self::env_for(&env, processor, &id)),
                id,
            }
        });
        Self {
            name,
            bin,
            processor,
            env,
            slots,
            retired: Vec::new(),
        }
    }

    fn env_for(env: &[(String, String)], processor: bool, id: &str) -> Vec<(String, String)> {
        let mut env = env.to_vec();
        env.push(("NO_COLOR".into(), "1".into()));
        if processor {
            env.push(("NECTAR_PROCESSOR__INSTANCE_ID".into(), id.into()));
        }
        env
    }

    /// Stop slot `slot`'s instance as `how` says, wait `down`, start it again. Returns when
    /// it was down: from the moment it stopped to the start of the next run (epoch ms).
    async fn stop_and_start(&mut self, slot: usize, how: Stop, down: Duration, start: Instant) -> (i64, i64) {
        let run = &mut self.slots[slot];
        assert!(
            run.process.exited().is_none(),
            "{} exited before it was stopped:\n{}",
            run.id,
            run.process.log()
        );
        match how {
            Stop::Kill => {
                eprintln!("{} SIGKILL {} (pid {:?})", since(start), run.id, run.process.pid());
                run.process.kill9();
                let stopped = now_millis();
                tokio::time::sleep(down).await;
                let restarted = now_millis();
                run.process.restart();
                eprintln!(
                    "{} {} started again, same instance id (pid {:?})",
                    since(start),
                    run.id,
                    run.process.pid()
                );
                (stopped, restarted)
            }
            Stop::Term => {
                eprintln!("{} SIGTERM {} (pid {:?})", since(start), run.id, run.process.pid());
                let status = sigterm_and_wait(&mut run.process, Duration::from_secs(40)).await;
                assert!(
                    status.success(),
                    "{} stops gracefully on SIGTERM, got {status}:\n{}",
                    run.id,
                    run.process.log()
                );
                eprintln!("{} {} stopped gracefully ({status})", since(start), run.id);
                let stopped = now_millis();
                tokio::time::sleep(down).await;
                let restarted = now_millis();
                let id = format!("{}-2", run.id);
                let process = ServiceProcess::start(&self.bin, Self::env_for(&self.env, self.processor, &id));
                eprintln!(
                    "{} {id} started in place of {} (pid {:?})",
                    since(start),
                    run.id,
                    process.pid()
                );
                let old = std::mem::replace(run, Run { id, process });
                self.retired.push((slot, old));
                (stopped, restarted)
            }
        }
    }

    /// Fail with the log if a running instance exited on its own.
    fn assert_running(&mut self) {
        for run in &mut self.slots {
            if let Some(status) = run.process.exited() {
                panic!("{} exited with {status}:\n{}", run.id, run.process.log());
            }
        }
    }

    /// SIGTERM both instances; each must stop gracefully.
    async fn terminate(&mut self) {
        for run in &mut self.slots {
            let status = sigterm_and_wait(&mut run.process, Duration::from_secs(40)).await;
            assert!(
                status.success(),
                "{} stops gracefully on SIGTERM, got {status}:\n{}",
                run.id,
                run.process.log()
            );
        }
    }

    fn runs(&self) -> impl Iterator<Item = (usize, &Run)> {
        self.retired
            .iter()
            .map(|(slot, run)| (*slot, run))
            .chain(self.slots.iter().enumerate())
    }
}

/// SIGTERM `process` and wait (without blocking the runtime) for it to exit.
async fn sigterm_and_wait(process: &mut ServiceProcess, timeout: Duration) -> std::process::ExitStatus {
    let pid = process.pid().expect("running");
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = process.exited() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "pid {pid} still running {timeout:?} after SIGTERM:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `text` without ANSI colour sequences.
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The time of a log line (it starts with an RFC 3339 UTC timestamp), in epoch ms.
fn log_millis(line: &str) -> Option<i64> {
    let num = |range: std::ops::Range<usize>| line.get(range)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let ms = num(20..23).unwrap_or(0);
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let days = era * 146_097 + yoe * 365 + yoe / 4 - yoe / 100 + doy - 719_468;
    Some(((days * 24 + hh) * 60 + mm) * 60_000 + ss * 1000 + ms)
}

#[test]
fn log_times_are_read_as_epoch_millis() {
    assert_eq!(log_millis("1970-01-01T00:00:01.500000Z  INFO x"), Some(1_500));
    assert_eq!(
        log_millis("2024-02-29T23:59:59.999123Z  INFO x"),
        Some(1_709_251_199_999)
    );
    assert_eq!(
        log_millis("2026-11-21T08:40:12.141758Z  INFO x"),
        Some(1_795_250_412_141)
    );
    assert_eq!(log_millis("  INFO no time"), None);
}

/// Whether `log` has a "partitions assigned" line with at least one partition (a sink logs
/// empty assignments too).
fn had_partitions(log: &str) -> bool {
    strip_ansi(log)
        .lines()
        .any(|l| l.contains("partitions assigned") && l.contains("partitions=[(\""))
}

/// The log of the process's current run: after the last start marker.
fn current_run(log: &str) -> String {
    let log = strip_ansi(log);
    let start = ["initialising transactions", "target ready"]
        .iter()
        .filter_map(|marker| log.rfind(marker))
        .max()
        .unwrap_or(0);
    log[start..].to_owned()
}

/// Wait until the current run of every instance of `stages` has partitions.
async fn wait_all_assigned(stages: &mut [Stage], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let mut waiting = Vec::new();
        for stage in stages.iter_mut() {
            stage.assert_running();
            for run in &stage.slots {
                if !had_partitions(&current_run(&run.process.log())) {
                    waiting.push(run.id.clone());
                }
            }
        }
        if waiting.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = stages
                .iter()
                .flat_map(|s| s.slots.iter())
                .filter(|r| waiting.contains(&r.id))
                .map(|r| format!("--- {}:\n{}", r.id, strip_ansi(&r.process.log())))
                .collect();
            panic!("no partitions for {waiting:?} after {timeout:?}:\n{}", logs.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Ingest: the real service in this process, stopped with its graceful shutdown.

fn ingest_extra() -> String {
    let key_hash = hex::encode(Sha256::digest(API_KEY.as_bytes()));
    format!(
        r#"
        [ingest.forms]
        rate_limit_per_minute = 1000000
        rate_limit_burst = 100000
        [ingest.forms.definitions.contact]
        workspace_id = "{WORKSPACE}"
        form_type = "contact"
        required_fields = ["email"]
        [ingest.forms.definitions.demo]
        workspace_id = "{WORKSPACE}"
        form_type = "demo_request"
        required_fields = ["email"]

        [[ingest.events.api_keys]]
        name = "{APP_NAME}"
        workspace_id = "{WORKSPACE}"
        sha256 = "{key_hash}"
        "#
    )
}

/// One in-process ingest service (graceful shutdown = what SIGTERM does in the binary).
async fn start_ingest(topics: &RawTopics) -> InProcessIngest {
    InProcessIngest::start(ingest_config(topics, &ingest_extra())).await
}

/// The ingest instances a load balancer currently sends to: (slot, base URL).
type Endpoints = Arc<Mutex<Vec<(usize, String)>>>;

/// One request the sender made.
#[derive(Debug)]
struct Sent {
    /// The raw topic it goes to: forms or apps.
    form: bool,
    /// The event id ingest derives from the idempotency key.
    id: String,
    base: String,
    started: Instant,
    finished: Instant,
    /// `Err` with the reason when the request was not answered 2xx.
    outcome: Result<(), String>,
}

/// Request `i`: a contact or demo form, or an app event (`payment.succeeded`, which makes
/// score emit `lead.stage_changed`, or the app's own `trial.started`); each with its own
/// e-mail address and idempotency key.
async fn send_one(http: reqwest::Client, base: String, run: String, i: usize) -> Sent {
    let key = format!("{run}-{i}");
    let email = format!("lead-{i}@{run}.example.com");
    let form = i.is_multiple_of(2);
    let (request, id) = if form {
        let form_id = if i.is_multiple_of(4) { "contact" } else { "demo" };
        (
            http.post(format!("{base}/v1/forms/{form_id}"))
                .header("idempotency-key", &key)
                .json(&json!({"email": email, "name": format!("Ada {i}"), "company": "Analytical Engines"})),
            derived_event_id(WORKSPACE, &format!("form:{form_id}"), &key),
        )
    } else {
        let event_type = if i % 4 == 1 {
            "payment.succeeded"
        } else {
            "trial.started"
        };
        (
            http.post(format!("{base}/v1/events")).bearer_auth(API_KEY).json(&json!({
                "type": event_type,
                "email": email,
                "idempotency_key": key,
                "properties": {"amount_minor": 4900, "currency": "EUR", "order_id": format!("order-{i}"), "plan": "pro"},
            })),
            derived_event_id(WORKSPACE, &format!("app:{APP_NAME}"), &key),
        )
    };
    let started = Instant::now();
    let outcome = match request.send().await {
        Err(e) => {
            let mut reason = format!("no answer: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                reason.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            Err(reason)
        }
        Ok(response) => {
            let status = response.status();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            if status.is_success() {
                assert_eq!(
                    body["event_id"].as_str(),
                    Some(id.as_str()),
                    "the event id is derived from the idempotency key"
                );
                Ok(())
            } else {
                Err(format!("{status}: {body}"))
            }
        }
    };
    Sent {
        form,
        id,
        base,
        started,
        finished: Instant::now(),
        outcome,
    }
}

/// Send `EVENTS` requests at a steady pace over `SEND_TIME`, each to the next of the
/// ingest instances that are up.
async fn send_all(http: reqwest::Client, endpoints: Endpoints, run: String) -> Vec<Sent> {
    let mut ticker = tokio::time::interval(SEND_TIME / EVENTS as u32);
    let mut requests = Vec::with_capacity(EVENTS);
    for i in 0..EVENTS {
        ticker.tick().await;
        let base = {
            let endpoints = endpoints.lock().expect("endpoints");
            endpoints[i % endpoints.len()].1.clone()
        };
        requests.push(tokio::spawn(send_one(http.clone(), base, run.clone(), i)));
    }
    let mut sent = Vec::with_capacity(EVENTS);
    for request in requests {
        sent.push(request.await.expect("request task"));
    }
    sent
}

// ---------------------------------------------------------------------------------------
// Kafka.

/// Records per event id (the `nectar-event-id` header).
fn count_ids(records: &[Record]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for r in records {
        let id = r.header(EVENT_ID_HEADER).expect("every record has its event id header");
        *counts.entry(id.to_owned()).or_insert(0) += 1;
    }
    counts
}

/// The next offset after the last record of each partition: where a consumer that
/// delivered every record stores or commits its position.
fn next_offsets(records: &[Record]) -> BTreeMap<i32, i64> {
    let mut next = BTreeMap::new();
    for r in records {
        let n = next.entry(r.partition).or_insert(0);
        *n = (*n).max(r.offset + 1);
    }
    next
}

/// Group `group`'s committed offsets on `topic` (OffsetFetch: does not join the group).
async fn committed_offsets(group: &str, topic: &str) -> BTreeMap<i32, i64> {
    let (group, topic) = (group.to_owned(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = nectar_core::kafka::client_config(&kafka_config(), "nectar-tests")
            .set("group.id", &group)
            .create()
            .expect("consumer");
        let mut tpl = TopicPartitionList::new();
        for p in 0..PARTITIONS {
            tpl.add_partition(&topic, p);
        }
        consumer
            .committed_offsets(tpl, Duration::from_secs(10))
            .map(|c| {
                c.elements()
                    .iter()
                    .filter_map(|e| match e.offset() {
                        Offset::Offset(o) => Some((e.partition(), o)),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    })
    .await
    .expect("offsets thread")
}

// ---------------------------------------------------------------------------------------
// PostgreSQL.

fn pg_url() -> String {
    std::env::var("NECTAR_TARGET__URL").unwrap_or_else(|_| "postgres://nectar:nectar@127.0.0.1:5432/nectar".into())
}

async fn exec(pool: &PgPool, sql: &str) {
    pool.execute(sqlx::raw_sql(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// Rows and distinct event ids in the sink's default table.
async fn pg_counts(pool: &PgPool, schema: &str) -> (i64, i64) {
    let row = sqlx::query(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM {schema}.nectar_events"
    ))
    .fetch_one(pool)
    .await
    .expect("row counts");
    (row.get(0), row.get(1))
}

/// `SELECT event_id, count(*) … GROUP BY event_id` over `table`.
async fn pg_ids(pool: &PgPool, schema: &str, table: &str) -> HashMap<String, usize> {
    sqlx::query(&format!(
        "SELECT event_id, count(*) FROM {schema}.{table} GROUP BY event_id"
    ))
    .fetch_all(pool)
    .await
    .expect("ids")
    .into_iter()
    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as usize))
    .collect()
}

/// Committed transactions that inserted each event id (from the trigger's log).
async fn pg_insert_transactions(pool: &PgPool, schema: &str) -> HashMap<String, Vec<i64>> {
    let mut by_id: HashMap<String, Vec<i64>> = HashMap::new();
    for row in sqlx::query(&format!("SELECT event_id, tx FROM {schema}.insert_log"))
        .fetch_all(pool)
        .await
        .expect("insert_log")
    {
        by_id.entry(row.get(0)).or_default().push(row.get(1));
    }
    by_id
}

// ---------------------------------------------------------------------------------------
// OpenSearch.

/// Documents in `<prefix>-*` per `envelope.event_id`, after a refresh; each document's `_id`
/// must be its event id.
async fn os_documents(http: &reqwest::Client, prefix: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for hit in os_hits(http, prefix, json!({ "_source": ["envelope.event_id"] })).await {
        let id = hit_event_id(&hit);
        *counts.entry(id).or_insert(0) += 1;
    }
    counts
}

async fn os_count(http: &reqwest::Client, prefix: &str) -> i64 {
    let base = opensearch_url();
    let _ = http.post(format!("{base}/{prefix}-*/_refresh")).send().await;
    match http.get(format!("{base}/{prefix}-*/_count")).send().await {
        Ok(r) => r
            .json::<Value>()
            .await
            .ok()
            .and_then(|v| v["count"].as_i64())
            .unwrap_or(0),
        Err(_) => 0,
    }
}

async fn os_cleanup(http: &reqwest::Client, prefix: &str) {
    let base = opensearch_url();
    let _ = http.delete(format!("{base}/{prefix}-*")).send().await;
    let _ = http.delete(format!("{base}/_index_template/{prefix}")).send().await;
}

// ---------------------------------------------------------------------------------------
// The test.

/// This run's names.
#[derive(Debug)]
struct Names {
    run: String,
    raw: RawTopics,
    events: String,
    enriched: String,
    scored: String,
    changelog: String,
    dedup: String,
    deliver_prefix: String,
    dlqs: [String; 4],
    schema: String,
    index_prefix: String,
    dir: PathBuf,
}

impl Names {
    fn deliver(&self, sink: &str) -> String {
        format!("{}{sink}", self.deliver_prefix)
    }
    fn sink_topics(&self, sink: &str) -> SinkTopics {
        SinkTopics {
            deliver: self.deliver(sink),
            dlq: format!("{}.dlq.sink-{sink}", self.run),
            group: format!("{}-sink-{sink}", self.run),
        }
    }
    fn group(&self, stage: &str) -> String {
        format!("{}-{stage}", self.run)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_of_every_stage_lose_and_duplicate_nothing_while_each_is_restarted() {
    let start = Instant::now();
    let raw = fresh_topics().await;
    let run = unique("t");
    let dir = std::env::temp_dir().join(format!("nectar-scale-{run}"));
    std::fs::create_dir_all(&dir).expect("run directory");
    let names = Names {
        events: format!("{run}.events"),
        enriched: format!("{run}.leads.enriched"),
        scored: format!("{run}.leads.scored"),
        changelog: format!("{run}.score.changelog"),
        dedup: format!("{run}.normalize.dedup"),
        deliver_prefix: format!("{run}.deliver."),
        dlqs: ["normalize", "enrich", "score", "route"].map(|s| format!("{run}.dlq.{s}")),
        schema: format!("scale_{}", uuid::Uuid::new_v4().simple()),
        index_prefix: format!("nectar-scale-{}", uuid::Uuid::new_v4().simple()),
        raw,
        dir,
        run,
    };
    eprintln!("run {} (configs and logs in {})", names.run, names.dir.display());

    let mut changelog = TopicSpec::new(&names.changelog, PARTITIONS);
    changelog.config.push(("cleanup.policy".into(), "compact".into()));
    let mut dedup = TopicSpec::new(&names.dedup, PARTITIONS);
    dedup.config.push(("cleanup.policy".into(), "compact".into()));
    let mut specs = vec![
        dedup,
        TopicSpec::new(&names.events, PARTITIONS),
        TopicSpec::new(&names.enriched, PARTITIONS),
        TopicSpec::new(&names.scored, PARTITIONS),
        changelog,
        TopicSpec::new(names.deliver("postgres"), PARTITIONS),
        TopicSpec::new(names.deliver("elasticsearch"), PARTITIONS),
    ];
    specs.extend(names.dlqs.iter().map(|t| TopicSpec::new(t, 1)));
    for sink in ["postgres", "elasticsearch"] {
        specs.push(TopicSpec::new(names.sink_topics(sink).dlq, 1));
    }
    ensure_topics(&kafka_config(), &specs)
        .await
        .expect("the local stack is up (deploy/local/stack up)");

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&pg_url())
        .await
        .expect("PostgreSQL is up (deploy/local/stack up --with postgres)");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client");
    let os_up = http.get(opensearch_url()).send().await;
    assert!(
        os_up.is_ok_and(|r| r.status().is_success()),
        "OpenSearch is up (deploy/local/stack up --with opensearch)"
    );

    let mut stages = start_stages(&names, &pool).await;
    let outcome = std::panic::AssertUnwindSafe(scenario(&names, &mut stages, &pool, &http, start))
        .catch_unwind()
        .await;
    // Every run's log, whatever happened.
    for stage in &stages {
        for (slot, run) in stage.runs() {
            let path = names.dir.join(format!("{}-slot{slot}.log", run.id));
            let _ = std::fs::write(&path, strip_ansi(&run.process.log()));
        }
    }
    eprintln!("{} logs in {}", since(start), names.dir.display());
    os_cleanup(&http, &names.index_prefix).await;
    match outcome {
        Ok(()) => {
            exec(&pool, &format!("DROP SCHEMA {} CASCADE", names.schema)).await;
            eprintln!("{} passed", since(start));
        }
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// The PostgreSQL schema with its insert log, and both instances of every stage.
async fn start_stages(names: &Names, pool: &PgPool) -> Vec<Stage> {
    let common = config_file(&names.dir, "common", KAFKA_PROPERTIES);
    let route_config = config_file(&names.dir, "route", &format!("{KAFKA_PROPERTIES}{ROUTE_RULES}"));
    let common = common.to_str().expect("utf-8 path");
    let route_config = route_config.to_str().expect("utf-8 path");
    let processor = |stage: &str, dlq: &str, config: &str, topics: &[(&str, &str)]| {
        let mut env = processor_env(&names.group(stage), "unset", dlq, topics);
        env.retain(|(k, _)| k != "NECTAR_PROCESSOR__INSTANCE_ID");
        env.push(("NECTAR_CONFIG".into(), config.into()));
        env
    };
    let normalize = processor(
        "normalize",
        &names.dlqs[0],
        common,
        &[
            ("NECTAR_TOPICS__FORMS", &names.raw.forms),
            ("NECTAR_TOPICS__WEBHOOKS", &names.raw.webhooks),
            ("NECTAR_TOPICS__APPS", &names.raw.apps),
            ("NECTAR_OUTPUT__TOPIC", &names.events),
            ("NECTAR_DEDUP__CHANGELOG", &names.dedup),
        ],
    );
    let enrich = processor(
        "enrich",
        &names.dlqs[1],
        common,
        &[
            ("NECTAR_TOPICS__INPUT", &names.events),
            ("NECTAR_TOPICS__OUTPUT", &names.enriched),
        ],
    );
    let score = processor(
        "score",
        &names.dlqs[2],
        common,
        &[
            ("NECTAR_TOPICS__INPUT", &names.enriched),
            ("NECTAR_TOPICS__OUTPUT", &names.scored),
            ("NECTAR_TOPICS__CHANGELOG", &names.changelog),
        ],
    );
    let route = processor(
        "route",
        &names.dlqs[3],
        route_config,
        &[
            ("NECTAR_TOPICS__INPUT", &names.scored),
            ("NECTAR_TOPICS__DELIVER_PREFIX", &names.deliver_prefix),
        ],
    );
    let pg_url = pg_url();
    let postgres = sink_env(
        &names.sink_topics("postgres"),
        &[
            ("NECTAR_CONFIG", common),
            ("NECTAR_TARGET__URL", &pg_url),
            ("NECTAR_TARGET__SCHEMA", &names.schema),
            ("NECTAR_TARGET__APPLICATION_NAME", &names.run),
            ("NECTAR_TARGET__CONNECT_TIMEOUT_MS", "2000"),
            ("NECTAR_LOG__FILTER", "info,nectar_sink=debug"),
        ],
    );
    let template = format!("{}-%Y.%m.%d", names.index_prefix);
    let os_url = opensearch_url();
    let elasticsearch = sink_env(
        &names.sink_topics("elasticsearch"),
        &[
            ("NECTAR_CONFIG", common),
            ("NECTAR_TARGET__URL", &os_url),
            ("NECTAR_TARGET__INDEX", &template),
            ("NECTAR_TARGET__NUMBER_OF_SHARDS", "1"),
            ("NECTAR_TARGET__NUMBER_OF_REPLICAS", "0"),
            ("NECTAR_LOG__FILTER", "info,nectar_sink=debug"),
        ],
    );

    // The sink's start check creates the schema and its tables; then every proposed row is
    // logged by a trigger, in the inserting transaction.
    let check = std::process::Command::new(service_binary("nectar-sink-postgres"))
        .envs(postgres.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("check")
        .output()
        .expect("running nectar-sink-postgres check");
    assert!(
        check.status.success(),
        "nectar-sink-postgres check: {}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let schema = &names.schema;
    exec(
        pool,
        &format!(
            "CREATE TABLE {schema}.insert_log (event_id text NOT NULL, tx bigint NOT NULL DEFAULT txid_current());
             CREATE FUNCTION {schema}.log_insert() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO {schema}.insert_log (event_id) VALUES (NEW.event_id); RETURN NEW; END $$;
             CREATE TRIGGER log_insert BEFORE INSERT ON {schema}.nectar_events FOR EACH ROW EXECUTE FUNCTION {schema}.log_insert();"
        ),
    )
    .await;

    vec![
        Stage::start("normalize", true, normalize),
        Stage::start("enrich", true, enrich),
        Stage::start("score", true, score),
        Stage::start("route", true, route),
        Stage::start("sink-postgres", false, postgres),
        Stage::start("sink-elasticsearch", false, elasticsearch),
    ]
}

/// Indices into the stages.
const NORMALIZE: usize = 0;
const ENRICH: usize = 1;
const SCORE: usize = 2;
const ROUTE: usize = 3;
const SINK_POSTGRES: usize = 4;
const SINK_ELASTICSEARCH: usize = 5;

/// What is stopped, in order, one at a time: (stage or `None` for ingest, slot, how).
const SCHEDULE: [(Option<usize>, usize, Stop); 7] = [
    (Some(NORMALIZE), 1, Stop::Kill),
    (Some(ENRICH), 0, Stop::Term),
    (Some(SCORE), 0, Stop::Kill),
    (Some(ROUTE), 1, Stop::Term),
    (None, 0, Stop::Term),
    (Some(SINK_POSTGRES), 1, Stop::Kill),
    (Some(SINK_ELASTICSEARCH), 0, Stop::Term),
];

async fn scenario(names: &Names, stages: &mut [Stage], pool: &PgPool, http: &reqwest::Client, start: Instant) {
    wait_all_assigned(stages, Duration::from_secs(120)).await;
    eprintln!(
        "{} every stage has both instances running with partitions",
        since(start)
    );

    let mut ingests = vec![start_ingest(&names.raw).await, start_ingest(&names.raw).await];
    let endpoints: Endpoints = Arc::new(Mutex::new(
        ingests
            .iter()
            .enumerate()
            .map(|(slot, i)| (slot, i.base.clone()))
            .collect(),
    ));
    eprintln!(
        "{} both ingest instances ready; sending {EVENTS} events over {SEND_TIME:?}",
        since(start)
    );
    let send_start = Instant::now();
    let sender = tokio::spawn(send_all(http.clone(), endpoints.clone(), names.run.clone()));

    // One stage at a time: stop one instance, start it again `DOWN` later.
    let mut stopped_ingest: Vec<(String, Instant)> = Vec::new();
    let mut burst_sent: Vec<Sent> = Vec::new();
    // When each stopped instance was down (epoch ms), by schedule entry.
    let mut down: Vec<(i64, i64)> = Vec::new();
    for (n, (stage, slot, how)) in SCHEDULE.into_iter().enumerate() {
        tokio::time::sleep_until((send_start + FIRST_STOP + STOP_EVERY * n as u32).into()).await;
        for stage in stages.iter_mut() {
            stage.assert_running();
        }
        match stage {
            Some(stage) => down.push(stages[stage].stop_and_start(slot, how, DOWN, start).await),
            None => {
                // The load balancer stops sending to the instance as its shutdown begins,
                // with a burst of requests still on their way to it: the shutdown begins as
                // soon as the first of them is answered.
                endpoints.lock().expect("endpoints").retain(|(s, _)| *s != slot);
                let stopping = ingests.remove(slot);
                let base = stopping.base.clone();
                let burst: Vec<_> = (EVENTS..EVENTS + BURST)
                    .map(|i| tokio::spawn(send_one(http.clone(), base.clone(), names.run.clone(), i)))
                    .collect();
                while !burst.iter().any(tokio::task::JoinHandle::is_finished) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let shutdown_began = Instant::now();
                eprintln!(
                    "{} ingest {slot} ({base}): graceful shutdown, with a burst of {BURST} requests in flight",
                    since(start)
                );
                stopping.shutdown().await;
                eprintln!("{} ingest {slot} stopped", since(start));
                let stopped = now_millis();
                for request in burst {
                    burst_sent.push(request.await.expect("request task"));
                }
                stopped_ingest.push((base, shutdown_began));
                tokio::time::sleep(DOWN).await;
                down.push((stopped, now_millis()));
                let replacement = start_ingest(&names.raw).await;
                eprintln!("{} ingest {slot} started again at {}", since(start), replacement.base);
                endpoints
                    .lock()
                    .expect("endpoints")
                    .insert(slot, (slot, replacement.base.clone()));
                ingests.insert(slot, replacement);
            }
        }
    }
    let mut sent = sender.await.expect("sender");
    eprintln!(
        "{} all {EVENTS} requests done ({:.1}s of sending)",
        since(start),
        send_start.elapsed().as_secs_f64()
    );
    sent.extend(burst_sent);

    // Every instance, restarted ones included, works again.
    wait_all_assigned(stages, Duration::from_secs(90)).await;
    eprintln!("{} every current instance has partitions", since(start));

    // What was sent: answered 2xx must arrive; a failure may have been produced, at most once.
    let acknowledged: Vec<&Sent> = sent.iter().filter(|s| s.outcome.is_ok()).collect();
    let failed: Vec<&Sent> = sent.iter().filter(|s| s.outcome.is_err()).collect();
    for f in &failed {
        assert!(
            stopped_ingest.iter().any(|(base, _)| *base == f.base),
            "only the stopped ingest instance may fail a request; {} failed: {:?}",
            f.base,
            f.outcome
        );
        assert!(
            f.outcome.as_ref().is_err_and(|e| e.starts_with("no answer")),
            "a request the stopped instance answered was answered 2xx, not {:?}",
            f.outcome
        );
    }
    for (base, began) in &stopped_ingest {
        let to_it = |s: &&&Sent| s.base == *base;
        let in_flight = acknowledged
            .iter()
            .filter(to_it)
            .filter(|s| s.started <= *began && s.finished >= *began)
            .count();
        let refused: Vec<&str> = failed
            .iter()
            .filter(to_it)
            .map(|f| f.outcome.as_ref().err().map_or("", String::as_str))
            .collect();
        eprintln!(
            "{} ingest {base}: {in_flight} requests in flight when its shutdown began were answered 2xx; {} failed: {refused:?}",
            since(start),
            refused.len(),
        );
    }
    // The raw topics: every acknowledged event once; a failed request's at most once.
    let forms_acked = acknowledged.iter().filter(|s| s.form).count();
    let mut raw_records = read_topic_within(&names.raw.forms, forms_acked, Duration::from_secs(60)).await;
    raw_records.extend(
        read_topic_within(
            &names.raw.apps,
            acknowledged.len() - forms_acked,
            Duration::from_secs(60),
        )
        .await,
    );
    let raw_counts = count_ids(&raw_records);
    let failed_ids: HashSet<&str> = failed.iter().map(|s| s.id.as_str()).collect();
    let acked_ids: HashSet<&str> = acknowledged.iter().map(|s| s.id.as_str()).collect();
    for (id, n) in &raw_counts {
        assert!(
            acked_ids.contains(id.as_str()) || failed_ids.contains(id.as_str()),
            "{id} on a raw topic was never sent"
        );
        assert_eq!(*n, 1, "{id} is on the raw topics {n} times");
    }
    let missing: Vec<&&str> = acked_ids
        .iter()
        .filter(|id| !raw_counts.contains_key(**id))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "acknowledged events missing from the raw topics: {missing:?}"
    );
    let expected: Vec<String> = raw_counts.keys().cloned().collect();
    eprintln!(
        "{} raw topics: {} events ({} acknowledged, {} of {} failed requests produced anyway)",
        since(start),
        expected.len(),
        acknowledged.len(),
        expected.len() - acknowledged.len(),
        failed.len()
    );

    // Each processor's output, read_committed: every event once.
    let mut outputs: HashMap<String, Vec<Record>> = HashMap::new();
    for topic in [&names.events, &names.enriched] {
        let records = read_topic_within(topic, expected.len(), Duration::from_secs(120)).await;
        assert_exactly_once(&expected, &count_ids(&records));
        eprintln!("{} {topic}: {} events, each once", since(start), records.len());
        outputs.insert(topic.clone(), records);
    }
    // Scored: the events, plus score's own lead.stage_changed events.
    let scored = read_topic_within(&names.scored, expected.len(), Duration::from_secs(120)).await;
    let codec = codec();
    let mut sent_types = HashMap::new();
    let mut stage_changed = HashMap::new();
    for r in &scored {
        let event: Event = codec.decode(&r.payload).await.expect("a scored event decodes");
        let id = r.header(EVENT_ID_HEADER).expect("event id header").to_owned();
        assert_eq!(id, event.envelope.event_id, "the header is the envelope's event id");
        let counts = if event.envelope.event_type == "lead.stage_changed" {
            &mut stage_changed
        } else {
            &mut sent_types
        };
        *counts.entry(id).or_insert(0) += 1;
    }
    assert_exactly_once(&expected, &sent_types);
    let twice: Vec<_> = stage_changed.iter().filter(|(_, n)| **n > 1).take(3).collect();
    assert!(twice.is_empty(), "lead.stage_changed events duplicated: {twice:?}");
    assert!(!stage_changed.is_empty(), "payments cross the mql threshold");
    let mut delivered: Vec<String> = expected.clone();
    delivered.extend(stage_changed.keys().cloned());
    eprintln!(
        "{} {}: {} events, each once, and {} lead.stage_changed, each once",
        since(start),
        names.scored,
        expected.len(),
        stage_changed.len()
    );

    // Route: every event to each sink's delivery topic once.
    let mut deliver_ends = HashMap::new();
    for sink in ["postgres", "elasticsearch"] {
        let topic = names.deliver(sink);
        let records = read_topic_within(&topic, delivered.len(), Duration::from_secs(120)).await;
        assert_exactly_once(&delivered, &count_ids(&records));
        deliver_ends.insert(sink, next_offsets(&records));
        eprintln!("{} {topic}: {} events, each once", since(start), records.len());
        outputs.insert(topic, records);
    }
    outputs.insert(names.scored.clone(), scored);
    outputs.insert("raw".into(), raw_records);

    // The sinks: wait until they stored what their topic holds.
    let total = delivered.len() as i64;
    let pg = names.sink_topics("postgres");
    let es = names.sink_topics("elasticsearch");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for stage in stages.iter_mut() {
            stage.assert_running();
        }
        let positions = pg_stored_positions(pool, &names.schema, &pg.group, &pg.deliver).await;
        let committed = committed_offsets(&es.group, &es.deliver).await;
        let es_end = &deliver_ends["elasticsearch"];
        let pg_done = positions == deliver_ends["postgres"];
        let es_done = es_end.iter().all(|(p, end)| committed.get(p).is_some_and(|c| c >= end));
        if pg_done && es_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the sinks did not finish: PostgreSQL {:?} rows, positions {positions:?} (end {:?}); OpenSearch {} documents, committed {committed:?} (end {es_end:?})",
            pg_counts(pool, &names.schema).await,
            deliver_ends["postgres"],
            os_count(http, &names.index_prefix).await,
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!("{} both sinks stored or committed the end of their topic", since(start));

    // PostgreSQL: one row per event, each inserted by one committed transaction.
    assert_eq!(
        pg_counts(pool, &names.schema).await,
        (total, total),
        "rows, distinct event ids"
    );
    assert_exactly_once(&delivered, &pg_ids(pool, &names.schema, "nectar_events").await);
    let inserts = pg_insert_transactions(pool, &names.schema).await;
    let twice: Vec<_> = inserts.iter().filter(|(_, tx)| tx.len() > 1).take(3).collect();
    assert!(
        twice.is_empty(),
        "events written by more than one committed transaction (event id, transactions): {twice:?}"
    );
    assert_exactly_once(
        &delivered,
        &inserts.iter().map(|(id, tx)| (id.clone(), tx.len())).collect(),
    );
    let transactions: HashSet<i64> = inserts.values().flatten().copied().collect();
    eprintln!(
        "{} PostgreSQL: {total} rows, each written by one of {} committed transactions",
        since(start),
        transactions.len()
    );

    // OpenSearch: one document per event.
    let documents = os_documents(http, &names.index_prefix).await;
    assert_exactly_once(&delivered, &documents);
    eprintln!("{} OpenSearch: {total} documents, each once", since(start));

    // Events flowed while each instance was down: its stage's output got records stamped in
    // that window (processors and ingest: the records' CreateTime; sinks: the other
    // instance's "batch done" log lines).
    for (n, (stage, slot, how)) in SCHEDULE.into_iter().enumerate() {
        let (from, to) = down[n];
        let in_window = |t: i64| t >= from && t <= to;
        let stamped = |topics: &[&str]| {
            topics
                .iter()
                .flat_map(|t| &outputs[*t])
                .filter(|r| r.timestamp.is_some_and(in_window))
                .count()
        };
        let (what, flowed) = match stage {
            None => ("ingest".to_owned(), stamped(&["raw"])),
            Some(NORMALIZE) => (stages[NORMALIZE].name.to_owned(), stamped(&[&names.events])),
            Some(ENRICH) => (stages[ENRICH].name.to_owned(), stamped(&[&names.enriched])),
            Some(SCORE) => (stages[SCORE].name.to_owned(), stamped(&[&names.scored])),
            Some(ROUTE) => (
                stages[ROUTE].name.to_owned(),
                stamped(&[&names.deliver("postgres"), &names.deliver("elasticsearch")]),
            ),
            Some(sink) => {
                let other = &stages[sink].slots[1 - slot];
                let batches = strip_ansi(&other.process.log())
                    .lines()
                    .filter(|l| l.contains("batch done") && !l.contains("events=0 "))
                    .filter(|l| log_millis(l).is_some_and(in_window))
                    .count();
                (stages[sink].name.to_owned(), batches)
            }
        };
        eprintln!(
            "{} while one {what} instance was down ({}, {:.1}s): {flowed} {} by the other",
            since(start),
            match (stage, how) {
                (None, _) => "graceful shutdown",
                (_, Stop::Kill) => "SIGKILL",
                (_, Stop::Term) => "SIGTERM",
            },
            (to - from) as f64 / 1000.0,
            if matches!(stage, Some(SINK_POSTGRES | SINK_ELASTICSEARCH)) {
                "batches delivered"
            } else {
                "records written"
            }
        );
        assert!(flowed > 0, "nothing flowed through {what} while one instance was down");
    }

    // No dead letters anywhere.
    let mut dlqs: Vec<String> = names.dlqs.to_vec();
    dlqs.extend([pg.dlq.clone(), es.dlq.clone()]);
    for dlq in &dlqs {
        let n = nectar_tests::count_records(dlq).await;
        assert_eq!(n, 0, "{dlq} holds {n} records");
    }

    // Both instances of every stage had partitions, each run after its restart too.
    for stage in stages.iter() {
        for slot in 0..2 {
            let runs: Vec<&Run> = stage.runs().filter(|(s, _)| *s == slot).map(|(_, r)| r).collect();
            for run in runs {
                assert!(
                    had_partitions(&run.process.log()),
                    "{} of {} never had partitions:\n{}",
                    run.id,
                    stage.name,
                    strip_ansi(&run.process.log())
                );
            }
        }
    }
    // The SIGKILLed ones: the run after the restart had partitions (checked above through
    // `current_run`), and so did the run that was killed.
    for (stage, slot, how) in SCHEDULE {
        if let (Some(stage), Stop::Kill) = (stage, how) {
            let run = &stages[stage].slots[slot];
            let log = strip_ansi(&run.process.log());
            let runs = log.matches("admin endpoints listening").count();
            assert!(runs >= 2, "{} ran twice:\n{log}", run.id);
        }
    }

    // Everything stops gracefully.
    for stage in stages.iter_mut() {
        stage.terminate().await;
    }
    for ingest in ingests {
        ingest.shutdown().await;
    }
    eprintln!("{} every instance stopped gracefully", since(start));
}

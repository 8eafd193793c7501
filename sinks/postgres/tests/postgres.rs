//! The PostgreSQL sink against the real local stack (`deploy/local/stack up --with postgres`):
//! Kafka, the registry and PostgreSQL. Each test has its own schema (or database), topics,
//! consumer group and `application_name`.
//!
//! The tables carry a `BEFORE INSERT` trigger that logs every row proposed for insertion into
//! `insert_log` in the same transaction. The primary key dedupes rows, so the log is what
//! counts duplicates: an event whose row was written by two committed transactions (a
//! redelivery the stored positions should have prevented) shows twice there, even though
//! `ON CONFLICT DO NOTHING` kept one row.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nectar_core::events::Event;
use nectar_sink::{Connector, Delivery, DeliveryError, Item, ItemResult, Positions, StartError};
use nectar_sink_postgres::{PostgresConfig, PostgresConnector, TableConfig};
use nectar_tests::sink::{
    SinkTopics, dlq_summary, erasure_event, event_ids, for_lead, fresh_sink_topics, pg_stored_positions,
    produce_events, read_dlq, replay, run_to_exit, sample_events, sink_env,
};
use nectar_tests::{ServiceProcess, assert_exactly_once, kafka_config, watermarks};
use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Executor, Row};

const BIN: &str = env!("CARGO_BIN_EXE_nectar-sink-postgres");

fn base_url() -> String {
    std::env::var("NECTAR_TARGET__URL").unwrap_or_else(|_| "postgres://nectar:nectar@127.0.0.1:5432/nectar".into())
}

/// `base_url()` with another database.
fn url_for_database(database: &str) -> String {
    let base = base_url();
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{database}")
}

async fn pg() -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .connect(&base_url())
        .await
        .expect("PostgreSQL is up (deploy/local/stack up --with postgres)")
}

/// A fresh lower-case name (schemas, databases, application names).
fn fresh_name(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

async fn exec(pool: &PgPool, sql: &str) {
    pool.execute(sqlx::raw_sql(sql))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// An `insert_log` table in `schema` and a trigger logging every proposed row of `tables`.
async fn add_insert_log(pool: &PgPool, schema: &str, tables: &[&str]) {
    exec(
        pool,
        &format!(
            "CREATE TABLE IF NOT EXISTS {schema}.insert_log (event_id text NOT NULL, tx bigint NOT NULL DEFAULT txid_current());
             CREATE OR REPLACE FUNCTION {schema}.log_insert() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO {schema}.insert_log (event_id) VALUES (NEW.event_id); RETURN NEW; END $$;"
        ),
    )
    .await;
    for table in tables {
        exec(
            pool,
            &format!(
                "CREATE TRIGGER log_insert BEFORE INSERT ON {schema}.{table} FOR EACH ROW EXECUTE FUNCTION {schema}.log_insert()"
            ),
        )
        .await;
    }
}

/// Committed insertions per event id.
async fn insert_log(pool: &PgPool, schema: &str) -> HashMap<String, usize> {
    sqlx::query(&format!(
        "SELECT event_id, count(*) FROM {schema}.insert_log GROUP BY event_id"
    ))
    .fetch_all(pool)
    .await
    .expect("insert_log")
    .into_iter()
    .map(|r| (r.get::<String, _>(0), r.get::<i64, _>(1) as usize))
    .collect()
}

/// `(rows, distinct event ids)` over `tables`.
async fn row_counts(pool: &PgPool, schema: &str, tables: &[&str]) -> (i64, i64) {
    let union: Vec<String> = tables
        .iter()
        .map(|t| format!("SELECT event_id FROM {schema}.{t}"))
        .collect();
    let row = sqlx::query(&format!(
        "SELECT count(*), count(DISTINCT event_id) FROM ({}) AS r",
        union.join(" UNION ALL ")
    ))
    .fetch_one(pool)
    .await
    .expect("counts");
    (row.get(0), row.get(1))
}

async fn row_ids(pool: &PgPool, schema: &str, tables: &[&str]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for table in tables {
        let ids: Vec<String> = sqlx::query_scalar(&format!("SELECT event_id FROM {schema}.{table}"))
            .fetch_all(pool)
            .await
            .expect("ids");
        for id in ids {
            *counts.entry(id).or_insert(0) += 1;
        }
    }
    counts
}

/// Wait until the positions stored for `group` are the end of `topic`, failing early (with
/// its log) if the sink exits.
async fn wait_positions_at_end(pool: &PgPool, schema: &str, topics: &SinkTopics, sink: &mut ServiceProcess) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let end: BTreeMap<i32, i64> = watermarks(&topics.deliver)
            .await
            .into_iter()
            .map(|(p, (_, high))| (p, high))
            .collect();
        let stored = pg_stored_positions(pool, schema, &topics.group, &topics.deliver).await;
        let expected: BTreeMap<i32, i64> = end.into_iter().filter(|(_, high)| *high > 0).collect();
        if stored == expected {
            return;
        }
        if let Some(status) = sink.exited() {
            panic!("the sink exited with {status}:\n{}", sink.log());
        }
        assert!(
            Instant::now() < deadline,
            "stored positions {stored:?} never reached the end {expected:?}:\n{}",
            sink.log()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Wait until the sink's current run has its partitions: a SIGTERM is only handled once
/// the service is running.
async fn wait_started(sink: &mut ServiceProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = sink.log();
        let current = log.rsplit("admin endpoints listening").next().unwrap_or_default();
        if current.contains("partitions assigned") {
            return;
        }
        if let Some(status) = sink.exited() {
            panic!("the sink exited with {status}:\n{log}");
        }
        assert!(Instant::now() < deadline, "the sink never got its partitions:\n{log}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A config file (TOML) for the sink binary; passed as `NECTAR_CONFIG`.
fn config_file(toml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.toml", fresh_name("nectar_sink_postgres")));
    std::fs::write(&path, toml).expect("config file");
    path
}

/// The binary's environment: the test's topics, schema, application name and config file.
/// A static group member with a short session, so a restarted process takes its partitions
/// over at once.
fn env_for(topics: &SinkTopics, url: &str, schema: &str, app: &str, toml: &str) -> Vec<(String, String)> {
    let toml = format!(
        "[kafka.properties]\n\"group.instance.id\" = \"{app}\"\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n{toml}"
    );
    let path = config_file(&toml);
    sink_env(
        topics,
        &[
            ("NECTAR_CONFIG", path.to_str().expect("utf-8 path")),
            ("NECTAR_TARGET__URL", url),
            ("NECTAR_TARGET__SCHEMA", schema),
            ("NECTAR_TARGET__APPLICATION_NAME", app),
            ("NECTAR_TARGET__CONNECT_TIMEOUT_MS", "2000"),
            ("NECTAR_LOG__FILTER", "info,nectar_sink_postgres=debug"),
        ],
    )
}

/// Tables for the sample events: forms and payments mapped, the rest in the default table.
const TABLES_TOML: &str = r#"
[[target.tables]]
name = "forms"
event_types = ["form.submitted", "lead.captured"]
columns = { email = "person.email", first_name = "person.first_name", received_at = "envelope.received_at::timestamptz", score = "score.value::double precision", fields = "form.fields::jsonb" }

[[target.tables]]
name = "payments"
event_types = ["payment.succeeded"]
columns = { amount_minor = "commerce.amount_minor::bigint", currency = "commerce.currency", marketing = "envelope.consent.marketing::boolean" }
"#;
const TABLES: [&str; 3] = ["forms", "payments", "nectar_events"];

/// Run `nectar-sink-postgres check`: the start check creates the schema and tables.
fn run_check(env: &[(String, String)]) {
    let output = std::process::Command::new(BIN)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("check")
        .output()
        .expect("running check");
    assert!(
        output.status.success(),
        "check failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Delete consumer group `group` (its committed offsets), retrying while it still has a
/// member (a static member stays until its session times out).
async fn delete_group(group: &str) {
    let admin: AdminClient<DefaultClientContext> = nectar_core::kafka::client_config(&kafka_config(), "nectar-tests")
        .create()
        .expect("admin client");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let results = admin
            .delete_groups(&[group], &AdminOptions::new())
            .await
            .expect("delete_groups");
        match &results[0] {
            Ok(_) => return,
            Err((_, code)) => {
                assert!(Instant::now() < deadline, "cannot delete group {group}: {code:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The whole service: Kafka → sink → PostgreSQL.

/// Done-when 1: SIGKILL while events stream in — right after a transaction committed
/// (before the runtime could commit the Kafka offsets: the test LISTENs to a NOTIFY the
/// tables' trigger sends, delivered only at commit) and at random moments. After the
/// restarts every event is in its table once, was written by one committed transaction only
/// (no redelivery of a committed batch), and the positions stored with the rows are the end
/// of the topic. Then the proof that those positions are what the sink resumes from: with
/// the group's Kafka offsets deleted, a restart writes only the new events.
#[tokio::test(flavor = "multi_thread")]
async fn crash_mid_stream_leaves_every_event_once_and_positions_at_the_end() {
    let pool = pg().await;
    let schema = fresh_name("t");
    let app = fresh_name("crash");
    let topics = fresh_sink_topics("postgres").await;
    let mut env = env_for(&topics, &base_url(), &schema, &app, TABLES_TOML);
    // Smaller batches: more commits for the kills to land between.
    env.push(("NECTAR_SINK__MAX_BATCH".into(), "200".into()));
    run_check(&env);
    add_insert_log(&pool, &schema, &TABLES).await;
    let channel = format!("{schema}_committed");
    exec(
        &pool,
        &format!(
            "CREATE FUNCTION {schema}.notify_commit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $$;"
        ),
    )
    .await;
    for table in TABLES {
        exec(
            &pool,
            &format!(
                "CREATE TRIGGER notify_commit AFTER INSERT ON {schema}.{table} FOR EACH ROW EXECUTE FUNCTION {schema}.notify_commit()"
            ),
        )
        .await;
    }

    let waves: Vec<Vec<Event>> = (0..20).map(|w| sample_events(200, &format!("crash{w}"))).collect();
    let mut expected: Vec<String> = waves.iter().flat_map(|w| event_ids(w)).collect();
    let forms_expected = waves
        .iter()
        .flatten()
        .filter(|e| ["form.submitted", "lead.captured"].contains(&e.envelope.event_type.as_str()))
        .count() as i64;
    let mut sink = ServiceProcess::start(BIN, env.clone());
    let deliver = topics.deliver.clone();
    let producer = tokio::spawn(async move {
        for wave in waves {
            produce_events(&deliver, &wave).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    // Killed the moment a transaction that wrote rows commits (a row trigger: the start
    // check's empty inserts must not count; identical notifications fold into one).
    let mut after_commit = 0;
    for _ in 0..5 {
        let mut listener = sqlx::postgres::PgListener::connect(&base_url())
            .await
            .expect("listener");
        listener.listen(&channel).await.expect("LISTEN");
        match tokio::time::timeout(Duration::from_secs(20), listener.recv()).await {
            Ok(Ok(_)) => {
                sink.restart();
                after_commit += 1;
            }
            _ => break,
        }
    }
    assert_eq!(
        after_commit,
        5,
        "the sink was killed right after 5 commits:\n{}",
        sink.log()
    );
    // And at random moments.
    sink.kill_at_random_moments(4, 700..1800).await;
    producer.await.expect("producer");
    wait_positions_at_end(&pool, &schema, &topics, &mut sink).await;

    let total = expected.len() as i64;
    assert_eq!(row_counts(&pool, &schema, &TABLES).await, (total, total));
    assert_exactly_once(&expected, &row_ids(&pool, &schema, &TABLES).await);
    assert_exactly_once(&expected, &insert_log(&pool, &schema).await);
    let forms: (i64, i64) = sqlx::query_as(&format!(
        "SELECT count(*), count(*) FILTER (WHERE email LIKE 'lead-crash%' AND received_at IS NOT NULL AND fields ? 'message') FROM {schema}.forms"
    ))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(
        forms,
        (forms_expected, forms_expected),
        "form events in forms, mapped columns filled"
    );

    // Without the group's Kafka offsets, the consumer would start from the beginning
    // (auto.offset.reset = earliest); the stored positions make it start at the end.
    // (SIGKILL, not SIGTERM: the graceful path is the runtime's, tested there.)
    sink.kill9();
    delete_group(&topics.group).await;
    let more = sample_events(300, "after-reset");
    produce_events(&topics.deliver, &more).await;
    expected.extend(event_ids(&more));
    let mut sink = ServiceProcess::start(BIN, env);
    wait_positions_at_end(&pool, &schema, &topics, &mut sink).await;
    assert_exactly_once(&expected, &insert_log(&pool, &schema).await);
    assert_eq!(row_counts(&pool, &schema, &TABLES).await, (total + 300, total + 300));
    assert!(
        sink.log().contains("starting from the positions stored at the target"),
        "{}",
        sink.log()
    );
    sink.kill9();
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Done-when 2, PostgreSQL's way: the target goes away (the sink's sessions terminated over
/// and over, then the database refusing connections) and comes back; nothing is lost and
/// nothing written twice. PostgreSQL has no Retry-After: the runtime's backoff paces retries.
#[tokio::test(flavor = "multi_thread")]
async fn terminated_sessions_and_refused_connections_lose_nothing() {
    let admin = pg().await;
    let database = fresh_name("t");
    exec(&admin, &format!("CREATE DATABASE {database}")).await;
    let url = url_for_database(&database);
    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("test database");
    let schema = "public";
    let app = fresh_name("outage");
    let topics = fresh_sink_topics("postgres").await;
    let env = env_for(&topics, &url, schema, &app, TABLES_TOML);
    run_check(&env);
    add_insert_log(&pool, schema, &TABLES).await;
    pool.close().await;

    let mut sink = ServiceProcess::start(BIN, env);
    wait_started(&mut sink).await;
    // Events keep coming for the whole outage, so the sink is mid-transaction when it hits.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let deliver = topics.deliver.clone();
    let stop_producing = stop.clone();
    let producer = tokio::spawn(async move {
        let mut produced = Vec::new();
        let mut wave = 0;
        while !stop_producing.load(std::sync::atomic::Ordering::SeqCst) {
            let events = sample_events(100, &format!("outage{wave}"));
            produce_events(&deliver, &events).await;
            produced.extend(event_ids(&events));
            wave += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        produced
    });

    // Sessions killed under the sink (57P01 admin_shutdown, or a broken connection).
    let terminate = format!(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}' AND pid <> pg_backend_pid()"
    );
    let mut terminated = 0i64;
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        terminated += sqlx::query_scalar::<_, i64>(&terminate)
            .fetch_one(&admin)
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Then no connections at all (53300 too many connections) for a while.
    exec(&admin, &format!("ALTER DATABASE {database} CONNECTION LIMIT 0")).await;
    terminated += sqlx::query_scalar::<_, i64>(&terminate)
        .fetch_one(&admin)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    exec(&admin, &format!("ALTER DATABASE {database} CONNECTION LIMIT -1")).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let expected = producer.await.expect("producer");
    assert!(terminated > 0, "the sink had sessions to terminate");

    let pool = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .expect("test database");
    wait_positions_at_end(&pool, schema, &topics, &mut sink).await;
    let log = sink.log();
    assert!(
        log.contains("delivery failed, retrying") && log.contains("SQLSTATE 57P01") && log.contains("SQLSTATE 53300"),
        "the outage was seen and retried:\n{log}"
    );
    assert_exactly_once(&expected, &row_ids(&pool, schema, &TABLES).await);
    // A session terminated while its COMMIT was answered can make the runtime send a batch
    // that did commit again (the row is kept once by ON CONFLICT): tolerated here, counted.
    let log_counts = insert_log(&pool, schema).await;
    let rewritten = log_counts.values().filter(|n| **n > 1).count();
    println!(
        "{terminated} sessions terminated, {} failed deliveries retried ({} with 57P01, {} with 53300); {rewritten} events written again after an unanswered commit",
        log.matches("delivery failed, retrying").count(),
        log.matches("SQLSTATE 57P01").count(),
        log.matches("SQLSTATE 53300").count(),
    );
    assert_eq!(log_counts.len(), expected.len());
    sink.kill9();
    pool.close().await;
    // Clean-up only: a session still closing can make the drop fail; the test is done.
    if let Err(e) = admin
        .execute(sqlx::raw_sql(&format!("DROP DATABASE {database} WITH (FORCE)")))
        .await
    {
        eprintln!("leaving database {database} behind: {e}");
    }
}

/// Done-when 3, 4 and 5: a CHECK constraint refuses some rows of each batch. Only those are
/// dead-lettered (with the reason, PostgreSQL's answer, the attempts and their origin), the
/// rest of each batch is written once; after the constraint is dropped, replaying the dead
/// letters writes them, and the positions end at the end of the topic.
#[tokio::test(flavor = "multi_thread")]
async fn check_constraint_dead_letters_only_its_rows_and_replay_delivers_them() {
    let pool = pg().await;
    let schema = fresh_name("t");
    let app = fresh_name("partial");
    // An existing table (with a constraint of the operator's) is checked and used as is.
    exec(
        &pool,
        &format!(
            "CREATE SCHEMA {schema};
             CREATE TABLE {schema}.leads (
               event_id text PRIMARY KEY, event_type text NOT NULL, occurred_at timestamptz NOT NULL,
               payload jsonb NOT NULL, delivered_at timestamptz NOT NULL DEFAULT now(),
               email varchar(200), amount_minor bigint,
               CONSTRAINT no_bad_email CHECK (email NOT LIKE 'lead-bad-%'));"
        ),
    )
    .await;
    add_insert_log(&pool, &schema, &["leads"]).await;
    let toml = r#"
[target]
default_table = ""

[[target.tables]]
name = "leads"
event_types = ["form.submitted", "lead.captured", "payment.succeeded", "email.clicked"]
columns = { email = "person.email", amount_minor = "commerce.amount_minor::bigint" }
"#;
    let topics = fresh_sink_topics("postgres").await;
    let env = env_for(&topics, &base_url(), &schema, &app, toml);

    let good = sample_events(600, "good");
    let bad = sample_events(9, "bad");
    let mut events = good.clone();
    for (i, event) in bad.iter().enumerate() {
        events.insert(i * 60 + 7, event.clone());
    }
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(BIN, env.clone());

    let dead = read_dlq(&topics.dlq, bad.len()).await;
    let summary = dlq_summary(&dead);
    let mut dead_ids: Vec<String> = summary.iter().map(|d| d["event_id"].clone()).collect();
    dead_ids.sort();
    let mut bad_ids = event_ids(&bad);
    bad_ids.sort();
    assert_eq!(dead_ids, bad_ids, "exactly the refused events are dead-lettered");
    for d in &summary {
        assert!(
            d["reason"].contains("PostgreSQL refused the row for table leads")
                && d["reason"].contains("check constraint \"no_bad_email\""),
            "{d:?}"
        );
        assert!(d["response"].contains("SQLSTATE 23514"), "{d:?}");
        assert_eq!(d["attempts"], "1", "{d:?}");
        assert_eq!(d["topic"], topics.deliver, "{d:?}");
        assert!(
            d["partition"].parse::<i32>().is_ok() && d["offset"].parse::<i64>().is_ok(),
            "{d:?}"
        );
    }
    wait_positions_at_end(&pool, &schema, &topics, &mut sink).await;
    assert_exactly_once(&event_ids(&good), &row_ids(&pool, &schema, &["leads"]).await);
    // Each good event was written by one committed transaction: the attempt that met a
    // refused row rolled back whole, and its retry carried the good rows only.
    assert_exactly_once(&event_ids(&good), &insert_log(&pool, &schema).await);
    assert!(sink.log().contains("finding the rows it refuses"), "{}", sink.log());

    // Fix the cause, replay: the dead letters are written, once.
    exec(
        &pool,
        &format!("ALTER TABLE {schema}.leads DROP CONSTRAINT no_bad_email"),
    )
    .await;
    let output = replay(BIN, &env, &["--reason", "check constraint"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains(&format!("replayed {} of", bad.len())),
        "{}",
        String::from_utf8_lossy(&output.stdout)
    );
    wait_positions_at_end(&pool, &schema, &topics, &mut sink).await;
    assert_exactly_once(&event_ids(&events), &row_ids(&pool, &schema, &["leads"]).await);
    assert_exactly_once(&event_ids(&events), &insert_log(&pool, &schema).await);
    sink.kill9();
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Done-when 6: a wrong password stops the sink at start, and the message says so.
#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_stops_the_sink_at_start() {
    let topics = fresh_sink_topics("postgres").await;
    let url = base_url().replacen(":nectar@", ":wrong-password@", 1);
    assert_ne!(url, base_url(), "the test URL has the password `nectar`");
    let env = env_for(&topics, &url, &fresh_name("t"), &fresh_name("badpw"), "");
    let (status, output) = run_to_exit(BIN, &env, Duration::from_secs(30));
    assert!(!status.success(), "{output}");
    assert!(output.contains("credentials rejected"), "{output}");
    assert!(output.contains("password authentication failed"), "{output}");
    assert!(
        !output.contains("wrong-password"),
        "the password is never printed:\n{output}"
    );
}

/// Every row of `tables` as `event_id → payload`.
async fn payloads(pool: &PgPool, schema: &str, tables: &[&str]) -> HashMap<String, serde_json::Value> {
    let mut rows = HashMap::new();
    for table in tables {
        let found: Vec<(String, serde_json::Value)> =
            sqlx::query_as(&format!("SELECT event_id, payload FROM {schema}.{table}"))
                .fetch_all(pool)
                .await
                .expect("payloads");
        rows.extend(found);
    }
    rows
}

/// GDPR erasure through the whole service: leads A and B are written, then A's erasure
/// request arrives in the same batch as one more event of A before it and one after it.
/// Only B's rows, the other workspace's row with A's lead key, the request (recorded without
/// the person) and A's event after the request remain. A second consumer group reading the
/// whole topic again (every event redelivered) leaves exactly the same rows.
#[tokio::test(flavor = "multi_thread")]
async fn erasure_deletes_the_leads_earlier_rows_and_keeps_what_follows_it() {
    let pool = pg().await;
    let schema = fresh_name("t");
    let topics = fresh_sink_topics("postgres").await;
    let env = env_for(&topics, &base_url(), &schema, &fresh_name("erase"), TABLES_TOML);
    run_check(&env);

    let lead_a = "ws-test:lead-a";
    let a_before = for_lead(sample_events(8, "a"), lead_a);
    let b = for_lead(sample_events(8, "b"), "ws-test:lead-b");
    let mut other_workspace = for_lead(sample_events(1, "other"), lead_a);
    other_workspace[0].envelope.workspace_id = "ws-other".into();
    let mut sink = ServiceProcess::start(BIN, env.clone());
    let first: Vec<Event> = [a_before.clone(), b.clone(), other_workspace.clone()].concat();
    produce_events(&topics.deliver, &first).await;
    wait_positions_at_end(&pool, &schema, &topics, &mut sink).await;
    assert_eq!(row_counts(&pool, &schema, &TABLES).await, (17, 17));

    // One batch: A's last event before the request, the request, A's first one after it.
    let a_late = for_lead(sample_events(1, "a-late"), lead_a);
    let erasure = erasure_event(lead_a, "lead-a-0@example.com");
    let a_after = for_lead(sample_events(2, "post"), lead_a);
    let second: Vec<Event> = [a_late.clone(), vec![erasure.clone()], a_after.clone()].concat();
    produce_events(&topics.deliver, &second).await;
    wait_positions_at_end(&pool, &schema, &topics, &mut sink).await;
    assert!(
        sink.log().contains("erasure request: the lead's rows are deleted"),
        "{}",
        sink.log()
    );
    assert!(sink.terminate().success());

    let mut expected: Vec<String> = [event_ids(&b), event_ids(&other_workspace), event_ids(&a_after)].concat();
    expected.push(erasure.envelope.event_id.clone());
    expected.sort();
    let check = |rows: HashMap<String, serde_json::Value>| {
        let mut ids: Vec<String> = rows.keys().cloned().collect();
        ids.sort();
        assert_eq!(ids, expected);
        let request = &rows[&erasure.envelope.event_id];
        assert_eq!(request["envelope"]["lead_key"], lead_a);
        assert!(
            request["person"].is_null(),
            "the request keeps no personal data: {request}"
        );
        for (id, payload) in &rows {
            assert!(
                !payload.to_string().contains("lead-a-"),
                "{id} still holds lead A's data: {payload}"
            );
        }
    };
    check(payloads(&pool, &schema, &TABLES).await);
    assert_exactly_once(&expected, &row_ids(&pool, &schema, &TABLES).await);

    // Redelivery of everything, in order (a new group has no stored positions): the same rows.
    let again = SinkTopics {
        group: format!("{}-again", topics.group),
        ..topics.clone()
    };
    let env = env_for(&again, &base_url(), &schema, &fresh_name("erase"), TABLES_TOML);
    let mut sink = ServiceProcess::start(BIN, env);
    wait_positions_at_end(&pool, &schema, &again, &mut sink).await;
    assert!(sink.terminate().success());
    check(payloads(&pool, &schema, &TABLES).await);
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

// ---------------------------------------------------------------------------------------
// The connector alone against PostgreSQL.

fn item(event: &Event, partition: i32, offset: i64) -> Item {
    Item {
        topic: "t.deliver.postgres".into(),
        partition,
        offset,
        key: None,
        value: Vec::new(),
        headers: Vec::new(),
        timestamp: None,
        event: Arc::new(event.clone()),
        attempts: 0,
        maybe_delivered: false,
    }
}

fn positions(entries: &[(i32, i64)]) -> Positions {
    entries
        .iter()
        .map(|(p, o)| (("t.deliver.postgres".to_owned(), *p), *o))
        .collect()
}

fn target(schema: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(base_url());
    config.schema = Some(schema.to_owned());
    config.tables = vec![TableConfig {
        name: "leads".into(),
        event_types: vec!["form.submitted".into(), "lead.captured".into()],
        columns: [
            ("email".to_owned(), "person.email".to_owned()),
            ("score".to_owned(), "score.value::double precision".to_owned()),
        ]
        .into(),
    }];
    config
}

async fn started(config: &PostgresConfig) -> PostgresConnector {
    let connector = PostgresConnector::new(config, 1, "group-a").expect("connector");
    connector.start().await.expect("start");
    connector
}

#[tokio::test(flavor = "multi_thread")]
async fn start_creates_missing_tables_and_names_what_an_existing_one_lacks() {
    let pool = pg().await;
    let schema = fresh_name("t");
    let config = target(&schema);
    started(&config).await;
    let tables: Vec<String> =
        sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1")
            .bind(&schema)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(tables, ["leads", "nectar_events", "nectar_sink_offsets"]);
    started(&config).await;

    // A mapped column the existing table does not have: named, with the fix.
    let mut more = config.clone();
    more.tables[0].columns.insert("company".into(), "person.company".into());
    let err = PostgresConnector::new(&more, 1, "group-a")
        .unwrap()
        .start()
        .await
        .unwrap_err();
    let StartError::Config(message) = err else {
        panic!("{err:?}")
    };
    assert!(
        message.contains(&format!("table \"{schema}\".\"leads\""))
            && message.contains("column \"company\"")
            && message.contains("target.tables[0].columns.company")
            && message.contains("ADD COLUMN \"company\" text"),
        "{message}"
    );

    // Not allowed to create: the missing table is named with its DDL.
    let mut no_create = config.clone();
    no_create.create_tables = false;
    no_create.tables[0].name = "other".into();
    let err = PostgresConnector::new(&no_create, 1, "group-a")
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Config(m) if m.contains("\"other\"") && m.contains("does not exist") && m.contains("CREATE TABLE")),
        "{err:?}"
    );

    // A table without a key on event_id cannot be written once per event.
    exec(
        &pool,
        &format!(
            "CREATE TABLE {schema}.nokey (event_id text, event_type text, occurred_at timestamptz, payload jsonb, delivered_at timestamptz)"
        ),
    )
    .await;
    let mut nokey = config.clone();
    nokey.default_table = "nokey".into();
    let err = PostgresConnector::new(&nokey, 1, "group-a")
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Config(m) if m.contains("nokey") && m.contains("unique index on event_id")),
        "{err:?}"
    );

    // A column of a type the values cannot be stored in.
    exec(
        &pool,
        &format!(
            "CREATE TABLE {schema}.badtype (event_id text PRIMARY KEY, event_type text, occurred_at bigint, payload jsonb, delivered_at timestamptz)"
        ),
    )
    .await;
    let mut badtype = config.clone();
    badtype.default_table = "badtype".into();
    let err = PostgresConnector::new(&badtype, 1, "group-a")
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Config(m) if m.contains("badtype") && m.contains("occurred_at")),
        "{err:?}"
    );
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// The partial-failure protocol at the connector: a refused row makes the whole call answer
/// Reject for it and Retry (at once) for the others with nothing committed, rows or
/// positions; the retry without it commits both.
#[tokio::test(flavor = "multi_thread")]
async fn refused_rows_are_rejected_and_the_rest_retried_without_them() {
    let pool = pg().await;
    let schema = fresh_name("t");
    let connector = started(&target(&schema)).await;
    exec(
        &pool,
        &format!("ALTER TABLE {schema}.leads ADD CONSTRAINT no_bad CHECK (email NOT LIKE 'lead-bad-%')"),
    )
    .await;
    let good = sample_events(40, "good");
    // Of the form types only: those go to `leads`, where the constraint is.
    let bad: Vec<Event> = sample_events(6, "bad")
        .into_iter()
        .filter(|e| e.envelope.event_type.contains("form") || e.envelope.event_type.contains("lead"))
        .take(3)
        .collect();
    let mut events = good.clone();
    events.insert(5, bad[0].clone());
    events.insert(20, bad[1].clone());
    events.push(bad[2].clone());
    let items: Vec<Item> = events.iter().enumerate().map(|(i, e)| item(e, 0, i as i64)).collect();
    let end = positions(&[(0, items.len() as i64)]);

    let results = connector
        .deliver(Delivery {
            items: &items,
            positions: Some(&end),
        })
        .await
        .expect("an answer per item");
    let bad_ids = event_ids(&bad);
    for (item, result) in items.iter().zip(&results) {
        if bad_ids.contains(&item.event_id().to_owned()) {
            assert!(
                matches!(result, ItemResult::Reject { reason, response } if reason.contains("no_bad") && response.contains("23514")),
                "{result:?}"
            );
        } else {
            assert!(
                matches!(result, ItemResult::Retry { after: Some(d), .. } if d.is_zero()),
                "{result:?}"
            );
        }
    }
    let nothing = row_counts(&pool, &schema, &["leads", "nectar_events"]).await;
    assert_eq!(
        nothing,
        (0, 0),
        "nothing committed before the rejects are dead-lettered"
    );
    assert!(
        connector
            .stored_positions("t.deliver.postgres", &[0])
            .await
            .unwrap()
            .unwrap()
            .is_empty()
    );

    let retry: Vec<Item> = items
        .iter()
        .zip(&results)
        .filter(|(_, r)| matches!(r, ItemResult::Retry { .. }))
        .map(|(i, _)| i.clone())
        .collect();
    assert_eq!(retry.len(), good.len());
    let results = connector
        .deliver(Delivery {
            items: &retry,
            positions: Some(&end),
        })
        .await
        .unwrap();
    assert!(results.iter().all(|r| *r == ItemResult::Delivered), "{results:?}");
    assert_exactly_once(
        &event_ids(&good),
        &row_ids(&pool, &schema, &["leads", "nectar_events"]).await,
    );
    assert_eq!(
        connector.stored_positions("t.deliver.postgres", &[0, 1]).await.unwrap(),
        Some(BTreeMap::from([(0, items.len() as i64)]))
    );
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// Redelivering a batch changes nothing; positions only move forward (a zombie instance
/// finishing an old batch cannot move them back).
#[tokio::test(flavor = "multi_thread")]
async fn redelivery_changes_nothing_and_positions_only_move_forward() {
    let pool = pg().await;
    let schema = fresh_name("t");
    let connector = started(&target(&schema)).await;
    let events = sample_events(50, "again");
    let items: Vec<Item> = events
        .iter()
        .enumerate()
        .map(|(i, e)| item(e, (i % 2) as i32, i as i64))
        .collect();
    let ahead = positions(&[(0, 100), (1, 101)]);
    for _ in 0..2 {
        let results = connector
            .deliver(Delivery {
                items: &items,
                positions: Some(&ahead),
            })
            .await
            .unwrap();
        assert!(results.iter().all(|r| *r == ItemResult::Delivered));
    }
    assert_eq!(row_counts(&pool, &schema, &["leads", "nectar_events"]).await, (50, 50));
    // The same event twice in one batch (produced twice upstream): one row.
    let twice = sample_events(1, "twice");
    let items_twice = [item(&twice[0], 0, 60), item(&twice[0], 0, 61)];
    let results = connector
        .deliver(Delivery {
            items: &items_twice,
            positions: None,
        })
        .await
        .unwrap();
    assert_eq!(results, [ItemResult::Delivered, ItemResult::Delivered]);
    assert_eq!(row_counts(&pool, &schema, &["leads", "nectar_events"]).await, (51, 51));
    let behind = positions(&[(0, 10), (1, 200)]);
    connector
        .deliver(Delivery {
            items: &items[..1],
            positions: Some(&behind),
        })
        .await
        .unwrap();
    assert_eq!(
        connector
            .stored_positions("t.deliver.postgres", &[0, 1, 2])
            .await
            .unwrap(),
        Some(BTreeMap::from([(0, 100), (1, 200)])),
        "partition 0 kept its newer position, partition 1 moved on"
    );
    // Another group's positions are its own.
    let other = PostgresConnector::new(&target(&schema), 1, "group-b").unwrap();
    assert_eq!(
        other.stored_positions("t.deliver.postgres", &[0, 1]).await.unwrap(),
        Some(BTreeMap::new())
    );
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

/// A value the mapping cannot convert, and an unmapped type without a default table, are
/// rejected before anything is sent; a table dropped under the sink is fatal, with a message
/// that says which.
#[tokio::test(flavor = "multi_thread")]
async fn unmappable_events_are_rejected_and_a_dropped_table_is_fatal() {
    let pool = pg().await;
    let schema = fresh_name("t");
    let mut config = target(&schema);
    config.default_table = String::new();
    config.tables[0]
        .columns
        .insert("seats".into(), "attributes.seats::bigint".into());
    let connector = started(&config).await;
    let mut events = sample_events(4, "map");
    events[0].attributes.insert("seats".into(), "many".into());
    // PostgreSQL stores no NUL character (in text or jsonb): refused by the server.
    let mut nul = sample_events(1, "nul");
    nul[0].attributes.insert("note".into(), "a\u{0}b".into());
    let items: Vec<Item> = events.iter().enumerate().map(|(i, e)| item(e, 0, i as i64)).collect();
    let results = connector
        .deliver(Delivery {
            items: &items,
            positions: None,
        })
        .await
        .unwrap();
    // sample_events types: form.submitted, lead.captured, payment.succeeded, email.clicked.
    assert!(
        matches!(&results[0], ItemResult::Reject { reason, .. } if reason.contains("column seats (bigint): `\"many\"` is not an integer at attributes.seats")),
        "{:?}",
        results[0]
    );
    assert!(matches!(&results[1], ItemResult::Retry { .. }));
    for result in &results[2..] {
        assert!(
            matches!(result, ItemResult::Reject { reason, .. } if reason.contains("no table maps event type")),
            "{result:?}"
        );
    }
    assert_eq!(row_counts(&pool, &schema, &["leads"]).await, (0, 0));
    let with_nul = [item(&events[1], 0, 10), item(&nul[0], 0, 11)];
    let results = connector
        .deliver(Delivery {
            items: &with_nul,
            positions: None,
        })
        .await
        .unwrap();
    assert!(matches!(&results[0], ItemResult::Retry { .. }), "{:?}", results[0]);
    assert!(
        matches!(&results[1], ItemResult::Reject { reason, .. } if reason.contains("SQLSTATE 22P05")),
        "{:?}",
        results[1]
    );

    exec(&pool, &format!("DROP TABLE {schema}.leads")).await;
    let err = connector
        .deliver(Delivery {
            items: &items[1..2],
            positions: None,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DeliveryError::Fatal(m) if m.contains("does not exist") && m.contains("leads")),
        "{err:?}"
    );
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_password_and_refused_connection_are_told_apart_at_start() {
    let wrong = PostgresConfig::new(base_url().replacen(":nectar@", ":wrong@", 1));
    let err = PostgresConnector::new(&wrong, 1, "g")
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Credentials(m) if m.contains("password authentication failed")),
        "{err:?}"
    );
    let refused = PostgresConfig::new("postgres://nectar:nectar@127.0.0.1:1/nectar");
    let err = PostgresConnector::new(&refused, 1, "g")
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(matches!(&err, StartError::Unreachable(_)), "{err:?}");
    let no_db = PostgresConfig::new(url_for_database("no_such_database"));
    let err = PostgresConnector::new(&no_db, 1, "g")
        .unwrap()
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::Config(m) if m.contains("does not exist")),
        "{err:?}"
    );
}

/// Erasure at the connector: within one delivery the rows before the request are deleted
/// and those after it kept, in every table; redelivering the delivery leaves the same rows;
/// the delete uses the index start creates, also on a table that existed without it.
#[tokio::test(flavor = "multi_thread")]
async fn erasure_in_a_batch_is_ordered_idempotent_and_indexed() {
    let pool = pg().await;
    let schema = fresh_name("t");
    let config = target(&schema);
    let connector = started(&config).await;
    let lead = "ws-test:lead-x";
    let before = for_lead(sample_events(4, "x"), lead);
    let kept = for_lead(sample_events(4, "y"), "ws-test:lead-y");
    let erasure = erasure_event(lead, "lead-x-0@example.com");
    let after = for_lead(sample_events(4, "x-after"), lead);
    let events: Vec<Event> = [before.clone(), kept.clone(), vec![erasure.clone()], after.clone()].concat();
    let items: Vec<Item> = events.iter().enumerate().map(|(i, e)| item(e, 0, i as i64)).collect();
    let tables = ["leads", "nectar_events"];
    let mut expected: Vec<String> = [event_ids(&kept), event_ids(&after)].concat();
    expected.push(erasure.envelope.event_id.clone());
    for _ in 0..2 {
        let results = connector
            .deliver(Delivery {
                items: &items,
                positions: Some(&positions(&[(0, items.len() as i64)])),
            })
            .await
            .unwrap();
        assert!(results.iter().all(|r| *r == ItemResult::Delivered), "{results:?}");
        assert_exactly_once(&expected, &row_ids(&pool, &schema, &tables).await);
    }
    // The erasure of a lead with rows from earlier deliveries only.
    let second = erasure_event("ws-test:lead-y", "lead-y-0@example.com");
    connector
        .write_events(std::slice::from_ref(&second), None)
        .await
        .expect("erasure alone");
    expected.retain(|id| !event_ids(&kept).contains(id));
    expected.push(second.envelope.event_id.clone());
    assert_exactly_once(&expected, &row_ids(&pool, &schema, &tables).await);

    // The index is there and the delete can use it.
    for table in tables {
        let index: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
            .bind(format!("{schema}.{table}_nectar_lead"))
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(index.is_some(), "no erasure index on {table}");
    }
    let mut conn = pool.acquire().await.unwrap();
    conn.execute("SET enable_seqscan = off").await.unwrap();
    let plan: Vec<String> = sqlx::query_scalar(&format!("EXPLAIN {}", connector.mapping().tables[0].erase_sql))
        .bind("ws-test")
        .bind(lead)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
    assert!(plan.join("\n").contains("leads_nectar_lead"), "{plan:?}");
    conn.execute("RESET enable_seqscan").await.unwrap();
    drop(conn);

    // A table created before erasure support (no index): start adds the index.
    exec(&pool, &format!("DROP INDEX {schema}.leads_nectar_lead")).await;
    started(&config).await;
    let index: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{schema}.leads_nectar_lead"))
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(index.is_some(), "start did not add the erasure index");
    exec(&pool, &format!("DROP SCHEMA {schema} CASCADE")).await;
}

//! Test harness for Nectar's integration tests: the real local stack (`deploy/local/stack up`),
//! a topic set per test, an in-process ingest service on a random port, and helpers to read
//! records back and decode them through the registry.
//!
//! Addresses come from the same variables the services read (`NECTAR_KAFKA__BOOTSTRAP_SERVERS`,
//! `NECTAR_SCHEMA_REGISTRY__URL`), with the local stack's defaults.

pub mod conformance;
pub mod dead_letters;
pub mod fakes;
pub mod ingest;
pub mod proxy;
pub mod sink;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nectar_core::config::{KafkaConfig, RawTopics, RegistryConfig};
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_ingest::config::{DEFAULTS, ServiceConfig};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

pub fn kafka_config() -> KafkaConfig {
    let mut cfg = KafkaConfig::local();
    if let Ok(servers) = std::env::var("NECTAR_KAFKA__BOOTSTRAP_SERVERS") {
        cfg.bootstrap_servers = servers;
    }
    cfg
}

pub fn registry_config() -> RegistryConfig {
    let mut cfg = RegistryConfig::local();
    if let Ok(url) = std::env::var("NECTAR_SCHEMA_REGISTRY__URL") {
        cfg.url = url;
    }
    cfg
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A random suffix so tests never share topics or subjects.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Fresh raw topics (3 partitions each) for one test.
pub async fn fresh_topics() -> RawTopics {
    let run = unique("t");
    let topics = RawTopics {
        forms: format!("{run}.raw.forms"),
        webhooks: format!("{run}.raw.webhooks"),
        apps: format!("{run}.raw.apps"),
    };
    let specs: Vec<TopicSpec> = [&topics.forms, &topics.webhooks, &topics.apps]
        .iter()
        .map(|t| TopicSpec::new(t.as_str(), 3))
        .collect();
    ensure_topics(&kafka_config(), &specs)
        .await
        .expect("the local stack is up (deploy/local/stack up)");
    topics
}

/// A fresh compacted topic with 3 partitions: a processor's state changelog (score's lead
/// store, normalize's de-duplication store) for one test.
pub async fn fresh_changelog(prefix: &str) -> String {
    let name = unique(&format!("t.{prefix}"));
    let mut spec = TopicSpec::new(&name, 3);
    spec.config.push(("cleanup.policy".into(), "compact".into()));
    ensure_topics(&kafka_config(), &[spec])
        .await
        .expect("the local stack is up (deploy/local/stack up)");
    name
}

/// A service binary of another package, next to this test's executable
/// (`target/<profile>/deps/scale-…` → `target/<profile>/<name>`).
pub fn service_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let bin = profile_dir.join(name);
    assert!(
        bin.is_file(),
        "{} not found: run `cargo build --workspace --bins` first (with the same CARGO_TARGET_DIR and profile)",
        bin.display()
    );
    bin
}

/// A free loopback address (bound, then released).
pub fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
}

/// Fresh topics and group of a one-input processor test: input and output with 3
/// partitions, a DLQ with 1.
#[derive(Debug, Clone)]
pub struct StageTopics {
    pub input: String,
    pub output: String,
    pub dlq: String,
    pub group: String,
}

impl StageTopics {
    pub async fn create(stage: &str) -> Self {
        let topics = Self {
            input: unique(&format!("t.{stage}.in")),
            output: unique(&format!("t.{stage}.out")),
            dlq: unique(&format!("t.dlq.{stage}")),
            group: unique(stage),
        };
        ensure_topics(
            &kafka_config(),
            &[
                TopicSpec::new(&topics.input, 3),
                TopicSpec::new(&topics.output, 3),
                TopicSpec::new(&topics.dlq, 1),
            ],
        )
        .await
        .expect("the local stack is up (deploy/local/stack up)");
        topics
    }
}

/// The ingest configuration the tests start from: the shipped defaults, this test's topics,
/// ephemeral ports, plus `extra` TOML (forms, keys, webhook sources).
pub fn ingest_config(topics: &RawTopics, extra: &str) -> ServiceConfig {
    use figment::providers::{Format, Serialized, Toml};
    let figment = figment::Figment::from(Toml::string(DEFAULTS))
        .merge(Toml::string(extra))
        .merge(Serialized::default(
            "kafka.bootstrap_servers",
            kafka_config().bootstrap_servers,
        ))
        .merge(Serialized::default("schema_registry.url", registry_config().url))
        .merge(Serialized::default("topics.forms", &topics.forms))
        .merge(Serialized::default("topics.webhooks", &topics.webhooks))
        .merge(Serialized::default("topics.apps", &topics.apps))
        .merge(Serialized::default("ingest.listen", "127.0.0.1:0"))
        .merge(Serialized::default("admin.listen", "127.0.0.1:0"))
        .merge(Serialized::default("ingest.probe_interval_ms", 500));
    nectar_core::config::from_figment(figment).expect("test config is valid")
}

/// An ingest service running in this process on a random port.
#[derive(Debug)]
pub struct TestIngest {
    pub base: String,
    pub admin: String,
    pub state: nectar_ingest::AppState,
    pub http: reqwest::Client,
}

impl TestIngest {
    /// Start serving `config`; with `wait_ready`, return once `/readyz` says ready.
    pub async fn start(config: ServiceConfig, wait_ready: bool) -> Self {
        let (state, registry) = nectar_ingest::build(&config).expect("build ingest");
        tokio::spawn(nectar_ingest::app::run_probes(
            state.clone(),
            config.schema_registry.auto_register,
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let app = nectar_ingest::router(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin_addr = admin_listener.local_addr().expect("addr");
        let admin = nectar_core::admin::router(registry, state.readiness.clone());
        tokio::spawn(async move { axum::serve(admin_listener, admin).await });
        let ingest = Self {
            base: format!("http://{addr}"),
            admin: format!("http://{admin_addr}"),
            state,
            http: reqwest::Client::new(),
        };
        if wait_ready {
            ingest.wait_ready(Duration::from_secs(60)).await;
        }
        ingest
    }

    pub async fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.state.readiness.is_ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "ingest not ready: {:?}",
                self.state.readiness.failing()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// `GET /readyz` on the admin listener: its status and JSON report.
    pub async fn readyz(&self) -> (reqwest::StatusCode, serde_json::Value) {
        let response = self
            .http
            .get(format!("{}/readyz", self.admin))
            .send()
            .await
            .expect("readyz");
        let status = response.status();
        (status, response.json().await.expect("readyz JSON"))
    }

    /// POST `body` with `headers` to `path`: the status and the JSON answer (null if none).
    pub async fn post(
        &self,
        path: &str,
        headers: http::HeaderMap,
        body: Vec<u8>,
    ) -> (reqwest::StatusCode, serde_json::Value) {
        let response = self
            .http
            .post(self.url(path))
            .headers(headers)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        (status, response.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Record {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// Milliseconds since the epoch (CreateTime: when the producer sent it).
    pub timestamp: Option<i64>,
}

impl Record {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// Every record on `topic` (from the beginning), reading until `expected` records arrived or
/// `settle` passed without a new one once at least `expected` are in.
///
/// Waits up to 90 s: longer than the processors' 60 s `transaction_timeout_ms`. The open
/// transaction of a SIGKILLed instance that nobody fences (a new instance id) holds every
/// `read_committed` reader of its partitions back until the broker aborts it.
pub async fn read_topic(topic: &str, expected: usize) -> Vec<Record> {
    read_topic_within(topic, expected, Duration::from_secs(90)).await
}

/// [`read_topic`] with a longer wait for the expected records to arrive.
pub async fn read_topic_within(topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || read_topic_blocking(&topic, expected, timeout))
        .await
        .expect("reader thread")
}

fn read_topic_blocking(topic: &str, expected: usize, timeout: Duration) -> Vec<Record> {
    let consumer: BaseConsumer = nectar_core::kafka::client_config(&kafka_config(), "nectar-tests")
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("consumer");
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("metadata");
    let mut assignment = TopicPartitionList::new();
    for p in metadata.topics()[0].partitions() {
        assignment
            .add_partition_offset(topic, p.id(), Offset::Beginning)
            .expect("partition");
    }
    consumer.assign(&assignment).expect("assign");
    let mut records = Vec::new();
    let deadline = Instant::now() + timeout;
    // Once enough records are in, wait a little longer to catch any extra (duplicates).
    let mut quiet_until: Option<Instant> = None;
    while Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                records.push(Record {
                    partition: m.partition(),
                    offset: m.offset(),
                    key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                    payload: m.payload().unwrap_or_default().to_vec(),
                    headers: m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| {
                                    (
                                        h.key.to_owned(),
                                        String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                    timestamp: m.timestamp().to_millis(),
                });
                if records.len() >= expected {
                    quiet_until = Some(Instant::now() + Duration::from_millis(500));
                }
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {
                if records.len() >= expected && quiet_until.is_none_or(|t| Instant::now() >= t) {
                    break;
                }
            }
        }
    }
    records
}

/// Low and high watermark of every partition of `topic` (high: the next offset to be written).
pub async fn watermarks(topic: &str) -> std::collections::BTreeMap<i32, (i64, i64)> {
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", kafka_config().bootstrap_servers)
            .set("group.id", unique("watermarks"))
            .create()
            .expect("consumer");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        metadata.topics()[0]
            .partitions()
            .iter()
            .map(|p| {
                let marks = consumer
                    .fetch_watermarks(&topic, p.id(), Duration::from_secs(10))
                    .expect("watermarks");
                (p.id(), marks)
            })
            .collect()
    })
    .await
    .expect("watermarks thread")
}

/// How many records `topic` holds (sum of high watermarks: raw topics are not transactional).
pub async fn count_records(topic: &str) -> i64 {
    watermarks(topic).await.values().map(|(low, high)| high - low).sum()
}

/// Total records over the three raw topics.
/// Produce `events` to `topic` as `io.nectar.Event` (registered under the topic, encoded
/// by the codec), each keyed by `key`, a thousand sends in flight at a time; every send is
/// acknowledged before this returns.
pub async fn produce_events(
    topic: &str,
    events: &[nectar_core::events::Event],
    key: impl Fn(&nectar_core::events::Event) -> String,
) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let codec = codec();
    codec
        .register(topic, &nectar_core::schema::EVENT)
        .await
        .expect("event schema registered");
    let producer: FutureProducer =
        nectar_core::kafka::idempotent_producer(&kafka_config(), "nectar-tests").expect("producer");
    for chunk in events.chunks(1000) {
        let mut payloads = Vec::with_capacity(chunk.len());
        for event in chunk {
            payloads.push(
                codec
                    .encode(topic, &nectar_core::schema::EVENT, event)
                    .await
                    .expect("encode"),
            );
        }
        let sends = chunk.iter().zip(&payloads).map(|(event, payload)| {
            let key = key(event);
            let producer = producer.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).key(&key).payload(payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("sent");
            }
        });
        futures::future::join_all(sends).await;
    }
}

pub async fn count_raw(topics: &RawTopics) -> i64 {
    count_records(&topics.forms).await + count_records(&topics.webhooks).await + count_records(&topics.apps).await
}

/// A codec on the test registry.
pub fn codec() -> nectar_core::schema::Codec {
    nectar_core::schema::Codec::new(&registry_config()).expect("codec")
}

/// A service binary run as its own process, for tests that kill it.
#[derive(Debug)]
pub struct ServiceProcess {
    bin: PathBuf,
    env: Vec<(String, String)>,
    child: Option<std::process::Child>,
    log: PathBuf,
    /// Length of the log when the running child was started: its own output follows.
    log_start: u64,
}

impl ServiceProcess {
    /// Start `bin` with `env` added; its output goes to a log file (printed on failure).
    pub fn start(bin: impl Into<PathBuf>, env: Vec<(String, String)>) -> Self {
        let bin = bin.into();
        let log = std::env::temp_dir().join(format!("{}.log", unique("nectar-process")));
        let mut process = Self {
            bin,
            env,
            child: None,
            log,
            log_start: 0,
        };
        process.spawn();
        process
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        self.log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
        let child = std::process::Command::new(&self.bin)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.bin.display()));
        self.child = Some(child);
    }

    /// SIGKILL: no chance to commit or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait: the graceful path. Returns the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        child.wait().expect("wait")
    }

    /// Whether the process exited on its own (and how).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What the running child has logged so far (not its predecessors).
    pub fn current_log(&self) -> String {
        let log = std::fs::read(&self.log).unwrap_or_default();
        let start = usize::try_from(self.log_start).unwrap_or(usize::MAX).min(log.len());
        String::from_utf8_lossy(&log[start..]).into_owned()
    }

    /// Set (`Some`) or remove (`None`) an environment variable for the next start.
    pub fn set_env(&mut self, key: &str, value: Option<&str>) {
        self.env.retain(|(k, _)| k != key);
        if let Some(value) = value {
            self.env.push((key.to_owned(), value.to_owned()));
        }
    }

    /// Wait until the running child logs `needle`; fails, with the log, if it exits first or
    /// `timeout` passes.
    pub async fn wait_logged(&mut self, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.current_log().contains(needle) {
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited with {status}:
{}",
                    self.bin.display(),
                    self.log()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not log `{needle}` within {timeout:?}:
{}",
                self.bin.display(),
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Whether consumer group `group` has committed offsets at the end of every partition of
/// `topics` (OffsetFetch: does not join the group).
pub fn group_caught_up(group: &str, topics: &[&str]) -> bool {
    let consumer: BaseConsumer = nectar_core::kafka::client_config(&kafka_config(), "nectar-tests")
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    let mut ends = Vec::new();
    for topic in topics {
        let Ok(metadata) = consumer.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
            return false;
        };
        for p in metadata.topics()[0].partitions() {
            tpl.add_partition(topic, p.id());
            let Ok((_, high)) = consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(5)) else {
                return false;
            };
            ends.push(((*topic).to_owned(), p.id(), high));
        }
    }
    let Ok(committed) = consumer.committed_offsets(tpl, Duration::from_secs(5)) else {
        return false;
    };
    ends.iter().all(|(topic, partition, high)| {
        *high == 0
            || committed
                .find_partition(topic, *partition)
                .is_some_and(|e| matches!(e.offset(), Offset::Offset(o) if o >= *high))
    })
}

/// Wait until `group` has committed the end of every partition of `topics`, failing early if
/// one of `processes` exits (with its log).
pub async fn wait_caught_up(group: &str, topics: &[String], processes: &mut [&mut ServiceProcess]) {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let (g, t) = (group.to_owned(), topics.to_vec());
        let done = tokio::task::spawn_blocking(move || {
            let topics: Vec<&str> = t.iter().map(String::as_str).collect();
            group_caught_up(&g, &topics)
        })
        .await
        .expect("thread");
        if done {
            return;
        }
        for p in processes.iter_mut() {
            if let Some(status) = p.exited() {
                panic!("the service exited with {status}:\n{}", p.log());
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group did not catch up:\n{}",
            processes.first().map(|p| p.log()).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Every id in `expected` exactly once in `counts`, and nothing else.
pub fn assert_exactly_once(expected: &[String], counts: &std::collections::HashMap<String, usize>) {
    let missing = expected.iter().filter(|id| !counts.contains_key(*id)).count();
    let example: Vec<_> = expected.iter().filter(|id| !counts.contains_key(*id)).take(3).collect();
    assert_eq!(
        missing,
        0,
        "{missing} of {} events missing, e.g. {example:?}",
        expected.len()
    );
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} events duplicated, e.g. {:?}",
        duplicated.len(),
        duplicated.iter().take(3).collect::<Vec<_>>()
    );
    assert_eq!(counts.len(), expected.len(), "no unexpected events");
}

/// Wait until both processes' logs show a partition assignment (they share the group).
pub async fn wait_both_assigned(a: &mut ServiceProcess, b: &mut ServiceProcess) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a.log().contains("partitions assigned") && b.log().contains("partitions assigned")) {
        for p in [&mut *a, &mut *b] {
            if let Some(status) = p.exited() {
                panic!("an instance exited with {status}:\n{}", p.log());
            }
        }
        assert!(
            Instant::now() < deadline,
            "both instances get partitions:\n{}\n{}",
            a.log(),
            b.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The environment a processor binary runs with in tests: the local stack, an ephemeral
/// admin port, its group, instance id and DLQ, small batches (more transactions in flight
/// when a kill lands), plus `extra` (its topics).
pub fn processor_env(group: &str, instance: &str, dlq: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        (
            "NECTAR_KAFKA__BOOTSTRAP_SERVERS",
            kafka_config().bootstrap_servers.as_str(),
        ),
        ("NECTAR_SCHEMA_REGISTRY__URL", registry_config().url.as_str()),
        ("NECTAR_ADMIN__LISTEN", "127.0.0.1:0"),
        (
            "NECTAR_LOG__FILTER",
            "warn,nectar_core=info,nectar_score=info,nectar_normalize=info",
        ),
        ("NECTAR_PROCESSOR__GROUP_ID", group),
        ("NECTAR_PROCESSOR__INSTANCE_ID", instance),
        ("NECTAR_PROCESSOR__DLQ_TOPIC", dlq),
        ("NECTAR_PROCESSOR__MAX_BATCH", "200"),
        // A SIGKILLed instance's partitions move after this (the broker's minimum), not 45 s.
        ("NECTAR_PROCESSOR__SESSION_TIMEOUT_MS", "6000"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    env
}

impl ServiceProcess {
    /// SIGKILL and restart a processor `times` times. Each kill comes a random pause in
    /// `pause_ms` after the running instance logged its partitions' assignment, so every kill
    /// lands while it owns partitions and works (on a loaded machine a restart can take longer
    /// than the pause). Fails, with the log, if it exits on its own or gets no partitions
    /// within 120 s.
    pub async fn kill_at_random_moments(&mut self, times: usize, pause_ms: std::ops::Range<u64>) {
        use rand::Rng;
        for _ in 0..times {
            self.wait_logged("partitions assigned", Duration::from_secs(120)).await;
            let pause = rand::rng().random_range(pause_ms.clone());
            tokio::time::sleep(Duration::from_millis(pause)).await;
            if let Some(status) = self.exited() {
                panic!("{} exited with {status}:\n{}", self.bin.display(), self.log());
            }
            self.restart();
        }
    }
}

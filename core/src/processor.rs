//! The exactly-once processor loop every stream processor runs.
//!
//! Consume (`read_committed`, no auto-commit) → process a batch → produce outputs and dead
//! letters → `send_offsets_to_transaction` with the consumer group metadata → commit, all in
//! one Kafka transaction. A crash at any point leaves either the whole batch (outputs, dead
//! letters and input offsets) committed or none of it; a restarted instance resumes from the
//! committed offsets, and `read_committed` consumers downstream never see aborted outputs.
//!
//! Where the guarantee ends: side effects a processor performs outside Kafka (an HTTP call in
//! enrich) may repeat on replay; only what it writes to Kafka is exactly once.
//!
//! The loop runs on its own OS thread because librdkafka's transaction calls and rebalance
//! callbacks block; every such call has a finite timeout. Async work a processor needs (the
//! registry) runs on the service's tokio runtime through a handle.
//!
//! Rebalances: on revocation the open transaction is aborted inside the callback, before the
//! partitions are released, so no work for a partition now owned by another instance can be
//! committed; the new owner reprocesses from the committed offsets. On assignment the
//! processor is told before any record of the new partitions is processed (score rebuilds its
//! store from the changelog there).
//!
//! Errors: an abortable transaction error aborts and rewinds to the committed offsets; a fatal
//! one (e.g. this producer was fenced by a newer instance with the same transactional id)
//! stops the loop with an error so the process exits non-zero and the orchestrator restarts it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, ClientContext};
use serde::Deserialize;

use crate::admin::Readiness;
use crate::config::KafkaConfig;
use crate::kafka::client_config;

/// The `[processor]` section every processor's configuration has.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Consumer group; instances with the same group split the input partitions.
    pub group_id: String,
    /// This instance's stable id (the pod name in Kubernetes). Part of the transactional id,
    /// so a restarted instance fences its own zombie. Defaults to `$HOSTNAME`.
    #[serde(default, deserialize_with = "crate::config::lenient_string")]
    pub instance_id: Option<String>,
    /// Most records in one transaction.
    pub max_batch: usize,
    /// Commit at least this often while records flow (Kafka Streams commits every 100 ms
    /// with exactly-once).
    pub commit_interval_ms: u64,
    /// Commit as soon as no input has arrived for this long, without waiting out
    /// `commit_interval_ms`: sparse records are committed, and visible downstream, at once,
    /// while a backlog still fills `max_batch` (records keep coming). 0: wait out the interval.
    #[serde(default = "default_idle_commit_ms")]
    pub idle_commit_ms: u64,
    /// Broker-side transaction timeout (`transaction.timeout.ms`).
    pub transaction_timeout_ms: u64,
    /// Timeout of each blocking transaction call.
    pub call_timeout_ms: u64,
    /// Where records that can never be processed go, with the reason in headers.
    pub dlq_topic: String,
    /// The input consumer's `session.timeout.ms`: how long a crashed instance keeps its
    /// partitions before the group gives them to another one. Kafka's default, 45 s; the
    /// broker accepts `group.min.session.timeout.ms`..=`group.max.session.timeout.ms`
    /// (6 s..=5 min by default).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
}

fn default_session_timeout_ms() -> u64 {
    45_000
}

fn default_idle_commit_ms() -> u64 {
    5
}

/// The broker's default `group.min.session.timeout.ms` and `group.max.session.timeout.ms`.
const SESSION_TIMEOUT_RANGE_MS: std::ops::RangeInclusive<u64> = 6_000..=300_000;

impl ProcessorConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.group_id.trim().is_empty() {
            errors.push("processor.group_id: must not be empty".into());
        }
        if self.max_batch == 0 {
            errors.push("processor.max_batch: must be at least 1".into());
        }
        if self.commit_interval_ms == 0 {
            errors.push("processor.commit_interval_ms: must be at least 1".into());
        }
        if self.idle_commit_ms > self.commit_interval_ms {
            errors.push("processor.idle_commit_ms: must be between 0 and commit_interval_ms".into());
        }
        if self.call_timeout_ms == 0 || self.call_timeout_ms >= self.transaction_timeout_ms {
            errors.push("processor.call_timeout_ms: must be between 1 and transaction_timeout_ms".into());
        }
        if self.dlq_topic.trim().is_empty() {
            errors.push("processor.dlq_topic: must not be empty".into());
        }
        if !SESSION_TIMEOUT_RANGE_MS.contains(&self.session_timeout_ms) {
            errors.push(format!(
                "processor.session_timeout_ms: must be between {} and {} (the broker's default \
                 group.min.session.timeout.ms and group.max.session.timeout.ms)",
                SESSION_TIMEOUT_RANGE_MS.start(),
                SESSION_TIMEOUT_RANGE_MS.end()
            ));
        }
    }

    /// `<group_id>-<instance_id>`.
    pub fn transactional_id(&self) -> String {
        let instance = self
            .instance_id
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| "0".into());
        format!("{}-{instance}", self.group_id)
    }
}

/// One consumed record, owned, as processors see it.
#[derive(Debug, Clone)]
pub struct InputRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Milliseconds since the epoch, when the broker or producer stamped it.
    pub timestamp: Option<i64>,
}

impl InputRecord {
    fn from_message(m: &BorrowedMessage<'_>) -> Self {
        Self {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers: crate::kafka::owned_headers(m),
            timestamp: m.timestamp().to_millis(),
        }
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

/// A record to produce inside the transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    pub topic: String,
    /// `None`: the producer's partitioner picks by key. State changelogs set it to the input
    /// partition so the store of a partition can be rebuilt from the same changelog partition.
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone (compacted topics).
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Why a record was not turned into outputs.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The record can never be processed: it goes to the DLQ with this reason, inside the
    /// same transaction, and the stream goes on.
    #[error("rejected: {0}")]
    Reject(String),
    /// A dependency failed (e.g. the registry): abort the transaction, rewind, try again.
    #[error("retry: {0}")]
    Retry(String),
    /// Stop the processor.
    #[error("fatal: {0}")]
    Fatal(String),
}

/// A stream processor: turns one input record into outputs.
pub trait Processor: Send {
    /// Process one record. Called in offset order per partition, inside the open transaction.
    fn process(&mut self, record: &InputRecord) -> impl Future<Output = Result<Vec<Output>, ProcessError>> + Send;

    /// Partitions were assigned; called before any of their records is processed. Blocking
    /// work (rebuilding state from a changelog) is fine here.
    fn on_assigned(&mut self, _partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        Ok(())
    }

    /// Partitions were revoked; their uncommitted work has been aborted.
    fn on_revoked(&mut self, _partitions: &[(String, i32)]) {}

    /// The open transaction was aborted: forget state changes made since the last commit.
    fn on_aborted(&mut self) {}

    /// The transaction committed: state changes since the last commit are now durable.
    fn on_committed(&mut self) {}
}

/// Prometheus metrics of the loop, labelled by processor name.
#[derive(Debug, Clone)]
pub struct ProcessorMetrics {
    pub records_in: IntCounter,
    pub records_out: IntCounter,
    pub dead_letters: IntCounter,
    pub batch_size: Histogram,
    pub transaction_seconds: Histogram,
    pub aborts: IntCounterVec,
    pub commits: IntCounter,
    pub lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
}

impl ProcessorMetrics {
    pub fn new(registry: &Registry, processor: &str) -> prometheus::Result<Self> {
        let label = |o: Opts| o.const_label("processor", processor);
        let hist = |o: HistogramOpts| o.const_label("processor", processor);
        let m = Self {
            records_in: IntCounter::with_opts(label(Opts::new(
                "nectar_processor_records_in_total",
                "Records consumed",
            )))?,
            records_out: IntCounter::with_opts(label(Opts::new(
                "nectar_processor_records_out_total",
                "Records produced (committed or not)",
            )))?,
            dead_letters: IntCounter::with_opts(label(Opts::new(
                "nectar_processor_dead_letters_total",
                "Records sent to the DLQ",
            )))?,
            batch_size: Histogram::with_opts(
                hist(HistogramOpts::new(
                    "nectar_processor_batch_size",
                    "Records per committed transaction",
                ))
                .buckets(vec![1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
            )?,
            transaction_seconds: Histogram::with_opts(
                hist(HistogramOpts::new(
                    "nectar_processor_transaction_seconds",
                    "Time to send offsets and commit a transaction",
                ))
                .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            )?,
            aborts: IntCounterVec::new(
                label(Opts::new(
                    "nectar_processor_aborts_total",
                    "Aborted transactions by reason",
                )),
                &["reason"],
            )?,
            commits: IntCounter::with_opts(label(Opts::new(
                "nectar_processor_commits_total",
                "Committed transactions",
            )))?,
            lag: IntGaugeVec::new(
                label(Opts::new(
                    "nectar_processor_consumer_lag",
                    "Records behind the end of each input partition",
                )),
                &["topic", "partition"],
            )?,
            assigned_partitions: IntGauge::with_opts(label(Opts::new(
                "nectar_processor_assigned_partitions",
                "Input partitions owned by this instance",
            )))?,
        };
        registry.register(Box::new(m.records_in.clone()))?;
        registry.register(Box::new(m.records_out.clone()))?;
        registry.register(Box::new(m.dead_letters.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.transaction_seconds.clone()))?;
        registry.register(Box::new(m.aborts.clone()))?;
        registry.register(Box::new(m.commits.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.assigned_partitions.clone()))?;
        Ok(m)
    }
}

/// Rebalance events recorded by the consumer context for the loop to act on.
#[derive(Debug, Default)]
struct RebalanceLog {
    assigned: Vec<(String, i32)>,
    revoked: Vec<(String, i32)>,
    /// The open transaction was aborted during a revocation.
    aborted: bool,
}

/// The consumer context: aborts the open transaction before partitions are revoked.
struct LoopContext {
    producer: ThreadedProducer<DefaultProducerContext>,
    in_transaction: Arc<AtomicBool>,
    log: Arc<Mutex<RebalanceLog>>,
    call_timeout: Duration,
}

impl ClientContext for LoopContext {}

impl ConsumerContext for LoopContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            if self.in_transaction.swap(false, Ordering::SeqCst) {
                // The uncommitted work includes records of partitions that are leaving: it
                // must not be committed by this instance any more.
                if let Err(e) = abort(&self.producer, self.call_timeout) {
                    tracing::error!(error = %e, "abort on revocation failed");
                }
                log.aborted = true;
            }
            log.revoked.extend(partitions(tpl));
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                log.assigned.extend(partitions(tpl));
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance error"),
            Rebalance::Revoke(_) => {}
        }
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Everything the loop needs.
#[derive(Debug)]
pub struct LoopSettings {
    pub name: String,
    pub kafka: KafkaConfig,
    pub processor: ProcessorConfig,
    pub inputs: Vec<String>,
}

/// A running loop's handle: ask it to stop, wait for it.
#[derive(Debug)]
pub struct LoopHandle {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl LoopHandle {
    /// Finish the current batch, commit, leave the group.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub fn stopper(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Wait for the loop thread; its error if it failed.
    pub fn join(self) -> anyhow::Result<()> {
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the processor loop panicked"))?
    }
}

/// Start the loop on its own thread. `runtime` runs the processor's async work.
pub fn spawn<P: Processor + 'static>(
    settings: LoopSettings,
    processor: P,
    metrics: ProcessorMetrics,
    readiness: Readiness,
    runtime: tokio::runtime::Handle,
) -> anyhow::Result<LoopHandle> {
    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name(format!("{}-loop", settings.name))
        .spawn(move || {
            let result =
                Loop::new(settings, processor, metrics, readiness.clone(), runtime, thread_stop).and_then(Loop::run);
            if let Err(e) = &result {
                readiness.set(LOOP_CHECK, Err(format!("processor loop stopped: {e:#}")));
            }
            result
        })?;
    Ok(LoopHandle { stop, thread })
}

/// The readiness check the loop maintains.
pub const LOOP_CHECK: &str = "processor_loop";

struct Loop<P: Processor> {
    settings: LoopSettings,
    processor: P,
    metrics: ProcessorMetrics,
    runtime: tokio::runtime::Handle,
    stop: Arc<AtomicBool>,
    consumer: BaseConsumer<LoopContext>,
    producer: ThreadedProducer<DefaultProducerContext>,
    in_transaction: Arc<AtomicBool>,
    log: Arc<Mutex<RebalanceLog>>,
    /// Next offset to consume per partition, for the open transaction.
    pending: BTreeMap<(String, i32), i64>,
    batch_records: usize,
    batch_started: Instant,
    call_timeout: Duration,
    /// Test hook: how long to wait between sending the offsets to the transaction and
    /// committing it ([`PAUSE_BEFORE_COMMIT_ENV`]).
    pause_before_commit: Option<Duration>,
}

/// Test hook, for the test that kills a processor in the middle of its commit: milliseconds
/// to pause after `send_offsets_to_transaction` and before `commit_transaction`, announced
/// in the log. Unset (the default), nothing pauses. Not a setting: nothing gains by it.
pub const PAUSE_BEFORE_COMMIT_ENV: &str = "NECTAR_TEST_PAUSE_BEFORE_COMMIT_MS";

/// What the loop logs when the [`PAUSE_BEFORE_COMMIT_ENV`] hook pauses.
pub const PAUSE_BEFORE_COMMIT_LOG: &str = "test hook: offsets sent, pausing before commit_transaction";

impl<P: Processor> Loop<P> {
    fn new(
        settings: LoopSettings,
        processor: P,
        metrics: ProcessorMetrics,
        readiness: Readiness,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let call_timeout = Duration::from_millis(settings.processor.call_timeout_ms);
        let transactional_id = settings.processor.transactional_id();
        let mut producer_config: ClientConfig = client_config(&settings.kafka, &format!("{}-producer", settings.name));
        producer_config
            .set("transactional.id", &transactional_id)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("compression.type", "lz4")
            .set(
                "transaction.timeout.ms",
                settings.processor.transaction_timeout_ms.to_string(),
            );
        // The transaction coordinator answers CONCURRENT_TRANSACTIONS to AddOffsetsToTxn
        // while it still writes the previous transaction's markers (a millisecond or two
        // here); librdkafka retries that after retry.backoff.ms, 100 ms by default, which
        // then was the commit's whole cost (`deploy/local/bench txn`). 20 ms is what the Java
        // client waits for this error; retries back off exponentially from it up to
        // retry.backoff.max.ms. `kafka.properties` can still set it.
        if !settings.kafka.properties.contains_key("retry.backoff.ms") {
            producer_config.set("retry.backoff.ms", "20");
        }
        let producer: ThreadedProducer<DefaultProducerContext> = producer_config.create()?;
        tracing::info!(transactional_id, "initialising transactions");
        producer
            .init_transactions(call_timeout)
            .map_err(|e| anyhow::anyhow!("init_transactions ({transactional_id}): {e}"))?;

        let in_transaction = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(RebalanceLog::default()));
        let context = LoopContext {
            producer: producer.clone(),
            in_transaction: in_transaction.clone(),
            log: log.clone(),
            call_timeout,
        };
        let mut consumer_config = client_config(&settings.kafka, &format!("{}-consumer", settings.name));
        consumer_config
            .set("group.id", &settings.processor.group_id)
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", settings.processor.session_timeout_ms.to_string())
            // Eager rebalancing: every revocation aborts the open transaction, so the simple,
            // whole-assignment protocol is the one whose behaviour is easy to reason about.
            .set("partition.assignment.strategy", "range");
        // A read_committed fetch that finds nothing committed yet waits on the broker for up
        // to fetch.wait.max.ms (500 ms by default) even when the upstream stage commits
        // meanwhile; through four stages that was the latency tail (`bench pipeline`: p99
        // 408-684 ms, with 10 ms 84 ms). The cost: an idle instance sends up to 100 fetch
        // requests a second to each broker it reads from. `kafka.properties` can set it.
        if !settings.kafka.properties.contains_key("fetch.wait.max.ms") {
            consumer_config.set("fetch.wait.max.ms", "10");
        }
        // librdkafka prefetches up to 64 MiB per consumer (queued.max.messages.kbytes) while
        // it has a backlog: each processor's peak RSS grew from 35-70 MiB idle to 105-150 MiB
        // draining one. 8 MiB keeps it under 100 MiB and still feeds 25,000-35,000 events/s
        // (16 MiB: 5-25% faster, 25 MiB more; 2 MiB starves the loop). `kafka.properties` can
        // set it.
        if !settings.kafka.properties.contains_key("queued.max.messages.kbytes") {
            consumer_config.set("queued.max.messages.kbytes", "8192");
        }
        // A member learns that the group is rebalancing (another instance left or joined)
        // from its next heartbeat: with librdkafka's 3 s interval the survivors of a graceful
        // stop could sit idle for up to 3 s before taking the partitions over (the scale
        // test saw a 3 s outage of one route instance with nothing flowing through the
        // other). 1 s is still a third of the smallest session timeout the broker accepts.
        if !settings.kafka.properties.contains_key("heartbeat.interval.ms") {
            consumer_config.set("heartbeat.interval.ms", "1000");
        }
        // Before `processor.session_timeout_ms` existed, `kafka.properties` was the way to set
        // it: such a configuration keeps working.
        if let Some(value) = settings.kafka.properties.get("session.timeout.ms") {
            consumer_config.set("session.timeout.ms", value.expose());
        }
        let consumer: BaseConsumer<LoopContext> = consumer_config.create_with_context(context)?;
        let topics: Vec<&str> = settings.inputs.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        readiness.set(LOOP_CHECK, Ok(()));
        Ok(Self {
            settings,
            processor,
            metrics,
            runtime,
            stop,
            consumer,
            producer,
            in_transaction,
            log,
            pending: BTreeMap::new(),
            batch_records: 0,
            batch_started: Instant::now(),
            call_timeout,
            pause_before_commit: std::env::var(PAUSE_BEFORE_COMMIT_ENV)
                .ok()
                .and_then(|v| v.parse().ok())
                .map(Duration::from_millis),
        })
    }

    fn run(mut self) -> anyhow::Result<()> {
        let commit_interval = Duration::from_millis(self.settings.processor.commit_interval_ms);
        let idle_commit = Duration::from_millis(self.settings.processor.idle_commit_ms);
        let mut last_lag = Instant::now();
        loop {
            if self.stop.load(Ordering::SeqCst) {
                break;
            }
            let wait = if self.in_transaction.load(Ordering::SeqCst) {
                let left = commit_interval
                    .saturating_sub(self.batch_started.elapsed())
                    .max(Duration::from_millis(1));
                if idle_commit.is_zero() {
                    left
                } else {
                    left.min(idle_commit)
                }
            } else {
                Duration::from_millis(100)
            };
            let message = self
                .consumer
                .poll(wait)
                .map(|r| r.map(|m| InputRecord::from_message(&m)));
            self.handle_rebalances()?;
            match message {
                // The input is drained for now: what the transaction holds is committed
                // without waiting out the interval (unless a revocation just aborted it).
                None if !idle_commit.is_zero() && self.in_transaction.load(Ordering::SeqCst) => {
                    self.commit()?;
                }
                None => {}
                Some(Err(e)) => tracing::warn!(error = %e, "consumer error"),
                Some(Ok(record)) => self.process(record)?,
            }
            if self.in_transaction.load(Ordering::SeqCst)
                && (self.batch_records >= self.settings.processor.max_batch
                    || self.batch_started.elapsed() >= commit_interval)
            {
                self.commit()?;
            }
            if last_lag.elapsed() >= Duration::from_secs(5) {
                self.update_lag();
                last_lag = Instant::now();
            }
        }
        tracing::info!("stopping: committing the open batch and leaving the group");
        if self.in_transaction.load(Ordering::SeqCst) {
            self.commit()?;
        }
        self.consumer.unsubscribe();
        Ok(())
    }

    fn handle_rebalances(&mut self) -> anyhow::Result<()> {
        let log = std::mem::take(&mut *self.log.lock().unwrap_or_else(|e| e.into_inner()));
        if log.aborted {
            self.metrics.aborts.with_label_values(&["rebalance"]).inc();
            self.pending.clear();
            self.batch_records = 0;
            self.processor.on_aborted();
        }
        if !log.revoked.is_empty() {
            tracing::info!(partitions = ?log.revoked, "partitions revoked");
            for (topic, partition) in &log.revoked {
                let _ = self.metrics.lag.remove_label_values(&[topic, &partition.to_string()]);
            }
            self.processor.on_revoked(&log.revoked);
        }
        if !log.assigned.is_empty() {
            tracing::info!(partitions = ?log.assigned, "partitions assigned");
            self.processor
                .on_assigned(&log.assigned)
                .map_err(|e| anyhow::anyhow!("on_assigned: {e}"))?;
        }
        // Only after a rebalance: `assignment()` is a round trip to librdkafka's main thread,
        // far too slow to make for every record.
        if (!log.assigned.is_empty() || !log.revoked.is_empty())
            && let Ok(assignment) = self.consumer.assignment()
        {
            self.metrics
                .assigned_partitions
                .set(i64::try_from(assignment.count()).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    fn process(&mut self, record: InputRecord) -> anyhow::Result<()> {
        if !self.in_transaction.load(Ordering::SeqCst) {
            self.producer
                .begin_transaction()
                .map_err(|e| anyhow::anyhow!("begin_transaction: {e}"))?;
            self.in_transaction.store(true, Ordering::SeqCst);
            self.batch_started = Instant::now();
            self.batch_records = 0;
        }
        self.metrics.records_in.inc();
        let result = self.runtime.block_on(self.processor.process(&record));
        let outputs = match result {
            Ok(outputs) => outputs,
            Err(ProcessError::Reject(reason)) => {
                tracing::warn!(
                    topic = record.topic,
                    partition = record.partition,
                    offset = record.offset,
                    reason,
                    "dead-lettering"
                );
                self.metrics.dead_letters.inc();
                vec![dead_letter(
                    &self.settings.processor.dlq_topic,
                    &self.settings.name,
                    &record,
                    &reason,
                )]
            }
            Err(ProcessError::Retry(reason)) => {
                tracing::warn!(reason, "processing failed; aborting and rewinding");
                self.abort_and_rewind("retry")?;
                // Give the dependency a moment before the records come back.
                std::thread::sleep(Duration::from_millis(500));
                return Ok(());
            }
            Err(ProcessError::Fatal(reason)) => anyhow::bail!("{reason}"),
        };
        for output in &outputs {
            self.send(output)?;
        }
        self.metrics
            .records_out
            .inc_by(u64::try_from(outputs.len()).unwrap_or(0));
        self.pending
            .insert((record.topic.clone(), record.partition), record.offset + 1);
        self.batch_records += 1;
        Ok(())
    }

    fn send(&self, output: &Output) -> anyhow::Result<()> {
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&output.topic).headers(crate::kafka::kafka_headers(&output.headers));
        if let Some(partition) = output.partition {
            record = record.partition(partition);
        }
        if let Some(key) = &output.key {
            record = record.key(key.as_slice());
        }
        if let Some(payload) = &output.payload {
            record = record.payload(payload.as_slice());
        }
        let deadline = Instant::now() + self.call_timeout;
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) if Instant::now() < deadline => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => anyhow::bail!("producing to {}: {e}", output.topic),
            }
        }
    }

    fn commit(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        let result = self.try_commit();
        match result {
            Ok(()) => {
                self.in_transaction.store(false, Ordering::SeqCst);
                self.metrics
                    .transaction_seconds
                    .observe(started.elapsed().as_secs_f64());
                self.metrics.batch_size.observe(self.batch_records as f64);
                self.metrics.commits.inc();
                self.pending.clear();
                self.batch_records = 0;
                self.processor.on_committed();
                Ok(())
            }
            Err(e) if is_fatal(&e) => Err(anyhow::anyhow!(
                "fatal transaction error (fenced by another instance?): {e}"
            )),
            Err(e) => {
                tracing::warn!(error = %e, "commit failed; aborting and rewinding");
                self.abort_and_rewind("commit_failed")
            }
        }
    }

    fn try_commit(&self) -> KafkaResult<()> {
        if !self.pending.is_empty() {
            let mut offsets = TopicPartitionList::new();
            for ((topic, partition), next) in &self.pending {
                offsets.add_partition_offset(topic, *partition, Offset::Offset(*next))?;
            }
            let metadata = self
                .consumer
                .group_metadata()
                .ok_or(KafkaError::Global(RDKafkaErrorCode::InvalidGroupId))?;
            self.producer
                .send_offsets_to_transaction(&offsets, &metadata, self.call_timeout)?;
        }
        crate::kafka::wait_delivered(&self.producer, self.call_timeout)?;
        if let Some(pause) = self.pause_before_commit {
            tracing::warn!(pause_ms = pause.as_millis(), "{PAUSE_BEFORE_COMMIT_LOG}");
            std::thread::sleep(pause);
        }
        // A retriable commit error may be retried as is (librdkafka's documented protocol).
        let mut attempts = 0;
        loop {
            match self.producer.commit_transaction(self.call_timeout) {
                Err(KafkaError::Transaction(e)) if e.is_retriable() && attempts < 3 => attempts += 1,
                other => return other,
            }
        }
    }

    /// Abort the open transaction and move every assigned partition back to its committed
    /// offset, so the aborted records are processed again.
    fn abort_and_rewind(&mut self, reason: &str) -> anyhow::Result<()> {
        self.metrics.aborts.with_label_values(&[reason]).inc();
        if self.in_transaction.swap(false, Ordering::SeqCst)
            && let Err(e) = abort(&self.producer, self.call_timeout)
        {
            if is_fatal(&e) {
                anyhow::bail!("abort_transaction: {e}");
            }
            tracing::warn!(error = %e, "abort_transaction failed");
        }
        self.pending.clear();
        self.batch_records = 0;
        self.processor.on_aborted();
        let committed = self.consumer.committed(self.call_timeout)?;
        let mut positions = TopicPartitionList::new();
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(o) => Offset::Offset(o),
                _ => Offset::Beginning,
            };
            positions.add_partition_offset(element.topic(), element.partition(), offset)?;
        }
        if positions.count() > 0 {
            for result in self.consumer.seek_partitions(positions, self.call_timeout)?.elements() {
                if let Err(e) = result.error() {
                    tracing::warn!(topic = result.topic(), partition = result.partition(), error = %e, "rewind failed");
                }
            }
        }
        Ok(())
    }

    fn update_lag(&self) {
        crate::kafka::record_lag(&self.consumer, &self.metrics.lag, Duration::from_secs(1));
    }
}

/// Abort the open transaction. In-flight records are delivered first: aborting while
/// librdkafka is still adding partitions to the transaction can make the broker answer
/// INVALID_TXN_STATE, which librdkafka treats as fatal (confluentinc/librdkafka#4849).
fn abort(producer: &ThreadedProducer<DefaultProducerContext>, timeout: Duration) -> KafkaResult<()> {
    if let Err(e) = crate::kafka::wait_delivered(producer, timeout) {
        tracing::debug!(error = %e, "flush before abort");
    }
    producer.abort_transaction(timeout)
}

fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::Transaction(e) => e.is_fatal(),
        other => matches!(
            other.rdkafka_error_code(),
            Some(RDKafkaErrorCode::Fenced | RDKafkaErrorCode::ProducerFenced)
        ),
    }
}

/// Header names of dead letters.
pub mod dlq_headers {
    pub const REASON: &str = "nectar-dlq-reason";
    pub const STAGE: &str = "nectar-dlq-stage";
    pub const TOPIC: &str = "nectar-dlq-topic";
    pub const PARTITION: &str = "nectar-dlq-partition";
    pub const OFFSET: &str = "nectar-dlq-offset";
}

/// The dead letter of `record`: its key and value unchanged (still decodable with the
/// original schema id), the reason and origin in headers, the original headers kept.
pub fn dead_letter(dlq_topic: &str, stage: &str, record: &InputRecord, reason: &str) -> Output {
    let mut headers = record.headers.clone();
    headers.extend([
        (dlq_headers::REASON.to_owned(), reason.as_bytes().to_vec()),
        (dlq_headers::STAGE.to_owned(), stage.as_bytes().to_vec()),
        (dlq_headers::TOPIC.to_owned(), record.topic.as_bytes().to_vec()),
        (
            dlq_headers::PARTITION.to_owned(),
            record.partition.to_string().into_bytes(),
        ),
        (dlq_headers::OFFSET.to_owned(), record.offset.to_string().into_bytes()),
    ]);
    Output {
        topic: dlq_topic.to_owned(),
        partition: None,
        key: record.key.clone(),
        payload: record.payload.clone(),
        headers,
    }
}

/// A codec failure as a processing outcome: the registry being unreachable is worth a retry;
/// a value that does not fit its schema never will be.
pub fn codec_error(what: &str, e: crate::schema::CodecError) -> ProcessError {
    match e {
        crate::schema::CodecError::Unavailable(m) => ProcessError::Retry(format!("{what}: {m}")),
        crate::schema::CodecError::Invalid(m) => ProcessError::Reject(format!("{what}: {m}")),
    }
}

/// `nectar_processor_duplicates_total{processor, source}`: events dropped because their id was
/// seen before (never dead-lettered: a vendor's retry is not an error).
pub fn duplicates_counter(registry: &Registry, processor: &str) -> prometheus::Result<IntCounterVec> {
    let counter = IntCounterVec::new(
        Opts::new(
            "nectar_processor_duplicates_total",
            "Events dropped because their event id was already processed, by source",
        )
        .const_label("processor", processor),
        &["source"],
    )?;
    registry.register(Box::new(counter.clone()))?;
    Ok(counter)
}

/// The `source` label of [`duplicates_counter`] for an envelope's `source`: `webhook:<vendor>`
/// as is, else its kind (`form`, `app`), so the label stays bounded however many forms and
/// producers there are.
pub fn duplicate_source(source: &str) -> String {
    if source.starts_with("webhook:") {
        source.to_owned()
    } else {
        source.split(':').next().unwrap_or(source).to_owned()
    }
}

/// Headers of an output event: the input's trace context, and the event id.
pub fn event_headers(record: &InputRecord, event_id: &str) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(k, _)| k == crate::trace::TRACEPARENT)
        .cloned()
        .collect();
    headers.push((crate::events::EVENT_ID_HEADER.to_owned(), event_id.as_bytes().to_vec()));
    headers
}

/// `event` encoded as `io.nectar.Event` for `topic`, keyed by `key`, with [`event_headers`].
pub async fn event_output(
    codec: &crate::schema::Codec,
    topic: &str,
    event: &crate::events::Event,
    key: Option<Vec<u8>>,
    record: &InputRecord,
) -> Result<Output, ProcessError> {
    let payload = codec
        .encode(topic, &crate::schema::EVENT, event)
        .await
        .map_err(|e| codec_error(&format!("cannot encode the event for {topic}"), e))?;
    Ok(Output {
        topic: topic.to_owned(),
        partition: None,
        key,
        payload: Some(payload),
        headers: event_headers(record, &event.envelope.event_id),
    })
}

/// Run a processor as a service: the admin endpoints, the loop, and shutdown on SIGTERM
/// (finish the batch, commit, leave the group). Returns the loop's error, if it failed, so
/// the process exits non-zero and the orchestrator restarts it.
pub async fn run_service<P: Processor + 'static>(
    settings: LoopSettings,
    admin_listen: std::net::SocketAddr,
    processor: P,
    registry: Registry,
) -> anyhow::Result<()> {
    let readiness = Readiness::default();
    readiness.register(LOOP_CHECK);
    let metrics = ProcessorMetrics::new(&registry, &settings.name)?;
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(crate::admin::serve(
        admin_listen,
        registry,
        readiness.clone(),
        async move {
            let _ = admin_stopped.await;
        },
    ));
    let handle = spawn(
        settings,
        processor,
        metrics,
        readiness,
        tokio::runtime::Handle::current(),
    )?;
    let stopper = handle.stopper();
    let mut join = tokio::task::spawn_blocking(move || handle.join());
    let result = tokio::select! {
        () = crate::shutdown::signal() => {
            stopper.store(true, Ordering::SeqCst);
            join.await
        }
        result = &mut join => result,
    };
    let _ = admin_stop.send(());
    let _ = admin.await;
    result.map_err(|e| anyhow::anyhow!("processor loop task: {e}"))?
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A valid `[processor]` section, for the tests of the configurations that hold one.
    pub(crate) const SECTION: &str = r#"
        group_id = "nectar-test"
        max_batch = 500
        commit_interval_ms = 100
        transaction_timeout_ms = 60000
        call_timeout_ms = 30000
        dlq_topic = "nectar.dlq.test"
    "#;

    fn parse(extra: &str) -> ProcessorConfig {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(&format!("{SECTION}\n{extra}")))
            .extract()
            .expect("parses")
    }

    fn problems(config: &ProcessorConfig) -> Vec<String> {
        let mut errors = Vec::new();
        config.validate(&mut errors);
        errors
    }

    #[test]
    fn session_timeout_defaults_to_kafkas_45_seconds() {
        let config = parse("");
        assert_eq!(config.session_timeout_ms, 45_000);
        assert!(problems(&config).is_empty(), "{:?}", problems(&config));
    }

    #[test]
    fn idle_commit_defaults_to_5_ms_and_may_not_exceed_the_interval() {
        assert_eq!(parse("").idle_commit_ms, 5);
        assert!(problems(&parse("idle_commit_ms = 0")).is_empty());
        assert!(problems(&parse("idle_commit_ms = 100")).is_empty());
        let errors = problems(&parse("idle_commit_ms = 101"));
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].starts_with("processor.idle_commit_ms:"), "{errors:?}");
    }

    #[test]
    fn session_timeout_outside_the_brokers_range_is_refused_by_key() {
        for ok in [6_000, 300_000] {
            assert!(problems(&parse(&format!("session_timeout_ms = {ok}"))).is_empty());
        }
        for bad in [5_999, 300_001, 0] {
            let errors = problems(&parse(&format!("session_timeout_ms = {bad}")));
            assert_eq!(errors.len(), 1, "{errors:?}");
            assert!(errors[0].starts_with("processor.session_timeout_ms:"), "{errors:?}");
        }
    }
}

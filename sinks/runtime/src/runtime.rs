//! The consumer loop of a sink, on its own OS thread (librdkafka's commit and rebalance
//! callbacks block), with deliveries running on the tokio runtime.
//!
//! One batch is in flight at a time; the next ones are read while it is delivered (up to
//! four batches ahead; see `flow_control`). When a batch is done, every item in it is
//! delivered or dead-lettered, and its positions are committed; the committed offset of a
//! partition therefore never passes an event the target has not accepted.
//!
//! Rebalances (eager, whole assignment): before partitions are released, the batch in
//! flight is finished and committed (or, past `request_timeout_ms`, abandoned uncommitted:
//! the new owner delivers it again, which idempotent targets absorb) and the records read
//! for the next batch are dropped. On assignment the consumer starts from the positions the
//! target stored (transactional targets) or from the group's committed offsets; the first
//! `max_batch` records of each assigned partition are flagged `maybe_delivered`, because a
//! previous owner that crashed may have sent them.
//!
//! Shutdown (SIGTERM): stop reading, finish the batch in flight (up to
//! `shutdown_timeout_ms`), commit, leave the group.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use nectar_core::admin::Readiness;
use nectar_core::config::Validate;
use nectar_core::kafka::{TopicSpec, client_config, ensure_topics, idempotent_producer};
use nectar_core::schema::Codec;
use prometheus::Registry;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde::de::DeserializeOwned;

use crate::config::{SinkConfig, SinkServiceConfig};
use crate::connector::{Connector, Positions, StartError};
use crate::deliver::{Deliverer, Record, TARGET_CHECK, positions_of};
use crate::metrics::SinkMetrics;
use crate::retry::Backoff;

/// The readiness check of the loop: failing once it stopped.
pub const LOOP_CHECK: &str = "sink_loop";

/// Run the connector's start check; an unreachable target is retried until
/// `sink.start_timeout_ms`, anything else fails at once with the connector's reason.
pub async fn start_check<C: Connector>(connector: &C, sink: &SinkConfig) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_millis(sink.start_timeout_ms);
    let backoff = Backoff::new(Duration::from_millis(sink.retry_initial_ms), Duration::from_secs(5));
    let mut attempt = 0;
    loop {
        match connector.start().await {
            Ok(()) => return Ok(()),
            Err(StartError::Unreachable(m)) if Instant::now() < deadline => {
                tracing::warn!(sink = connector.name(), "target unreachable, retrying: {m}");
                let wait = backoff.delay(attempt, None).max(Duration::from_millis(50));
                tokio::time::sleep(wait.min(deadline.saturating_duration_since(Instant::now()))).await;
                attempt += 1;
            }
            Err(e) => anyhow::bail!("{} cannot start: {e}", connector.name()),
        }
    }
}

/// Run a sink as a service: admin endpoints, the start check, the loop, and shutdown on
/// SIGTERM. Returns an error (the process exits non-zero) when the start check fails or a
/// delivery fails fatally.
pub async fn run_service<T, C>(config: SinkServiceConfig<T>, connector: C) -> anyhow::Result<()>
where
    T: DeserializeOwned + Validate + Send + Sync + 'static,
    C: Connector,
{
    let registry = Registry::new();
    let readiness = Readiness::default();
    readiness.register(TARGET_CHECK);
    readiness.register(LOOP_CHECK);
    let metrics = SinkMetrics::new(&registry, &config.sink.name)?;
    let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(nectar_core::admin::serve(
        config.admin.listen,
        registry,
        readiness.clone(),
        async move {
            let _ = admin_stopped.await;
        },
    ));
    let result = run(config, connector, metrics, readiness).await;
    let _ = admin_stop.send(());
    let _ = admin.await;
    result
}

async fn run<T, C: Connector>(
    config: SinkServiceConfig<T>,
    connector: C,
    metrics: SinkMetrics,
    readiness: Readiness,
) -> anyhow::Result<()> {
    let sink = config.sink.clone();
    // One stop request for the whole run: one that came during start-up ends the start check.
    let shutdown = nectar_core::shutdown::signal();
    tokio::pin!(shutdown);
    let started = tokio::select! {
        r = start_check(&connector, &sink) => Some(r),
        () = &mut shutdown => None,
    };
    match started {
        None => return Ok(()),
        Some(r) => r?,
    }
    readiness.set(TARGET_CHECK, Ok(()));
    tracing::info!(sink = %sink.name, topic = %sink.topic(), group = %sink.group_id(), "target ready");
    ensure_topics(&config.kafka, &[TopicSpec::new(sink.dlq_topic(), 1)])
        .await
        .with_context(|| format!("creating the dead-letter topic {}", sink.dlq_topic()))?;
    let codec = Codec::new(&config.schema_registry)?;
    let producer = idempotent_producer(&config.kafka, &format!("nectar-sink-{}-dlq", sink.name))?;
    let deliverer = Arc::new(Deliverer::new(
        Arc::new(connector),
        codec,
        producer,
        &sink,
        metrics.clone(),
        readiness.clone(),
    ));

    let stop = Arc::new(AtomicBool::new(false));
    let thread_stop = stop.clone();
    let runtime = tokio::runtime::Handle::current();
    let kafka = config.kafka.clone();
    let loop_readiness = readiness.clone();
    let thread = std::thread::Builder::new()
        .name(format!("sink-{}", sink.name))
        .spawn(move || {
            let result = SinkLoop::new(&kafka, sink, deliverer, metrics, runtime, thread_stop).and_then(|l| {
                loop_readiness.set(LOOP_CHECK, Ok(()));
                l.run()
            });
            if let Err(e) = &result {
                loop_readiness.set(LOOP_CHECK, Err(format!("sink loop stopped: {e:#}")));
            }
            result
        })?;
    let mut join = tokio::task::spawn_blocking(move || thread.join());
    let joined = tokio::select! {
        () = &mut shutdown => {
            tracing::info!("stopping: finishing the batch in flight");
            stop.store(true, Ordering::SeqCst);
            join.await
        }
        r = &mut join => r,
    };
    joined
        .map_err(|e| anyhow::anyhow!("sink loop task: {e}"))?
        .map_err(|_| anyhow::anyhow!("the sink loop panicked"))?
}

/// How many batches' worth of records the loop reads ahead while one is delivered.
const READ_AHEAD_BATCHES: usize = 4;

/// How long the loop may stop polling while the read-ahead is full, before it pauses the
/// partitions instead (well below `max.poll.interval.ms`; rebalances wait this long at most).
const PAUSE_AFTER: Duration = Duration::from_secs(3);

/// A batch being delivered.
struct InFlight {
    done: Receiver<Result<(), String>>,
    task: tokio::task::JoinHandle<()>,
    positions: Positions,
}

/// State the loop shares with the rebalance callbacks.
#[derive(Default)]
struct Shared {
    buffer: VecDeque<Record>,
    buffer_bytes: usize,
    first_buffered: Option<Instant>,
    in_flight: Option<InFlight>,
    /// Records left to flag `maybe_delivered` per newly assigned partition.
    fresh: HashMap<(String, i32), usize>,
    fatal: Option<String>,
    paused: bool,
}

struct SinkContext<C> {
    shared: Arc<Mutex<Shared>>,
    deliverer: Arc<Deliverer<C>>,
    runtime: tokio::runtime::Handle,
    metrics: SinkMetrics,
    finish_timeout: Duration,
    fresh_records: usize,
    name: String,
}

impl<C: Connector> ClientContext for SinkContext<C> {}

impl<C: Connector> ConsumerContext for SinkContext<C> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let mut shared = lock(&self.shared);
                if let Some(in_flight) = shared.in_flight.take() {
                    match in_flight.done.recv_timeout(self.finish_timeout) {
                        Ok(Ok(())) => commit(consumer, &in_flight.positions, &self.metrics),
                        Ok(Err(fatal)) => shared.fatal = Some(fatal),
                        Err(_) => {
                            in_flight.task.abort();
                            tracing::warn!(sink = %self.name, "abandoned the batch in flight on revocation; the partitions' next owner delivers it again");
                        }
                    }
                }
                let revoked = partitions(tpl);
                let before = shared.buffer.len();
                shared
                    .buffer
                    .retain(|r| !revoked.iter().any(|(t, p)| *t == r.topic && *p == r.partition));
                if shared.buffer.len() != before {
                    shared.buffer_bytes = shared.buffer.iter().map(Record::size).sum();
                }
                if shared.buffer.is_empty() {
                    shared.first_buffered = None;
                }
                for (topic, partition) in &revoked {
                    shared.fresh.remove(&(topic.clone(), *partition));
                    let _ = self.metrics.lag.remove_label_values(&[topic, &partition.to_string()]);
                }
                tracing::info!(sink = %self.name, partitions = ?revoked, "partitions revoked");
            }
            Rebalance::Assign(tpl) => {
                self.position_from_target(tpl);
                let mut shared = lock(&self.shared);
                for key in partitions(tpl) {
                    shared.fresh.insert(key, self.fresh_records);
                }
            }
            Rebalance::Error(_) => {}
        }
    }

    // No consumer calls in here: this also runs while the consumer closes, when they
    // deadlock inside librdkafka.
    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(sink = %self.name, partitions = ?partitions(tpl), "partitions assigned");
                lock(&self.shared).paused = false;
                // Eager rebalancing: an assignment is the whole assignment.
                self.metrics.assigned_partitions.set(tpl.count() as i64);
            }
            Rebalance::Revoke(_) => self.metrics.assigned_partitions.set(0),
            Rebalance::Error(e) => tracing::error!(sink = %self.name, "rebalance error: {e}"),
        }
    }
}

impl<C: Connector> SinkContext<C> {
    /// Start assigned partitions at the positions the target stored with the data, when it
    /// stores any. If they cannot be read, the group's committed offsets are used: they are
    /// never ahead of the stored positions (a commit follows the target's), so the fallback
    /// can only redeliver, which the target's idempotency absorbs.
    fn position_from_target(&self, tpl: &TopicPartitionList) {
        let mut by_topic: HashMap<String, Vec<i32>> = HashMap::new();
        for (topic, partition) in partitions(tpl) {
            by_topic.entry(topic).or_default().push(partition);
        }
        for (topic, parts) in by_topic {
            let stored = self
                .runtime
                .block_on(self.deliverer.connector.stored_positions(&topic, &parts));
            match stored {
                Ok(None) => {}
                Ok(Some(positions)) => {
                    for mut element in tpl.elements_for_topic(&topic) {
                        if let Some(next) = positions.get(&element.partition())
                            && let Err(e) = element.set_offset(Offset::Offset(*next))
                        {
                            tracing::warn!(sink = %self.name, "cannot position {topic}/{}: {e}", element.partition());
                        }
                    }
                    tracing::info!(sink = %self.name, %topic, ?positions, "starting from the positions stored at the target");
                }
                Err(e) => tracing::warn!(
                    sink = %self.name,
                    %topic,
                    "cannot read the positions stored at the target, starting from the committed offsets: {e}"
                ),
            }
        }
    }
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

fn partitions(tpl: &TopicPartitionList) -> Vec<(String, i32)> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

/// Commit `positions` synchronously. A failed commit only means redelivery later.
fn commit<C: ConsumerContext>(consumer: &BaseConsumer<C>, positions: &Positions, metrics: &SinkMetrics) {
    if positions.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for ((topic, partition), next) in positions {
        if let Err(e) = tpl.add_partition_offset(topic, *partition, Offset::Offset(*next)) {
            tracing::warn!("cannot commit {topic}/{partition}: {e}");
        }
    }
    match consumer.commit(&tpl, CommitMode::Sync) {
        Ok(()) => metrics.commits.inc(),
        Err(e) => tracing::warn!("offset commit failed (the events will be delivered again): {e}"),
    }
}

struct SinkLoop<C: Connector> {
    consumer: BaseConsumer<SinkContext<C>>,
    shared: Arc<Mutex<Shared>>,
    deliverer: Arc<Deliverer<C>>,
    runtime: tokio::runtime::Handle,
    metrics: SinkMetrics,
    sink: SinkConfig,
    stop: Arc<AtomicBool>,
}

impl<C: Connector> SinkLoop<C> {
    fn new(
        kafka: &nectar_core::config::KafkaConfig,
        sink: SinkConfig,
        deliverer: Arc<Deliverer<C>>,
        metrics: SinkMetrics,
        runtime: tokio::runtime::Handle,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Self> {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let context = SinkContext {
            shared: shared.clone(),
            deliverer: deliverer.clone(),
            runtime: runtime.clone(),
            metrics: metrics.clone(),
            finish_timeout: Duration::from_millis(sink.request_timeout_ms),
            fresh_records: sink.max_batch,
            name: sink.name.clone(),
        };
        let mut consumer_config = client_config(kafka, &format!("nectar-sink-{}", sink.name));
        consumer_config
            .set("group.id", sink.group_id())
            .set("isolation.level", "read_committed")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            // Eager rebalancing: the whole assignment is revoked at once, so "finish the
            // batch in flight, then release" is simple to reason about.
            .set("partition.assignment.strategy", "range")
            // A batch may wait on a failing target for a long time; the loop keeps polling
            // while it does, so this only bounds a stuck process.
            .set("max.poll.interval.ms", "300000")
            .set("session.timeout.ms", sink.session_timeout_ms.to_string())
            // The loop pauses the partitions while the next batch is full, which drops
            // librdkafka's prefetched records; after the resume they are fetched again at once
            // instead of after librdkafka's 1 s fetch backoff (which capped a sink draining a
            // backlog at ~2,600 events/s), and the prefetch is bounded to a few batches.
            .set("fetch.queue.backoff.ms", "10")
            .set(
                "queued.max.messages.kbytes",
                (sink.max_batch_bytes * 2 / 1024).clamp(1024, 65536).to_string(),
            )
            .set("queued.min.messages", (sink.max_batch * 2).to_string());
        for (key, value) in &kafka.properties {
            consumer_config.set(key, value.expose());
        }
        let consumer: BaseConsumer<SinkContext<C>> = consumer_config.create_with_context(context)?;
        let topic = sink.topic();
        consumer
            .subscribe(&[topic.as_str()])
            .with_context(|| format!("subscribing to {topic}"))?;
        Ok(Self {
            consumer,
            shared,
            deliverer,
            runtime,
            metrics,
            sink,
            stop,
        })
    }

    fn run(self) -> anyhow::Result<()> {
        let linger = Duration::from_millis(self.sink.linger_ms);
        let mut last_lag = Instant::now();
        let mut last_poll = Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            self.collect_finished()?;
            self.dispatch(linger);
            if !self.flow_control(last_poll) {
                // Read ahead enough: let the batch in flight finish first.
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            let busy = {
                let shared = lock(&self.shared);
                shared.in_flight.is_some() || !shared.buffer.is_empty()
            };
            let timeout = Duration::from_millis(if busy { 10 } else { 100 });
            let polled = self.consumer.poll(timeout);
            last_poll = Instant::now();
            match polled {
                Some(Ok(message)) => self.buffer(&message),
                Some(Err(e)) => tracing::warn!(sink = %self.sink.name, "consumer error: {e}"),
                None => {}
            }
            if last_lag.elapsed() >= Duration::from_secs(10) {
                self.update_lag();
                last_lag = Instant::now();
            }
        }
        self.drain()
    }

    fn buffer(&self, message: &BorrowedMessage<'_>) {
        let mut shared = lock(&self.shared);
        let key = (message.topic().to_owned(), message.partition());
        let maybe_delivered = match shared.fresh.get_mut(&key) {
            Some(left) if *left > 0 => {
                *left -= 1;
                true
            }
            _ => false,
        };
        let record = Record {
            topic: key.0,
            partition: key.1,
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: nectar_core::kafka::owned_headers(message),
            timestamp: message.timestamp().to_millis(),
            maybe_delivered,
        };
        shared.buffer_bytes += record.size();
        shared.buffer.push_back(record);
        shared.first_buffered.get_or_insert_with(Instant::now);
    }

    /// Commit the batch that finished; a fatal error stops the loop.
    fn collect_finished(&self) -> anyhow::Result<()> {
        let mut shared = lock(&self.shared);
        if let Some(fatal) = shared.fatal.take() {
            anyhow::bail!("delivery failed: {fatal}");
        }
        let Some(in_flight) = &shared.in_flight else {
            return Ok(());
        };
        match in_flight.done.try_recv() {
            Err(TryRecvError::Empty) => Ok(()),
            Ok(Ok(())) => {
                let done = shared.in_flight.take().expect("in flight");
                drop(shared);
                let started = Instant::now();
                commit(&self.consumer, &done.positions, &self.metrics);
                tracing::debug!(sink = %self.sink.name, commit_ms = started.elapsed().as_millis() as u64, "committed");
                Ok(())
            }
            Ok(Err(fatal)) => anyhow::bail!("delivery failed: {fatal}"),
            Err(TryRecvError::Disconnected) => anyhow::bail!("the delivery task ended without an answer"),
        }
    }

    /// Start the next batch when none is in flight and the buffer is full or lingered.
    fn dispatch(&self, linger: Duration) {
        let mut shared = lock(&self.shared);
        if shared.in_flight.is_some() || shared.buffer.is_empty() {
            return;
        }
        let full = shared.buffer.len() >= self.sink.max_batch || shared.buffer_bytes >= self.sink.max_batch_bytes;
        let lingered = shared.first_buffered.is_some_and(|t| t.elapsed() >= linger);
        if !full && !lingered {
            return;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        while let Some(record) = shared.buffer.front() {
            if batch.len() >= self.sink.max_batch
                || (!batch.is_empty() && bytes + record.size() > self.sink.max_batch_bytes)
            {
                break;
            }
            bytes += record.size();
            batch.push(shared.buffer.pop_front().expect("front"));
        }
        shared.buffer_bytes -= bytes;
        shared.first_buffered = (!shared.buffer.is_empty()).then(Instant::now);
        let positions = positions_of(&batch);
        let (tx, done) = std::sync::mpsc::channel();
        let deliverer = self.deliverer.clone();
        let task = self.runtime.spawn(async move {
            let result = deliverer.deliver_batch(batch).await;
            let _ = tx.send(result);
        });
        shared.in_flight = Some(InFlight { done, task, positions });
    }

    /// Whether to poll now. Once the records read ahead fill `READ_AHEAD_BATCHES` batches,
    /// the loop stops polling while the batch in flight finishes (the usual case: it takes
    /// milliseconds). If it takes longer than `PAUSE_AFTER` (the target is slow or down),
    /// the partitions are paused and polling goes on, which keeps the group membership and
    /// serves rebalances; they are resumed once the buffer is down to one batch. Pausing is
    /// the slow path because it drops librdkafka's prefetched records and the resume fetches
    /// them again after about a second (pausing on every full buffer capped a sink draining a
    /// backlog at ~3,000 events/s).
    fn flow_control(&self, last_poll: Instant) -> bool {
        let mut shared = lock(&self.shared);
        let (records, bytes) = (shared.buffer.len(), shared.buffer_bytes);
        let full = records >= self.sink.max_batch * READ_AHEAD_BATCHES
            || bytes >= self.sink.max_batch_bytes.saturating_mul(READ_AHEAD_BATCHES);
        let drained = records < self.sink.max_batch && bytes < self.sink.max_batch_bytes;
        let pause = if shared.paused {
            if !drained {
                return true;
            }
            false
        } else {
            if !full {
                return true;
            }
            if last_poll.elapsed() < PAUSE_AFTER {
                return false;
            }
            true
        };
        let Ok(assignment) = self.consumer.assignment() else {
            return true;
        };
        let result = if pause {
            self.consumer.pause(&assignment)
        } else {
            self.consumer.resume(&assignment)
        };
        match result {
            Ok(()) => shared.paused = pause,
            Err(e) => tracing::warn!(sink = %self.sink.name, "pause/resume failed: {e}"),
        }
        true
    }

    fn drain(self) -> anyhow::Result<()> {
        let timeout = Duration::from_millis(self.sink.shutdown_timeout_ms);
        let in_flight = lock(&self.shared).in_flight.take();
        if let Some(in_flight) = in_flight {
            match in_flight.done.recv_timeout(timeout) {
                Ok(Ok(())) => commit(&self.consumer, &in_flight.positions, &self.metrics),
                Ok(Err(fatal)) => anyhow::bail!("delivery failed: {fatal}"),
                Err(RecvTimeoutError::Timeout) => {
                    in_flight.task.abort();
                    tracing::warn!(sink = %self.sink.name, "the batch in flight did not finish within the shutdown timeout; left uncommitted, it will be delivered again");
                }
                Err(RecvTimeoutError::Disconnected) => {}
            }
        }
        self.consumer.unsubscribe();
        tracing::info!(sink = %self.sink.name, "stopped");
        Ok(())
    }

    fn update_lag(&self) {
        nectar_core::kafka::record_lag(&self.consumer, &self.metrics.lag, Duration::from_millis(500));
    }
}

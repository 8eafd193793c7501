//! Delivering one batch: decode, split into requests of the connector's size, send them
//! with the concurrency and rate limits, retry what failed, dead-letter what never will
//! succeed. Returns once every item is delivered or dead-lettered (or a fatal error).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use nectar_core::admin::Readiness;
use nectar_core::events::{Event, now_millis};
use nectar_core::processor::dlq_headers;
use nectar_core::schema::{Codec, CodecError};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::config::SinkConfig;
use crate::connector::{Connector, Delivery, DeliveryError, Item, ItemResult, Positions};
use crate::metrics::SinkMetrics;
use crate::retry::Backoff;

/// Extra dead-letter headers of sinks (the processors' ones are in `dlq_headers`).
pub mod sink_dlq_headers {
    /// The target's answer (an excerpt).
    pub const RESPONSE: &str = "nectar-dlq-response";
    /// Delivery attempts made before giving up.
    pub const ATTEMPTS: &str = "nectar-dlq-attempts";
    /// The sink's name.
    pub const SINK: &str = "nectar-dlq-sink";
}

/// The readiness check of the target: failing while requests to it keep failing.
pub const TARGET_CHECK: &str = "target";

/// A consumed record, before decoding.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp: Option<i64>,
    pub maybe_delivered: bool,
}

impl Record {
    pub fn size(&self) -> usize {
        self.value.as_ref().map_or(0, Vec::len) + self.key.as_ref().map_or(0, Vec::len)
    }
}

/// The positions a batch commits: the offset after the last record of each partition.
pub(crate) fn positions_of(records: &[Record]) -> Positions {
    let mut positions = BTreeMap::new();
    for r in records {
        let next = positions.entry((r.topic.clone(), r.partition)).or_insert(r.offset + 1);
        *next = (*next).max(r.offset + 1);
    }
    positions
}

enum Attempt {
    Answered(Vec<(Item, ItemResult)>),
    Failed {
        items: Vec<Item>,
        reason: String,
        after: Option<Duration>,
    },
    Fatal(String),
}

pub(crate) struct Deliverer<C> {
    pub connector: Arc<C>,
    codec: Codec,
    producer: FutureProducer,
    name: String,
    dlq_topic: String,
    concurrency: usize,
    max_item_attempts: u32,
    request_timeout: Duration,
    backoff: Backoff,
    limiter: Option<DefaultDirectRateLimiter>,
    /// Set when the target answered with a `Retry-After`: no request leaves before then,
    /// including the other requests of the same round.
    hold_until: std::sync::Mutex<Option<Instant>>,
    metrics: SinkMetrics,
    readiness: Readiness,
}

impl<C: Connector> Deliverer<C> {
    pub fn new(
        connector: Arc<C>,
        codec: Codec,
        producer: FutureProducer,
        sink: &SinkConfig,
        metrics: SinkMetrics,
        readiness: Readiness,
    ) -> Self {
        let limiter = (sink.rate_limit_per_second > 0.0).then(|| {
            let period = Duration::from_secs_f64(1.0 / sink.rate_limit_per_second);
            let burst = std::num::NonZeroU32::new(sink.rate_limit_burst).unwrap_or(std::num::NonZeroU32::MIN);
            let quota = Quota::with_period(period)
                .unwrap_or_else(|| Quota::per_second(std::num::NonZeroU32::MAX))
                .allow_burst(burst);
            RateLimiter::direct(quota)
        });
        Self {
            connector,
            codec,
            producer,
            name: sink.name.clone(),
            dlq_topic: sink.dlq_topic(),
            concurrency: sink.concurrency,
            max_item_attempts: sink.max_item_attempts,
            request_timeout: Duration::from_millis(sink.request_timeout_ms),
            backoff: Backoff::new(
                Duration::from_millis(sink.retry_initial_ms),
                Duration::from_millis(sink.retry_max_ms),
            ),
            limiter,
            hold_until: std::sync::Mutex::new(None),
            metrics,
            readiness,
        }
    }

    /// Remember the target's `Retry-After`.
    fn hold(&self, after: Option<Duration>) {
        if let Some(after) = after {
            let until = Instant::now() + after;
            let mut hold = self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
            *hold = Some(hold.map_or(until, |h| h.max(until)));
        }
    }

    /// How long the target asked us to wait still, if it did.
    fn held(&self) -> Option<Duration> {
        let hold = self.hold_until.lock().unwrap_or_else(|e| e.into_inner());
        hold.and_then(|until| until.checked_duration_since(Instant::now()))
            .filter(|d| !d.is_zero())
    }

    /// Deliver or dead-letter every record. `Err` only for a fatal error: nothing of the
    /// batch may be committed then.
    pub async fn deliver_batch(&self, records: Vec<Record>) -> Result<(), String> {
        self.metrics.batch_size.observe(records.len() as f64);
        let size = records.len();
        let started = Instant::now();
        let positions = positions_of(&records);
        let mut pending = self.decode_all(records).await;
        let decoded = started.elapsed();
        let max_items = self.connector.max_items().max(1);
        let mut round = 0u32;
        while !pending.is_empty() {
            let covers_all = pending.len() <= max_items;
            let positions = covers_all.then_some(&positions);
            let mut chunks = Vec::new();
            let mut rest = pending;
            while !rest.is_empty() {
                let tail = rest.split_off(rest.len().min(max_items));
                chunks.push(rest);
                rest = tail;
            }
            let outcomes: Vec<Attempt> = futures::stream::iter(chunks)
                .map(|chunk| self.attempt(chunk, positions))
                .buffer_unordered(self.concurrency)
                .collect()
                .await;

            let mut next: Vec<Item> = Vec::new();
            let mut wait: Option<Duration> = None;
            let mut failure: Option<String> = None;
            for outcome in outcomes {
                match outcome {
                    Attempt::Fatal(reason) => {
                        self.readiness.set(TARGET_CHECK, Err(reason.clone()));
                        return Err(reason);
                    }
                    Attempt::Failed { items, reason, after } => {
                        self.metrics
                            .retried
                            .with_label_values(&["request"])
                            .inc_by(items.len() as u64);
                        if after.is_some() {
                            self.metrics.throttled.inc();
                        }
                        wait = wait.max(after);
                        failure = Some(reason);
                        next.extend(items);
                    }
                    Attempt::Answered(answers) => {
                        for (mut item, result) in answers {
                            match result {
                                ItemResult::Delivered => {
                                    self.metrics.delivered.inc();
                                    if let Some(ts) = item.timestamp {
                                        let latency = (now_millis() - ts).max(0) as f64 / 1000.0;
                                        self.metrics.delivery_latency_seconds.observe(latency);
                                    }
                                }
                                ItemResult::Skipped { reason } => {
                                    tracing::debug!(sink = %self.name, event_id = item.event_id(), "skipped: {reason}");
                                    self.metrics.skipped.inc();
                                }
                                ItemResult::Retry { reason, after } => {
                                    item.attempts += 1;
                                    if item.attempts >= self.max_item_attempts {
                                        // The last failure's reason carries the target's answer.
                                        let response = reason.clone();
                                        let reason = format!("gave up after {} attempts: {reason}", item.attempts);
                                        self.dead_letter_item(&item, &reason, &response).await;
                                    } else {
                                        self.metrics.retried.with_label_values(&["item"]).inc();
                                        wait = wait.max(after);
                                        next.push(item);
                                    }
                                }
                                ItemResult::Reject { reason, response } => {
                                    item.attempts += 1;
                                    self.dead_letter_item(&item, &reason, &response).await;
                                }
                            }
                        }
                    }
                }
            }
            match failure {
                Some(reason) => {
                    tracing::warn!(sink = %self.name, events = next.len(), retry_after = ?wait, "delivery failed, retrying: {reason}");
                    self.readiness
                        .set(TARGET_CHECK, Err(format!("deliveries failing: {reason}")));
                }
                None => self.readiness.set(TARGET_CHECK, Ok(())),
            }
            // Keep offset order per partition for the next round.
            next.sort_by_key(|item| (item.partition, item.offset));
            pending = next;
            if !pending.is_empty() {
                tokio::time::sleep(self.backoff.delay(round, wait)).await;
                round = round.saturating_add(1);
            }
        }
        tracing::debug!(
            sink = %self.name,
            events = size,
            rounds = round + 1,
            decode_ms = decoded.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "batch done"
        );
        Ok(())
    }

    async fn attempt(&self, items: Vec<Item>, positions: Option<&Positions>) -> Attempt {
        if let Some(wait) = self.held() {
            // Another request of this round was told to wait: don't send this one before.
            return Attempt::Failed {
                items,
                reason: "the target asked to wait (Retry-After)".into(),
                after: Some(wait),
            };
        }
        if let Some(limiter) = &self.limiter {
            let waited = Instant::now();
            limiter.until_ready().await;
            let waited = waited.elapsed();
            if waited >= Duration::from_millis(1) {
                self.metrics.rate_limit_waits.inc();
                self.metrics.rate_limit_wait_seconds.inc_by(waited.as_secs_f64());
            }
        }
        let started = Instant::now();
        let call = self.connector.deliver(Delivery {
            items: &items,
            positions,
        });
        let result = tokio::time::timeout(self.request_timeout, call).await;
        let elapsed = started.elapsed().as_secs_f64();
        let observe = |outcome: &str| {
            self.metrics
                .request_seconds
                .with_label_values(&[outcome])
                .observe(elapsed);
        };
        match result {
            Err(_) => {
                observe("timeout");
                Attempt::Failed {
                    items,
                    reason: format!("no answer within {} ms", self.request_timeout.as_millis()),
                    after: None,
                }
            }
            Ok(Err(DeliveryError::Retry { reason, after })) => {
                observe("retry");
                self.hold(after);
                Attempt::Failed { items, reason, after }
            }
            Ok(Err(DeliveryError::Fatal(reason))) => {
                observe("fatal");
                Attempt::Fatal(reason)
            }
            Ok(Ok(results)) if results.len() != items.len() => {
                observe("fatal");
                Attempt::Fatal(format!(
                    "connector {} answered {} results for {} events",
                    self.connector.name(),
                    results.len(),
                    items.len()
                ))
            }
            Ok(Ok(results)) => {
                let all = results
                    .iter()
                    .all(|r| matches!(r, ItemResult::Delivered | ItemResult::Skipped { .. }));
                observe(if all { "ok" } else { "partial" });
                for result in &results {
                    if let ItemResult::Retry { after, .. } = result {
                        self.hold(*after);
                    }
                }
                Attempt::Answered(items.into_iter().zip(results).collect())
            }
        }
    }

    /// Decode every record; undecodable ones are dead-lettered. Retries while the registry
    /// is unreachable.
    async fn decode_all(&self, records: Vec<Record>) -> Vec<Item> {
        let mut items = Vec::with_capacity(records.len());
        for record in records {
            let Some(value) = &record.value else {
                self.dead_letter_record(&record, "the record has no value", "", 0).await;
                continue;
            };
            let mut attempt = 0;
            let event = loop {
                match self.codec.decode::<Event>(value).await {
                    Ok(event) => break Some(event),
                    Err(CodecError::Invalid(m)) => {
                        let reason = format!("not an io.nectar.Event: {m}");
                        self.dead_letter_record(&record, &reason, "", 0).await;
                        break None;
                    }
                    Err(CodecError::Unavailable(m)) => {
                        tracing::warn!(sink = %self.name, "schema registry unavailable, retrying: {m}");
                        tokio::time::sleep(self.backoff.delay(attempt, None)).await;
                        attempt = attempt.saturating_add(1);
                    }
                }
            };
            if let Some(event) = event {
                items.push(Item {
                    topic: record.topic,
                    partition: record.partition,
                    offset: record.offset,
                    key: record.key,
                    value: record.value.unwrap_or_default(),
                    headers: record.headers,
                    timestamp: record.timestamp,
                    event: Arc::new(event),
                    attempts: 0,
                    maybe_delivered: record.maybe_delivered,
                });
            }
        }
        items
    }

    async fn dead_letter_item(&self, item: &Item, reason: &str, response: &str) {
        tracing::warn!(sink = %self.name, event_id = item.event_id(), topic = %item.topic, partition = item.partition, offset = item.offset, "dead-lettered: {reason}");
        let origin = Record {
            topic: item.topic.clone(),
            partition: item.partition,
            offset: item.offset,
            key: item.key.clone(),
            value: Some(item.value.clone()),
            headers: item.headers.clone(),
            timestamp: item.timestamp,
            maybe_delivered: false,
        };
        self.dead_letter_record(&origin, reason, response, item.attempts).await;
    }

    /// Produce the dead letter and wait for the broker's acknowledgement (retrying until it
    /// comes: a dead letter must never be lost, and the batch is not committed before).
    async fn dead_letter_record(&self, record: &Record, reason: &str, response: &str, attempts: u32) {
        let headers = dlq_headers_for(record, &self.name, reason, response, attempts);
        let mut attempt = 0;
        loop {
            let mut out: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&self.dlq_topic).headers(nectar_core::kafka::kafka_headers(&headers));
            if let Some(value) = &record.value {
                out = out.payload(value.as_slice());
            }
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            match self.producer.send(out, Duration::from_secs(30)).await {
                Ok(_) => break,
                Err((e, _)) => {
                    tracing::error!(sink = %self.name, topic = %self.dlq_topic, "cannot write a dead letter, retrying: {e}");
                    tokio::time::sleep(self.backoff.delay(attempt, None)).await;
                    attempt = attempt.saturating_add(1);
                }
            }
        }
        self.metrics.rejected.inc();
    }
}

/// The headers of a sink's dead letter: the original headers (without those of an earlier
/// dead-lettering), the reason, the target's answer, the attempts and the origin.
pub(crate) fn dlq_headers_for(
    record: &Record,
    sink: &str,
    reason: &str,
    response: &str,
    attempts: u32,
) -> Vec<(String, Vec<u8>)> {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(k, _)| !nectar_core::replay::is_dead_letter_header(k))
        .cloned()
        .collect();
    headers.extend([
        (
            dlq_headers::REASON.to_owned(),
            crate::http::excerpt(reason).into_bytes(),
        ),
        (dlq_headers::STAGE.to_owned(), format!("sink-{sink}").into_bytes()),
        (sink_dlq_headers::SINK.to_owned(), sink.as_bytes().to_vec()),
        (
            sink_dlq_headers::RESPONSE.to_owned(),
            crate::http::excerpt(response).into_bytes(),
        ),
        (sink_dlq_headers::ATTEMPTS.to_owned(), attempts.to_string().into_bytes()),
        (dlq_headers::TOPIC.to_owned(), record.topic.as_bytes().to_vec()),
        (
            dlq_headers::PARTITION.to_owned(),
            record.partition.to_string().into_bytes(),
        ),
        (dlq_headers::OFFSET.to_owned(), record.offset.to_string().into_bytes()),
    ]);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(partition: i32, offset: i64) -> Record {
        Record {
            topic: "t".into(),
            partition,
            offset,
            key: None,
            value: Some(vec![0]),
            headers: vec![
                ("traceparent".into(), b"00-x".to_vec()),
                ("nectar-dlq-reason".into(), b"old".to_vec()),
            ],
            timestamp: None,
            maybe_delivered: false,
        }
    }

    #[test]
    fn positions_are_one_past_the_last_offset_per_partition() {
        let p = positions_of(&[record(0, 5), record(1, 9), record(0, 7), record(0, 6)]);
        assert_eq!(p.get(&("t".to_owned(), 0)), Some(&8));
        assert_eq!(p.get(&("t".to_owned(), 1)), Some(&10));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn dead_letter_headers_name_the_reason_answer_attempts_and_origin() {
        let h = dlq_headers_for(&record(2, 41), "slack", "channel_not_found", "{\"ok\":false}", 3);
        let get = |k: &str| {
            h.iter()
                .filter(|(name, _)| name == k)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(
            get("nectar-dlq-reason"),
            ["channel_not_found"],
            "the old reason is replaced"
        );
        assert_eq!(get("nectar-dlq-response"), ["{\"ok\":false}"]);
        assert_eq!(get("nectar-dlq-attempts"), ["3"]);
        assert_eq!(get("nectar-dlq-stage"), ["sink-slack"]);
        assert_eq!(get("nectar-dlq-topic"), ["t"]);
        assert_eq!(get("nectar-dlq-partition"), ["2"]);
        assert_eq!(get("nectar-dlq-offset"), ["41"]);
        assert_eq!(get("traceparent"), ["00-x"], "original headers are kept");
    }
}

//! Processor state kept in a compacted changelog topic: the one mechanism behind score's lead
//! store and normalize's de-duplication store.
//!
//! A stateful processor keeps its state per input partition in memory. Every change is written
//! as a changelog record ([`Changelog::put`], [`Changelog::tombstone`]) to changelog
//! partition p for input partition p, inside the same Kafka transaction as the outputs and the
//! input offsets, so the changelog holds exactly the changes of committed batches. When input
//! partition p is assigned, [`Changelog::restore`] reads changelog partition p from the start
//! to its end and the processor folds the records into a fresh store before any input record
//! of p is processed: state follows partitions between instances and survives SIGKILL.
//!
//! Where the guarantee ends: the restore reads `read_committed` up to the last stable offset.
//! That is the committed changelog only while each changelog partition has one writer — the
//! owner of input partition p. Processors with several input topics must therefore have them
//! co-partitioned (same partition count, the loop's `range` assignor then gives partition p of
//! every input to one instance), which [`Changelog::check_partitions`] enforces at start.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::kafka::ReadToEndContext;
use crate::processor::{Output, ProcessError};

/// A processor's changelog topic.
#[derive(Debug, Clone)]
pub struct Changelog {
    topic: String,
    kafka: KafkaConfig,
    /// Client and group id of the restore consumer (it only assigns; the group never joins).
    restore_client: String,
}

impl Changelog {
    /// `stage` names the processor (`score`, `normalize`) in client ids and logs.
    pub fn new(kafka: &KafkaConfig, topic: impl Into<String>, stage: &str) -> Self {
        Self {
            topic: topic.into(),
            kafka: kafka.clone(),
            restore_client: format!("nectar-{stage}-restore"),
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The record that sets `key` to `value` in the store of input partition `partition`.
    pub fn put(&self, partition: i32, key: Vec<u8>, value: Vec<u8>) -> Output {
        self.record(partition, key, Some(value))
    }

    /// The record that removes `key` from the store of input partition `partition`.
    pub fn tombstone(&self, partition: i32, key: Vec<u8>) -> Output {
        self.record(partition, key, None)
    }

    fn record(&self, partition: i32, key: Vec<u8>, payload: Option<Vec<u8>>) -> Output {
        Output {
            topic: self.topic.clone(),
            partition: Some(partition),
            key: Some(key),
            payload,
            headers: vec![],
        }
    }

    /// Read changelog partition `partition` from its start to its end (as committed), calling
    /// `apply(key, value)` for every record in order (`None`: a tombstone). Returns how many
    /// records were read. Blocking: call it from the processor's loop thread (`on_assigned`).
    pub fn restore(
        &self,
        partition: i32,
        mut apply: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), ProcessError>,
    ) -> Result<u64, ProcessError> {
        let retry = |e: KafkaError| ProcessError::Retry(format!("reading the changelog {}: {e}", self.topic));
        let consumer: BaseConsumer<ReadToEndContext> = crate::kafka::client_config(&self.kafka, &self.restore_client)
            .set("group.id", &self.restore_client)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "true")
            // A restore is a bulk read of small records. librdkafka prefetches up to 100,000
            // messages by default, whose memory the process keeps after the restore (a
            // million-id rebuild left ~110 MB more resident): prefetch a little, often. With
            // 1 MB fetches it still reads as fast as Kafka's ConsumerPerformance
            // (`deploy/local/bench dedup`).
            .set("fetch.max.bytes", "1048576")
            .set("max.partition.fetch.bytes", "1048576")
            .set("queued.min.messages", "5000")
            .set("queued.max.messages.kbytes", "1024")
            // librdkafka postpones the next fetch by this much (default 1 s) whenever its
            // queue is over the thresholds above, which a bulk read always is: that made a
            // million-record restore wait ~5 s on top of the 1–2 s of reading.
            .set("fetch.queue.backoff.ms", "5")
            .create_with_context(ReadToEndContext)
            .map_err(retry)?;
        let (low, high) = consumer
            .fetch_watermarks(&self.topic, partition, Duration::from_secs(10))
            .map_err(retry)?;
        if high <= low {
            return Ok(0);
        }
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&self.topic, partition, Offset::Beginning)
            .map_err(retry)?;
        consumer.assign(&tpl).map_err(retry)?;
        let mut records = 0u64;
        // With read_committed, end-of-partition is reported at the last stable offset: the
        // changelog as committed, without aborted or still-open transactions.
        loop {
            match consumer.poll(Duration::from_secs(10)) {
                Some(Ok(m)) => {
                    apply(m.key().unwrap_or_default(), m.payload())?;
                    records += 1;
                }
                Some(Err(KafkaError::PartitionEOF(_))) => break,
                Some(Err(e)) => return Err(retry(e)),
                None => {
                    return Err(ProcessError::Retry(format!(
                        "changelog {} partition {partition}: no end reached in 10 s",
                        self.topic
                    )));
                }
            }
        }
        Ok(records)
    }

    /// Start check: the changelog exists, every input has the same partition count (partition
    /// p of each input goes to one instance, so each changelog partition has one writer), and
    /// the changelog has a partition for each input partition.
    pub fn check_partitions(&self, inputs: &[String], timeout: Duration) -> anyhow::Result<()> {
        let consumer: BaseConsumer = crate::kafka::client_config(&self.kafka, &self.restore_client).create()?;
        let count = |topic: &str| -> anyhow::Result<usize> {
            let metadata = consumer
                .fetch_metadata(Some(topic), timeout)
                .map_err(|e| anyhow::anyhow!("metadata of {topic}: {e}"))?;
            match metadata.topics().first() {
                Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(t.partitions().len()),
                _ => anyhow::bail!("topic {topic} does not exist"),
            }
        };
        let mut counts = Vec::with_capacity(inputs.len());
        for input in inputs {
            counts.push((input.as_str(), count(input)?));
        }
        if let Some((first, n)) = counts.first()
            && let Some((other, m)) = counts.iter().find(|(_, m)| m != n)
        {
            anyhow::bail!(
                "the inputs must be co-partitioned for the changelog {}: {first} has {n} partitions, \
                 {other} has {m}",
                self.topic
            );
        }
        let needed = counts.iter().map(|(_, n)| *n).max().unwrap_or(0);
        let have = count(&self.topic).map_err(|e| {
            anyhow::anyhow!("{e} (create it compacted, with {needed} partitions: `cleanup.policy=compact`)")
        })?;
        if have < needed {
            anyhow::bail!(
                "the changelog {} has {have} partitions but the input {needed}: partition p of the \
                 changelog holds the state of input partition p",
                self.topic
            );
        }
        Ok(())
    }
}

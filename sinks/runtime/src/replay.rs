//! `replay`: put chosen dead letters back on the delivery topic, after their cause is fixed.
//!
//! Reads the sink's dead-letter topic from the start up to its end at the time the command
//! starts, keeps the records matching every filter given (time the dead letter was written,
//! a text in its reason, event ids), and produces each one to the delivery topic with its
//! original key, value and headers (the dead-letter headers dropped, `nectar-replayed-from`
//! added), waiting for the broker's acknowledgement. Replaying twice delivers twice: the
//! sinks' writes are idempotent by event id, so the target still holds each event once.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use nectar_core::config::KafkaConfig;
use nectar_core::events::EVENT_ID_HEADER;
use nectar_core::kafka::{client_config, idempotent_producer};
use nectar_core::processor::dlq_headers;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::SinkConfig;
use crate::deliver::sink_dlq_headers;

/// Which dead letters to replay.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReplayArgs {
    /// Only dead letters written at or after this time: RFC 3339 (`2026-11-21T10:00:00Z`) or
    /// an age (`2h`, `30m`).
    #[arg(long)]
    pub since: Option<String>,
    /// Only dead letters written before this time (same formats).
    #[arg(long)]
    pub until: Option<String>,
    /// Only dead letters whose reason contains this text (case-insensitive).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only these event ids (repeatable).
    #[arg(long = "event-id")]
    pub event_ids: Vec<String>,
    /// Produce to this topic instead of the sink's delivery topic.
    #[arg(long)]
    pub to: Option<String>,
    /// List what would be replayed, produce nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub dlq_topic: String,
    pub to: String,
    pub scanned: usize,
    pub replayed: usize,
    pub dry_run: bool,
}

impl std::fmt::Display for ReplayReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verb = if self.dry_run { "would replay" } else { "replayed" };
        write!(
            f,
            "{verb} {} of {} dead letters from {} to {}",
            self.replayed, self.scanned, self.dlq_topic, self.to
        )
    }
}

/// A time filter: RFC 3339, or an age before now. Milliseconds since the epoch.
pub fn parse_time(value: &str) -> anyhow::Result<i64> {
    if let Ok(at) = humantime::parse_rfc3339_weak(value) {
        return Ok(at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64);
    }
    let age = humantime::parse_duration(value)
        .with_context(|| format!("`{value}` is neither an RFC 3339 time nor an age like 2h"))?;
    let at = SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH);
    Ok(at.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as i64)
}

struct Selected {
    /// The dead letter's reason, for `--dry-run` (its headers are dropped from `headers`).
    reason: String,
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: Vec<(String, Vec<u8>)>,
}

pub async fn run(kafka: &KafkaConfig, sink: &SinkConfig, args: &ReplayArgs) -> anyhow::Result<ReplayReport> {
    let since = args.since.as_deref().map(parse_time).transpose().context("--since")?;
    let until = args.until.as_deref().map(parse_time).transpose().context("--until")?;
    let dlq = sink.dlq_topic();
    let to = args.to.clone().unwrap_or_else(|| sink.topic());
    let (scanned, selected) = {
        let kafka = kafka.clone();
        let dlq = dlq.clone();
        let args = args.clone();
        tokio::task::spawn_blocking(move || scan(&kafka, &dlq, since, until, &args)).await??
    };
    let mut report = ReplayReport {
        dlq_topic: dlq.clone(),
        to: to.clone(),
        scanned,
        replayed: selected.len(),
        dry_run: args.dry_run,
    };
    if args.dry_run {
        for s in &selected {
            let header = |name: &str| {
                s.headers
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            println!("{}\t{}", header(EVENT_ID_HEADER), s.reason);
        }
        return Ok(report);
    }
    let producer = idempotent_producer(kafka, "nectar-replay")?;
    let mut replayed = 0;
    for s in &selected {
        let mut headers = OwnedHeaders::new_with_capacity(s.headers.len());
        for (k, v) in &s.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> = FutureRecord::to(&to).headers(headers);
        if let Some(v) = &s.value {
            record = record.payload(v);
        }
        if let Some(k) = &s.key {
            record = record.key(k);
        }
        producer
            .send(record, Duration::from_secs(30))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("producing to {to} after {replayed} replayed: {e}"))?;
        replayed += 1;
    }
    report.replayed = replayed;
    Ok(report)
}

fn scan(
    kafka: &KafkaConfig,
    dlq: &str,
    since: Option<i64>,
    until: Option<i64>,
    args: &ReplayArgs,
) -> anyhow::Result<(usize, Vec<Selected>)> {
    let consumer: BaseConsumer = {
        let mut config = client_config(kafka, "nectar-replay");
        config
            .set("group.id", "nectar-replay")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed");
        config.create()?
    };
    let timeout = Duration::from_secs(10);
    let metadata = consumer
        .fetch_metadata(Some(dlq), timeout)
        .with_context(|| format!("reading the metadata of {dlq}"))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == dlq && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!("the dead-letter topic {dlq} does not exist");
    }
    let mut assignment = TopicPartitionList::new();
    let mut ends = std::collections::HashMap::new();
    for p in &partitions {
        let (low, high) = consumer.fetch_watermarks(dlq, *p, timeout)?;
        if high > low {
            assignment.add_partition_offset(dlq, *p, Offset::Offset(low))?;
            ends.insert(*p, high);
        }
    }
    let mut scanned = 0;
    let mut selected = Vec::new();
    if ends.is_empty() {
        return Ok((0, selected));
    }
    consumer.assign(&assignment)?;
    let reason_filter = args.reason.as_ref().map(|r| r.to_lowercase());
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ends.is_empty() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out reading {dlq}");
        }
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message?;
        let p = message.partition();
        if let Some(end) = ends.get(&p).copied() {
            if message.offset() + 1 >= end {
                ends.remove(&p);
            }
            if message.offset() >= end {
                continue;
            }
        } else {
            continue;
        }
        scanned += 1;
        let headers: Vec<(String, Vec<u8>)> = nectar_core::kafka::owned_headers(&message);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        let at = message.timestamp().to_millis().unwrap_or(0);
        if since.is_some_and(|s| at < s) || until.is_some_and(|u| at >= u) {
            continue;
        }
        if let Some(text) = &reason_filter {
            let reason = header(dlq_headers::REASON).unwrap_or_default().to_lowercase();
            if !reason.contains(text) {
                continue;
            }
        }
        if !args.event_ids.is_empty() {
            let id = header(EVENT_ID_HEADER).unwrap_or_default();
            if !args.event_ids.contains(&id) {
                continue;
            }
        }
        let reason = header(dlq_headers::REASON).unwrap_or_default();
        let origin = format!("{dlq}/{p}/{}", message.offset());
        let mut kept: Vec<(String, Vec<u8>)> = headers
            .into_iter()
            .filter(|(k, _)| !k.starts_with("nectar-dlq-") && k != sink_dlq_headers::REPLAYED_FROM)
            .collect();
        kept.push((sink_dlq_headers::REPLAYED_FROM.to_owned(), origin.into_bytes()));
        selected.push(Selected {
            reason,
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: kept,
        });
    }
    Ok((scanned, selected))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_or_ages() {
        assert_eq!(parse_time("2026-11-21T10:00:00Z").unwrap(), 1_795_255_200_000);
        let two_hours_ago = parse_time("2h").unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!((now - two_hours_ago - 7_200_000).abs() < 5_000);
        assert!(parse_time("yesterday-ish").is_err());
    }
}

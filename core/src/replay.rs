//! `replay`: put chosen dead letters back where they will be processed again, once their cause
//! is fixed. Every sink and every processor has the command; only the default destination
//! differs ([`Destination`]): a sink's delivery topic, a processor's origin topics.
//!
//! Reads the dead-letter topic from its start up to its end at the time the command starts
//! (`read_committed`: a processor writes its dead letters in transactions), keeps the dead
//! letters matching every filter given ([`Filter`]), and produces each one to its destination
//! with its original key, value and headers (the `nectar-dlq-*` headers dropped,
//! `nectar-replayed-from` added), waiting for the broker's acknowledgement.
//!
//! Where the guarantee ends: at least once. Replaying twice produces twice, and a replay that
//! fails half-way may have produced part of the selection. That is safe because a replayed
//! record keeps its event id: the processors derive their outputs' ids from it and the sinks
//! write by event id. Every destination is resolved before anything is produced, so a dead
//! letter without one stops the command with nothing replayed.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::FutureRecord;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::events::EVENT_ID_HEADER;
use crate::kafka::{ReadToEndContext, client_config, idempotent_producer, kafka_headers};
use crate::processor::dlq_headers;

/// Set on a replayed record: `<dlq topic>/<partition>/<offset>` it was replayed from.
pub const REPLAYED_FROM: &str = "nectar-replayed-from";

/// Whether a header records a dead-lettering (`nectar-dlq-*`) or an earlier replay: the
/// headers dropped when a record is dead-lettered again or replayed.
pub fn is_dead_letter_header(name: &str) -> bool {
    name.starts_with("nectar-dlq-") || name == REPLAYED_FROM
}

/// How long the dead-letter topic may give nothing before the read is given up.
const READ_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Records produced before their acknowledgements are awaited.
const PRODUCE_WINDOW: usize = 500;

/// Which dead letters to replay, and where to.
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
    /// Only dead letters that came from this topic (their `nectar-dlq-topic` header).
    #[arg(long)]
    pub origin: Option<String>,
    /// Produce every replayed record to this topic instead of the default destination.
    #[arg(long)]
    pub to: Option<String>,
    /// List what would be replayed (partition/offset, origin, event id, reason), produce
    /// nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Where a replayed dead letter is produced when `--to` is not given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Always this topic (a sink's delivery topic).
    Topic(String),
    /// The topic the dead letter came from, in its `nectar-dlq-topic` header (a processor's
    /// input; normalize has three).
    Origin,
}

impl Destination {
    /// `--to` if given, else `default`.
    pub fn choose(to: Option<&str>, default: Destination) -> Self {
        match to {
            Some(topic) => Self::Topic(topic.to_owned()),
            None => default,
        }
    }

    /// The topic `letter` goes to, or why it has none.
    pub fn of(&self, dlq: &str, letter: &DeadLetter) -> Result<String, String> {
        match self {
            Self::Topic(topic) => Ok(topic.clone()),
            Self::Origin => letter.origin().filter(|o| !o.is_empty()).ok_or_else(|| {
                format!(
                    "{dlq}/{}/{}: no {} header to say where it came from; give --to TOPIC or leave it out \
                     with a filter",
                    letter.partition,
                    letter.offset,
                    dlq_headers::TOPIC
                )
            }),
        }
    }
}

/// One dead letter as read from the dead-letter topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    /// When it was dead-lettered, milliseconds since the epoch.
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    /// All its headers: the original record's and the `nectar-dlq-*` ones.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    /// The last header named `name`, as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    pub fn reason(&self) -> Option<String> {
        self.header(dlq_headers::REASON)
    }

    /// The topic it was dead-lettered from.
    pub fn origin(&self) -> Option<String> {
        self.header(dlq_headers::TOPIC)
    }

    pub fn event_id(&self) -> Option<String> {
        self.header(EVENT_ID_HEADER)
    }

    /// The headers it is replayed with: its own without the dead-letter ones (and without the
    /// mark of an earlier replay), plus `nectar-replayed-from: <dlq>/<partition>/<offset>`.
    pub fn replayed_headers(&self, dlq: &str) -> Vec<(String, Vec<u8>)> {
        let mut headers: Vec<(String, Vec<u8>)> = self
            .headers
            .iter()
            .filter(|(k, _)| !is_dead_letter_header(k))
            .cloned()
            .collect();
        headers.push((
            REPLAYED_FROM.to_owned(),
            format!("{dlq}/{}/{}", self.partition, self.offset).into_bytes(),
        ));
        headers
    }

    /// Its `--dry-run` line: partition/offset, origin, event id, reason (`-` when missing).
    pub fn summary(&self) -> String {
        let or_dash = |v: Option<String>| v.filter(|v| !v.is_empty()).unwrap_or_else(|| "-".into());
        format!(
            "{}/{}\t{}\t{}\t{}",
            self.partition,
            self.offset,
            or_dash(self.origin()),
            or_dash(self.event_id()),
            or_dash(self.reason())
        )
    }
}

/// The filters of [`ReplayArgs`]: a dead letter is replayed when it matches every one given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// Written at or after, milliseconds since the epoch.
    pub since: Option<i64>,
    /// Written before.
    pub until: Option<i64>,
    /// Lower-case text the reason must contain.
    pub reason: Option<String>,
    pub event_ids: Vec<String>,
    pub origin: Option<String>,
}

impl Filter {
    pub fn from_args(args: &ReplayArgs) -> anyhow::Result<Self> {
        Ok(Self {
            since: args.since.as_deref().map(parse_time).transpose().context("--since")?,
            until: args.until.as_deref().map(parse_time).transpose().context("--until")?,
            reason: args.reason.as_ref().map(|r| r.to_lowercase()),
            event_ids: args.event_ids.clone(),
            origin: args.origin.clone(),
        })
    }

    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let at = letter.timestamp.unwrap_or(0);
        if self.since.is_some_and(|s| at < s) || self.until.is_some_and(|u| at >= u) {
            return false;
        }
        if let Some(text) = &self.reason
            && !letter.reason().unwrap_or_default().to_lowercase().contains(text)
        {
            return false;
        }
        if !self.event_ids.is_empty() && !letter.event_id().is_some_and(|id| self.event_ids.contains(&id)) {
            return false;
        }
        if let Some(origin) = &self.origin
            && letter.origin().as_deref() != Some(origin.as_str())
        {
            return false;
        }
        true
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

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    pub dlq_topic: String,
    /// The destinations, comma-separated (or the default one when nothing was selected).
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

/// The selected dead letters with their destinations; every missing destination is an error
/// (all of them named, not only the first).
pub fn plan(
    dlq: &str,
    destination: &Destination,
    selected: Vec<DeadLetter>,
) -> anyhow::Result<Vec<(String, DeadLetter)>> {
    let mut planned = Vec::with_capacity(selected.len());
    let mut errors = Vec::new();
    for letter in selected {
        match destination.of(dlq, &letter) {
            Ok(to) => planned.push((to, letter)),
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        anyhow::bail!(
            "{} selected dead letter(s) have no destination, nothing was replayed:\n  {}",
            errors.len(),
            errors.join("\n  ")
        );
    }
    Ok(planned)
}

/// Replay the dead letters of `dlq` that `args` selects, to `--to` or `default`. With
/// `--dry-run` prints one line per selected dead letter and produces nothing.
pub async fn run(
    kafka: &KafkaConfig,
    dlq: &str,
    default: Destination,
    args: &ReplayArgs,
) -> anyhow::Result<ReplayReport> {
    let filter = Filter::from_args(args)?;
    let destination = Destination::choose(args.to.as_deref(), default);
    let (scanned, selected) = {
        let (kafka, dlq) = (kafka.clone(), dlq.to_owned());
        tokio::task::spawn_blocking(move || scan(&kafka, &dlq, &filter)).await??
    };
    let planned = plan(dlq, &destination, selected)?;
    let destinations: BTreeSet<&str> = planned.iter().map(|(to, _)| to.as_str()).collect();
    let to = match (&destination, destinations.is_empty()) {
        (Destination::Topic(topic), _) => topic.clone(),
        (Destination::Origin, true) => "their origin topics".to_owned(),
        (Destination::Origin, false) => destinations.into_iter().collect::<Vec<_>>().join(", "),
    };
    let mut report = ReplayReport {
        dlq_topic: dlq.to_owned(),
        to,
        scanned,
        replayed: planned.len(),
        dry_run: args.dry_run,
    };
    if args.dry_run {
        for (_, letter) in &planned {
            println!("{}", letter.summary());
        }
        return Ok(report);
    }
    report.replayed = produce(kafka, dlq, &planned).await?;
    Ok(report)
}

/// Produce every planned record, a window at a time, each acknowledged. The count produced.
async fn produce(kafka: &KafkaConfig, dlq: &str, planned: &[(String, DeadLetter)]) -> anyhow::Result<usize> {
    let producer = idempotent_producer(kafka, "nectar-replay")?;
    let mut replayed = 0;
    for window in planned.chunks(PRODUCE_WINDOW) {
        let mut pending = Vec::with_capacity(window.len());
        for (to, letter) in window {
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(to).headers(kafka_headers(&letter.replayed_headers(dlq)));
            if let Some(v) = &letter.value {
                record = record.payload(v);
            }
            if let Some(k) = &letter.key {
                record = record.key(k);
            }
            let delivery = producer
                .send_result(record)
                .map_err(|(e, _)| anyhow::anyhow!("producing to {to} after {replayed} replayed: {e}"))?;
            pending.push((to, letter, delivery));
        }
        // Await them all, so the count is what the broker acknowledged even when one fails.
        let mut failure = None;
        for (to, letter, delivery) in pending {
            match delivery.await {
                Ok(Ok(_)) => replayed += 1,
                Ok(Err((e, _))) => {
                    failure.get_or_insert_with(|| format!("{dlq}/{}/{} to {to}: {e}", letter.partition, letter.offset));
                }
                Err(_) => {
                    failure.get_or_insert_with(|| {
                        format!("{dlq}/{}/{}: the producer went away", letter.partition, letter.offset)
                    });
                }
            }
        }
        if let Some(failure) = failure {
            anyhow::bail!(
                "replayed {replayed} of {} before a record failed ({failure}); running the same replay again \
                 replays those again, which the event ids make harmless",
                planned.len()
            );
        }
    }
    Ok(replayed)
}

/// Read `dlq` up to its end as of now; (dead letters read, those matching `filter`).
fn scan(kafka: &KafkaConfig, dlq: &str, filter: &Filter) -> anyhow::Result<(usize, Vec<DeadLetter>)> {
    let consumer: BaseConsumer<ReadToEndContext> = {
        let mut config = client_config(kafka, "nectar-replay");
        config
            .set("group.id", "nectar-replay")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            // With read_committed, a partition's end is reported at its last stable offset:
            // a transactional topic's last offset is a commit marker no consumer ever sees.
            .set("enable.partition.eof", "true");
        config.create_with_context(ReadToEndContext)?
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
    let mut ends = HashMap::new();
    for p in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(dlq, *p, timeout)
            .with_context(|| format!("reading the end of {dlq}/{p}"))?;
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
    let mut last_progress = Instant::now();
    while !ends.is_empty() {
        let message = match consumer.poll(Duration::from_millis(500)) {
            None => {
                if last_progress.elapsed() > READ_IDLE_TIMEOUT {
                    anyhow::bail!("timed out reading {dlq}: nothing for {} s", READ_IDLE_TIMEOUT.as_secs());
                }
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                ends.remove(&p);
                continue;
            }
            Some(Err(e)) => return Err(e).with_context(|| format!("reading {dlq}")),
            Some(Ok(message)) => message,
        };
        last_progress = Instant::now();
        let p = message.partition();
        let Some(end) = ends.get(&p).copied() else {
            continue;
        };
        if message.offset() + 1 >= end {
            ends.remove(&p);
        }
        if message.offset() >= end {
            continue;
        }
        scanned += 1;
        let letter = DeadLetter {
            partition: p,
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers: crate::kafka::owned_headers(&message),
        };
        if filter.matches(&letter) {
            selected.push(letter);
        }
    }
    Ok((scanned, selected))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(headers: &[(&str, &str)]) -> DeadLetter {
        DeadLetter {
            partition: 2,
            offset: 41,
            timestamp: Some(1_795_255_200_000),
            key: Some(b"lead-1".to_vec()),
            value: Some(b"not avro".to_vec()),
            headers: headers
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
                .collect(),
        }
    }

    fn processor_letter() -> DeadLetter {
        letter(&[
            ("traceparent", "00-abc-def-01"),
            (EVENT_ID_HEADER, "evt-1"),
            (dlq_headers::REASON, "Cannot decode the raw event: not Avro"),
            (dlq_headers::STAGE, "normalize"),
            (dlq_headers::TOPIC, "nectar.raw.webhooks"),
            (dlq_headers::PARTITION, "0"),
            (dlq_headers::OFFSET, "7"),
        ])
    }

    #[test]
    fn times_are_rfc3339_or_ages() {
        assert_eq!(parse_time("2026-11-21T10:00:00Z").unwrap(), 1_795_255_200_000);
        let two_hours_ago = parse_time("2h").unwrap();
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        assert!((now - two_hours_ago - 7_200_000).abs() < 5_000);
        assert!(parse_time("yesterday-ish").is_err());
    }

    #[test]
    fn a_processor_dead_letter_goes_back_to_its_origin_topic() {
        let to = Destination::choose(None, Destination::Origin);
        assert_eq!(
            to.of("nectar.dlq.normalize", &processor_letter()),
            Ok("nectar.raw.webhooks".to_owned())
        );
    }

    #[test]
    fn to_overrides_the_default_destination() {
        for default in [Destination::Origin, Destination::Topic("nectar.deliver.slack".into())] {
            let to = Destination::choose(Some("elsewhere"), default);
            assert_eq!(to.of("dlq", &processor_letter()), Ok("elsewhere".to_owned()));
            assert_eq!(to.of("dlq", &letter(&[])), Ok("elsewhere".to_owned()));
        }
    }

    #[test]
    fn a_sink_dead_letter_goes_to_the_delivery_topic() {
        let to = Destination::choose(None, Destination::Topic("nectar.deliver.slack".into()));
        assert_eq!(
            to.of("nectar.dlq.sink-slack", &letter(&[])),
            Ok("nectar.deliver.slack".to_owned())
        );
    }

    #[test]
    fn a_dead_letter_without_origin_is_an_error_naming_its_position() {
        let no_origin = letter(&[(dlq_headers::REASON, "why")]);
        let empty_origin = letter(&[(dlq_headers::TOPIC, "")]);
        for l in [&no_origin, &empty_origin] {
            let err = Destination::Origin
                .of("nectar.dlq.enrich", l)
                .expect_err("no destination");
            assert!(err.contains("nectar.dlq.enrich/2/41"), "{err}");
            assert!(err.contains("--to"), "{err}");
        }
        let err = plan(
            "nectar.dlq.enrich",
            &Destination::Origin,
            vec![processor_letter(), no_origin.clone()],
        )
        .expect_err("the whole replay is refused");
        assert!(err.to_string().contains("nothing was replayed"), "{err}");
        assert!(err.to_string().contains("nectar.dlq.enrich/2/41"), "{err}");
        let planned = plan("nectar.dlq.enrich", &Destination::Origin, vec![processor_letter()]).unwrap();
        assert_eq!(planned[0].0, "nectar.raw.webhooks");
    }

    #[test]
    fn replayed_headers_drop_the_dead_letter_ones_and_say_where_from() {
        let mut l = processor_letter();
        l.headers.push((REPLAYED_FROM.to_owned(), b"old/0/1".to_vec()));
        let headers = l.replayed_headers("nectar.dlq.normalize");
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(names, ["traceparent", EVENT_ID_HEADER, REPLAYED_FROM]);
        assert_eq!(headers[2].1, b"nectar.dlq.normalize/2/41");
        assert_eq!(headers[0].1, b"00-abc-def-01");
    }

    #[test]
    fn filters_must_all_match() {
        let l = processor_letter();
        let all = Filter::default();
        assert!(all.matches(&l));
        let f = |f: Filter| f.matches(&l);
        assert!(f(Filter {
            since: Some(1_795_255_200_000),
            until: Some(1_795_255_200_001),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            since: Some(1_795_255_200_001),
            ..Filter::default()
        }));
        assert!(!f(Filter {
            until: Some(1_795_255_200_000),
            ..Filter::default()
        }));
        let by_args = |args: ReplayArgs| Filter::from_args(&args).unwrap().matches(&l);
        assert!(by_args(ReplayArgs {
            reason: Some("CANNOT DECODE".into()),
            ..ReplayArgs::default()
        }));
        assert!(!by_args(ReplayArgs {
            reason: Some("missing field".into()),
            ..ReplayArgs::default()
        }));
        assert!(by_args(ReplayArgs {
            event_ids: vec!["evt-0".into(), "evt-1".into()],
            ..ReplayArgs::default()
        }));
        assert!(!by_args(ReplayArgs {
            event_ids: vec!["evt-0".into()],
            ..ReplayArgs::default()
        }));
        assert!(by_args(ReplayArgs {
            origin: Some("nectar.raw.webhooks".into()),
            reason: Some("decode".into()),
            ..ReplayArgs::default()
        }));
        assert!(!by_args(ReplayArgs {
            origin: Some("nectar.raw.forms".into()),
            reason: Some("decode".into()),
            ..ReplayArgs::default()
        }));
        // A dead letter without an origin or an event id matches no filter on them.
        let bare = letter(&[]);
        assert!(
            !Filter {
                origin: Some("nectar.raw.forms".into()),
                ..Filter::default()
            }
            .matches(&bare)
        );
        assert!(
            !Filter {
                event_ids: vec![String::new()],
                ..Filter::default()
            }
            .matches(&bare)
        );
        assert!(
            Filter::from_args(&ReplayArgs {
                since: Some("soon".into()),
                ..ReplayArgs::default()
            })
            .is_err()
        );
    }

    #[test]
    fn dry_run_lines_name_position_origin_event_and_reason() {
        assert_eq!(
            processor_letter().summary(),
            "2/41\tnectar.raw.webhooks\tevt-1\tCannot decode the raw event: not Avro"
        );
        assert_eq!(letter(&[]).summary(), "2/41\t-\t-\t-");
    }
}

//! `nectar-normalize`: raw forms, app events and vendor webhooks in, canonical
//! `io.nectar.Event`s out, exactly once (see `nectar_core::processor`), each event id once
//! within the de-duplication window (see `nectar_normalize::dedup`).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nectar_core::config::{RawTopics, Validate};
use nectar_core::events::{
    AppEvent, EVENT_ID_ORIGIN_HEADER, Envelope, Event, FormSubmitted, ID_GENERATED, SeenEvent, WebhookReceived,
};
use nectar_core::processor::{
    InputRecord, LoopSettings, Output, ProcessError, Processor, codec_error, duplicate_source, duplicates_counter,
    event_output,
};
use nectar_core::schema::{self, Codec};
use nectar_core::service::{Binary, ProcessorServiceConfig};
use nectar_core::state::Changelog;
use nectar_normalize::dedup::{self, Change, DedupConfig, Forgotten, PartitionStore, Seen};
use nectar_normalize::{NormalizeConfig, Normalizer};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use serde::Deserialize;

/// normalize allocates with mimalloc: it builds a few small strings per field of every raw
/// record, and glibc's malloc and free were the largest single cost of its loop thread
/// (perf: 15%). Draining 100,000 forms: 30,500-31,500 -> 36,000-41,000 events/s, CPU
/// 2.1-2.8 -> 1.3-1.6 s. Not for every binary: the others gained nothing measurable and
/// mimalloc keeps more memory (enrich's peak RSS 90 -> 120 MiB).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULTS: &str = include_str!("../default.toml");

/// normalize's own sections.
#[derive(Debug, Deserialize)]
struct Own {
    topics: RawTopics,
    output: OutputConfig,
    dedup: DedupConfig,
    #[serde(default)]
    normalize: NormalizeConfig,
}

type Config = ProcessorServiceConfig<Own>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputConfig {
    /// Where canonical events go.
    topic: String,
}

impl Validate for Own {
    fn validate(&self, errors: &mut Vec<String>) {
        self.dedup.validate(errors);
        if let Err(e) = Normalizer::new(&self.normalize) {
            errors.push(format!("normalize: {e}"));
        }
    }
}

/// A raw record, decoded by its topic.
enum Raw {
    Form(FormSubmitted),
    App(AppEvent),
    Webhook(WebhookReceived),
}

impl Raw {
    fn envelope(&self) -> &Envelope {
        match self {
            Self::Form(r) => &r.envelope,
            Self::App(r) => &r.envelope,
            Self::Webhook(r) => &r.envelope,
        }
    }
}

/// The processor: decode by input topic, map, drop ids passed on before, encode.
struct Normalize {
    normalizer: Normalizer,
    codec: Arc<Codec>,
    topics: RawTopics,
    output: String,
    dedup: Option<Dedup>,
}

impl Normalize {
    async fn decode<T: serde::de::DeserializeOwned>(&self, record: &InputRecord) -> Result<T, ProcessError> {
        let payload = record
            .payload
            .as_deref()
            .ok_or_else(|| ProcessError::Reject("the record has no value".into()))?;
        self.codec
            .decode(payload)
            .await
            .map_err(|e| codec_error("cannot decode the raw event", e))
    }

    async fn decode_raw(&self, record: &InputRecord) -> Result<Raw, ProcessError> {
        if record.topic == self.topics.forms {
            Ok(Raw::Form(self.decode(record).await?))
        } else if record.topic == self.topics.apps {
            Ok(Raw::App(self.decode(record).await?))
        } else if record.topic == self.topics.webhooks {
            Ok(Raw::Webhook(self.decode(record).await?))
        } else {
            Err(ProcessError::Reject(format!("unexpected input topic {}", record.topic)))
        }
    }

    async fn encode(&self, event: &Event, record: &InputRecord) -> Result<Output, ProcessError> {
        let key = event.envelope.lead_key.as_deref().unwrap_or(&event.envelope.event_id);
        event_output(&self.codec, &self.output, event, Some(key.as_bytes().to_vec()), record).await
    }
}

impl Processor for Normalize {
    async fn process(&mut self, record: &InputRecord) -> Result<Vec<Output>, ProcessError> {
        let raw = self.decode_raw(record).await?;
        let events = match &raw {
            Raw::Form(r) => self.normalizer.form(r),
            Raw::App(r) => self.normalizer.app(r),
            Raw::Webhook(r) => self.normalizer.webhook(r),
        }
        .map_err(|reject| ProcessError::Reject(reject.to_string()))?;
        if events.is_empty() {
            // Nothing to pass on, so nothing to remember.
            return Ok(vec![]);
        }
        let mut outputs = Vec::with_capacity(events.len() + 1);
        for event in &events {
            outputs.push(self.encode(event, record).await?);
        }
        // Last, once nothing can reject the record: the store changes only for records whose
        // outputs are written.
        if let Some(dedup) = &mut self.dedup
            && dedup.may_recur(record)
        {
            let envelope = raw.envelope();
            let (seen, changes) = dedup.observe(record.partition, envelope);
            let mut changelog = dedup.changelog_records(record.partition, changes);
            if seen == Seen::Duplicate {
                dedup
                    .duplicates
                    .with_label_values(&[&duplicate_source(&envelope.source)])
                    .inc();
                tracing::debug!(event_id = envelope.event_id, "event id passed on before; dropped");
                return Ok(changelog);
            }
            changelog.append(&mut outputs);
            return Ok(changelog);
        }
        Ok(outputs)
    }

    fn on_assigned(&mut self, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        match &mut self.dedup {
            Some(dedup) => dedup.restore(&self.codec, partitions),
            None => Ok(()),
        }
    }

    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        if let Some(dedup) = &mut self.dedup {
            for (_, partition) in partitions {
                if dedup.stores.remove(partition).is_some() {
                    let _ = dedup.ids.remove_label_values(&[&partition.to_string()]);
                }
            }
        }
    }

    fn on_aborted(&mut self) {
        if let Some(dedup) = &mut self.dedup {
            dedup.stores.values_mut().for_each(PartitionStore::abort);
            dedup.update_gauges();
        }
    }

    fn on_committed(&mut self) {
        if let Some(dedup) = &mut self.dedup {
            dedup.stores.values_mut().for_each(PartitionStore::commit);
            dedup.update_gauges();
        }
    }
}

/// The de-duplication stores of the assigned partitions, their changelog and metrics.
struct Dedup {
    config: DedupConfig,
    changelog: Changelog,
    /// Registry id of the `io.nectar.SeenEvent` schema this version writes: values are
    /// written with it (`dedup::encode_seen`) and read back without the registry on a rebuild
    /// (`dedup::decode_seen`).
    seen_schema_id: u32,
    runtime: tokio::runtime::Handle,
    /// Per raw partition number: the three raw topics are co-partitioned, so partition p of
    /// each belongs to the same instance and shares one store (event ids never collide across
    /// sources: they are scoped by source).
    stores: HashMap<i32, PartitionStore>,
    duplicates: IntCounterVec,
    forgotten: IntCounterVec,
    ids: IntGaugeVec,
    last_eviction_log: Option<Instant>,
    evicted_since_log: u64,
}

impl Dedup {
    fn new(
        config: DedupConfig,
        changelog: Changelog,
        seen_schema_id: u32,
        registry: &Registry,
        runtime: tokio::runtime::Handle,
    ) -> prometheus::Result<Self> {
        let forgotten = IntCounterVec::new(
            Opts::new(
                "nectar_normalize_dedup_forgotten_total",
                "Event ids forgotten by the de-duplication store: expired (the window passed) or \
                 evicted (max_ids_per_partition reached)",
            ),
            &["reason"],
        )?;
        let ids = IntGaugeVec::new(
            Opts::new(
                "nectar_normalize_dedup_ids",
                "Event ids the de-duplication store holds, per raw partition",
            ),
            &["partition"],
        )?;
        registry.register(Box::new(forgotten.clone()))?;
        registry.register(Box::new(ids.clone()))?;
        Ok(Self {
            config,
            changelog,
            seen_schema_id,
            runtime,
            stores: HashMap::new(),
            duplicates: duplicates_counter(registry, "normalize")?,
            forgotten,
            ids,
            last_eviction_log: None,
            evicted_since_log: 0,
        })
    }

    /// Whether the record's event id can come again: not when its producer generated it.
    fn may_recur(&self, record: &InputRecord) -> bool {
        record.header(EVENT_ID_ORIGIN_HEADER) != Some(ID_GENERATED.as_bytes())
    }

    fn observe(&mut self, partition: i32, envelope: &Envelope) -> (Seen, Vec<Change>) {
        let mut changes = Vec::new();
        let store = self
            .stores
            .entry(partition)
            .or_insert_with(|| PartitionStore::new(&self.config));
        let seen = store.observe(&envelope.event_id, envelope.received_at, &mut changes);
        let mut evicted = 0;
        for change in &changes {
            if let Change::Forget { why, .. } = change {
                let reason = match why {
                    Forgotten::Expired => "expired",
                    Forgotten::Evicted => {
                        evicted += 1;
                        "evicted"
                    }
                };
                self.forgotten.with_label_values(&[reason]).inc();
            }
        }
        if evicted > 0 {
            self.evicted_since_log += evicted;
            if self
                .last_eviction_log
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                tracing::warn!(
                    partition,
                    evicted = self.evicted_since_log,
                    max_ids_per_partition = self.config.max_ids_per_partition,
                    "the de-duplication store is full: the oldest event ids were forgotten before \
                     the window passed (raise dedup.max_ids_per_partition or shorten dedup.window_secs)"
                );
                self.last_eviction_log = Some(Instant::now());
                self.evicted_since_log = 0;
            }
        }
        (seen, changes)
    }

    /// The changelog records of `changes` for raw partition `partition`.
    fn changelog_records(&self, partition: i32, changes: Vec<Change>) -> Vec<Output> {
        changes
            .into_iter()
            .map(|change| match change {
                Change::Remember { key, received_at } => self.changelog.put(
                    partition,
                    dedup::key_bytes(key),
                    dedup::encode_seen(received_at, self.seen_schema_id),
                ),
                Change::Forget { key, .. } => self.changelog.tombstone(partition, dedup::key_bytes(key)),
            })
            .collect()
    }

    /// Rebuild the store of every newly assigned partition number from the changelog.
    fn restore(&mut self, codec: &Codec, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        let mut numbers: Vec<i32> = partitions.iter().map(|(_, p)| *p).collect();
        numbers.sort_unstable();
        numbers.dedup();
        for partition in numbers {
            if self.stores.contains_key(&partition) {
                continue;
            }
            let started = Instant::now();
            let mut store = PartitionStore::new(&self.config);
            let records = self.changelog.restore(partition, |key, value| {
                let Some(key) = dedup::parse_key(key) else {
                    tracing::warn!(partition, "skipping a changelog record whose key is not an event id");
                    return Ok(());
                };
                let received_at = match value {
                    None => None,
                    Some(bytes) if let Some(at) = dedup::decode_seen(bytes, self.seen_schema_id) => Some(at),
                    Some(bytes) => {
                        let seen: SeenEvent = self
                            .runtime
                            .block_on(codec.decode(bytes))
                            .map_err(|e| codec_error("decoding the de-duplication changelog", e))?;
                        Some(seen.received_at)
                    }
                };
                store.restore(key, received_at);
                Ok(())
            })?;
            tracing::info!(
                partition,
                ids = store.len(),
                records,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "rebuilt the de-duplication store from the changelog"
            );
            self.stores.insert(partition, store);
        }
        self.update_gauges();
        Ok(())
    }

    fn update_gauges(&self) {
        for (partition, store) in &self.stores {
            self.ids
                .with_label_values(&[&partition.to_string()])
                .set(i64::try_from(store.len()).unwrap_or(i64::MAX));
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let binary = Binary {
        name: "nectar-normalize",
        about: "Raw events in, canonical events out, exactly once.",
        defaults: DEFAULTS,
    };
    nectar_core::service::processor_main(binary, run).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let codec = Arc::new(Codec::new(&config.schema_registry)?);
    if config.schema_registry.auto_register {
        codec
            .register(&config.own.output.topic, &schema::EVENT)
            .await
            .map_err(|e| anyhow::anyhow!("registering {}: {e}", schema::EVENT.name))?;
    }
    let normalizer = Normalizer::new(&config.own.normalize).map_err(anyhow::Error::msg)?;
    let inputs = vec![
        config.own.topics.forms.clone(),
        config.own.topics.webhooks.clone(),
        config.own.topics.apps.clone(),
    ];
    let registry = Registry::new();
    let dedup = if config.own.dedup.enabled {
        // The id this version's values carry: registering answers it; without registration,
        // encoding a sample looks it up.
        let seen_schema_id = if config.schema_registry.auto_register {
            codec
                .register(&config.own.dedup.changelog, &schema::SEEN_EVENT)
                .await
                .map_err(|e| anyhow::anyhow!("registering {}: {e}", schema::SEEN_EVENT.name))?
        } else {
            let sample = codec
                .encode(
                    &config.own.dedup.changelog,
                    &schema::SEEN_EVENT,
                    &SeenEvent { received_at: 0 },
                )
                .await
                .map_err(|e| anyhow::anyhow!("looking up {} in the registry: {e}", schema::SEEN_EVENT.name))?;
            schema::split_frame(&sample)?.0
        };
        let changelog = Changelog::new(&config.kafka, &config.own.dedup.changelog, "normalize");
        let (check, check_inputs) = (changelog.clone(), inputs.clone());
        tokio::task::spawn_blocking(move || check.check_partitions(&check_inputs, Duration::from_secs(10)))
            .await?
            .map_err(|e| anyhow::anyhow!("dedup: {e}"))?;
        Some(Dedup::new(
            config.own.dedup,
            changelog,
            seen_schema_id,
            &registry,
            tokio::runtime::Handle::current(),
        )?)
    } else {
        None
    };
    let processor = Normalize {
        normalizer,
        codec,
        topics: config.own.topics,
        output: config.own.output.topic,
        dedup,
    };
    let settings = LoopSettings {
        name: "normalize".into(),
        kafka: config.kafka,
        processor: config.processor,
        inputs,
    };
    nectar_core::processor::run_service(settings, config.admin.listen, processor, registry).await
}

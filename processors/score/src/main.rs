//! `nectar-score`: enriched events in, scored events out, per-lead state in a local store
//! whose every change goes to the compacted changelog in the same transaction.
//!
//! The store of input partition p is rebuilt from changelog partition p when p is assigned,
//! before any of its records is processed, so state follows partitions between instances.
//! Changes of an aborted transaction are undone from an undo log; the changelog never holds
//! them, because it is written in the transaction.

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use nectar_core::config::Validate;
use nectar_core::events::{Event, LeadState};
use nectar_core::ids;
use nectar_core::processor::{
    InputRecord, LoopSettings, Output, ProcessError, Processor, codec_error, duplicate_source, duplicates_counter,
    event_output,
};
use nectar_core::schema::{self, Codec};
use nectar_core::service::{Binary, ProcessorServiceConfig};
use nectar_core::state::Changelog;
use nectar_score::{STAGE_CHANGED, ScoreModel, ScoreRules};
use prometheus::IntCounterVec;
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../default.toml");

/// score's own sections.
#[derive(Debug, Deserialize)]
struct Own {
    topics: Topics,
    score: ScoreRules,
}

type Config = ProcessorServiceConfig<Own>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Topics {
    input: String,
    output: String,
    changelog: String,
}

impl Validate for Own {
    fn validate(&self, errors: &mut Vec<String>) {
        self.score.validate(errors);
    }
}

struct Score {
    model: ScoreModel,
    codec: Arc<Codec>,
    topics: Topics,
    changelog: Changelog,
    duplicates: IntCounterVec,
    runtime: tokio::runtime::Handle,
    /// Lead states per input partition.
    stores: HashMap<i32, HashMap<String, LeadState>>,
    /// Previous values of the keys changed in the open transaction.
    undo: Vec<(i32, String, Option<LeadState>)>,
}

impl Score {
    fn remember(&mut self, partition: i32, key: &str) {
        let previous = self.stores.get(&partition).and_then(|s| s.get(key)).cloned();
        self.undo.push((partition, key.to_owned(), previous));
    }

    async fn changelog_output(
        &self,
        partition: i32,
        key: &str,
        state: Option<&LeadState>,
    ) -> Result<Output, ProcessError> {
        let key = key.as_bytes().to_vec();
        Ok(match state {
            Some(state) => {
                let value = self
                    .codec
                    .encode(self.changelog.topic(), &schema::LEAD_STATE, state)
                    .await
                    .map_err(|e| codec_error("encoding the lead state", e))?;
                self.changelog.put(partition, key, value)
            }
            None => self.changelog.tombstone(partition, key),
        })
    }

    async fn event_output(&self, event: &Event, record: &InputRecord) -> Result<Output, ProcessError> {
        event_output(&self.codec, &self.topics.output, event, record.key.clone(), record).await
    }

    /// Read changelog partition `partition` to its end into a fresh store.
    fn rebuild(&self, partition: i32) -> Result<HashMap<String, LeadState>, ProcessError> {
        let mut store = HashMap::new();
        self.changelog.restore(partition, |key, value| {
            let key = String::from_utf8_lossy(key).into_owned();
            match value {
                None => {
                    store.remove(&key);
                }
                Some(bytes) => {
                    let state: LeadState = self
                        .runtime
                        .block_on(self.codec.decode(bytes))
                        .map_err(|e| codec_error("decoding the changelog", e))?;
                    store.insert(key, state);
                }
            }
            Ok(())
        })?;
        tracing::info!(
            partition,
            leads = store.len(),
            "rebuilt the score store from the changelog"
        );
        Ok(store)
    }
}

impl Processor for Score {
    async fn process(&mut self, record: &InputRecord) -> Result<Vec<Output>, ProcessError> {
        let payload = record
            .payload
            .as_deref()
            .ok_or_else(|| ProcessError::Reject("the record has no value".into()))?;
        let mut event: Event = self
            .codec
            .decode(payload)
            .await
            .map_err(|e| codec_error("cannot decode the event", e))?;
        let Some(lead_key) = event.envelope.lead_key.clone() else {
            // Nobody to score: pass through.
            return Ok(vec![self.event_output(&event, record).await?]);
        };
        let partition = record.partition;
        self.remember(partition, &lead_key);
        if event.is_erasure() {
            self.stores.entry(partition).or_default().remove(&lead_key);
            let tombstone = self.changelog_output(partition, &lead_key, None).await?;
            return Ok(vec![tombstone, self.event_output(&event, record).await?]);
        }
        let previous = self.stores.get(&partition).and_then(|s| s.get(&lead_key));
        if ScoreModel::already_applied(previous, &event) {
            self.duplicates
                .with_label_values(&[&duplicate_source(&event.envelope.source)])
                .inc();
            tracing::debug!(event_id = event.envelope.event_id, "event applied already; dropped");
            return Ok(vec![]);
        }
        let applied = self.model.apply(previous, &event, &lead_key);
        let changelog = self
            .changelog_output(partition, &lead_key, Some(&applied.state))
            .await?;
        self.stores
            .entry(partition)
            .or_default()
            .insert(lead_key.clone(), applied.state);
        event.score = Some(applied.score.clone());
        let mut outputs = vec![changelog, self.event_output(&event, record).await?];
        if let Some(stage) = &applied.score.crossed {
            let mut lifecycle = event.clone();
            lifecycle.envelope.event_id = ids::derived_event_id(
                &event.envelope.workspace_id,
                "score",
                &format!("{}#stage", event.envelope.event_id),
            );
            lifecycle.envelope.event_type = STAGE_CHANGED.into();
            lifecycle.attributes = HashMap::from([
                ("stage".to_owned(), stage.clone()),
                ("cause_event_id".to_owned(), event.envelope.event_id.clone()),
            ]);
            outputs.push(self.event_output(&lifecycle, record).await?);
        }
        Ok(outputs)
    }

    fn on_assigned(&mut self, partitions: &[(String, i32)]) -> Result<(), ProcessError> {
        for (_, partition) in partitions {
            let store = self.rebuild(*partition)?;
            self.stores.insert(*partition, store);
        }
        Ok(())
    }

    fn on_revoked(&mut self, partitions: &[(String, i32)]) {
        for (_, partition) in partitions {
            self.stores.remove(partition);
        }
    }

    fn on_aborted(&mut self) {
        while let Some((partition, key, previous)) = self.undo.pop() {
            let store = self.stores.entry(partition).or_default();
            match previous {
                Some(state) => store.insert(key, state),
                None => store.remove(&key),
            };
        }
    }

    fn on_committed(&mut self) {
        self.undo.clear();
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let binary = Binary {
        name: "nectar-score",
        about: "Scores leads exactly once, with state in a compacted changelog.",
        defaults: DEFAULTS,
    };
    nectar_core::service::processor_main(binary, run).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let codec = Arc::new(Codec::new(&config.schema_registry)?);
    if config.schema_registry.auto_register {
        codec
            .register(&config.own.topics.output, &schema::EVENT)
            .await
            .map_err(|e| anyhow::anyhow!("registering the event schema: {e}"))?;
        codec
            .register(&config.own.topics.changelog, &schema::LEAD_STATE)
            .await
            .map_err(|e| anyhow::anyhow!("registering the lead state schema: {e}"))?;
    }
    let inputs = vec![config.own.topics.input.clone()];
    let changelog = Changelog::new(&config.kafka, &config.own.topics.changelog, "score");
    let check = changelog.clone();
    let check_inputs = inputs.clone();
    tokio::task::spawn_blocking(move || check.check_partitions(&check_inputs, Duration::from_secs(10))).await??;
    let registry = prometheus::Registry::new();
    let processor = Score {
        model: ScoreModel::new(config.own.score),
        codec,
        topics: config.own.topics,
        changelog,
        duplicates: duplicates_counter(&registry, "score")?,
        runtime: tokio::runtime::Handle::current(),
        stores: HashMap::new(),
        undo: Vec::new(),
    };
    let settings = LoopSettings {
        name: "score".into(),
        kafka: config.kafka,
        processor: config.processor,
        inputs,
    };
    nectar_core::processor::run_service(settings, config.admin.listen, processor, registry).await
}

//! `nectar-enrich`: canonical events in, events with their `enrichment` section filled out,
//! exactly once for what it writes to Kafka. The optional external API may be called again
//! for an event replayed after a crash (its answers are cached); that is the one side effect
//! outside the transaction.

use std::process::ExitCode;
use std::sync::Arc;

use nectar_core::config::Validate;
use nectar_core::events::Event;
use nectar_core::processor::{InputRecord, LoopSettings, Output, ProcessError, Processor, codec_error, event_output};
use nectar_core::schema::{self, Codec};
use nectar_core::service::{Binary, ProcessorServiceConfig};
use nectar_enrich::{EnrichConfig, Enricher};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../default.toml");

/// enrich's own sections.
#[derive(Debug, Deserialize)]
struct Own {
    topics: Topics,
    #[serde(default)]
    enrich: EnrichConfig,
}

type Config = ProcessorServiceConfig<Own>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Topics {
    input: String,
    output: String,
}

impl Validate for Own {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Err(e) = Enricher::new(&self.enrich) {
            errors.push(format!("enrich: {e}"));
        }
    }
}

struct Enrich {
    enricher: Enricher,
    codec: Arc<Codec>,
    output: String,
}

impl Processor for Enrich {
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
        self.enricher.enrich(&mut event).await;
        Ok(vec![
            event_output(&self.codec, &self.output, &event, record.key.clone(), record).await?,
        ])
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let binary = Binary {
        name: "nectar-enrich",
        about: "Adds derived facts to canonical events, exactly once.",
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
    }
    let enricher = Enricher::new(&config.own.enrich).map_err(anyhow::Error::msg)?;
    let processor = Enrich {
        enricher,
        codec,
        output: config.own.topics.output,
    };
    let settings = LoopSettings {
        name: "enrich".into(),
        kafka: config.kafka,
        processor: config.processor,
        inputs: vec![config.own.topics.input],
    };
    nectar_core::processor::run_service(settings, config.admin.listen, processor, prometheus::Registry::new()).await
}

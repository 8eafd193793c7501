//! `nectar-normalize`: raw forms, app events and vendor webhooks in, canonical
//! `io.nectar.Event`s out, exactly once (see `nectar_core::processor`).

use std::process::ExitCode;
use std::sync::Arc;

use nectar_core::config::{AdminConfig, KafkaConfig, LogConfig, RawTopics, RegistryConfig, Validate};
use nectar_core::events::{AppEvent, Event, FormSubmitted, WebhookReceived};
use nectar_core::processor::{
    InputRecord, LoopSettings, Output, ProcessError, Processor, ProcessorConfig, codec_error, event_output,
};
use nectar_core::schema::{self, Codec};
use nectar_core::service::{Binary, ProcessorServiceConfig};
use nectar_normalize::{NormalizeConfig, Normalizer};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../default.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    kafka: KafkaConfig,
    schema_registry: RegistryConfig,
    admin: AdminConfig,
    #[serde(default)]
    log: LogConfig,
    processor: ProcessorConfig,
    topics: RawTopics,
    output: OutputConfig,
    #[serde(default)]
    normalize: NormalizeConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OutputConfig {
    /// Where canonical events go.
    topic: String,
}

impl nectar_core::service::ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl ProcessorServiceConfig for Config {
    fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }
    fn processor(&self) -> &ProcessorConfig {
        &self.processor
    }
}

impl Validate for Config {
    fn validate(&self, errors: &mut Vec<String>) {
        self.kafka.validate(errors);
        self.schema_registry.validate(errors);
        self.log.validate(errors);
        self.processor.validate(errors);
        if let Err(e) = Normalizer::new(&self.normalize) {
            errors.push(format!("normalize: {e}"));
        }
    }
}

/// The processor: decode by input topic, map, encode.
struct Normalize {
    normalizer: Normalizer,
    codec: Arc<Codec>,
    topics: RawTopics,
    output: String,
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

    async fn encode(&self, event: &Event, record: &InputRecord) -> Result<Output, ProcessError> {
        let key = event.envelope.lead_key.as_deref().unwrap_or(&event.envelope.event_id);
        event_output(&self.codec, &self.output, event, Some(key.as_bytes().to_vec()), record).await
    }
}

impl Processor for Normalize {
    async fn process(&mut self, record: &InputRecord) -> Result<Vec<Output>, ProcessError> {
        let events = if record.topic == self.topics.forms {
            let raw: FormSubmitted = self.decode(record).await?;
            self.normalizer.form(&raw)
        } else if record.topic == self.topics.apps {
            let raw: AppEvent = self.decode(record).await?;
            self.normalizer.app(&raw)
        } else if record.topic == self.topics.webhooks {
            let raw: WebhookReceived = self.decode(record).await?;
            self.normalizer.webhook(&raw)
        } else {
            return Err(ProcessError::Reject(format!("unexpected input topic {}", record.topic)));
        }
        .map_err(|reject| ProcessError::Reject(reject.to_string()))?;
        let mut outputs = Vec::with_capacity(events.len());
        for event in &events {
            outputs.push(self.encode(event, record).await?);
        }
        Ok(outputs)
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
            .register(&config.output.topic, &schema::EVENT)
            .await
            .map_err(|e| anyhow::anyhow!("registering {}: {e}", schema::EVENT.name))?;
    }
    let normalizer = Normalizer::new(&config.normalize).map_err(anyhow::Error::msg)?;
    let inputs = vec![
        config.topics.forms.clone(),
        config.topics.webhooks.clone(),
        config.topics.apps.clone(),
    ];
    let processor = Normalize {
        normalizer,
        codec,
        topics: config.topics,
        output: config.output.topic,
    };
    let settings = LoopSettings {
        name: "normalize".into(),
        kafka: config.kafka,
        processor: config.processor,
        inputs,
    };
    nectar_core::processor::run_service(settings, config.admin.listen, processor, prometheus::Registry::new()).await
}

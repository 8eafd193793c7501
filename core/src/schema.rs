//! The Avro contracts and the codec that speaks Confluent's wire format through the registry.
//!
//! The `.avsc` files in `schemas/avro/` are the source of truth and are compiled into every
//! binary. Event schemas refer to the shared `io.nectar.Envelope` by name; before a schema is
//! registered or used, that reference is replaced by the envelope's definition, so what the
//! registry holds is self-contained and any Confluent-compatible client can read it without
//! schema references. Subjects follow TopicNameStrategy: `<topic>-value`.
//!
//! Values are `[0x00][schema id: u32 big-endian][Avro binary body]`.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use apache_avro::Schema;
use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use schema_registry_converter::async_impl::avro::{AvroDecoder, AvroEncoder};
use schema_registry_converter::async_impl::schema_registry::{SrSettings, get_all_subjects, post_schema};
use schema_registry_converter::error::SRCError;
use schema_registry_converter::schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value as Json;

use crate::config::RegistryConfig;

/// The shared envelope every event embeds.
pub const ENVELOPE_AVSC: &str = include_str!("../../schemas/avro/envelope.avsc");
const ENVELOPE_NAME: &str = "io.nectar.Envelope";

/// One event schema from `schemas/avro/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSchema {
    /// Full record name, e.g. `io.nectar.raw.FormSubmitted`.
    pub name: &'static str,
    /// File name in `schemas/avro/`.
    pub file: &'static str,
    /// The file's text, with the envelope still a reference.
    pub avsc: &'static str,
}

pub const FORM_SUBMITTED: EventSchema = EventSchema {
    name: "io.nectar.raw.FormSubmitted",
    file: "form_submitted.avsc",
    avsc: include_str!("../../schemas/avro/form_submitted.avsc"),
};
pub const WEBHOOK_RECEIVED: EventSchema = EventSchema {
    name: "io.nectar.raw.WebhookReceived",
    file: "webhook_received.avsc",
    avsc: include_str!("../../schemas/avro/webhook_received.avsc"),
};
pub const APP_EVENT: EventSchema = EventSchema {
    name: "io.nectar.raw.AppEvent",
    file: "app_event.avsc",
    avsc: include_str!("../../schemas/avro/app_event.avsc"),
};

pub const EVENT: EventSchema = EventSchema {
    name: "io.nectar.Event",
    file: "event.avsc",
    avsc: include_str!("../../schemas/avro/event.avsc"),
};

pub const LEAD_STATE: EventSchema = EventSchema {
    name: "io.nectar.LeadState",
    file: "lead_state.avsc",
    avsc: include_str!("../../schemas/avro/lead_state.avsc"),
};

pub const SEEN_EVENT: EventSchema = EventSchema {
    name: "io.nectar.SeenEvent",
    file: "seen_event.avsc",
    avsc: include_str!("../../schemas/avro/seen_event.avsc"),
};

/// Every schema, for registration and the compatibility test.
pub const ALL: &[EventSchema] = &[
    FORM_SUBMITTED,
    WEBHOOK_RECEIVED,
    APP_EVENT,
    EVENT,
    LEAD_STATE,
    SEEN_EVENT,
];

impl EventSchema {
    /// The self-contained schema JSON, envelope inlined.
    pub fn resolved_json(&self) -> Json {
        resolve(self.avsc, ENVELOPE_AVSC).unwrap_or_else(|e| panic!("{} is not valid: {e}", self.file))
    }

    /// The parsed schema.
    pub fn schema(&self) -> Schema {
        Schema::parse(&self.resolved_json()).unwrap_or_else(|e| panic!("{} is not valid Avro: {e}", self.file))
    }

    fn supplied(&self) -> SuppliedSchema {
        SuppliedSchema::new(
            Some(self.name.to_owned()),
            SchemaType::Avro,
            self.resolved_json().to_string(),
        )
    }
}

/// Inline the envelope definition into an event schema's text. Used on historical versions of
/// the files too, so it takes both as text.
pub fn resolve(event_avsc: &str, envelope_avsc: &str) -> Result<Json, String> {
    let mut event: Json = serde_json::from_str(event_avsc).map_err(|e| e.to_string())?;
    let envelope: Json = serde_json::from_str(envelope_avsc).map_err(|e| e.to_string())?;
    let mut inlined = false;
    inline_first(&mut event, ENVELOPE_NAME, &envelope, &mut inlined);
    Ok(event)
}

/// Replace the first use of `name` as a type with `definition` (Avro allows a named type to be
/// defined once; later uses stay references).
fn inline_first(node: &mut Json, name: &str, definition: &Json, done: &mut bool) {
    if *done {
        return;
    }
    match node {
        Json::String(s) if s == name => {
            *node = definition.clone();
            *done = true;
        }
        Json::Array(items) => items.iter_mut().for_each(|i| inline_first(i, name, definition, done)),
        Json::Object(map) => {
            // Only places that hold a type: `type`, `items`, `values`, and fields.
            for key in ["type", "items", "values", "fields"] {
                if let Some(v) = map.get_mut(key) {
                    inline_first(v, name, definition, done);
                }
            }
        }
        _ => {}
    }
}

/// Why a value could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The registry could not be reached or answered with a server error: try again later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// The registry refused the schema, or the value does not fit it.
    #[error("{0}")]
    Invalid(String),
}

/// A Confluent-framed value's schema id and the Avro datum after the frame (magic byte 0,
/// then the id as 4 bytes big-endian).
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8]), CodecError> {
    match bytes {
        [0, a, b, c, d, datum @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), datum)),
        _ => Err(CodecError::Invalid(
            "not in the Confluent wire format (magic byte 0 and a 4-byte schema id)".into(),
        )),
    }
}

impl From<SRCError> for CodecError {
    fn from(e: SRCError) -> Self {
        let text = match &e.cause {
            Some(cause) => format!("{}: {cause}", e.error),
            None => e.error.clone(),
        };
        if e.retriable {
            CodecError::Unavailable(text)
        } else {
            CodecError::Invalid(text)
        }
    }
}

/// Encodes and decodes Confluent-framed Avro through the registry, caching schema ids.
pub struct Codec {
    settings: SrSettings,
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    auto_register: bool,
    http: reqwest::Client,
    config: RegistryConfig,
    strategies: RwLock<HashMap<(String, &'static str), Arc<SubjectNameStrategy>>>,
    /// Per topic and schema, once the registry has given its id: the id and a writer for the
    /// registry's schema of that id, so later records are written straight from serde.
    /// By topic, then schema name: the lookup of every record allocates nothing.
    writers: RwLock<HashMap<String, HashMap<&'static str, KnownWriter>>>,
    /// Per writer schema id: a reader that deserializes straight into the caller's type.
    readers: RwLock<HashMap<u32, &'static GenericDatumReader<'static>>>,
}

/// A registry schema id and a writer for the registry's schema of that id.
type KnownWriter = (u32, &'static GenericDatumWriter<'static>);

/// A schema kept for the life of the process, so readers and writers can borrow it: one per
/// schema id the process meets (a handful), never freed. The Avro library's readers and
/// writers borrow their schema, and building one per record (resolving the schema's names)
/// cost as much as the record itself.
fn keep(schema: Schema) -> &'static Schema {
    Box::leak(Box::new(schema))
}

impl std::fmt::Debug for Codec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Codec")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl Codec {
    pub fn new(config: &RegistryConfig) -> anyhow::Result<Self> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let mut builder = SrSettings::new_builder(config.url.trim_end_matches('/').to_owned());
        builder.set_timeout(timeout).no_proxy();
        if let Some(user) = &config.username {
            builder.set_basic_authorization(user, config.password.as_ref().map(|p| p.expose().as_str()));
        }
        if let Some(token) = &config.bearer_token {
            builder.set_token_authorization(token.expose());
        }
        let settings = builder.build().map_err(|e| anyhow::anyhow!("schema_registry: {e}"))?;
        Ok(Self {
            encoder: AvroEncoder::new(settings.clone()),
            decoder: AvroDecoder::new(settings.clone()),
            settings,
            auto_register: config.auto_register,
            http: reqwest::Client::builder().timeout(timeout).build()?,
            config: config.clone(),
            strategies: RwLock::default(),
            writers: RwLock::default(),
            readers: RwLock::default(),
        })
    }

    /// The subject strategy of `schema` on `topic`, built once: resolving the schema text is
    /// JSON work far too heavy to repeat for every record encoded.
    fn strategy(&self, topic: &str, schema: &EventSchema) -> Arc<SubjectNameStrategy> {
        let key = (topic.to_owned(), schema.name);
        if let Some(strategy) = self.strategies.read().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return strategy.clone();
        }
        let strategy = Arc::new(if self.auto_register {
            SubjectNameStrategy::TopicNameStrategyWithSchema(topic.to_owned(), false, schema.supplied())
        } else {
            SubjectNameStrategy::TopicNameStrategy(topic.to_owned(), false)
        });
        self.strategies
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, strategy.clone());
        strategy
    }

    /// Register `schema` under `<topic>-value` with BACKWARD compatibility enforced by the
    /// registry, and return its id. Idempotent: the same schema gets the same id.
    pub async fn register(&self, topic: &str, schema: &EventSchema) -> Result<u32, CodecError> {
        let subject = format!("{topic}-value");
        self.set_compatibility(&subject, "BACKWARD").await?;
        let registered = post_schema(&self.settings, subject, schema.supplied()).await?;
        Ok(registered.id)
    }

    async fn set_compatibility(&self, subject: &str, level: &str) -> Result<(), CodecError> {
        match self.put_compatibility(subject, level).await {
            // Apicurio answers 409 when another instance created the subject's rule at the
            // same moment; the rule exists then, so set it once more to be sure of its level.
            Err(CodecError::Invalid(m)) if m.contains("409") => self.put_compatibility(subject, level).await,
            other => other,
        }
    }

    async fn put_compatibility(&self, subject: &str, level: &str) -> Result<(), CodecError> {
        let url = format!("{}/config/{subject}", self.config.url.trim_end_matches('/'));
        let mut request = self
            .http
            .put(url)
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(serde_json::json!({ "compatibility": level }).to_string());
        if let Some(user) = &self.config.username {
            request = request.basic_auth(user, self.config.password.as_ref().map(|p| p.expose()));
        }
        if let Some(token) = &self.config.bearer_token {
            request = request.bearer_auth(token.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| CodecError::Unavailable(e.to_string()))?;
        let status = response.status();
        if status.is_server_error() {
            return Err(CodecError::Unavailable(format!("PUT config/{subject}: {status}")));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(CodecError::Invalid(format!("PUT config/{subject}: {status} {body}")));
        }
        Ok(())
    }

    /// Encode `item` for `topic` in Confluent wire format.
    ///
    /// The first record of a topic and schema goes through the registry client (registering
    /// or looking up the subject's schema); its id and the registry's schema of that id are
    /// then kept, and later records are written with them directly: the client cloned the
    /// subject strategy, schema text included, for every record.
    pub async fn encode<T: Serialize>(
        &self,
        topic: &str,
        schema: &EventSchema,
        item: &T,
    ) -> Result<Vec<u8>, CodecError> {
        let known = self
            .writers
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .and_then(|by_schema| by_schema.get(schema.name))
            .copied();
        if let Some((id, writer)) = known {
            let mut bytes = Vec::with_capacity(512);
            bytes.push(0);
            bytes.extend_from_slice(&id.to_be_bytes());
            writer.write_ser(&mut bytes, item).map_err(|e| {
                CodecError::Invalid(format!("the value does not fit {} (schema {id}): {e}", schema.name))
            })?;
            return Ok(bytes);
        }
        let strategy = self.strategy(topic, schema);
        let result = self.encoder.encode_struct(item, &strategy).await;
        if result.as_ref().is_err_and(|e| e.cached) {
            // Do not keep a refusal forever: the registry may be fixed without a restart.
            self.encoder.remove_errors_from_cache();
        }
        let bytes = result?;
        let (id, _) = split_frame(&bytes)?;
        let writer = GenericDatumWriter::builder(keep(self.writer_schema(id).await?))
            .build()
            .map_err(|e| CodecError::Invalid(format!("schema {id}: {e}")))?;
        self.writers
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.to_owned())
            .or_default()
            .entry(schema.name)
            .or_insert((id, Box::leak(Box::new(writer))));
        Ok(bytes)
    }

    /// Decode a Confluent-framed value to an Avro value.
    pub async fn decode_value(&self, bytes: &[u8]) -> Result<apache_avro::types::Value, CodecError> {
        Ok(self.decoder.decode(Some(bytes)).await?.value)
    }

    /// The writer schema registered under `id`, self-contained (references resolved),
    /// fetched once and cached.
    pub async fn writer_schema(&self, id: u32) -> Result<Schema, CodecError> {
        Ok(self.decoder.get_schema(id).await?.parsed.clone())
    }

    /// Decode a Confluent-framed value into `T`, straight from the bytes with its writer
    /// schema (fields matched by name, as `from_value` of the decoded value would).
    pub async fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let (id, mut datum) = split_frame(bytes)?;
        let known = self.readers.read().unwrap_or_else(|e| e.into_inner()).get(&id).copied();
        let reader = match known {
            Some(reader) => reader,
            None => {
                let reader = GenericDatumReader::builder(keep(self.writer_schema(id).await?))
                    .build()
                    .map_err(|e| CodecError::Invalid(format!("schema {id}: {e}")))?;
                *self
                    .readers
                    .write()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(id)
                    .or_insert(Box::leak(Box::new(reader)))
            }
        };
        let value = reader
            .read_deser(&mut datum)
            .map_err(|e| CodecError::Invalid(e.to_string()))?;
        if !datum.is_empty() {
            return Err(CodecError::Invalid(format!(
                "{} bytes after the value its schema ({id}) describes",
                datum.len()
            )));
        }
        Ok(value)
    }

    /// Whether the registry answers.
    pub async fn probe(&self) -> Result<(), String> {
        get_all_subjects(&self.settings)
            .await
            .map(|_| ())
            .map_err(|e| format!("schema registry: {}", CodecError::from(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_schema_parses_with_the_envelope_inlined_once() {
        for schema in ALL {
            let json = schema.resolved_json().to_string();
            let expected = usize::from(schema.avsc.contains(ENVELOPE_NAME));
            assert_eq!(
                json.matches("\"name\":\"Envelope\"").count(),
                expected,
                "{}",
                schema.file
            );
            let parsed = schema.schema();
            assert_eq!(parsed.name().map(|n| n.fullname(None)), Some(schema.name.to_owned()));
        }
    }
}

//! The Nectar producer library: what the ingest service uses to write raw events, and what
//! existing Rust applications use to emit the same events without going through HTTP.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use nectar_core::config::{KafkaConfig, RawTopics, RegistryConfig};
//! use nectar_producer::{AppEventBuilder, NectarProducer};
//!
//! let producer = NectarProducer::new(&KafkaConfig::local(), &RegistryConfig::local(), RawTopics::default(), "billing-app")?;
//! let event = AppEventBuilder::new("acme", "billing-app", "trial.started")
//!     .email("ada@example.com")
//!     .idempotency_key("trial-42")
//!     .property("plan", "pro")
//!     .build();
//! let delivery = producer.send_app_event(&event).await?;
//! println!("{} at {}:{}", event.envelope.event_id, delivery.partition, delivery.offset);
//! # Ok(()) }
//! ```
//!
//! Guarantee: a send returns `Ok` only after every in-sync replica has the record (`acks=all`,
//! idempotent producer). A send that returns `Err` may or may not have been written; retrying
//! it with the same event id is safe because every downstream stage deduplicates by event id.

use std::sync::Arc;
use std::time::Duration;

use nectar_core::config::{KafkaConfig, RawTopics, RegistryConfig};
use nectar_core::events::{AppEvent, Consent, Envelope, FormSubmitted, WebhookReceived, now_millis};
use nectar_core::schema::{self, Codec, CodecError, EventSchema};
use nectar_core::{ids, kafka, trace};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde::Serialize;

pub use nectar_core::events::{EVENT_ID_HEADER, EVENT_ID_ORIGIN_HEADER, ID_DERIVED, ID_GENERATED};

/// Where a record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub partition: i32,
    pub offset: i64,
}

/// Why a send failed.
#[derive(Debug, thiserror::Error)]
pub enum ProduceError {
    /// Kafka or the schema registry cannot take the event now; the caller should retry.
    #[error("{0}")]
    Unavailable(String),
    /// The event does not fit its schema, or the registry refused the schema. Retrying the
    /// same event will not help.
    #[error("{0}")]
    Rejected(String),
}

impl From<CodecError> for ProduceError {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Unavailable(m) => ProduceError::Unavailable(m),
            CodecError::Invalid(m) => ProduceError::Rejected(m),
        }
    }
}

fn classify(e: &KafkaError) -> ProduceError {
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidRecord)
    );
    if permanent {
        ProduceError::Rejected(format!("kafka refused the record: {e}"))
    } else {
        ProduceError::Unavailable(format!("kafka did not acknowledge the record: {e}"))
    }
}

/// An idempotent, registry-backed producer of Nectar's raw events. Cheap to clone.
#[derive(Clone)]
pub struct NectarProducer {
    kafka: FutureProducer,
    codec: Arc<Codec>,
    topics: RawTopics,
}

impl std::fmt::Debug for NectarProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NectarProducer")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl NectarProducer {
    pub fn new(
        kafka_cfg: &KafkaConfig,
        registry: &RegistryConfig,
        topics: RawTopics,
        client_id: &str,
    ) -> Result<Self, ProduceError> {
        let kafka = kafka::idempotent_producer(kafka_cfg, client_id)
            .map_err(|e| ProduceError::Rejected(format!("kafka: invalid client settings: {e}")))?;
        let codec = Codec::new(registry).map_err(|e| ProduceError::Rejected(e.to_string()))?;
        Ok(Self {
            kafka,
            codec: Arc::new(codec),
            topics,
        })
    }

    pub fn topics(&self) -> &RawTopics {
        &self.topics
    }

    pub fn codec(&self) -> &Codec {
        &self.codec
    }

    pub fn kafka(&self) -> &FutureProducer {
        &self.kafka
    }

    /// Register the three raw schemas under their topics' subjects.
    pub async fn register_schemas(&self) -> Result<(), ProduceError> {
        for (topic, schema) in self.subjects() {
            self.codec.register(topic, schema).await?;
        }
        Ok(())
    }

    fn subjects(&self) -> [(&str, &EventSchema); 3] {
        [
            (&self.topics.forms, &schema::FORM_SUBMITTED),
            (&self.topics.webhooks, &schema::WEBHOOK_RECEIVED),
            (&self.topics.apps, &schema::APP_EVENT),
        ]
    }

    pub async fn send_form(&self, event: &FormSubmitted) -> Result<Delivery, ProduceError> {
        self.send(&self.topics.forms, &schema::FORM_SUBMITTED, &event.envelope, event)
            .await
    }

    pub async fn send_webhook(&self, event: &WebhookReceived) -> Result<Delivery, ProduceError> {
        self.send(&self.topics.webhooks, &schema::WEBHOOK_RECEIVED, &event.envelope, event)
            .await
    }

    pub async fn send_app_event(&self, event: &AppEvent) -> Result<Delivery, ProduceError> {
        self.send(&self.topics.apps, &schema::APP_EVENT, &event.envelope, event)
            .await
    }

    /// Encode `item` and produce it keyed by the lead key (else the event id), with the event
    /// id and trace context as headers. Returns once the broker acknowledged it.
    pub async fn send<T: Serialize>(
        &self,
        topic: &str,
        schema: &EventSchema,
        envelope: &Envelope,
        item: &T,
    ) -> Result<Delivery, ProduceError> {
        let payload = self.codec.encode(topic, schema, item).await?;
        let key = envelope.lead_key.as_deref().unwrap_or(&envelope.event_id);
        let origin = if ids::is_generated(&envelope.event_id) {
            ID_GENERATED
        } else {
            ID_DERIVED
        };
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: EVENT_ID_HEADER,
                value: Some(envelope.event_id.as_str()),
            })
            .insert(Header {
                key: EVENT_ID_ORIGIN_HEADER,
                value: Some(origin),
            });
        if let Some(tp) = &envelope.trace_parent {
            headers = headers.insert(Header {
                key: trace::TRACEPARENT,
                value: Some(tp.as_str()),
            });
        }
        let record = FutureRecord::to(topic).key(key).payload(&payload).headers(headers);
        // The producer's own message.timeout.ms bounds the wait, so queue-full retries here are
        // bounded too.
        match self.kafka.send(record, Duration::from_secs(0)).await {
            Ok(delivered) => Ok(Delivery {
                partition: delivered.partition,
                offset: delivered.offset,
            }),
            Err((e, _)) => Err(classify(&e)),
        }
    }

    /// Wait until every record in flight is acknowledged or `timeout` passes.
    pub fn flush(&self, timeout: Duration) -> Result<(), ProduceError> {
        self.kafka.flush(timeout).map_err(|e| classify(&e))
    }
}

/// A typed builder for [`AppEvent`]s with a deterministic id when an idempotency key is given.
#[derive(Debug, Clone)]
pub struct AppEventBuilder {
    workspace_id: String,
    producer: String,
    event_type: String,
    idempotency_key: Option<String>,
    occurred_at: Option<i64>,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    email: Option<String>,
    properties: serde_json::Map<String, serde_json::Value>,
    consent: Option<Consent>,
    trace_parent: Option<String>,
}

impl AppEventBuilder {
    pub fn new(workspace_id: impl Into<String>, producer: impl Into<String>, event_type: impl Into<String>) -> Self {
        Self {
            workspace_id: workspace_id.into(),
            producer: producer.into(),
            event_type: event_type.into(),
            idempotency_key: None,
            occurred_at: None,
            user_id: None,
            anonymous_id: None,
            email: None,
            properties: serde_json::Map::new(),
            consent: None,
            trace_parent: None,
        }
    }
    /// The same key always yields the same event id, so a retried send is delivered once.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }
    /// Milliseconds since the Unix epoch; defaults to now.
    pub fn occurred_at(mut self, millis: i64) -> Self {
        self.occurred_at = Some(millis);
        self
    }
    pub fn user_id(mut self, id: impl Into<String>) -> Self {
        self.user_id = Some(id.into());
        self
    }
    pub fn anonymous_id(mut self, id: impl Into<String>) -> Self {
        self.anonymous_id = Some(id.into());
        self
    }
    pub fn email(mut self, email: impl Into<String>) -> Self {
        self.email = Some(email.into());
        self
    }
    pub fn property(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.properties.insert(key.into(), value.into());
        self
    }
    pub fn properties(mut self, properties: serde_json::Map<String, serde_json::Value>) -> Self {
        self.properties = properties;
        self
    }
    pub fn consent(mut self, consent: Consent) -> Self {
        self.consent = Some(consent);
        self
    }
    /// The caller's W3C traceparent; a child span is recorded. Defaults to a new trace.
    pub fn trace_parent(mut self, traceparent: impl Into<String>) -> Self {
        self.trace_parent = Some(traceparent.into());
        self
    }

    pub fn build(self) -> AppEvent {
        let source = format!("app:{}", self.producer);
        let event_id = match &self.idempotency_key {
            Some(key) => ids::derived_event_id(&self.workspace_id, &source, key),
            None => ids::new_event_id(),
        };
        let received_at = now_millis();
        let lead_key = ids::lead_key(
            &self.workspace_id,
            self.email.as_deref(),
            self.anonymous_id.as_deref().or(self.user_id.as_deref()),
        );
        AppEvent {
            envelope: Envelope {
                event_id,
                event_type: self.event_type,
                occurred_at: self.occurred_at.unwrap_or(received_at),
                received_at,
                source,
                workspace_id: self.workspace_id,
                lead_key,
                trace_parent: Some(trace::child_or_new(self.trace_parent.as_deref())),
                consent: self.consent,
            },
            producer: self.producer,
            user_id: self.user_id,
            anonymous_id: self.anonymous_id,
            email: self.email,
            properties_json: serde_json::Value::Object(self.properties).to_string(),
        }
    }
}

/// Headers kept on a [`WebhookReceived`]: everything but credentials and signatures.
pub fn keep_header(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    !(name == "authorization"
        || name == "cookie"
        || name.contains("signature")
        || name.contains("hmac")
        || name.contains("api-key")
        || name.contains("token"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idempotency_key_makes_the_event_id_deterministic() {
        let a = AppEventBuilder::new("acme", "crm", "deal.won")
            .idempotency_key("k1")
            .build();
        let b = AppEventBuilder::new("acme", "crm", "deal.won")
            .idempotency_key("k1")
            .build();
        let c = AppEventBuilder::new("acme", "crm", "deal.won").build();
        assert_eq!(a.envelope.event_id, b.envelope.event_id);
        assert_ne!(a.envelope.event_id, c.envelope.event_id);
        assert_eq!(a.envelope.source, "app:crm");
    }

    #[test]
    fn secret_headers_are_not_kept() {
        for h in [
            "Authorization",
            "Stripe-Signature",
            "X-Shopify-Hmac-Sha256",
            "X-Api-Key",
            "Cookie",
        ] {
            assert!(!keep_header(h), "{h}");
        }
        assert!(keep_header("X-Shopify-Topic"));
    }
}

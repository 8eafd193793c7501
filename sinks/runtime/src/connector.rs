//! What a connector is: it builds requests for a target and classifies the answers. Everything
//! else (consuming, batching, retries, rate limits, dead letters, offsets) is the runtime's.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use nectar_core::events::Event;

/// One event to deliver, decoded, with where it came from.
#[derive(Debug, Clone)]
pub struct Item {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// The record value as consumed (Confluent wire format), kept for the dead-letter queue.
    pub value: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    /// Record timestamp, milliseconds since the epoch.
    pub timestamp: Option<i64>,
    /// The decoded `io.nectar.Event`.
    pub event: Arc<Event>,
    /// Delivery attempts that failed for this item alone so far (partial failures); 0 on the
    /// first attempt.
    pub attempts: u32,
    /// True when a previous owner of this partition may have sent this item before it
    /// crashed (the item is among the first records read after an assignment, before any
    /// commit by this instance). Connectors whose target is not idempotent (Slack) look the
    /// delivery up before sending it again.
    pub maybe_delivered: bool,
}

impl Item {
    /// The idempotency key of every request: the event id.
    pub fn event_id(&self) -> &str {
        &self.event.envelope.event_id
    }

    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }
}

/// `(topic, partition)` → the next offset to consume.
pub type Positions = BTreeMap<(String, i32), i64>;

/// One call to [`Connector::deliver`].
#[derive(Debug)]
pub struct Delivery<'a> {
    /// At most [`Connector::max_items`] items, in offset order per partition.
    pub items: &'a [Item],
    /// Set when these items are every item of the batch not yet delivered or dead-lettered:
    /// the positions to store if the whole delivery succeeds. Transactional targets write
    /// them in the same transaction as the data and return them from
    /// [`Connector::stored_positions`] on start. Always set when `max_items` is at least
    /// the batch size and the connector answers all-or-nothing.
    pub positions: Option<&'a Positions>,
}

/// The target's answer for one item.
#[derive(Debug, Clone, PartialEq)]
pub enum ItemResult {
    /// Durably accepted by the target.
    Delivered,
    /// Not accepted this time; worth another attempt (a partial failure). `after` is the
    /// target's own `Retry-After`, when it gave one.
    Retry { reason: String, after: Option<Duration> },
    /// Will never be accepted: dead-letter it with the reason and the target's answer.
    Reject { reason: String, response: String },
    /// Not for this target (an event type it does not take): acknowledged without sending,
    /// counted in `nectar_sink_skipped_total`.
    Skipped { reason: String },
}

impl ItemResult {
    /// The same result with `prefix` before its reason (which step or request failed).
    pub fn prefixed(self, prefix: &str) -> Self {
        match self {
            Self::Retry { reason, after } => Self::Retry {
                reason: format!("{prefix}{reason}"),
                after,
            },
            Self::Reject { reason, response } => Self::Reject {
                reason: format!("{prefix}{reason}"),
                response,
            },
            Self::Skipped { reason } => Self::Skipped {
                reason: format!("{prefix}{reason}"),
            },
            Self::Delivered => Self::Delivered,
        }
    }

    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            after: None,
        }
    }

    pub fn reject(reason: impl Into<String>, response: impl Into<String>) -> Self {
        Self::Reject {
            reason: reason.into(),
            response: response.into(),
        }
    }
}

/// A delivery that failed as a whole.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum DeliveryError {
    /// The target is unavailable, overloaded or rate-limiting: retry every item later
    /// (never counted against an item's attempts: an outage does not make an event bad).
    #[error("{reason}")]
    Retry { reason: String, after: Option<Duration> },
    /// Retrying cannot help (credentials revoked, a missing table): stop the sink without
    /// committing, so the orchestrator restarts it and its start check says why.
    #[error("{0}")]
    Fatal(String),
}

impl DeliveryError {
    /// The same error with `prefix` before its reason.
    pub fn prefixed(self, prefix: &str) -> Self {
        match self {
            Self::Retry { reason, after } => Self::Retry {
                reason: format!("{prefix}{reason}"),
                after,
            },
            Self::Fatal(reason) => Self::Fatal(format!("{prefix}{reason}")),
        }
    }

    pub fn retry(reason: impl Into<String>) -> Self {
        Self::Retry {
            reason: reason.into(),
            after: None,
        }
    }
}

/// Why a sink cannot start.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum StartError {
    /// The target answered that the credentials are wrong or lack a permission. Not retried.
    #[error("credentials rejected: {0}")]
    Credentials(String),
    /// The target could not be reached (retried until `sink.start_timeout_ms`).
    #[error("target unreachable: {0}")]
    Unreachable(String),
    /// The configuration cannot work with this target (a missing table, a bad template).
    #[error("{0}")]
    Config(String),
}

/// A target. Implementations are cheap to share (`Arc`), hold their HTTP client or pool, and
/// never sleep or retry themselves: they classify.
pub trait Connector: Send + Sync + 'static {
    /// Short name: metrics label, DLQ topic suffix, logs.
    fn name(&self) -> &str;

    /// Check the target is reachable and the credentials valid, and prepare it (index
    /// template, tables). Called once before consuming.
    fn start(&self) -> impl Future<Output = Result<(), StartError>> + Send;

    /// Most items per [`Connector::deliver`] call (HubSpot's batch limit is 100; a
    /// transactional target returns `usize::MAX` so a batch is one transaction).
    fn max_items(&self) -> usize;

    /// Deliver `delivery.items`; answer one [`ItemResult`] per item, in order, or fail the
    /// whole call.
    fn deliver(&self, delivery: Delivery<'_>) -> impl Future<Output = Result<Vec<ItemResult>, DeliveryError>> + Send;

    /// Positions stored at the target with the data (transactional targets), for the given
    /// partitions of `topic`; the consumer starts there instead of at the group's committed
    /// offsets. `None`: the target stores none, use Kafka's.
    fn stored_positions(
        &self,
        _topic: &str,
        _partitions: &[i32],
    ) -> impl Future<Output = Result<Option<BTreeMap<i32, i64>>, DeliveryError>> + Send {
        async { Ok(None) }
    }
}

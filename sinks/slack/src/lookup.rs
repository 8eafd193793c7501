//! The duplicate lookup of bot mode: which events already have a message in a channel.
//!
//! Slack has no idempotency key for `chat.postMessage`, so every message the sink posts
//! carries the event id as message metadata (`event_type` [`METADATA_EVENT_TYPE`],
//! `event_payload.event_id`). Before posting an event that may already have been posted (a
//! crashed previous owner's record, or this instance's own call that failed without a clear
//! answer), the sink reads the channel's history (`conversations.history` with
//! `include_all_metadata=true`) back to `lookup_window_secs` and looks for the id.
//!
//! The first lookup in a channel reads the whole window; later ones read only what is newer
//! than the previous read (less a margin for clock skew between this host and Slack and for
//! messages that become visible late), so a restart's first batch costs one history read per
//! channel, not one per event. Messages this instance posts are added as it posts them.
//!
//! Where it ends: a message older than the window, or beyond [`MAX_PAGES`] pages of history,
//! is not found (the event is posted again); and a post still in flight from a previous
//! owner when the lookup reads the history (a zombie, not a crashed process) is not seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;

/// `metadata.event_type` of every message the sink posts.
pub const METADATA_EVENT_TYPE: &str = "nectar_event";
/// Messages per history page (Slack recommends no more than 200).
pub const PAGE_LIMIT: u32 = 200;
/// Most history pages one lookup reads (40,000 messages).
pub const MAX_PAGES: usize = 200;
/// How far before the previous read a later read starts.
const MARGIN: Duration = Duration::from_secs(120);

/// Seconds since the epoch, as Slack's `ts` strings count them.
pub fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A Slack timestamp argument (`oldest`, `latest`): seconds with microseconds.
pub fn ts_arg(secs: f64) -> String {
    format!("{:.6}", secs.max(0.0))
}

/// The event id a history message carries, if the sink posted it.
pub fn event_id_of(message: &Value) -> Option<&str> {
    let metadata = message.get("metadata")?;
    if metadata.get("event_type")?.as_str()? != METADATA_EVENT_TYPE {
        return None;
    }
    metadata.pointer("/event_payload/event_id")?.as_str()
}

/// What one channel is known to hold.
#[derive(Debug, Default)]
pub struct ChannelLog {
    /// Event id → the message's `ts` (seconds).
    seen: HashMap<String, f64>,
    /// The history is read up to this time (local clock, seconds); `None`: never read.
    read_until: Option<f64>,
}

impl ChannelLog {
    pub fn contains(&self, event_id: &str) -> bool {
        self.seen.contains_key(event_id)
    }

    /// Where the next history read starts: the window's start on the first read, else the
    /// previous read less the margin.
    pub fn read_from(&self, now: f64, window: Duration) -> f64 {
        let window_start = now - window.as_secs_f64();
        match self.read_until {
            None => window_start,
            Some(t) => (t - MARGIN.as_secs_f64()).max(window_start),
        }
    }

    /// Add one page of `conversations.history` messages.
    pub fn add_page(&mut self, messages: &[Value]) {
        for m in messages {
            if let Some(id) = event_id_of(m) {
                let ts = m.get("ts").and_then(Value::as_str).and_then(|t| t.parse().ok());
                self.seen.insert(id.to_owned(), ts.unwrap_or_else(now_secs));
            }
        }
    }

    /// A read that started at `started` is complete; forget what left the window.
    pub fn read_done(&mut self, started: f64, window: Duration) {
        self.read_until = Some(started);
        let keep_from = started - window.as_secs_f64() - MARGIN.as_secs_f64();
        self.seen.retain(|_, ts| *ts >= keep_from);
    }

    pub fn is_read(&self) -> bool {
        self.read_until.is_some()
    }

    pub fn record(&mut self, event_id: &str, ts: f64) {
        self.seen.insert(event_id.to_owned(), ts);
    }
}

/// The channels' logs. A channel's log is locked for the whole of a history read, so two
/// deliveries never read the same history at once.
#[derive(Debug, Default)]
pub struct Ledger {
    channels: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ChannelLog>>>>,
}

impl Ledger {
    pub fn channel(&self, channel: &str) -> Arc<tokio::sync::Mutex<ChannelLog>> {
        let mut channels = self.channels.lock().unwrap_or_else(|e| e.into_inner());
        channels.entry(channel.to_owned()).or_default().clone()
    }

    /// A message this instance posted, so a later lookup in a read channel knows it.
    pub async fn record(&self, channel: &str, event_id: &str, ts: f64) {
        let log = self.channel(channel);
        let mut log = log.lock().await;
        if log.is_read() {
            log.record(event_id, ts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn message(id: &str, ts: &str) -> Value {
        json!({"type": "message", "ts": ts, "text": "x",
               "metadata": {"event_type": METADATA_EVENT_TYPE, "event_payload": {"event_id": id}}})
    }

    #[test]
    fn only_the_sinks_metadata_counts() {
        assert_eq!(event_id_of(&message("e1", "1.0")), Some("e1"));
        assert_eq!(event_id_of(&json!({"ts": "1.0", "text": "e1"})), None);
        assert_eq!(
            event_id_of(&json!({"metadata": {"event_type": "other", "event_payload": {"event_id": "e1"}}})),
            None
        );
    }

    #[test]
    fn reads_start_at_the_window_then_at_the_last_read() {
        let window = Duration::from_secs(3600);
        let mut log = ChannelLog::default();
        assert_eq!(log.read_from(10_000.0, window), 6_400.0);
        log.add_page(&[message("e1", "9000.000100"), message("old", "100.0")]);
        log.read_done(10_000.0, window);
        assert!(log.contains("e1"));
        assert!(!log.contains("old"), "left the window");
        assert_eq!(log.read_from(10_500.0, window), 10_000.0 - 120.0);
        assert_eq!(log.read_from(100_000.0, window), 100_000.0 - 3600.0);
    }

    #[tokio::test]
    async fn own_posts_are_recorded_once_the_channel_was_read() {
        let ledger = Ledger::default();
        ledger.record("C1", "e1", 5.0).await;
        assert!(
            !ledger.channel("C1").lock().await.contains("e1"),
            "never read: nothing to add to"
        );
        ledger
            .channel("C1")
            .lock()
            .await
            .read_done(10.0, Duration::from_secs(60));
        ledger.record("C1", "e2", 9.0).await;
        assert!(ledger.channel("C1").lock().await.contains("e2"));
    }

    #[test]
    fn ts_arguments_have_microseconds() {
        assert_eq!(ts_arg(1_700_000_000.5), "1700000000.500000");
        assert_eq!(ts_arg(-3.0), "0.000000");
    }
}

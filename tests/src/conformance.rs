//! The one conformance suite of the spec-driven HTTP sink: the same behaviours, proven for
//! every vendor against its fake, with the real local Kafka and registry.
//!
//! 1. every event delivered, counted in the vendor's own terms (messages posted, events
//!    imported after the vendor's deduplication);
//! 2. a 5xx outage, then recovery: nothing lost;
//! 3. the vendor's throttle (429 with its own retry signal) honoured;
//! 4. batch vendors: a partial failure retries only the failed events;
//! 5. a permanently bad event dead-lettered with the vendor's answer, the rest delivered;
//! 6. wrong credentials stop the sink with "credentials rejected" (at start where the vendor
//!    has a cheap authenticated call);
//! 7. SIGKILL while requests are in flight, then restart: each event once for idempotent
//!    vendors; for `at_least_once` vendors, duplicates no more than the requests in flight.
//!
//! A vendor is a [`Vendor`]: its fake (which knows nothing of the spec: it is written from
//! the vendor's documentation) and the sink settings pointing at it. Events are found at the
//! vendor by their event id, which every built-in spec sends (in a message's text, a
//! property, or the idempotency key).

use std::sync::Arc;
use std::time::Duration;

use nectar_core::events::Event;
use serde_json::Value;

use crate::fakes::harness::VendorFake;
use crate::sink::{
    SinkTopics, dlq_summary, fresh_sink_topics, produce_events, read_dlq, run_to_exit, sample_events, sink_env,
    wait_until,
};
use crate::{ServiceProcess, unique};

/// A vendor under test.
pub struct Vendor {
    /// The built-in spec (`target.vendor`).
    pub name: &'static str,
    pub fake: Arc<dyn VendorFake>,
    /// `[target]` settings pointing the sink at the fake, with valid credentials.
    pub settings: Vec<(&'static str, String)>,
    /// Settings that replace some of `settings` with credentials the fake refuses.
    pub bad_credentials: Vec<(&'static str, String)>,
    /// Whether the spec has an idempotency key (the vendor deduplicates).
    pub idempotent: bool,
    /// Events per request (1 for per-event vendors).
    pub batch: usize,
    /// Whether the vendor's throttle answer carries a retry time the sink must wait.
    pub retry_signal: bool,
    /// Whether a partial failure makes the vendor take none of the request (Amplitude), so the
    /// other events are sent again.
    pub partial_takes_none: bool,
    /// What identifies an event at the vendor and in the requests (default: its event id;
    /// Mailchimp: the e-mail address, its member key).
    pub key: fn(&Event) -> String,
}

/// The default [`Vendor::key`]: the event id.
pub fn event_id(event: &Event) -> String {
    event.envelope.event_id.clone()
}

impl std::fmt::Debug for Vendor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vendor")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

const BIN_NAME: &str = "nectar-sink-http";

impl Vendor {
    /// A per-event vendor with no idempotency key whose throttle says how long to wait, found
    /// by event id; change what differs with struct update syntax
    /// (`Vendor { idempotent: true, ..Vendor::new("webhook", fake) }`).
    pub fn new(name: &'static str, fake: impl VendorFake + 'static) -> Self {
        Self {
            name,
            fake: Arc::new(fake),
            settings: Vec::new(),
            bad_credentials: Vec::new(),
            idempotent: false,
            batch: 1,
            retry_signal: true,
            partial_takes_none: false,
            key: event_id,
        }
    }

    /// Copies of an event (by its [`Vendor::key`]) the vendor holds, in its own terms.
    pub fn copies(&self, key: &str) -> usize {
        self.fake
            .stored()
            .iter()
            .filter(|v| v.to_string().contains(key))
            .count()
    }

    fn keys(&self, events: &[Event]) -> Vec<String> {
        events.iter().map(self.key).collect()
    }

    fn env(&self, bin_topics: &SinkTopics, settings: &[(&'static str, String)]) -> Vec<(String, String)> {
        let keys: Vec<String> = settings
            .iter()
            .map(|(k, _)| format!("NECTAR_TARGET__{}", k.to_uppercase()))
            .collect();
        let mut extra: Vec<(&str, &str)> = vec![
            ("NECTAR_TARGET__VENDOR", self.name),
            // The fakes have no rate limit of their own beyond what tests inject.
            ("NECTAR_SINK__RATE_LIMIT_PER_SECOND", "0"),
            ("NECTAR_SINK__MAX_ITEM_ATTEMPTS", "3"),
            ("NECTAR_LOG__FILTER", "info,nectar_sink=debug"),
        ];
        for (key, (_, value)) in keys.iter().zip(settings) {
            extra.push((key.as_str(), value.as_str()));
        }
        sink_env(bin_topics, &extra)
    }

    fn settings_with(&self, overrides: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut s: Vec<(&'static str, String)> = self
            .settings
            .iter()
            .filter(|(k, _)| !overrides.iter().any(|(o, _)| o == k))
            .cloned()
            .collect();
        s.extend(overrides.iter().cloned());
        s
    }

    /// Wait until the vendor holds every key; on timeout, fail with the sink's log.
    async fn wait_all(&self, keys: &[String], timeout: Duration, sink: &ServiceProcess) {
        let deadline = std::time::Instant::now() + timeout;
        while !keys.iter().all(|k| self.copies(k) >= 1) {
            if std::time::Instant::now() > deadline {
                let missing = keys.iter().filter(|k| self.copies(k) == 0).count();
                panic!(
                    "{}: {missing} of {} events never reached the vendor; the sink's log:\n{}",
                    self.name,
                    keys.len(),
                    sink.current_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn assert_once(&self, ids: &[String]) {
        for id in ids {
            assert_eq!(
                self.copies(id),
                1,
                "{}: event {id} held {} times",
                self.name,
                self.copies(id)
            );
        }
    }

    /// Writes whose body mentions `needle`.
    fn writes_with(&self, needle: &str) -> usize {
        self.fake
            .script()
            .writes()
            .iter()
            .filter(|r| String::from_utf8_lossy(&r.body).contains(needle))
            .count()
    }
}

fn bin() -> std::path::PathBuf {
    crate::service_binary(BIN_NAME)
}

async fn setup(vendor: &Vendor, n: usize) -> (SinkTopics, Vec<Event>) {
    let topics = fresh_sink_topics(vendor.name).await;
    let events = sample_events(n, &unique(vendor.name));
    (topics, events)
}

/// Behaviour 1: Every event delivered once, nothing dead-lettered.
pub async fn delivers_every_event(vendor: Vendor) {
    let (topics, events) = setup(&vendor, 12).await;
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(bin(), vendor.env(&topics, &vendor.settings));
    vendor
        .wait_all(&vendor.keys(&events), Duration::from_secs(60), &sink)
        .await;
    vendor.assert_once(&vendor.keys(&events));
    sink.terminate();
    assert_eq!(crate::count_records(&topics.dlq).await, 0, "nothing dead-lettered");
}

/// Behaviour 2: The vendor down (5xx) for a while, then back: nothing lost, nothing twice.
pub async fn outage_then_recovery_loses_nothing(vendor: Vendor) {
    let (topics, events) = setup(&vendor, 6).await;
    vendor.fake.script().fail_next(4);
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(bin(), vendor.env(&topics, &vendor.settings));
    vendor
        .wait_all(&vendor.keys(&events), Duration::from_secs(60), &sink)
        .await;
    vendor.assert_once(&vendor.keys(&events));
    let failed = vendor.fake.script().writes().iter().filter(|r| r.status >= 500).count();
    assert_eq!(failed, 4, "the sink went through the outage");
    sink.terminate();
}

/// Behaviour 3: The vendor's throttle answer (429 with its own retry signal) is honoured in full.
pub async fn throttle_is_honoured(vendor: Vendor) {
    let (topics, events) = setup(&vendor, 3).await;
    vendor.fake.script().throttle_next(1, 2);
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(bin(), vendor.env(&topics, &vendor.settings));
    vendor
        .wait_all(&vendor.keys(&events), Duration::from_secs(60), &sink)
        .await;
    vendor.assert_once(&vendor.keys(&events));
    if vendor.retry_signal {
        // The throttled request's events must not be sent again before the 2 s are up
        // (requests already in flight when the 429 came are not affected).
        let writes = vendor.fake.script().writes();
        let throttled = writes.iter().find(|r| r.status == 429).expect("a throttled write");
        let body = String::from_utf8_lossy(&throttled.body).into_owned();
        let id = vendor
            .keys(&events)
            .into_iter()
            .find(|id| body.contains(id.as_str()))
            .expect("an event in it");
        let again = writes
            .iter()
            .find(|r| r.at > throttled.at && String::from_utf8_lossy(&r.body).contains(id.as_str()))
            .expect("the throttled event sent again");
        let waited = again.at.duration_since(throttled.at);
        assert!(
            waited >= Duration::from_millis(1900),
            "{}: the throttled event came again {waited:?} after a 2 s retry signal",
            vendor.name
        );
    }
    sink.terminate();
}

/// Behaviour 4: (Batch vendors) one event fails once inside a batch: only it is sent again (or, where
/// the vendor takes none of a failed request, the others are deduplicated by their key).
pub async fn partial_failure_retries_only_the_failed(vendor: Vendor) {
    let (topics, events) = setup(&vendor, 8).await;
    let failing = (vendor.key)(&events[3]);
    vendor.fake.script().fail_once(&failing);
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(bin(), vendor.env(&topics, &vendor.settings));
    vendor
        .wait_all(&vendor.keys(&events), Duration::from_secs(60), &sink)
        .await;
    vendor.assert_once(&vendor.keys(&events));
    assert_eq!(vendor.writes_with(&failing), 2, "the failed event was sent again once");
    if !vendor.partial_takes_none {
        for id in vendor.keys(&events).iter().filter(|id| **id != failing) {
            assert_eq!(vendor.writes_with(id), 1, "{id} was accepted and never sent again");
        }
    }
    sink.terminate();
    assert_eq!(crate::count_records(&topics.dlq).await, 0);
}

/// Behaviour 5: An event the vendor never accepts is dead-lettered with the vendor's answer; the others
/// are delivered.
pub async fn bad_event_is_dead_lettered_with_the_vendors_answer(vendor: Vendor) {
    let (topics, events) = setup(&vendor, 6).await;
    let bad = (vendor.key)(&events[2]);
    let bad_id = events[2].envelope.event_id.clone();
    vendor.fake.script().refuse(&bad);
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(bin(), vendor.env(&topics, &vendor.settings));
    let good: Vec<String> = vendor.keys(&events).into_iter().filter(|id| *id != bad).collect();
    vendor.wait_all(&good, Duration::from_secs(60), &sink).await;
    let dlq = read_dlq(&topics.dlq, 1).await;
    let summary = dlq_summary(&dlq);
    assert_eq!(summary.len(), 1);
    assert_eq!(summary[0]["event_id"], bad_id);
    assert!(!summary[0]["reason"].is_empty(), "a reason");
    assert!(
        !summary[0]["response"].is_empty(),
        "the vendor's answer: {:?}",
        summary[0]
    );
    assert_eq!(vendor.copies(&bad), 0);
    vendor.assert_once(&good);
    sink.terminate();
}

/// Behaviour 6: Wrong credentials stop the sink with "credentials rejected": at its start check where
/// the vendor has a cheap authenticated call, else at the first request, which the vendor
/// refuses (nothing is stored, nothing committed).
pub async fn bad_credentials_stop_the_sink(vendor: Vendor) {
    let (topics, events) = setup(&vendor, 2).await;
    produce_events(&topics.deliver, &events).await;
    let settings = vendor.settings_with(&vendor.bad_credentials);
    let (status, output) = run_to_exit(bin(), &vendor.env(&topics, &settings), Duration::from_secs(60));
    assert!(!status.success(), "{output}");
    assert!(output.contains("credentials rejected"), "{}: {output}", vendor.name);
    for id in vendor.keys(&events) {
        assert_eq!(vendor.copies(&id), 0, "nothing stored with wrong credentials");
    }
    assert_eq!(crate::count_records(&topics.dlq).await, 0, "nothing dead-lettered");
}

/// Behaviour 7: SIGKILL while the vendor holds answers back (stored, not yet answered), then restart.
pub async fn sigkill_mid_batch_then_restart(vendor: Vendor) {
    let (topics, events) = setup(&vendor, 10).await;
    vendor.fake.script().set_answer_delay(Duration::from_millis(1500));
    produce_events(&topics.deliver, &events).await;
    let env = vendor.env(&topics, &vendor.settings);
    let mut sink = ServiceProcess::start(bin(), env);
    wait_until("a write at the vendor", Duration::from_secs(60), || async {
        !vendor.fake.script().writes().is_empty()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    sink.kill9();
    let in_flight = vendor.fake.script().max_in_flight();
    vendor.fake.script().set_answer_delay(Duration::ZERO);
    sink.restart();
    vendor
        .wait_all(&vendor.keys(&events), Duration::from_secs(90), &sink)
        .await;
    // Let a restarted instance finish what it might still send.
    tokio::time::sleep(Duration::from_millis(500)).await;
    sink.terminate();
    if vendor.idempotent {
        vendor.assert_once(&vendor.keys(&events));
    } else {
        let extra: usize = vendor.keys(&events).iter().map(|id| vendor.copies(id) - 1).sum();
        let bound = in_flight * vendor.batch;
        assert!(
            extra <= bound,
            "{}: {extra} duplicates, more than the {bound} events in flight",
            vendor.name
        );
    }
    let held: Vec<Value> = vendor.fake.stored();
    assert!(held.len() >= events.len());
}

/// The conformance tests for one vendor:
/// `conformance!(discord, vendor(), bad_event_is_dead_lettered_with_the_vendors_answer)`.
/// Behaviours 1–3 and 7 always; after the vendor, the optional ones that apply to it:
/// `bad_event_is_dead_lettered_with_the_vendors_answer` (the vendor refuses an event in its
/// answer), `bad_credentials_stop_the_sink` (the vendor refuses wrong credentials: GA4 does
/// not) and `partial_failure_retries_only_the_failed` (batch vendors).
#[macro_export]
macro_rules! conformance {
    ($module:ident, $vendor:expr $(, $optional:ident)*) => {
        mod $module {
            use super::*;

            #[tokio::test(flavor = "multi_thread")]
            async fn delivers_every_event() {
                $crate::conformance::delivers_every_event($vendor.await).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn outage_then_recovery_loses_nothing() {
                $crate::conformance::outage_then_recovery_loses_nothing($vendor.await).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn throttle_is_honoured() {
                $crate::conformance::throttle_is_honoured($vendor.await).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn sigkill_mid_batch_then_restart() {
                $crate::conformance::sigkill_mid_batch_then_restart($vendor.await).await;
            }

            $(
            #[tokio::test(flavor = "multi_thread")]
            async fn $optional() {
                $crate::conformance::$optional($vendor.await).await;
            }
            )*
        }
    };
}

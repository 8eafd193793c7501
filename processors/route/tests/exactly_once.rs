//! Exactly-once routing, proven by killing: scored events routed by the shipped default
//! rules while `nectar-route` is SIGKILLed at random moments; afterwards every delivery topic
//! holds exactly the events the rules send it, each once; and killed at the one moment
//! random kills may miss, between sending the offsets and committing. Needs the local stack.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use nectar_core::events::{Envelope, Event, LeadScore};
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_core::processor::{PAUSE_BEFORE_COMMIT_ENV, PAUSE_BEFORE_COMMIT_LOG};
use nectar_route::{ERASURE, RouteConfig, Router};
use nectar_tests::{
    ServiceProcess, assert_exactly_once, codec, kafka_config, processor_env, produce_events, read_topic, unique,
    wait_caught_up,
};
use rand::{Rng, SeedableRng};

const EVENTS: usize = 8_000;

#[derive(serde::Deserialize)]
struct Defaults {
    route: RouteConfig,
}

fn default_rules() -> RouteConfig {
    use figment::providers::{Format, Toml};
    let defaults: Defaults = figment::Figment::from(Toml::string(include_str!("../default.toml")))
        .extract()
        .expect("default.toml [route]");
    defaults.route
}

#[test]
fn the_shipped_rules_compile() {
    let router = Router::new(&default_rules()).expect("default rules compile");
    assert!(router.all_sinks().contains("slack"));
}

/// A test's topics, with `events` scored events on the input (random types and scores, a
/// fixed seed), and the event ids each sink should get by the rules.
struct Fixture {
    input: String,
    dlq: String,
    group: String,
    prefix: String,
    expected: HashMap<String, Vec<String>>,
}

impl Fixture {
    async fn new(events: usize, seed: u64) -> Self {
        let (input, dlq, group, prefix) = (
            unique("t.scored"),
            unique("t.dlq.route"),
            unique("route"),
            format!("{}.deliver.", unique("t")),
        );
        let router = Router::new(&default_rules()).expect("rules");
        let sinks = router.all_sinks();
        let mut specs = vec![TopicSpec::new(&input, 3), TopicSpec::new(&dlq, 1)];
        specs.extend(sinks.iter().map(|s| TopicSpec::new(format!("{prefix}{s}"), 3)));
        ensure_topics(&kafka_config(), &specs).await.expect("topics");

        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let types = [
            "lead.captured",
            "payment.succeeded",
            "order.created",
            "email.engaged",
            ERASURE,
            "lead.stage_changed",
        ];
        let events: Vec<Event> = (0..events)
            .map(|i| {
                let mut e = Event::new(Envelope {
                    event_id: format!("evt-{i}"),
                    event_type: types[rng.random_range(0..types.len())].to_owned(),
                    occurred_at: 0,
                    received_at: 0,
                    source: "test".into(),
                    workspace_id: "acme".into(),
                    lead_key: (i % 7 != 0).then(|| format!("lead-{}", i % 500)),
                    trace_parent: None,
                    consent: None,
                });
                e.score = (i % 2 == 0).then(|| LeadScore {
                    value: rng.random_range(0.0..150.0),
                    delta: 0.0,
                    stage: "lead".into(),
                    crossed: None,
                });
                e
            })
            .collect();
        let mut expected: HashMap<String, Vec<String>> = HashMap::new();
        for e in &events {
            for sink in router.route(e).sinks {
                expected.entry(sink).or_default().push(e.envelope.event_id.clone());
            }
        }
        produce_events(&input, &events, |e| {
            e.envelope
                .lead_key
                .clone()
                .unwrap_or_else(|| e.envelope.event_id.clone())
        })
        .await;
        assert_eq!(
            expected.keys().cloned().collect::<BTreeSet<_>>(),
            sinks,
            "every sink gets something"
        );
        Self {
            input,
            dlq,
            group,
            prefix,
            expected,
        }
    }

    fn process(&self, extra: &[(&str, &str)]) -> ServiceProcess {
        let mut env = vec![
            ("NECTAR_TOPICS__INPUT", self.input.as_str()),
            ("NECTAR_TOPICS__DELIVER_PREFIX", self.prefix.as_str()),
        ];
        env.extend_from_slice(extra);
        ServiceProcess::start(
            env!("CARGO_BIN_EXE_nectar-route"),
            processor_env(&self.group, "a", &self.dlq, &env),
        )
    }

    /// Wait until `process` has committed the whole input, then stop it gracefully.
    async fn finish(&self, process: &mut ServiceProcess) {
        wait_caught_up(&self.group, std::slice::from_ref(&self.input), &mut [process]).await;
        assert!(process.terminate().success(), "graceful stop:\n{}", process.log());
    }

    /// Each delivery topic holds exactly the events the rules send its sink, each once.
    async fn assert_each_sink_got_its_events_once(&self) {
        let codec = codec();
        for (sink, ids) in &self.expected {
            let records = read_topic(&format!("{}{sink}", self.prefix), ids.len()).await;
            let mut counts: HashMap<String, usize> = HashMap::new();
            for r in &records {
                let event: Event = codec.decode(&r.payload).await.expect("delivery decodes");
                *counts.entry(event.envelope.event_id).or_default() += 1;
            }
            assert_exactly_once(ids, &counts);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_delivers_each_routed_event_once_per_sink() {
    let fixture = Fixture::new(EVENTS, 11).await;
    let mut process = fixture.process(&[]);
    process.kill_at_random_moments(4, 600..2000).await;
    fixture.finish(&mut process).await;
    fixture.assert_each_sink_got_its_events_once().await;
}

/// The one moment the random kills may miss: the offsets are in the transaction, the
/// transaction is not committed. The broker must abort it (the restarted instance fences
/// its predecessor) and the restarted instance must redo the batch: nothing lost, nothing
/// twice.
#[tokio::test(flavor = "multi_thread")]
async fn sigkill_between_sending_offsets_and_committing_delivers_each_event_once() {
    let fixture = Fixture::new(2_000, 12).await;
    let mut process = fixture.process(&[(PAUSE_BEFORE_COMMIT_ENV, "3000")]);
    for _ in 0..2 {
        process
            .wait_logged(PAUSE_BEFORE_COMMIT_LOG, Duration::from_secs(120))
            .await;
        process.restart();
    }
    process.set_env(PAUSE_BEFORE_COMMIT_ENV, None);
    process.restart();
    fixture.finish(&mut process).await;
    let killed_mid_commit = process.log().matches(PAUSE_BEFORE_COMMIT_LOG).count();
    assert_eq!(
        killed_mid_commit,
        2,
        "two instances killed while committing:\n{}",
        process.log()
    );
    fixture.assert_each_sink_got_its_events_once().await;
}

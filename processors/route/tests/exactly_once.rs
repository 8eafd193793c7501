//! Exactly-once routing, proven by killing: scored events routed by the shipped default
//! rules while `nectar-route` is SIGKILLed at random moments; afterwards every delivery topic
//! holds exactly the events the rules send it, each once. Needs the local stack.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use nectar_core::events::{Envelope, Event, LeadScore};
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_core::schema;
use nectar_route::{ERASURE, RouteConfig, Router};
use nectar_tests::{
    ServiceProcess, assert_exactly_once, codec, kafka_config, processor_env, read_topic, unique, wait_caught_up,
};
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};

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

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_delivers_each_routed_event_once_per_sink() {
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

    let codec = codec();
    codec.register(&input, &schema::EVENT).await.expect("schema");
    let producer: FutureProducer =
        nectar_core::kafka::idempotent_producer(&kafka_config(), "route-test").expect("producer");
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let types = [
        "lead.captured",
        "payment.succeeded",
        "order.created",
        "email.engaged",
        ERASURE,
        "lead.stage_changed",
    ];
    let events: Vec<Event> = (0..EVENTS)
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
    for chunk in events.chunks(1000) {
        let mut payloads = Vec::new();
        for e in chunk {
            payloads.push(codec.encode(&input, &schema::EVENT, e).await.expect("encode"));
            for sink in router.route(e).0 {
                expected.entry(sink).or_default().push(e.envelope.event_id.clone());
            }
        }
        let sends = chunk.iter().zip(&payloads).map(|(e, payload)| {
            let (producer, input) = (producer.clone(), input.clone());
            let key = e
                .envelope
                .lead_key
                .clone()
                .unwrap_or_else(|| e.envelope.event_id.clone());
            async move {
                producer
                    .send(
                        FutureRecord::to(&input).key(&key).payload(payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .expect("sent");
            }
        });
        futures::future::join_all(sends).await;
    }
    assert_eq!(
        expected.keys().cloned().collect::<BTreeSet<_>>(),
        sinks,
        "every sink gets something"
    );

    let env = processor_env(
        &group,
        "a",
        &dlq,
        &[
            ("NECTAR_TOPICS__INPUT", &input),
            ("NECTAR_TOPICS__DELIVER_PREFIX", &prefix),
        ],
    );
    let mut process = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-route"), env);
    process.kill_at_random_moments(4, 600..2000).await;
    wait_caught_up(&group, std::slice::from_ref(&input), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());

    for (sink, ids) in &expected {
        let records = read_topic(&format!("{prefix}{sink}"), ids.len()).await;
        let mut counts: HashMap<String, usize> = HashMap::new();
        for r in &records {
            let event: Event = codec.decode(&r.payload).await.expect("delivery decodes");
            *counts.entry(event.envelope.event_id).or_default() += 1;
        }
        assert_exactly_once(ids, &counts);
    }
}

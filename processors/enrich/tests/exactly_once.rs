//! Exactly-once enrichment, proven by killing: canonical events enriched while
//! `nectar-enrich` is SIGKILLed at random moments; afterwards every event is on the output
//! exactly once, with its derived facts. Needs the local stack.

use std::collections::HashMap;
use std::time::Duration;

use nectar_core::events::{Context, Envelope, Event, Person};
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_core::schema;
use nectar_tests::{
    ServiceProcess, assert_exactly_once, codec, kafka_config, read_topic, registry_config, unique, wait_caught_up,
};
use rand::Rng;
use rdkafka::producer::{FutureProducer, FutureRecord};

const EVENTS: usize = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_enriches_every_event_once() {
    let (input, output, dlq, group) = (
        unique("t.events"),
        unique("t.enriched"),
        unique("t.dlq.enrich"),
        unique("enrich"),
    );
    ensure_topics(
        &kafka_config(),
        &[
            TopicSpec::new(&input, 3),
            TopicSpec::new(&output, 3),
            TopicSpec::new(&dlq, 1),
        ],
    )
    .await
    .expect("topics");
    let codec = codec();
    codec.register(&input, &schema::EVENT).await.expect("schema");
    let producer: FutureProducer =
        nectar_core::kafka::idempotent_producer(&kafka_config(), "enrich-test").expect("producer");
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            let email = if i % 2 == 0 {
                format!("Ada.{i}@Gmail.com")
            } else {
                format!("grace.{i}@acme-corp.com")
            };
            let mut e = Event::new(Envelope {
                event_id: format!("evt-{i}"),
                event_type: "lead.captured".into(),
                occurred_at: 0,
                received_at: 0,
                source: "test".into(),
                workspace_id: "acme".into(),
                lead_key: nectar_core::ids::lead_key("acme", Some(&email), None),
                trace_parent: None,
                consent: None,
            });
            e.person = Some(Person {
                email: Some(email),
                full_name: Some("Ada Lovelace".into()),
                ..Person::default()
            });
            e.context = Some(Context {
                page_url: Some("https://www.example.com/?utm_source=newsletter&utm_medium=email".into()),
                ..Context::default()
            });
            e
        })
        .collect();
    for chunk in events.chunks(1000) {
        let mut payloads = Vec::new();
        for e in chunk {
            payloads.push(codec.encode(&input, &schema::EVENT, e).await.expect("encode"));
        }
        let sends = chunk.iter().zip(&payloads).map(|(e, payload)| {
            let (producer, input) = (producer.clone(), input.clone());
            let key = e.envelope.lead_key.clone().expect("lead key");
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

    let env: Vec<(String, String)> = [
        ("NECTAR_KAFKA__BOOTSTRAP_SERVERS", kafka_config().bootstrap_servers),
        ("NECTAR_SCHEMA_REGISTRY__URL", registry_config().url),
        ("NECTAR_ADMIN__LISTEN", "127.0.0.1:0".to_owned()),
        ("NECTAR_LOG__FILTER", "warn,nectar_core=info".to_owned()),
        ("NECTAR_TOPICS__INPUT", input.clone()),
        ("NECTAR_TOPICS__OUTPUT", output.clone()),
        ("NECTAR_PROCESSOR__GROUP_ID", group.clone()),
        ("NECTAR_PROCESSOR__INSTANCE_ID", "a".to_owned()),
        ("NECTAR_PROCESSOR__DLQ_TOPIC", dlq.clone()),
        ("NECTAR_PROCESSOR__MAX_BATCH", "200".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut process = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-enrich"), env);
    let mut rng = rand::rng();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(rng.random_range(600..2000))).await;
        if let Some(status) = process.exited() {
            panic!("nectar-enrich exited with {status}:\n{}", process.log());
        }
        process.restart();
    }
    wait_caught_up(&group, std::slice::from_ref(&input), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());

    let records = read_topic(&output, EVENTS).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let event: Event = codec.decode(&r.payload).await.expect("enriched event decodes");
        let enrichment = event.enrichment.as_ref().expect("enriched");
        let n: usize = event.envelope.event_id.trim_start_matches("evt-").parse().expect("id");
        assert_eq!(
            enrichment.free_mail,
            Some(n.is_multiple_of(2)),
            "{}",
            event.envelope.event_id
        );
        assert_eq!(enrichment.utm.get("utm_source").map(String::as_str), Some("newsletter"));
        *counts.entry(event.envelope.event_id).or_default() += 1;
    }
    let ids: Vec<String> = events.iter().map(|e| e.envelope.event_id.clone()).collect();
    assert_exactly_once(&ids, &counts);
}

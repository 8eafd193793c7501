//! Exactly-once, proven by killing: tens of thousands of raw events, `nectar-normalize`
//! SIGKILLed at random moments and restarted, then a `read_committed` consumer must find
//! every input event id exactly once in the output and every poison record exactly once in
//! the dead-letter topic. Needs the local stack (`deploy/local/stack up`).

use std::collections::HashMap;
use std::time::Duration;

use nectar_core::events::{Event, FormSubmitted};
use nectar_core::processor::dlq_headers;
use nectar_producer::{AppEventBuilder, NectarProducer};
use nectar_tests::{
    ServiceProcess, assert_exactly_once, codec, kafka_config, read_topic, registry_config, wait_both_assigned,
    wait_caught_up,
};

use rdkafka::producer::{FutureProducer, FutureRecord};

mod common;
use common::Run;

const FORMS: usize = 12_000;
const APP_EVENTS: usize = 8_000;
const POISON: usize = 25;

/// Produce the input: forms, app events and undecodable poison records. Returns the event
/// ids that must come out exactly once.
async fn produce_input(run: &Run) -> Vec<String> {
    let producer =
        NectarProducer::new(&kafka_config(), &registry_config(), run.topics.clone(), "eos-test").expect("producer");
    producer.register_schemas().await.expect("schemas");
    let mut ids = Vec::with_capacity(FORMS + APP_EVENTS);
    let forms: Vec<FormSubmitted> = (0..FORMS).map(form).collect();
    for chunk in forms.chunks(1000) {
        let sends = chunk.iter().map(|f| producer.send_form(f));
        for result in futures::future::join_all(sends).await {
            result.expect("form acknowledged");
        }
        ids.extend(chunk.iter().map(|f| f.envelope.event_id.clone()));
    }
    let apps: Vec<_> = (0..APP_EVENTS)
        .map(|i| {
            AppEventBuilder::new("acme", "crm", "deal.won")
                .email(format!("buyer{i}@example.com"))
                .idempotency_key(format!("deal-{i}"))
                .property("amount", i)
                .build()
        })
        .collect();
    for chunk in apps.chunks(1000) {
        let sends = chunk.iter().map(|e| producer.send_app_event(e));
        for result in futures::future::join_all(sends).await {
            result.expect("app event acknowledged");
        }
        ids.extend(chunk.iter().map(|e| e.envelope.event_id.clone()));
    }
    let raw: FutureProducer = nectar_core::kafka::idempotent_producer(&kafka_config(), "poison").expect("producer");
    for i in 0..POISON {
        let key = format!("poison-{i}");
        raw.send(
            FutureRecord::to(&run.topics.forms)
                .key(&key)
                .payload(b"this is not avro".as_slice()),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("poison");
    }
    ids
}

fn form(i: usize) -> FormSubmitted {
    let workspace = "acme";
    let email = format!("lead{i}@example.com");
    FormSubmitted {
        envelope: nectar_core::events::Envelope {
            event_id: nectar_core::ids::derived_event_id(workspace, "form:contact", &format!("sub-{i}")),
            event_type: "form.submitted".into(),
            occurred_at: 1_795_000_000_000,
            received_at: 1_795_000_000_000,
            source: "form:contact".into(),
            workspace_id: workspace.into(),
            lead_key: nectar_core::ids::lead_key(workspace, Some(&email), None),
            trace_parent: None,
            consent: None,
        },
        form_id: "contact".into(),
        form_type: Some("contact".into()),
        email: Some(email),
        fields: HashMap::from([("name".to_owned(), format!("Lead {i}"))]),
        page_url: None,
        referrer: None,
        user_agent: None,
        client_ip: None,
        anonymous_id: None,
    }
}

/// Count event ids on the output topic with a read_committed consumer.
async fn output_ids(run: &Run, expected: usize) -> HashMap<String, usize> {
    let records = read_topic(&run.output, expected).await;
    let codec = codec();
    let mut counts = HashMap::new();
    for record in &records {
        let event: Event = codec
            .decode(record.payload.as_slice())
            .await
            .expect("canonical event decodes");
        *counts.entry(event.envelope.event_id).or_insert(0) += 1;
    }
    counts
}

async fn assert_poison_dead_lettered_once(run: &Run) {
    let letters = read_topic(&run.dlq, POISON).await;
    assert_eq!(letters.len(), POISON, "every poison record exactly once in the DLQ");
    for letter in &letters {
        assert_eq!(letter.payload, b"this is not avro", "the original value is kept");
        assert!(
            letter.header(dlq_headers::REASON).is_some_and(|r| r.contains("decode")),
            "{:?}",
            letter.headers
        );
        assert_eq!(letter.header(dlq_headers::TOPIC), Some(run.topics.forms.as_str()));
        assert!(letter.header(dlq_headers::OFFSET).is_some());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let run = Run::new().await;
    let expected = produce_input(&run).await;
    let mut process = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-normalize"), run.env("a", &[]));
    process.kill_at_random_moments(5, 800..2500).await;
    wait_caught_up(&run.group, &run.inputs(), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());

    let counts = output_ids(&run, expected.len()).await;
    assert_exactly_once(&expected, &counts);
    assert_poison_dead_lettered_once(&run).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn two_instances_split_partitions_and_a_killed_ones_work_moves_over() {
    let run = Run::new().await;
    let expected = produce_input(&run).await;
    let mut a = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-normalize"), run.env("a", &[]));
    let mut b = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-normalize"), run.env("b", &[]));
    wait_both_assigned(&mut a, &mut b).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // One instance dies mid-stream and stays dead: the other takes its partitions over.
    a.kill9();
    wait_caught_up(&run.group, &run.inputs(), &mut [&mut b]).await;
    assert!(b.terminate().success(), "graceful stop:\n{}", b.log());

    let counts = output_ids(&run, expected.len()).await;
    assert_exactly_once(&expected, &counts);
    assert_poison_dead_lettered_once(&run).await;
}

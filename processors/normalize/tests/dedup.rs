//! normalize's de-duplication store against the local stack: re-delivered event ids are
//! dropped across SIGKILLs and restarts, the store equals the set of ids passed on, and an id
//! is forgotten (with a changelog tombstone) once its window has passed.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nectar_core::events::{Envelope, Event, FormSubmitted};
use nectar_producer::NectarProducer;
use nectar_tests::{
    Record, ServiceProcess, assert_exactly_once, codec, kafka_config, read_topic, registry_config, wait_caught_up,
};
use rand::Rng;
use rand::seq::SliceRandom;

const BIN: &str = env!("CARGO_BIN_EXE_nectar-normalize");

mod common;
use common::Run;

/// A producer of this run's raw topics.
fn producer(run: &Run) -> NectarProducer {
    NectarProducer::new(&kafka_config(), &registry_config(), run.topics.clone(), "dedup-test").expect("producer")
}

/// A form submission whose id is derived from `key` (as an `Idempotency-Key` would make it).
fn form(key: &str, email: &str, received_at: i64) -> FormSubmitted {
    let workspace = "acme";
    FormSubmitted {
        envelope: Envelope {
            event_id: nectar_core::ids::derived_event_id(workspace, "form:contact", key),
            event_type: "form.submitted".into(),
            occurred_at: received_at,
            received_at,
            source: "form:contact".into(),
            workspace_id: workspace.into(),
            lead_key: nectar_core::ids::lead_key(workspace, Some(email), None),
            trace_parent: None,
            consent: None,
        },
        form_id: "contact".into(),
        form_type: Some("contact".into()),
        email: Some(email.into()),
        fields: HashMap::new(),
        page_url: None,
        referrer: None,
        user_agent: None,
        client_ip: None,
        anonymous_id: None,
    }
}

async fn produce(producer: &NectarProducer, forms: &[FormSubmitted]) {
    for chunk in forms.chunks(1000) {
        for result in futures::future::join_all(chunk.iter().map(|f| producer.send_form(f))).await {
            result.expect("form acknowledged");
        }
    }
}

async fn output_ids(records: &[Record]) -> Vec<String> {
    let codec = codec();
    let mut ids = Vec::with_capacity(records.len());
    for record in records {
        let event: Event = codec.decode(&record.payload).await.expect("event decodes");
        ids.push(event.envelope.event_id);
    }
    ids
}

fn counts(ids: &[String]) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for id in ids {
        *counts.entry(id.clone()).or_insert(0) += 1;
    }
    counts
}

/// The store the changelog describes: its keys after folding puts and tombstones in order.
fn folded(changelog: &[Record]) -> HashSet<String> {
    let mut records: Vec<&Record> = changelog.iter().collect();
    records.sort_by_key(|r| (r.partition, r.offset));
    let mut store = HashSet::new();
    for r in records {
        let key = r.key.clone().expect("keyed by event id");
        if r.payload.is_empty() {
            store.remove(&key);
        } else {
            store.insert(key);
        }
    }
    store
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliveries_across_sigkills_pass_each_event_id_once_and_the_store_is_the_set_of_ids() {
    const DISTINCT: usize = 13_334;
    const REDELIVERED: usize = 6_666;
    let run = Run::new().await;
    let producer = producer(&run);
    producer.register_schemas().await.expect("schemas");
    let now = nectar_core::events::now_millis();
    let mut rng = rand::rng();
    let firsts: Vec<FormSubmitted> = (0..DISTINCT)
        .map(|i| {
            form(
                &format!("sub-{i}"),
                &format!("lead{}@example.com", i % 3000),
                now + i as i64,
            )
        })
        .collect();
    // A third of the raw records are re-deliveries of earlier ids: the same event, received
    // again up to an hour later (a vendor retry).
    let redeliveries: Vec<(usize, FormSubmitted)> = (0..REDELIVERED)
        .map(|_| {
            let j = rng.random_range(0..DISTINCT);
            let mut copy = firsts[j].clone();
            copy.envelope.received_at += rng.random_range(1_000..3_600_000);
            (j, copy)
        })
        .collect();
    // Half the events and their copies before normalize starts; the rest while it is being
    // killed, so copies reach restarted instances whose store was rebuilt from the changelog
    // (copies of early events among them). A copy never precedes its first delivery.
    let half = DISTINCT / 2;
    let mut first_half: Vec<FormSubmitted> = firsts[..half].to_vec();
    let mut late_copies = Vec::new();
    for (n, (j, copy)) in redeliveries.into_iter().enumerate() {
        if j < half && n % 2 == 0 {
            first_half.push(copy);
        } else {
            late_copies.push(copy);
        }
    }
    late_copies.shuffle(&mut rng);
    let mut second_half: Vec<FormSubmitted> = firsts[half..].to_vec();
    second_half.extend(late_copies);
    let raw_total = first_half.len() + second_half.len();
    produce(&producer, &first_half).await;

    let mut process = ServiceProcess::start(BIN, run.env("a", &[]));
    let killer = async {
        process.kill_at_random_moments(5, 700..2000).await;
        process
    };
    let (mut process, ()) = tokio::join!(killer, async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        produce(&producer, &second_half).await;
    });
    wait_caught_up(&run.group, &run.inputs(), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());

    let expected: Vec<String> = firsts.iter().map(|f| f.envelope.event_id.clone()).collect();
    assert!(raw_total >= 20_000, "{raw_total} raw records");
    let out = read_topic(&run.output, expected.len()).await;
    assert_exactly_once(&expected, &counts(&output_ids(&out).await));
    let store = folded(&read_topic(&run.dedup, expected.len()).await);
    let distinct: HashSet<String> = expected.into_iter().collect();
    assert_eq!(store.len(), distinct.len(), "the store holds every id once");
    assert!(store == distinct, "the store is exactly the set of distinct ids");
    assert!(process.log().contains("rebuilt the de-duplication store"));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_id_seen_again_after_the_window_is_passed_on_and_its_entry_tombstoned() {
    let run = Run::new().await;
    let producer = producer(&run);
    producer.register_schemas().await.expect("schemas");
    let t = nectar_core::events::now_millis();
    let email = "window@example.com";
    let a = form("a", email, t);
    let a_retry = form("a", email, t + 30_000);
    let b = form("b", email, t + 61_000);
    let a_late = form("a", email, t + 62_000);
    // A fresh UUIDv7 is never re-sent: normalize does not remember it.
    let mut fresh = form("unused", email, t + 63_000);
    fresh.envelope.event_id = nectar_core::ids::new_event_id();
    produce(&producer, &[a.clone(), a_retry, b.clone(), a_late, fresh.clone()]).await;

    let mut process = ServiceProcess::start(BIN, run.env("a", &[("NECTAR_DEDUP__WINDOW_SECS", "60")]));
    wait_caught_up(&run.group, &run.inputs(), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());

    let out = output_ids(&read_topic(&run.output, 4).await).await;
    let a_id = a.envelope.event_id.clone();
    assert_eq!(
        out,
        [
            a_id.clone(),
            b.envelope.event_id.clone(),
            a_id.clone(),
            fresh.envelope.event_id.clone()
        ],
        "the retry within the window is dropped; after the window the id is passed on again"
    );
    let changelog = read_topic(&run.dedup, 4).await;
    let for_a: Vec<bool> = changelog
        .iter()
        .filter(|r| r.key.as_deref() == Some(a_id.as_str()))
        .map(|r| r.payload.is_empty())
        .collect();
    assert_eq!(
        for_a,
        [false, true, false],
        "remembered, tombstoned when the window passed, remembered again"
    );
    assert!(
        !changelog
            .iter()
            .any(|r| r.key.as_deref() == Some(fresh.envelope.event_id.as_str())),
        "a generated id is not remembered"
    );
}

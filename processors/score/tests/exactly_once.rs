//! Exactly-once scoring, proven by killing: enriched events for a few hundred leads,
//! `nectar-score` SIGKILLed at random moments, or one of two instances killed for good; then
//! every event is on the output exactly once and every score equals what an uninterrupted
//! run computes (the model folded over each lead's events in partition order). Scores depend
//! on the previous state, so equal scores also prove the state survived the kills and moved
//! with its partitions. Needs the local stack.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use nectar_core::events::{Enrichment, Envelope, Event, LeadState};
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_core::schema;
use nectar_score::{STAGE_CHANGED, ScoreModel, ScoreRules};
use nectar_tests::{
    ServiceProcess, assert_exactly_once, codec, kafka_config, processor_env, produce_events, read_topic, unique,
    wait_both_assigned, wait_caught_up,
};
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};

const EVENTS: usize = 15_000;
const LEADS: usize = 300;

struct Run {
    input: String,
    output: String,
    changelog: String,
    dlq: String,
    group: String,
}

async fn setup() -> Run {
    let run = Run {
        input: unique("t.enriched"),
        output: unique("t.scored"),
        changelog: unique("t.changelog"),
        dlq: unique("t.dlq.score"),
        group: unique("score"),
    };
    let mut changelog = TopicSpec::new(&run.changelog, 3);
    changelog.config.push(("cleanup.policy".into(), "compact".into()));
    ensure_topics(
        &kafka_config(),
        &[
            TopicSpec::new(&run.input, 3),
            TopicSpec::new(&run.output, 3),
            changelog,
            TopicSpec::new(&run.dlq, 1),
        ],
    )
    .await
    .expect("topics");
    run
}

fn rules() -> ScoreRules {
    let config: toml_config::Wrapper = toml_config::parse(include_str!("../default.toml"));
    config.score
}

/// The shipped default rules, read from default.toml.
mod toml_config {
    #[derive(serde::Deserialize)]
    pub struct Wrapper {
        pub score: nectar_score::ScoreRules,
    }
    pub fn parse(text: &str) -> Wrapper {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(text))
            .extract()
            .expect("default.toml has a valid [score]")
    }
}

fn env(run: &Run, instance: &str) -> Vec<(String, String)> {
    processor_env(
        &run.group,
        instance,
        &run.dlq,
        &[
            ("NECTAR_TOPICS__INPUT", &run.input),
            ("NECTAR_TOPICS__OUTPUT", &run.output),
            ("NECTAR_TOPICS__CHANGELOG", &run.changelog),
        ],
    )
}

/// Produce enriched events for `LEADS` leads; returns them.
async fn produce_input(run: &Run) -> Vec<Event> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let types = [
        "lead.captured",
        "demo.requested",
        "email.engaged",
        "meeting.booked",
        "newsletter.subscribed",
        "page.viewed",
    ];
    let start = 1_790_000_000_000_i64;
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            let lead = rng.random_range(0..LEADS);
            let email = format!("lead{lead}@{}", if lead % 3 == 0 { "gmail.com" } else { "acme.com" });
            let mut event = Event::new(Envelope {
                event_id: format!("evt-{i}"),
                event_type: types[rng.random_range(0..types.len())].to_owned(),
                // Hours apart, so decay matters.
                occurred_at: start + i as i64 * 3_600_000 / 10,
                received_at: start,
                source: "test".into(),
                workspace_id: "acme".into(),
                lead_key: nectar_core::ids::lead_key("acme", Some(&email), None),
                trace_parent: None,
                consent: None,
            });
            event.enrichment = Some(Enrichment {
                email_normalized: Some(email.clone()),
                free_mail: Some(lead % 3 == 0),
                company_domain: (lead % 3 != 0).then(|| "acme.com".to_owned()),
                ..Enrichment::default()
            });
            event
        })
        .collect();
    produce_events(&run.input, &events, |e| e.envelope.lead_key.clone().expect("lead key")).await;
    events
}

/// What an uninterrupted run outputs: the model folded over each lead's events in the order
/// the input partitions hold them.
async fn oracle(run: &Run) -> (HashMap<String, Event>, HashMap<String, LeadState>) {
    let model = ScoreModel::new(rules());
    let records = read_topic(&run.input, EVENTS).await;
    let codec = codec();
    let mut by_partition: BTreeMap<i32, Vec<(i64, Event)>> = BTreeMap::new();
    for r in records {
        let event: Event = codec.decode(&r.payload).await.expect("decode input");
        by_partition.entry(r.partition).or_default().push((r.offset, event));
    }
    let mut outputs = HashMap::new();
    let mut states: HashMap<String, LeadState> = HashMap::new();
    for (_, mut events) in by_partition {
        events.sort_by_key(|(offset, _)| *offset);
        for (_, mut event) in events {
            let key = event.envelope.lead_key.clone().expect("lead key");
            let applied = model.apply(states.get(&key), &event, &key);
            states.insert(key, applied.state);
            if let Some(stage) = &applied.score.crossed {
                let mut lifecycle = event.clone();
                lifecycle.envelope.event_id =
                    nectar_core::ids::derived_event_id("acme", "score", &format!("{}#stage", event.envelope.event_id));
                lifecycle.envelope.event_type = STAGE_CHANGED.into();
                lifecycle.attributes = HashMap::from([
                    ("stage".to_owned(), stage.clone()),
                    ("cause_event_id".to_owned(), event.envelope.event_id.clone()),
                ]);
                lifecycle.score = Some(applied.score.clone());
                outputs.insert(lifecycle.envelope.event_id.clone(), lifecycle);
            }
            event.score = Some(applied.score);
            outputs.insert(event.envelope.event_id.clone(), event);
        }
    }
    (outputs, states)
}

async fn check(run: &Run) {
    let (expected, expected_states) = oracle(run).await;
    let records = read_topic(&run.output, expected.len()).await;
    let codec = codec();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for r in &records {
        let event: Event = codec.decode(&r.payload).await.expect("scored event decodes");
        let id = event.envelope.event_id.clone();
        *counts.entry(id.clone()).or_default() += 1;
        let want = expected.get(&id).unwrap_or_else(|| panic!("unexpected event {id}"));
        let (got, want) = (event.score.expect("scored"), want.score.clone().expect("scored"));
        assert!(
            (got.value - want.value).abs() < 1e-9,
            "{id}: score {} but an uninterrupted run gives {}",
            got.value,
            want.value
        );
        assert_eq!((got.stage, got.crossed), (want.stage, want.crossed), "{id}");
    }
    let ids: Vec<String> = expected.keys().cloned().collect();
    assert_exactly_once(&ids, &counts);
    assert!(
        expected.values().any(|e| e.envelope.event_type == STAGE_CHANGED),
        "the run crosses thresholds"
    );

    // The changelog's latest value per lead is the final state.
    let changelog = read_topic(&run.changelog, 1).await;
    let mut latest: HashMap<String, LeadState> = HashMap::new();
    for r in &changelog {
        let state: LeadState = codec.decode(&r.payload).await.expect("state decodes");
        latest.insert(r.key.clone().expect("key"), state);
    }
    assert_eq!(latest.len(), expected_states.len());
    for (key, want) in &expected_states {
        let got = &latest[key];
        assert!(
            (got.value - want.value).abs() < 1e-9 && got.events == want.events && got.stage == want.stage,
            "{key}: {got:?} vs {want:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_keeps_scores_equal_to_an_uninterrupted_run() {
    let run = setup().await;
    produce_input(&run).await;
    let mut process = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-score"), env(&run, "a"));
    process.kill_at_random_moments(5, 800..2500).await;
    wait_caught_up(&run.group, std::slice::from_ref(&run.input), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());
    assert!(
        process.log().contains("rebuilt the score store"),
        "restarts rebuilt state:\n{}",
        process.log()
    );
    check(&run).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_state_follows_partitions_when_an_instance_dies() {
    let run = setup().await;
    produce_input(&run).await;
    let mut a = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-score"), env(&run, "a"));
    let mut b = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-score"), env(&run, "b"));
    wait_both_assigned(&mut a, &mut b).await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    a.kill9();
    wait_caught_up(&run.group, std::slice::from_ref(&run.input), &mut [&mut b]).await;
    assert!(b.terminate().success(), "graceful stop:\n{}", b.log());
    check(&run).await;
}

/// Events of one lead, in order, with the given ids and types (an hour apart).
async fn produce_for_lead(run: &Run, lead: &str, events: &[(String, &str)]) {
    let codec = codec();
    codec.register(&run.input, &schema::EVENT).await.expect("schema");
    let producer: FutureProducer =
        nectar_core::kafka::idempotent_producer(&kafka_config(), "score-lead").expect("producer");
    for (i, (id, event_type)) in events.iter().enumerate() {
        let event = Event::new(Envelope {
            event_id: id.clone(),
            event_type: (*event_type).to_owned(),
            occurred_at: 1_790_000_000_000 + i as i64,
            received_at: 0,
            source: "test".into(),
            workspace_id: "acme".into(),
            lead_key: Some(lead.to_owned()),
            trace_parent: None,
            consent: None,
        });
        let payload = codec.encode(&run.input, &schema::EVENT, &event).await.expect("encode");
        producer
            .send(
                FutureRecord::to(&run.input).key(lead).payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .map_err(|(e, _)| e)
            .expect("sent");
    }
}

/// An event id that reaches score twice (written past normalize's de-duplication, e.g. by a
/// producer of its own) is applied once, also after score restarted and rebuilt its state.
#[tokio::test(flavor = "multi_thread")]
async fn an_event_id_that_reaches_score_twice_is_applied_once() {
    let run = setup().await;
    let codec = codec();
    let lead = nectar_core::ids::lead_key("acme", Some("twice@example.com"), None).expect("key");
    let first = [
        ("twice-0".to_owned(), "lead.captured"),
        ("twice-1".to_owned(), "demo.requested"),
        ("twice-0".to_owned(), "lead.captured"),
    ];
    produce_for_lead(&run, &lead, &first).await;
    let mut process = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-score"), env(&run, "a"));
    wait_caught_up(&run.group, std::slice::from_ref(&run.input), &mut [&mut process]).await;
    // Restarted: the state comes back from the changelog, and with it the applied ids.
    process.kill9();
    produce_for_lead(&run, &lead, &[("twice-1".to_owned(), "demo.requested")]).await;
    let mut process = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-score"), env(&run, "a"));
    wait_caught_up(&run.group, std::slice::from_ref(&run.input), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());

    let mut ids = Vec::new();
    for r in read_topic(&run.output, 2).await {
        let event: Event = codec.decode(&r.payload).await.expect("decodes");
        if event.envelope.event_type != STAGE_CHANGED {
            ids.push(event.envelope.event_id);
        }
    }
    assert_eq!(ids, ["twice-0", "twice-1"], "each event id scored once");
    let changelog = read_topic(&run.changelog, 2).await;
    let last = changelog.last().expect("a state");
    let state: LeadState = codec.decode(&last.payload).await.expect("state");
    assert_eq!(state.events, 2, "two events applied: {state:?}");
    assert!(
        (state.value - 40.0).abs() < 1e-3,
        "lead.captured 10 + demo.requested 30, once each (a millisecond of decay): {}",
        state.value
    );
}

/// An erasure request removes the lead's state (a tombstone on the changelog) and passes on
/// for the sinks; a later event starts the lead from nothing.
#[tokio::test(flavor = "multi_thread")]
async fn erasure_tombstones_the_lead_and_later_events_start_over() {
    let run = setup().await;
    let codec = codec();
    let lead = nectar_core::ids::lead_key("acme", Some("gone@example.com"), None).expect("key");
    let types = [
        "lead.captured",
        "demo.requested",
        nectar_score::ERASURE,
        "lead.captured",
    ];
    let events: Vec<(String, &str)> = types
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("erase-{i}"), *t))
        .collect();
    produce_for_lead(&run, &lead, &events).await;
    let mut process = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-score"), env(&run, "a"));
    wait_caught_up(&run.group, std::slice::from_ref(&run.input), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());

    let mut outputs = HashMap::new();
    for r in read_topic(&run.output, types.len()).await {
        let event: Event = codec.decode(&r.payload).await.expect("decodes");
        outputs.insert(event.envelope.event_id.clone(), event);
    }
    assert!(
        outputs["erase-2"].score.is_none(),
        "the erasure request passes on unscored"
    );
    assert_eq!(
        outputs["erase-3"].score.as_ref().map(|s| s.value),
        Some(10.0),
        "after erasure the lead starts from nothing"
    );

    let changelog = read_topic(&run.changelog, 4).await;
    let for_lead: Vec<_> = changelog
        .iter()
        .filter(|r| r.key.as_deref() == Some(lead.as_str()))
        .collect();
    assert_eq!(for_lead.len(), 4, "three states and one tombstone");
    assert!(for_lead[2].payload.is_empty(), "the erasure writes a tombstone");
    let last: LeadState = codec.decode(&for_lead[3].payload).await.expect("state");
    assert_eq!(last.events, 1);
}

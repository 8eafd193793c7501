//! Exactly-once enrichment, proven by killing: canonical events enriched while
//! `nectar-enrich` is SIGKILLed at random moments; afterwards every event is on the output
//! exactly once, with its derived facts. Needs the local stack.

use std::collections::HashMap;

use nectar_core::events::{Context, Envelope, Event, Person};
use nectar_tests::{
    ServiceProcess, StageTopics, assert_exactly_once, codec, processor_env, produce_events, read_topic, wait_caught_up,
};

const EVENTS: usize = 10_000;

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_at_random_moments_enriches_every_event_once() {
    let StageTopics {
        input,
        output,
        dlq,
        group,
    } = StageTopics::create("enrich").await;
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
    produce_events(&input, &events, |e| e.envelope.lead_key.clone().expect("lead key")).await;

    let env = processor_env(
        &group,
        "a",
        &dlq,
        &[("NECTAR_TOPICS__INPUT", &input), ("NECTAR_TOPICS__OUTPUT", &output)],
    );
    let mut process = ServiceProcess::start(env!("CARGO_BIN_EXE_nectar-enrich"), env);
    process.kill_at_random_moments(4, 600..2000).await;
    wait_caught_up(&group, std::slice::from_ref(&input), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());

    let records = read_topic(&output, EVENTS).await;
    let mut counts: HashMap<String, usize> = HashMap::new();
    let codec = codec();
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

//! `nectar-sink-hubspot` against the fake HubSpot (`nectar_tests::fakes::hubspot`), with the
//! real local Kafka and registry (`deploy/local/stack up`).
//!
//! Counting: the sink runs with `target.event_id_property = nectar_event_id`, a contact
//! property the fake's account has, so every contact write HubSpot accepted carries the id
//! of the event it came from and the fake counts writes per event id (and per e-mail). The
//! sample events have one e-mail each, so event ids and contacts map one to one.
//!
//! A contact upsert is idempotent: writing the same event twice leaves the contact as once.
//! So after a crash "exactly once" means every event was written (≥ 1, none missing, nothing
//! unexpected) and every contact holds exactly its event's values; the writes repeated
//! because of the crash are shown to be the ones in flight when it happened. Without a
//! crash, each event is written exactly once.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nectar_core::events::{Enrichment, Event};
use nectar_tests::fakes::hubspot::{
    ACCESS_TOKEN, COMPANY_ID_PROPERTY, CONTACTS_UPSERT, EVENT_ID_PROPERTY, FakeHubspot,
};
use nectar_tests::sink::{
    SinkTopics, dlq_summary, event_ids, fresh_sink_topics, produce_events, read_dlq, replay, run_to_exit,
    sample_events, sink_env, wait_until,
};
use nectar_tests::{ServiceProcess, assert_exactly_once, count_records, wait_caught_up};

const BIN: &str = env!("CARGO_BIN_EXE_nectar-sink-hubspot");

/// The sink's environment against `fake`, with a private-app token.
fn env(topics: &SinkTopics, fake: &FakeHubspot, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut all = vec![
        ("NECTAR_TARGET__API_URL", fake.url()),
        ("NECTAR_TARGET__ACCESS_TOKEN", ACCESS_TOKEN),
        ("NECTAR_TARGET__EVENT_ID_PROPERTY", EVENT_ID_PROPERTY),
        ("NECTAR_LOG__FILTER", "info,nectar_sink=debug"),
    ];
    all.extend_from_slice(extra);
    sink_env(topics, &all)
}

async fn caught_up(topics: &SinkTopics, sink: &mut ServiceProcess) {
    wait_caught_up(&topics.group, std::slice::from_ref(&topics.deliver), &mut [sink]).await;
}

fn email(event: &Event) -> String {
    event
        .person
        .as_ref()
        .and_then(|p| p.email.clone())
        .expect("sample events have e-mails")
}

/// Every contact holds its event's values (the events have one e-mail each).
fn assert_contacts_hold(fake: &FakeHubspot, events: &[&Event]) {
    for e in events {
        let person = e.person.as_ref().unwrap();
        let contact = fake
            .contact(&email(e))
            .unwrap_or_else(|| panic!("no contact for {}", email(e)));
        let p = &contact.properties;
        assert_eq!(p.get(EVENT_ID_PROPERTY), Some(&e.envelope.event_id), "{p:?}");
        assert_eq!(p.get("firstname"), person.first_name.as_ref(), "{p:?}");
        assert_eq!(p.get("lastname"), person.last_name.as_ref(), "{p:?}");
        assert_eq!(p.get("company"), person.company.as_ref(), "{p:?}");
        assert_eq!(p.get("jobtitle"), person.job_title.as_ref(), "{p:?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_upsert_and_restart_leave_every_contact_written_and_right() {
    let fake = FakeHubspot::start().await;
    let topics = fresh_sink_topics("hubspot").await;
    let events = sample_events(900, "crash");
    produce_events(&topics.deliver, &events).await;
    // HubSpot answers 400 ms after it wrote the contacts: a kill in that window leaves
    // contacts written whose offsets were never committed.
    fake.set_delay(Duration::from_millis(400));
    let env = env(
        &topics,
        &fake,
        &[
            ("NECTAR_SINK__MAX_BATCH", "100"),
            ("NECTAR_SINK__RATE_LIMIT_PER_SECOND", "100.0"),
        ],
    );
    let mut sink = ServiceProcess::start(BIN, env);

    let mut in_flight_at_kills: Vec<String> = Vec::new();
    for round in 0..2 {
        let seen = fake.requests_to(CONTACTS_UPSERT).len();
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let pending: Vec<_> = fake
                .requests_to(CONTACTS_UPSERT)
                .into_iter()
                .skip(seen)
                .filter(|r| r.status == 200 && !r.answered)
                .collect();
            if let Some(r) = pending.first() {
                sink.kill9();
                in_flight_at_kills.extend(r.event_ids.iter().cloned());
                break;
            }
            if let Some(status) = sink.exited() {
                panic!("the sink exited with {status}:\n{}", sink.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no upsert in flight (round {round}):\n{}",
                sink.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sink.restart();
    }
    fake.set_delay(Duration::ZERO);
    caught_up(&topics, &mut sink).await;

    let counts = fake.upserts_by_event();
    let expected: HashSet<String> = event_ids(&events).into_iter().collect();
    let missing: Vec<_> = expected.iter().filter(|id| !counts.contains_key(*id)).collect();
    assert!(
        missing.is_empty(),
        "{} events never written, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(3)]
    );
    let unexpected: Vec<_> = counts.keys().filter(|id| !expected.contains(*id)).collect();
    assert!(unexpected.is_empty(), "writes of unknown events: {unexpected:?}");
    assert_eq!(
        fake.contacts().len(),
        events.len(),
        "one contact per e-mail, none doubled"
    );
    assert_contacts_hold(&fake, &events.iter().collect::<Vec<_>>());
    // What the kills repeated: the upserts HubSpot had applied but not yet answered.
    assert!(!in_flight_at_kills.is_empty());
    for id in &in_flight_at_kills {
        assert!(
            counts[id] >= 2,
            "{id} was written before a kill and written again after it"
        );
    }
    assert_eq!(count_records(&topics.dlq).await, 0, "nothing dead-lettered");
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_then_429s_lose_nothing_and_retry_after_is_honoured() {
    let fake = FakeHubspot::start().await;
    let topics = fresh_sink_topics("hubspot").await;
    let events = sample_events(300, "outage");
    produce_events(&topics.deliver, &events).await;
    fake.fail_next(3, 500);
    fake.fail_next(1, 503);
    fake.rate_limit_next(2, Duration::from_secs(2));
    let mut sink = ServiceProcess::start(BIN, env(&topics, &fake, &[]));
    caught_up(&topics, &mut sink).await;

    assert_exactly_once(&event_ids(&events), &fake.upserts_by_event());
    let upserts = fake.requests_to(CONTACTS_UPSERT);
    let statuses: Vec<u16> = upserts.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");
    // After each 429 with `Retry-After: 2`, the same contacts came back no earlier than 2 s
    // later.
    for (i, throttled) in upserts.iter().enumerate().filter(|(_, r)| r.status == 429) {
        let ids: HashSet<&String> = throttled.ids.iter().collect();
        assert!(!ids.is_empty());
        let next = upserts[i + 1..]
            .iter()
            .find(|r| r.ids.iter().any(|id| ids.contains(id)))
            .expect("the throttled contacts were sent again");
        let waited = next.at - throttled.at;
        assert!(
            waited >= Duration::from_secs(2),
            "retried after {waited:?}, before Retry-After: 2"
        );
    }
    assert_contacts_hold(&fake, &events.iter().collect::<Vec<_>>());
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_partial_failure_retries_only_the_failed_contacts() {
    let fake = FakeHubspot::start().await;
    let topics = fresh_sink_topics("hubspot").await;
    let events = sample_events(120, "partial");
    let failing: HashSet<String> = [3, 17, 42, 77, 101].iter().map(|&i| email(&events[i])).collect();
    for e in &failing {
        fake.fail_once(e);
    }
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(BIN, env(&topics, &fake, &[]));
    caught_up(&topics, &mut sink).await;

    assert_exactly_once(&event_ids(&events), &fake.upserts_by_event());
    let upserts = fake.requests_to(CONTACTS_UPSERT);
    assert!(
        upserts
            .iter()
            .any(|r| r.status == 207 && r.ids.len() > 1 && r.ids.iter().any(|id| failing.contains(id))),
        "a 207 failed some contacts of a batch and wrote the others"
    );
    // Every e-mail is sent once, except the failing ones: twice, the second time in a retry
    // that carries nothing but failed contacts.
    let mut sent: HashMap<&String, usize> = HashMap::new();
    for r in &upserts {
        let retried: Vec<&String> = r.ids.iter().filter(|id| sent.contains_key(id)).collect();
        if !retried.is_empty() {
            assert_eq!(
                retried.len(),
                r.ids.len(),
                "a retry carried a contact that had been written: {:?}",
                r.ids
            );
        }
        for id in &r.ids {
            *sent.entry(id).or_default() += 1;
        }
    }
    for (id, n) in &sent {
        let want = if failing.contains(*id) { 2 } else { 1 };
        assert_eq!(*n, want, "{id} sent {n} times");
    }
    assert_eq!(
        count_records(&topics.dlq).await,
        0,
        "a transient failure is not dead-lettered"
    );
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_contacts_are_dead_lettered_and_replayed_once_fixed() {
    let fake = FakeHubspot::start().await;
    let topics = fresh_sink_topics("hubspot").await;
    let mut events = sample_events(40, "dlq");
    // HubSpot refuses one address (an operator will correct the account's rules) ...
    let bad_email = email(&events[7]);
    let bad_id = events[7].envelope.event_id.clone();
    fake.reject_email(&bad_email);
    // ... and one event has no e-mail at all: it can never become a contact.
    events[12].person.as_mut().unwrap().email = None;
    let no_email_id = events[12].envelope.event_id.clone();
    produce_events(&topics.deliver, &events).await;
    let env = env(&topics, &fake, &[]);
    let mut sink = ServiceProcess::start(BIN, env.clone());
    caught_up(&topics, &mut sink).await;

    let dead = read_dlq(&topics.dlq, 2).await;
    assert_eq!(dead.len(), 2, "exactly the refused events are dead-lettered");
    let summaries = dlq_summary(&dead);
    let by_id: HashMap<&str, _> = summaries.iter().map(|s| (s["event_id"].as_str(), s)).collect();
    let invalid = by_id[bad_id.as_str()];
    assert!(invalid["reason"].contains("VALIDATION_ERROR"), "{invalid:?}");
    assert!(invalid["reason"].contains(&bad_email), "{invalid:?}");
    assert!(invalid["response"].contains("INVALID_EMAIL"), "{invalid:?}");
    assert_eq!(invalid["attempts"], "1", "a validation error is not retried");
    assert_eq!(invalid["topic"], topics.deliver);
    assert!(invalid["partition"].parse::<i32>().is_ok() && invalid["offset"].parse::<i64>().is_ok());
    let no_email = by_id[no_email_id.as_str()];
    assert_eq!(no_email["reason"], "no e-mail: HubSpot upserts contacts by e-mail");
    let good: Vec<String> = event_ids(&events)
        .into_iter()
        .filter(|id| *id != bad_id && *id != no_email_id)
        .collect();
    assert_exactly_once(&good, &fake.upserts_by_event());
    // The invalid contact was in a 207 with the others, which were written.
    assert!(
        fake.requests_to(CONTACTS_UPSERT)
            .iter()
            .any(|r| r.status == 207 && r.ids.contains(&bad_email) && r.ids.len() > 1)
    );

    // The fix: HubSpot accepts the address now. Replay what it refused, not the other.
    fake.fix_email(&bad_email);
    let output = replay(BIN, &env, &["--reason", "INVALID_EMAIL"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("replayed 1 of 2"),
        "{output:?}"
    );
    wait_until("the replayed event is written", Duration::from_secs(60), || async {
        fake.upserts_by_event().contains_key(&bad_id)
    })
    .await;
    caught_up(&topics, &mut sink).await;
    let all: Vec<String> = event_ids(&events).into_iter().filter(|id| *id != no_email_id).collect();
    assert_exactly_once(&all, &fake.upserts_by_event());
    assert_contacts_hold(
        &fake,
        &events
            .iter()
            .filter(|e| e.envelope.event_id != no_email_id)
            .collect::<Vec<_>>(),
    );
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_stop_the_sink_at_start() {
    let fake = FakeHubspot::start().await;
    let topics = fresh_sink_topics("hubspot").await;
    let env_ = env(&topics, &fake, &[("NECTAR_TARGET__ACCESS_TOKEN", "pat-na1-revoked")]);
    let (status, output) = run_to_exit(BIN, &env_, Duration::from_secs(60));
    assert!(!status.success(), "{output}");
    assert!(output.contains("credentials rejected"), "{output}");
    assert!(
        output.contains("401") && output.contains("INVALID_AUTHENTICATION"),
        "{output}"
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "one answer is enough: a 401 is not retried");
    assert_eq!(requests[0].path, "/crm/v3/objects/contacts");

    // OAuth with a refresh token HubSpot does not know stops the same way.
    fake.enable_oauth("client-1", "secret-1", "refresh-1", Duration::from_secs(1800));
    let oauth = oauth_env(&topics, &fake, "refresh-wrong");
    let (status, output) = run_to_exit(BIN, &oauth, Duration::from_secs(60));
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("credentials rejected") && output.contains("BAD_REFRESH_TOKEN"),
        "{output}"
    );

    // The right token passes the start check.
    let check = std::process::Command::new(BIN)
        .envs(env(&topics, &fake, &[]))
        .arg("check")
        .output()
        .expect("check");
    assert!(check.status.success(), "{check:?}");
}

fn oauth_env(topics: &SinkTopics, fake: &FakeHubspot, refresh_token: &str) -> Vec<(String, String)> {
    env(topics, fake, &[])
        .into_iter()
        .filter(|(k, _)| k != "NECTAR_TARGET__ACCESS_TOKEN")
        .chain(
            [
                ("NECTAR_TARGET__OAUTH__CLIENT_ID", "client-1"),
                ("NECTAR_TARGET__OAUTH__CLIENT_SECRET", "secret-1"),
                ("NECTAR_TARGET__OAUTH__REFRESH_TOKEN", refresh_token),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned())),
        )
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn oauth_tokens_are_cached_and_refreshed_once_on_401() {
    let fake = FakeHubspot::start().await;
    fake.enable_oauth("client-1", "secret-1", "refresh-1", Duration::from_secs(1800));
    let topics = fresh_sink_topics("hubspot").await;
    let first = sample_events(60, "oauth-a");
    produce_events(&topics.deliver, &first).await;
    let mut sink = ServiceProcess::start(BIN, oauth_env(&topics, &fake, "refresh-1"));
    caught_up(&topics, &mut sink).await;
    assert_eq!(
        fake.token_requests(),
        1,
        "one token, cached for the start check and every write"
    );

    // HubSpot stops accepting the token before its announced expiry: a 401, one refresh.
    fake.expire_oauth_tokens();
    let second = sample_events(60, "oauth-b");
    produce_events(&topics.deliver, &second).await;
    caught_up(&topics, &mut sink).await;
    assert_eq!(fake.token_requests(), 2, "{}", sink.log());
    let all: Vec<String> = event_ids(&first).into_iter().chain(event_ids(&second)).collect();
    assert_exactly_once(&all, &fake.upserts_by_event());
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn companies_are_upserted_by_domain_and_associated() {
    let fake = FakeHubspot::start().await;
    let topics = fresh_sink_topics("hubspot").await;
    let mut events = sample_events(30, "companies");
    for (i, e) in events.iter_mut().enumerate() {
        if i % 10 != 9 {
            e.enrichment = Some(Enrichment {
                company_domain: Some(format!("Co{}.example", i % 3)),
                ..Enrichment::default()
            });
        }
    }
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(BIN, env(&topics, &fake, &[("NECTAR_TARGET__COMPANIES", "true")]));
    caught_up(&topics, &mut sink).await;

    assert_exactly_once(&event_ids(&events), &fake.upserts_by_event());
    let companies = fake.companies();
    let keys: Vec<&String> = companies.keys().collect();
    assert_eq!(keys, ["co0.example", "co1.example", "co2.example"]);
    for c in companies.values() {
        assert_eq!(c.properties.get("name").map(String::as_str), Some("Analytical Engines"));
        assert!(c.properties.contains_key(COMPANY_ID_PROPERTY));
    }
    let associations = fake.associations();
    for (i, e) in events.iter().enumerate() {
        let contact = fake.contact(&email(e)).unwrap();
        let linked: Vec<_> = associations.iter().filter(|(from, _)| *from == contact.id).collect();
        if i % 10 == 9 {
            assert!(linked.is_empty(), "an event without a company domain links nothing");
        } else {
            let company = &companies[&format!("co{}.example", i % 3)];
            assert_eq!(linked, [&(contact.id.clone(), company.id.clone())]);
        }
    }
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn events_for_one_contact_in_a_batch_are_merged_later_wins() {
    let fake = FakeHubspot::start().await;
    let topics = fresh_sink_topics("hubspot").await;
    // Three events for the same person (one partition: same lead key), then others.
    let mut events = sample_events(10, "merge");
    let same = email(&events[0]);
    let key = events[0].envelope.lead_key.clone();
    for (i, e) in events.iter_mut().enumerate().take(3) {
        let p = e.person.as_mut().unwrap();
        p.email = Some(same.clone());
        p.first_name = Some(format!("Version{i}"));
        if i == 2 {
            p.job_title = None; // the latest event lacks it: the earlier value stays
        }
        e.envelope.lead_key = key.clone();
    }
    produce_events(&topics.deliver, &events).await;
    let mut sink = ServiceProcess::start(BIN, env(&topics, &fake, &[("NECTAR_SINK__LINGER_MS", "1000")]));
    caught_up(&topics, &mut sink).await;

    let upserts = fake.requests_to(CONTACTS_UPSERT);
    assert!(
        upserts.iter().all(|r| r.status == 200),
        "no duplicate ids refused: {upserts:?}"
    );
    assert_eq!(fake.upserts_by_email()[&same], 1, "three events, one input");
    let contact = fake.contact(&same).unwrap();
    assert_eq!(contact.properties["firstname"], "Version2");
    assert_eq!(contact.properties["jobtitle"], "Engineer");
    assert_eq!(contact.properties[EVENT_ID_PROPERTY], events[2].envelope.event_id);
    assert_eq!(fake.contacts().len(), 8);
    assert_eq!(count_records(&topics.dlq).await, 0);
    assert!(sink.exited().is_none(), "{}", sink.log());
}

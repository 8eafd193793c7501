//! `nectar-sink-slack` against the fake Slack (`nectar_tests::fakes::slack`), with the real
//! local Kafka and registry (`deploy/local/stack up`).
//!
//! Counting: the fake counts stored messages per event id (bot mode: the message metadata's
//! `event_payload.event_id`; webhook mode: the `event <id>` line of the default blocks), and
//! counts a message posted twice twice. Bot mode promises each event once, crashes included,
//! so the crash test asserts exactly once. The fake answers each post 20 ms after storing it,
//! and the sink is killed inside that window: Slack has the message, the sink never heard.
//!
//! The tests at the end drive the connector directly against the fake (no Kafka): the
//! duplicate lookup through history pages, a lost answer, the start check.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nectar_core::config::Sensitive;
use nectar_core::events::Event;
use nectar_sink::{Connector, Delivery, DeliveryError, Item, ItemResult, StartError};
use nectar_sink_slack::SlackConnector;
use nectar_sink_slack::config::{Mode, RouteConfig, SlackConfig};
use nectar_tests::fakes::slack::{
    ARCHIVED_CHANNEL, BOT_TOKEN, DEALS_CHANNEL, FakeSlack, LEADS_CHANNEL, OUTSIDE_CHANNEL,
};
use nectar_tests::sink::{
    SinkTopics, dlq_summary, event_ids, fresh_sink_topics, produce_events, read_dlq, replay, run_to_exit,
    sample_events, sink_env, wait_until,
};
use nectar_tests::{ServiceProcess, assert_exactly_once, count_records, unique, wait_caught_up};

const BIN: &str = env!("CARGO_BIN_EXE_nectar-sink-slack");

/// Leads and forms to #leads, payments to #deals, anything else to #leads.
const ROUTED: &str = r#"
default_channel = "C0LEADS01"

[[target.routes]]
event_types = ["payment.*"]
channel = "C0DEALS01"
"#;

/// The sink's configuration file: `target` holds `[target]` keys (and routes after them).
/// A short Kafka session so a killed instance's partitions move on quickly.
fn config_file(target: &str) -> String {
    let path = std::env::temp_dir().join(format!("{}.toml", unique("nectar-sink-slack")));
    let toml = format!(
        "[kafka.properties]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"1000\"\n\n[target]\n{target}\n"
    );
    std::fs::write(&path, toml).expect("config file");
    path.display().to_string()
}

/// Bot mode against `fake` with its token; no client-side rate limit (the fake has none).
fn bot_env(topics: &SinkTopics, fake: &FakeSlack, target: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let file = config_file(&format!("mode = \"bot\"\napi_url = \"{}\"\n{target}", fake.api_url()));
    let mut all = vec![
        ("NECTAR_CONFIG", file.as_str()),
        ("NECTAR_TARGET__TOKEN", BOT_TOKEN),
        ("NECTAR_SINK__RATE_LIMIT_PER_SECOND", "0"),
        ("NECTAR_LOG__FILTER", "info,nectar_sink=debug,nectar_sink_slack=debug"),
    ];
    all.extend_from_slice(extra);
    sink_env(topics, &all)
}

async fn caught_up(topics: &SinkTopics, sink: &mut ServiceProcess) {
    wait_caught_up(&topics.group, std::slice::from_ref(&topics.deliver), &mut [sink]).await;
}

fn id(event: &Event) -> String {
    event.envelope.event_id.clone()
}

/// The answers the fake gave to the posts of `event`, in order.
fn answers(fake: &FakeSlack, event: &Event) -> Vec<String> {
    fake.posts_of(&id(event)).into_iter().map(|p| p.answer).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_between_slack_storing_and_answering_a_post_leaves_every_event_posted_once() {
    let fake = FakeSlack::start().await;
    let topics = fresh_sink_topics("slack").await;
    let events = sample_events(300, "crash");
    produce_events(&topics.deliver, &events).await;
    fake.set_post_delay(Duration::from_millis(20));
    let env = bot_env(&topics, &fake, ROUTED, &[("NECTAR_SINK__MAX_BATCH", "20")]);
    let mut sink = ServiceProcess::start(BIN, env);

    let mut killed_in_flight: Vec<String> = Vec::new();
    for round in 0..2 {
        // Some progress first (the kill lands inside a batch, after some of it was posted),
        // then a post Slack stored and has not answered yet.
        let seen = fake.posts().len();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let in_flight = fake.unanswered_posts();
            if fake.posts().len() >= seen + 30
                && let Some(post) = in_flight.first()
            {
                sink.kill9();
                killed_in_flight.extend(post.event_id.clone());
                break;
            }
            if let Some(status) = sink.exited() {
                panic!("the sink exited with {status}:\n{}", sink.log());
            }
            assert!(
                Instant::now() < deadline,
                "no post in flight (round {round}):\n{}",
                sink.log()
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        sink.restart();
    }
    caught_up(&topics, &mut sink).await;

    let counts = fake.counts();
    assert_exactly_once(&event_ids(&events), &counts);
    assert_eq!(killed_in_flight.len(), 2);
    for id in &killed_in_flight {
        assert_eq!(counts[id], 1, "{id} was stored when the sink died and not posted again");
    }
    assert!(fake.history_reads() >= 2, "each restart looked its first records up");
    assert!(
        sink.log().contains("already posted (found in the channel's history)"),
        "the restarts found posted events: {}",
        sink.log()
    );
    // Routing: payments in #deals, the rest in #leads.
    let by_id: HashMap<String, &Event> = events.iter().map(|e| (id(e), e)).collect();
    for m in fake.messages() {
        let event = by_id[m.event_id.as_ref().unwrap()];
        let expected = if event.envelope.event_type == "payment.succeeded" {
            DEALS_CHANNEL
        } else {
            LEADS_CHANNEL
        };
        assert_eq!(m.channel, expected, "{}", event.envelope.event_type);
    }
    assert_eq!(count_records(&topics.dlq).await, 0, "nothing dead-lettered");
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_then_429s_lose_nothing_and_retry_after_is_honoured() {
    let fake = FakeSlack::start().await;
    let topics = fresh_sink_topics("slack").await;
    let events = sample_events(12, "outage");
    produce_events(&topics.deliver, &events).await;
    fake.fail_next(4);
    fake.rate_limit_next(3, 2);
    let mut sink = ServiceProcess::start(BIN, bot_env(&topics, &fake, ROUTED, &[]));
    caught_up(&topics, &mut sink).await;

    assert_exactly_once(&event_ids(&events), &fake.counts());
    let posts = fake.posts();
    let answers: Vec<&str> = posts.iter().map(|p| p.answer.as_str()).collect();
    assert_eq!(
        &answers[..7],
        [
            "http 500", "http 500", "http 500", "http 500", "http 429", "http 429", "http 429"
        ],
        "{answers:?}"
    );
    for pair in posts.windows(2) {
        if pair[0].answer == "http 429" {
            let gap = pair[1].at - pair[0].at;
            assert!(
                gap >= Duration::from_secs(2),
                "next post {gap:?} after a 429 with Retry-After: 2"
            );
        }
    }
    // A 500 may come after Slack stored the message: the retry looked it up first.
    assert!(fake.history_reads() >= 1);
    assert_eq!(count_records(&topics.dlq).await, 0, "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failed_event_is_retried_alone_and_posted_once() {
    let fake = FakeSlack::start().await;
    let topics = fresh_sink_topics("slack").await;
    let events = sample_events(8, "partial");
    produce_events(&topics.deliver, &events).await;
    // One event hits a documented transient error, another one Slack does not document.
    fake.fail_once_containing(&id(&events[2]), "internal_error");
    fake.fail_once_containing(&id(&events[5]), "fake_unexplained_error");
    let mut sink = ServiceProcess::start(BIN, bot_env(&topics, &fake, ROUTED, &[]));
    caught_up(&topics, &mut sink).await;

    assert_exactly_once(&event_ids(&events), &fake.counts());
    assert_eq!(answers(&fake, &events[2]), ["internal_error", "ok"]);
    assert_eq!(answers(&fake, &events[5]), ["fake_unexplained_error", "ok"]);
    for (i, e) in events.iter().enumerate() {
        if i != 2 && i != 5 {
            assert_eq!(answers(&fake, e), ["ok"], "event {i} was posted once, never retried");
        }
    }
    // Every request carries one event: the retries carried only the failed ones.
    let posts = fake.posts();
    assert_eq!(posts.len(), events.len() + 2);
    assert!(posts.iter().all(|p| p.event_id.is_some()));
    assert_eq!(count_records(&topics.dlq).await, 0, "nothing dead-lettered");
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_and_unroutable_events_are_dead_lettered_and_replay_delivers_once_fixed() {
    let fake = FakeSlack::start().await;
    let topics = fresh_sink_topics("slack").await;
    // Types cycle form.submitted, lead.captured, payment.succeeded, email.clicked: the two
    // email.clicked events have no route and there is no default channel.
    let events = sample_events(8, "dlq");
    produce_events(&topics.deliver, &events).await;
    let routes = r#"
[[target.routes]]
event_types = ["form.*", "lead.*"]
channel = "C0LEADS01"

[[target.routes]]
event_types = ["payment.*"]
channel = "C0DEALS01"
"#;
    let refused = &events[1];
    fake.reject_containing(&id(refused), "invalid_blocks");
    let env = bot_env(&topics, &fake, routes, &[]);
    let mut sink = ServiceProcess::start(BIN, env.clone());
    caught_up(&topics, &mut sink).await;

    let dead = dlq_summary(&read_dlq(&topics.dlq, 3).await);
    assert_eq!(dead.len(), 3, "{dead:#?}");
    let refused_letter = dead
        .iter()
        .find(|d| d["event_id"] == id(refused))
        .expect("refused event");
    assert!(
        refused_letter["reason"].contains("invalid_blocks"),
        "{refused_letter:?}"
    );
    assert!(refused_letter["reason"].contains(LEADS_CHANNEL), "{refused_letter:?}");
    assert!(
        refused_letter["response"].contains(r#""error":"invalid_blocks""#),
        "{refused_letter:?}"
    );
    for letter in &dead {
        assert!(letter["attempts"].parse::<u32>().unwrap() >= 1, "{letter:?}");
        assert_eq!(letter["topic"], topics.deliver, "{letter:?}");
        assert!(letter["partition"].parse::<i32>().is_ok() && letter["offset"].parse::<i64>().is_ok());
    }
    let unroutable: Vec<&Event> = events
        .iter()
        .filter(|e| e.envelope.event_type == "email.clicked")
        .collect();
    assert_eq!(unroutable.len(), 2);
    for e in &unroutable {
        let letter = dead.iter().find(|d| d["event_id"] == id(e)).expect("unroutable event");
        assert!(
            letter["reason"].contains("no Slack channel for event type `email.clicked`"),
            "{letter:?}"
        );
    }
    // The rest of the batch was posted.
    let delivered: Vec<String> = events
        .iter()
        .filter(|e| id(e) != id(refused) && e.envelope.event_type != "email.clicked")
        .map(id)
        .collect();
    assert_exactly_once(&delivered, &fake.counts());

    // Fixed: replay the refused one only.
    fake.fix();
    let output = replay(BIN, &env, &["--reason", "invalid_blocks"]);
    assert!(output.status.success());
    wait_until("the replayed event is posted", Duration::from_secs(60), || async {
        fake.counts().contains_key(&id(refused))
    })
    .await;
    caught_up(&topics, &mut sink).await;
    let mut expected = delivered.clone();
    expected.push(id(refused));
    assert_exactly_once(&expected, &fake.counts());
    assert_eq!(answers(&fake, refused), ["invalid_blocks", "ok"]);
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_credentials_or_channels_stop_the_sink_at_start() {
    let fake = FakeSlack::start().await;
    let topics = fresh_sink_topics("slack").await;
    produce_events(&topics.deliver, &sample_events(3, "creds")).await;

    let env = bot_env(
        &topics,
        &fake,
        ROUTED,
        &[(
            "NECTAR_TARGET__TOKEN",
            "xoxb-0000000000-0000000000-revokedrevokedrevoked",
        )],
    );
    let (status, output) = run_to_exit(BIN, &env, Duration::from_secs(60));
    assert!(!status.success(), "{output}");
    assert!(output.contains("credentials rejected"), "{output}");
    assert!(output.contains("invalid_auth"), "{output}");

    let archived = bot_env(
        &topics,
        &fake,
        &format!("default_channel = \"{ARCHIVED_CHANNEL}\""),
        &[],
    );
    let (status, output) = run_to_exit(BIN, &archived, Duration::from_secs(60));
    assert!(!status.success(), "{output}");
    assert!(
        output.contains("target.default_channel") && output.contains("is archived"),
        "{output}"
    );

    let outside = bot_env(&topics, &fake, &format!("default_channel = \"{OUTSIDE_CHANNEL}\""), &[]);
    let (status, output) = run_to_exit(BIN, &outside, Duration::from_secs(60));
    assert!(!status.success(), "{output}");
    assert!(output.contains("not a member"), "{output}");

    assert!(fake.posts().is_empty(), "nothing was posted");
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_mode_posts_every_event_and_honours_retry_after() {
    let fake = FakeSlack::start().await;
    let topics = fresh_sink_topics("slack").await;
    let events = sample_events(10, "webhook");
    produce_events(&topics.deliver, &events).await;
    fake.rate_limit_next(1, 1);
    let file = config_file("mode = \"webhook\"\n");
    let env = sink_env(
        &topics,
        &[
            ("NECTAR_CONFIG", file.as_str()),
            ("NECTAR_TARGET__WEBHOOK_URL", fake.webhook_url().as_str()),
            ("NECTAR_SINK__RATE_LIMIT_PER_SECOND", "0"),
        ],
    );
    let mut sink = ServiceProcess::start(BIN, env);
    caught_up(&topics, &mut sink).await;

    assert_exactly_once(&event_ids(&events), &fake.counts());
    let posts = fake.posts();
    assert!(posts.iter().all(|p| p.endpoint == "webhook"));
    assert_eq!(posts[0].answer, "http 429");
    assert!(posts[1].at - posts[0].at >= Duration::from_secs(1));
    assert!(fake.messages().iter().all(|m| m.via_webhook && m.metadata.is_none()));
    assert_eq!(count_records(&topics.dlq).await, 0, "nothing dead-lettered");
}

// ---- the connector against the fake, without Kafka ------------------------------------------

fn bot_config(fake: &FakeSlack) -> SlackConfig {
    SlackConfig {
        mode: Mode::Bot,
        token: Some(Sensitive::new(BOT_TOKEN.into())),
        api_url: fake.api_url(),
        webhook_url: None,
        default_channel: Some(LEADS_CHANNEL.into()),
        routes: vec![RouteConfig {
            event_types: vec!["payment.*".into()],
            channel: Some(DEALS_CHANNEL.into()),
            text: None,
            blocks: None,
        }],
        template: None,
        lookup_window_secs: 3600,
        unfurl: false,
        check_channels: true,
    }
}

fn item(event: &Event, maybe_delivered: bool) -> Item {
    Item {
        topic: "t".into(),
        partition: 0,
        offset: 0,
        key: None,
        value: Vec::new(),
        headers: Vec::new(),
        timestamp: None,
        event: Arc::new(event.clone()),
        attempts: 0,
        maybe_delivered,
    }
}

async fn deliver(connector: &SlackConnector, item: Item) -> Result<Vec<ItemResult>, DeliveryError> {
    connector
        .deliver(Delivery {
            items: &[item],
            positions: None,
        })
        .await
}

#[tokio::test]
async fn a_post_whose_answer_was_lost_is_looked_up_not_posted_again() {
    let fake = FakeSlack::start().await;
    let connector = SlackConnector::new(bot_config(&fake), Duration::from_secs(10)).unwrap();
    connector.start().await.unwrap();
    let start_reads = fake.history_reads();
    assert_eq!(start_reads, 2, "the start check reads one message of each channel");
    let events = sample_events(2, "lost");
    fake.lose_answer_containing(&id(&events[0]));
    let first = deliver(&connector, item(&events[0], false)).await;
    assert!(matches!(first, Err(DeliveryError::Retry { .. })), "{first:?}");
    assert_eq!(fake.counts()[&id(&events[0])], 1, "Slack stored it");
    let again = deliver(&connector, item(&events[0], false)).await.unwrap();
    assert_eq!(again, [ItemResult::Delivered]);
    assert_eq!(
        fake.posts_of(&id(&events[0])).len(),
        1,
        "found in the history, not posted again"
    );
    assert_eq!(fake.history_reads(), start_reads + 1);
    // An event posted with a clear answer is not looked up.
    assert_eq!(
        deliver(&connector, item(&events[1], false)).await.unwrap(),
        [ItemResult::Delivered]
    );
    assert_eq!(fake.history_reads(), start_reads + 1);
}

#[tokio::test]
async fn maybe_delivered_events_are_looked_up_through_every_history_page() {
    let fake = FakeSlack::start().await;
    let mut config = bot_config(&fake);
    config.routes.clear();
    let before_crash = SlackConnector::new(config.clone(), Duration::from_secs(10)).unwrap();
    let events = sample_events(452, "pages");
    for e in &events[..450] {
        assert_eq!(
            deliver(&before_crash, item(e, false)).await.unwrap(),
            [ItemResult::Delivered]
        );
    }
    assert_eq!(fake.history_reads(), 0);

    // A new owner: its first records may have been posted by the previous one.
    let after_crash = SlackConnector::new(config, Duration::from_secs(10)).unwrap();
    assert_eq!(
        deliver(&after_crash, item(&events[3], true)).await.unwrap(),
        [ItemResult::Delivered]
    );
    assert_eq!(fake.history_reads(), 3, "450 messages, 200 a page");
    // Known from that read: no request at all.
    assert_eq!(
        deliver(&after_crash, item(&events[449], true)).await.unwrap(),
        [ItemResult::Delivered]
    );
    assert_eq!(fake.history_reads(), 3);
    // Not posted before: a read from the last read on (less a 2-minute margin, which here
    // covers every message again), then the post.
    assert_eq!(
        deliver(&after_crash, item(&events[450], true)).await.unwrap(),
        [ItemResult::Delivered]
    );
    let reads = fake.history_reads();
    assert!(reads > 3, "read again");
    // Its own post is known without a read.
    assert_eq!(
        deliver(&after_crash, item(&events[450], true)).await.unwrap(),
        [ItemResult::Delivered]
    );
    assert_eq!(fake.history_reads(), reads);
    assert_eq!(
        deliver(&after_crash, item(&events[451], false)).await.unwrap(),
        [ItemResult::Delivered]
    );

    let counts = fake.counts();
    assert_exactly_once(&event_ids(&events), &counts);
    let message = fake
        .messages()
        .into_iter()
        .find(|m| m.event_id.as_deref() == Some(&id(&events[3])))
        .unwrap();
    assert_eq!(
        message.metadata.unwrap(),
        serde_json::json!({"event_type": "nectar_event", "event_payload": {"event_id": id(&events[3])}})
    );
    assert!(
        message
            .text
            .starts_with("New lead: Ada3 Lovelace (lead-pages-3@example.com)"),
        "{}",
        message.text
    );
}

#[tokio::test]
async fn the_start_check_names_what_is_wrong() {
    let fake = FakeSlack::start().await;
    let check = |config: SlackConfig| async move {
        SlackConnector::new(config, Duration::from_secs(5))
            .unwrap()
            .start()
            .await
    };
    assert_eq!(check(bot_config(&fake)).await, Ok(()));

    let mut c = bot_config(&fake);
    c.token = Some(Sensitive::new("xoxb-wrong".into()));
    match check(c).await {
        Err(e @ StartError::Credentials(_)) => {
            let m = e.to_string();
            assert!(m.contains("credentials rejected") && m.contains("invalid_auth"), "{m}");
        }
        other => panic!("{other:?}"),
    }
    for (channel, says) in [
        (ARCHIVED_CHANNEL, "is archived"),
        (OUTSIDE_CHANNEL, "not a member"),
        ("C0NOSUCH1", "channel_not_found"),
    ] {
        let mut c = bot_config(&fake);
        c.default_channel = Some(channel.into());
        match check(c).await {
            Err(StartError::Config(m)) => assert!(m.contains(says) && m.contains("target.default_channel"), "{m}"),
            other => panic!("{channel}: {other:?}"),
        }
    }
    let mut c = bot_config(&fake);
    c.api_url = "http://127.0.0.1:9/api".into();
    assert!(matches!(check(c).await, Err(StartError::Unreachable(_))));

    let mut c = bot_config(&fake);
    fake.revoke_token();
    c.check_channels = false;
    assert!(matches!(check(c).await, Err(StartError::Credentials(_))));
}

/// The connector reports Slack's 429 with its Retry-After; the runtime holds every request of
/// the sink until then (proven end to end by the two tests above that honour Retry-After).
#[tokio::test]
async fn a_429_is_reported_with_its_retry_after_for_the_runtime_to_hold() {
    let fake = FakeSlack::start().await;
    let connector = SlackConnector::new(bot_config(&fake), Duration::from_secs(10)).unwrap();
    let events = sample_events(1, "pause");
    fake.rate_limit_next(1, 2);
    match deliver(&connector, item(&events[0], false)).await {
        Err(DeliveryError::Retry { after, .. }) => assert_eq!(after, Some(Duration::from_secs(2))),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.posts().len(), 1);
    assert_eq!(
        deliver(&connector, item(&events[0], false)).await.unwrap(),
        [ItemResult::Delivered]
    );
    assert_exactly_once(&event_ids(&events), &fake.counts());
}

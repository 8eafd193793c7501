//! Graceful shutdown of the sink runtime, proven with the one target that shows every
//! redelivery: Slack's incoming webhook (no lookup, no idempotency key). SIGTERM mid-stream
//! must finish the batch in flight, commit it and exit 0; a restart then posts only what was
//! left, so every event is posted exactly once.

use std::time::{Duration, Instant};

use nectar_tests::fakes::slack::FakeSlack;
use nectar_tests::sink::{event_ids, fresh_sink_topics, produce_events, sample_events, sink_env};
use nectar_tests::{ServiceProcess, assert_exactly_once, wait_caught_up};

const BIN: &str = env!("CARGO_BIN_EXE_nectar-sink-slack");

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_and_commits_the_batch_in_flight_then_a_restart_posts_only_the_rest() {
    let fake = FakeSlack::start().await;
    let topics = fresh_sink_topics("slack").await;
    let events = sample_events(200, "sigterm");
    produce_events(&topics.deliver, &events).await;
    // Slow posts: a SIGTERM lands while a batch is being posted.
    fake.set_post_delay(Duration::from_millis(20));
    let env = sink_env(
        &topics,
        &[
            ("NECTAR_TARGET__MODE", "webhook"),
            ("NECTAR_TARGET__WEBHOOK_URL", fake.webhook_url().as_str()),
            ("NECTAR_SINK__RATE_LIMIT_PER_SECOND", "0"),
            ("NECTAR_SINK__MAX_BATCH", "20"),
        ],
    );
    let mut sink = ServiceProcess::start(BIN, env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while fake.posts().len() < 50 {
        assert!(Instant::now() < deadline, "no progress:\n{}", sink.log());
        if let Some(status) = sink.exited() {
            panic!("the sink exited with {status}:\n{}", sink.log());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let asked = Instant::now();
    let status = sink.terminate();
    assert!(status.success(), "SIGTERM exits 0, got {status}:\n{}", sink.log());
    assert!(
        asked.elapsed() < Duration::from_secs(15),
        "the batch in flight was finished, not waited out"
    );
    let posted_before_restart = fake.posts().len();
    assert!(posted_before_restart < events.len(), "stopped mid-stream");
    assert!(sink.log().contains("stopped"), "{}", sink.log());

    sink.restart();
    wait_caught_up(&topics.group, std::slice::from_ref(&topics.deliver), &mut [&mut sink]).await;
    // A batch finished but not committed at SIGTERM would be posted twice here.
    assert_exactly_once(&event_ids(&events), &fake.counts());
}

//! `nectar-normalize replay` against the local stack: normalize reads three raw topics, so
//! each dead letter goes back to the one it came from, and `--origin` picks one of them.

use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_tests::dead_letters::{Poison, assert_replayed_unchanged, produce_poison, replayed, run, text};
use nectar_tests::{
    ServiceProcess, count_records, fresh_changelog, fresh_topics, kafka_config, processor_env, read_topic, unique,
    wait_caught_up,
};

const BIN: &str = env!("CARGO_BIN_EXE_nectar-normalize");

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_go_back_to_their_own_raw_topic_and_origin_picks_one() {
    let topics = fresh_topics().await;
    let (output, dlq, group) = (unique("t.events"), unique("t.dlq.normalize"), unique("normalize"));
    ensure_topics(&kafka_config(), &[TopicSpec::new(&output, 3), TopicSpec::new(&dlq, 1)])
        .await
        .expect("topics");
    let dedup = fresh_changelog("dedup").await;
    let (form, webhook) = (Poison::new("form"), Poison::new("webhook"));
    produce_poison(&topics.forms, &form).await;
    produce_poison(&topics.webhooks, &webhook).await;
    let env = processor_env(
        &group,
        "a",
        &dlq,
        &[
            ("NECTAR_TOPICS__FORMS", &topics.forms),
            ("NECTAR_TOPICS__WEBHOOKS", &topics.webhooks),
            ("NECTAR_TOPICS__APPS", &topics.apps),
            ("NECTAR_OUTPUT__TOPIC", &output),
            ("NECTAR_DEDUP__CHANGELOG", &dedup),
        ],
    );
    let inputs = [topics.forms.clone(), topics.webhooks.clone(), topics.apps.clone()];
    let mut process = ServiceProcess::start(BIN, env.clone());
    wait_caught_up(&group, &inputs, &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());
    assert_eq!(read_topic(&dlq, 2).await.len(), 2, "both poison records dead-lettered");

    let out = run(BIN, &env, &["replay", "--dry-run"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (poison, origin) in [(&form, &topics.forms), (&webhook, &topics.webhooks)] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains(&format!("\t{origin}\t{}\t", poison.event_id()))),
            "{} listed with its origin {origin}: {stdout}",
            poison.event_id()
        );
    }
    assert!(
        stdout.contains(&format!(
            "would replay 2 of 2 dead letters from {dlq} to {}, {}",
            topics.forms, topics.webhooks
        )),
        "{stdout}"
    );
    assert_eq!(
        count_records(&topics.forms).await + count_records(&topics.webhooks).await,
        2
    );

    // Only what came from the webhooks topic.
    let out = run(BIN, &env, &["replay", "--origin", &topics.webhooks]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "replayed 1 of 2 dead letters from {dlq} to {}",
            topics.webhooks
        )),
        "{}",
        text(&out)
    );
    assert_eq!(count_records(&topics.forms).await, 1, "nothing went to the forms topic");
    let webhooks = read_topic(&topics.webhooks, 2).await;
    let copies = replayed(&webhooks);
    assert_eq!(copies.len(), 1, "{webhooks:?}");
    assert_replayed_unchanged(copies[0], &webhook, &dlq);

    // Everything matching, each to its own origin.
    let out = run(BIN, &env, &["replay", "--reason", "cannot decode the raw event"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("replayed 2 of 2"),
        "{}",
        text(&out)
    );
    let forms = read_topic(&topics.forms, 2).await;
    let copies = replayed(&forms);
    assert_eq!(copies.len(), 1, "{forms:?}");
    assert_replayed_unchanged(copies[0], &form, &dlq);
    assert_eq!(replayed(&read_topic(&topics.webhooks, 3).await).len(), 2);
    assert_eq!(count_records(&topics.apps).await, 0, "nothing went to the apps topic");
}

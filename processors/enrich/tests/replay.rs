//! `nectar-enrich replay` and `check-config`, against the local stack: records the real
//! binary dead-letters go back to its input topic unchanged, a dead letter that does not say
//! where it came from stops the replay before anything is produced, and `check-config`
//! validates without connecting to anything.

use nectar_core::processor::dlq_headers;
use nectar_tests::dead_letters::{Poison, assert_replayed_unchanged, produce, produce_poison, replayed, run, text};
use nectar_tests::{ServiceProcess, StageTopics, count_records, processor_env, read_topic, unique, wait_caught_up};

const BIN: &str = env!("CARGO_BIN_EXE_nectar-enrich");

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_replayed_to_the_input_topic_unchanged() {
    let StageTopics {
        input,
        output,
        dlq,
        group,
    } = StageTopics::create("enrich").await;
    let poison = [Poison::new("a"), Poison::new("b")];
    for p in &poison {
        produce_poison(&input, p).await;
    }
    let env = processor_env(
        &group,
        "a",
        &dlq,
        &[("NECTAR_TOPICS__INPUT", &input), ("NECTAR_TOPICS__OUTPUT", &output)],
    );
    let mut process = ServiceProcess::start(BIN, env.clone());
    wait_caught_up(&group, std::slice::from_ref(&input), &mut [&mut process]).await;
    assert!(process.terminate().success(), "graceful stop:\n{}", process.log());
    let letters = read_topic(&dlq, poison.len()).await;
    assert_eq!(letters.len(), poison.len(), "{letters:?}");
    assert!(
        letters
            .iter()
            .all(|l| l.header(dlq_headers::TOPIC) == Some(input.as_str())),
        "{letters:?}"
    );

    // A dead letter written by hand, without the header that says where it came from.
    produce(
        &dlq,
        "bare",
        b"bare",
        &[(dlq_headers::REASON.to_owned(), "written by hand".to_owned())],
    )
    .await;
    // The dead-letter topic is transactional: offsets count commit markers too.
    let bare_offset = read_topic(&dlq, poison.len() + 1)
        .await
        .iter()
        .find(|r| r.key.as_deref() == Some("bare"))
        .expect("the bare dead letter")
        .offset;
    for args in [&["replay", "--dry-run"][..], &["replay"][..]] {
        let out = run(BIN, &env, args);
        assert_eq!(out.status.code(), Some(1), "{args:?} {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{dlq}/0/{bare_offset}")), "{stderr}");
        assert!(stderr.contains("--to"), "{stderr}");
    }
    assert_eq!(count_records(&input).await, 2, "nothing was replayed");

    let out = run(BIN, &env, &["replay", "--dry-run", "--reason", "CANNOT DECODE"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "one line per dead letter and the summary: {stdout}");
    for p in &poison {
        let line = lines
            .iter()
            .find(|l| l.contains(p.event_id()))
            .unwrap_or_else(|| panic!("{} listed: {stdout}", p.event_id()));
        let fields: Vec<&str> = line.split('\t').collect();
        assert!(fields[0].starts_with("0/"), "partition/offset: {line}");
        assert_eq!(fields[1], input, "origin: {line}");
        assert!(fields[3].contains("cannot decode the event"), "reason: {line}");
    }
    assert!(
        lines[2].starts_with(&format!("would replay 2 of 3 dead letters from {dlq} to {input}")),
        "{stdout}"
    );
    assert_eq!(count_records(&input).await, 2, "a dry run produces nothing");

    let out = run(BIN, &env, &["replay", "--reason", "cannot decode"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("replayed 2 of 3 dead letters from {dlq} to {input}")),
        "{}",
        text(&out)
    );
    let records = read_topic(&input, 4).await;
    assert_eq!(
        records.len(),
        4,
        "the two records and their replayed copies: {records:?}"
    );
    let copies = replayed(&records);
    assert_eq!(copies.len(), 2, "{records:?}");
    for p in &poison {
        let copy = copies
            .iter()
            .find(|r| r.key.as_deref() == Some(p.key.as_str()))
            .unwrap_or_else(|| panic!("{} replayed: {copies:?}", p.key));
        assert_replayed_unchanged(copy, p, &dlq);
    }
}

#[test]
fn check_config_validates_without_connecting() {
    let dir = std::env::temp_dir().join(unique("enrich-check-config"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    // Nothing listens there: check-config must not try.
    let env = |file: &std::path::Path| {
        vec![
            ("NECTAR_CONFIG".to_owned(), file.display().to_string()),
            ("NECTAR_KAFKA__BOOTSTRAP_SERVERS".to_owned(), "127.0.0.1:1".to_owned()),
        ]
    };

    let good = dir.join("good.toml");
    std::fs::write(&good, "[processor]\nsession_timeout_ms = 10000\n").expect("write");
    let out = run(BIN, &env(&good), &["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "nectar-enrich: configuration is valid\n",
        "one line: {}",
        text(&out)
    );
    assert!(out.stderr.is_empty(), "{}", text(&out));

    let typo = dir.join("typo.toml");
    std::fs::write(&typo, "[processor]\nmax_batchs = 10\n").expect("write");
    let out = run(BIN, &env(&typo), &["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_batchs"),
        "{}",
        text(&out)
    );
    assert!(out.stdout.is_empty(), "{}", text(&out));

    let invalid = dir.join("invalid.toml");
    std::fs::write(
        &invalid,
        "[processor]\nsession_timeout_ms = 1000\nmax_batch = 0\n[log]\nformat = \"xml\"\n",
    )
    .expect("write");
    let out = run(BIN, &env(&invalid), &["check-config"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in ["processor.session_timeout_ms", "processor.max_batch", "log.format"] {
        assert!(stderr.contains(key), "every problem named, {key} too: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

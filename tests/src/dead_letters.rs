//! Harness for the processors' `replay` and `check-config` tests: poison records produced
//! with a key and headers, a processor binary's command run to its end, and the replayed
//! copies found on a topic.

use std::path::Path;
use std::time::Duration;

use nectar_core::kafka::idempotent_producer;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::{Record, kafka_config};

/// A record no processor can decode (not Avro), with a key and headers to find it by.
#[derive(Debug, Clone)]
pub struct Poison {
    pub key: String,
    pub value: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

impl Poison {
    /// `poison-<tag>`: key `poison-<tag>`, a value that is not Avro, an event id header
    /// `poison-<tag>` and a trace context.
    pub fn new(tag: &str) -> Self {
        Self {
            key: format!("poison-{tag}"),
            value: format!("this is not avro ({tag})").into_bytes(),
            headers: vec![
                (nectar_core::events::EVENT_ID_HEADER.to_owned(), format!("poison-{tag}")),
                (
                    "traceparent".to_owned(),
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
                ),
            ],
        }
    }

    pub fn event_id(&self) -> &str {
        &self.headers[0].1
    }
}

/// Produce `record` (key, value and headers as given) to `topic`, acknowledged.
pub async fn produce(topic: &str, key: &str, value: &[u8], headers: &[(String, String)]) {
    let producer = idempotent_producer(&kafka_config(), "dead-letter-tests").expect("producer");
    let mut owned = OwnedHeaders::new();
    for (k, v) in headers {
        owned = owned.insert(Header {
            key: k,
            value: Some(v.as_str()),
        });
    }
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value).headers(owned),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(e, _)| e)
        .expect("acknowledged");
}

/// Produce `poison` to `topic`.
pub async fn produce_poison(topic: &str, poison: &Poison) {
    produce(topic, &poison.key, &poison.value, &poison.headers).await;
}

/// Run `<bin> <args>` with `env` added and every other `NECTAR_*` variable of the test's
/// environment removed, and wait for it (60 s at most).
pub fn run(bin: impl AsRef<Path>, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    let mut command = std::process::Command::new(bin.as_ref());
    for (key, _) in std::env::vars() {
        if key.starts_with("NECTAR_") {
            command.env_remove(key);
        }
    }
    let mut child = command
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.as_ref().display()));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while child.try_wait().expect("wait").is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().expect("output");
            panic!("{args:?} did not finish in 60 s:\n{}", text(&output));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().expect("output")
}

/// stdout then stderr, as text.
pub fn text(output: &std::process::Output) -> String {
    format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The records of `records` that a replay produced (they carry `nectar-replayed-from`).
pub fn replayed(records: &[Record]) -> Vec<&Record> {
    records
        .iter()
        .filter(|r| r.header(nectar_core::replay::REPLAYED_FROM).is_some())
        .collect()
}

/// `copy` is `poison` as it was first produced: same key, value and headers, none of the
/// dead-letter headers, and `nectar-replayed-from` pointing into `dlq`.
pub fn assert_replayed_unchanged(copy: &Record, poison: &Poison, dlq: &str) {
    assert_eq!(copy.key.as_deref(), Some(poison.key.as_str()), "{copy:?}");
    assert_eq!(copy.payload, poison.value, "{copy:?}");
    for (k, v) in &poison.headers {
        assert_eq!(copy.header(k), Some(v.as_str()), "header {k}: {copy:?}");
    }
    assert!(
        copy.headers.iter().all(|(k, _)| !k.starts_with("nectar-dlq-")),
        "no dead-letter header: {:?}",
        copy.headers
    );
    let from = copy.header(nectar_core::replay::REPLAYED_FROM).unwrap_or_default();
    assert!(from.starts_with(&format!("{dlq}/")), "{from}");
    assert_eq!(
        copy.headers.len(),
        poison.headers.len() + 1,
        "the original headers and nectar-replayed-from: {:?}",
        copy.headers
    );
}

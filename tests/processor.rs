//! The exactly-once processor loop (`nectar_core::processor`) with a trivial processor, in
//! process, against the real broker: aborted transactions are rewound and redone without
//! duplicates, rejected records reach the DLQ inside the transaction, and a graceful stop
//! commits the open batch. (SIGKILL tests run the real binaries: see processors/*/tests.)

use std::collections::HashMap;
use std::time::{Duration, Instant};

use nectar_core::admin::Readiness;
use nectar_core::processor::{
    self, InputRecord, LoopSettings, Output, ProcessError, Processor, ProcessorConfig, ProcessorMetrics, dlq_headers,
};
use nectar_tests::{StageTopics, group_caught_up, kafka_config, read_topic};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Upper-cases values; rejects `poison-*`; fails once with Retry on every 100th record.
struct Upper {
    output: String,
    failed_once: std::collections::HashSet<Vec<u8>>,
    aborted: usize,
}

impl Processor for Upper {
    async fn process(&mut self, record: &InputRecord) -> Result<Vec<Output>, ProcessError> {
        let value = record.payload.clone().unwrap_or_default();
        if value.starts_with(b"poison") {
            return Err(ProcessError::Reject("poison value".into()));
        }
        let n: usize = String::from_utf8_lossy(&value)
            .trim_start_matches("v")
            .parse()
            .unwrap_or(0);
        if n.is_multiple_of(100) && self.failed_once.insert(value.clone()) {
            return Err(ProcessError::Retry("simulated dependency failure".into()));
        }
        Ok(vec![Output {
            topic: self.output.clone(),
            partition: None,
            key: record.key.clone(),
            payload: Some(value.to_ascii_uppercase()),
            headers: vec![],
        }])
    }

    fn on_aborted(&mut self) {
        self.aborted += 1;
    }
}

fn config(group: &str, dlq: &str) -> ProcessorConfig {
    ProcessorConfig {
        group_id: group.into(),
        instance_id: Some("test".into()),
        max_batch: 50,
        commit_interval_ms: 100,
        idle_commit_ms: 5,
        transaction_timeout_ms: 60_000,
        call_timeout_ms: 30_000,
        dlq_topic: dlq.into(),
        session_timeout_ms: 45_000,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn aborted_batches_are_redone_once_and_rejects_reach_the_dlq() {
    nectar_core::telemetry::init(&Default::default());
    let StageTopics {
        input,
        output,
        dlq,
        group,
    } = StageTopics::create("loop").await;
    let producer: FutureProducer = nectar_core::kafka::idempotent_producer(&kafka_config(), "t").expect("producer");
    let total = 1000;
    let sends = (0..total).map(|i| {
        let producer = producer.clone();
        let input = input.clone();
        async move {
            let value = if i % 250 == 7 {
                format!("poison-{i}")
            } else {
                format!("v{i}")
            };
            let key = format!("k{}", i % 17);
            producer
                .send(
                    FutureRecord::to(&input).key(&key).payload(&value),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("sent");
        }
    });
    futures::future::join_all(sends).await;

    let registry = prometheus::Registry::new();
    let metrics = ProcessorMetrics::new(&registry, "upper").expect("metrics");
    let settings = LoopSettings {
        name: "upper".into(),
        kafka: kafka_config(),
        processor: config(&group, &dlq),
        inputs: vec![input.clone()],
    };
    let upper = Upper {
        output: output.clone(),
        failed_once: Default::default(),
        aborted: 0,
    };
    let handle = processor::spawn(
        settings,
        upper,
        metrics.clone(),
        Readiness::default(),
        tokio::runtime::Handle::current(),
    )
    .expect("loop");

    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (g, t) = (group.clone(), input.clone());
        if tokio::task::spawn_blocking(move || group_caught_up(&g, &[&t]))
            .await
            .expect("thread")
        {
            break;
        }
        if handle.is_finished() {
            panic!("the loop stopped early: {:?}", handle.join());
        }
        assert!(Instant::now() < deadline, "the loop did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    handle.stop();
    tokio::task::spawn_blocking(move || handle.join())
        .await
        .expect("thread")
        .expect("clean stop");

    let poison = (0..total).filter(|i| i % 250 == 7).count();
    let records = read_topic(&output, total - poison).await;
    let mut counts: HashMap<Vec<u8>, usize> = HashMap::new();
    for r in &records {
        *counts.entry(r.payload.clone()).or_default() += 1;
    }
    assert_eq!(counts.len(), total - poison, "every good record came out");
    assert!(counts.values().all(|n| *n == 1), "no duplicates after aborts");
    assert!(
        counts.contains_key(b"V100".as_slice()),
        "a record that failed once was redone"
    );
    assert!(
        metrics.aborts.with_label_values(&["retry"]).get() >= 9,
        "the simulated failures aborted transactions"
    );

    let letters = read_topic(&dlq, poison).await;
    assert_eq!(letters.len(), poison);
    for letter in &letters {
        assert!(letter.payload.starts_with(b"poison"));
        assert_eq!(letter.header(dlq_headers::REASON), Some("poison value"));
        assert_eq!(letter.header(dlq_headers::STAGE), Some("upper"));
        assert_eq!(letter.header(dlq_headers::TOPIC), Some(input.as_str()));
    }
    assert_eq!(metrics.dead_letters.get(), poison as u64);
}

/// A processor asked to stop while it is still starting (checking topics, registering
/// schemas, joining the group) stops cleanly with exit 0, instead of dying of the signal's
/// default action: the stop request is recorded from the first line of `main`.
#[tokio::test(flavor = "multi_thread")]
async fn a_processor_stopped_while_starting_exits_cleanly() {
    let StageTopics { input, dlq, group, .. } = StageTopics::create("stop-early").await;
    let prefix = format!("{group}.deliver.");
    for delay_ms in [150, 400, 1500] {
        let env = nectar_tests::processor_env(
            &group,
            "a",
            &dlq,
            &[
                ("NECTAR_TOPICS__INPUT", &input),
                ("NECTAR_TOPICS__DELIVER_PREFIX", &prefix),
            ],
        );
        let mut process = nectar_tests::ServiceProcess::start(nectar_tests::service_binary("nectar-route"), env);
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        let status = process.terminate();
        assert!(
            status.success(),
            "SIGTERM {delay_ms} ms after start: {status}\n{}",
            process.log()
        );
    }
}

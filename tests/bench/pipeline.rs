//! `nectar-bench pipeline`: each stream processor's throughput on a backlog, and the
//! end-to-end latency from a raw form to its delivery topic through normalize → enrich →
//! score → route, beside Kafka's own ConsumerPerformance and ProducerPerformance on the same
//! topics in the same run.
//!
//! Throughput: the four release binaries run one after the other, each on the full backlog
//! its predecessor left, so each figure is that processor's own rate (records over the span
//! of its output's timestamps). Latency: with all four running, forms are produced at a
//! steady rate and each delivery's timestamp is compared with its raw record's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nectar_core::config::RawTopics;
use nectar_core::events::{Envelope, FormSubmitted};
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_producer::NectarProducer;
use nectar_tests::{Record, ServiceProcess, kafka_config, read_topic, read_topic_within, registry_config, unique};

#[derive(Debug, clap::Args)]
pub struct PipelineArgs {
    /// Forms in the backlog each processor drains.
    #[arg(long, default_value_t = 20_000)]
    events: usize,
    /// Forms per second in the latency phase, and for how long.
    #[arg(long, default_value_t = 200)]
    rate: usize,
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Directory of the service binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long)]
    stack: Option<PathBuf>,
}

struct Topics {
    raw: RawTopics,
    events: String,
    enriched: String,
    scored: String,
    changelog: String,
    dedup: String,
    deliver_prefix: String,
    dlq: String,
}

fn env(topics: &Topics, name: &str, run: &str) -> Vec<(String, String)> {
    let mut env: Vec<(&str, String)> = vec![
        ("NECTAR_KAFKA__BOOTSTRAP_SERVERS", kafka_config().bootstrap_servers),
        ("NECTAR_SCHEMA_REGISTRY__URL", registry_config().url),
        ("NECTAR_ADMIN__LISTEN", "127.0.0.1:0".into()),
        ("NECTAR_LOG__FILTER", "warn".into()),
        ("NECTAR_PROCESSOR__GROUP_ID", format!("{run}-{name}")),
        ("NECTAR_PROCESSOR__INSTANCE_ID", "bench".into()),
        ("NECTAR_PROCESSOR__DLQ_TOPIC", topics.dlq.clone()),
    ];
    match name {
        "normalize" => env.extend([
            ("NECTAR_TOPICS__FORMS", topics.raw.forms.clone()),
            ("NECTAR_TOPICS__WEBHOOKS", topics.raw.webhooks.clone()),
            ("NECTAR_TOPICS__APPS", topics.raw.apps.clone()),
            ("NECTAR_OUTPUT__TOPIC", topics.events.clone()),
            ("NECTAR_DEDUP__CHANGELOG", topics.dedup.clone()),
        ]),
        "enrich" => env.extend([
            ("NECTAR_TOPICS__INPUT", topics.events.clone()),
            ("NECTAR_TOPICS__OUTPUT", topics.enriched.clone()),
        ]),
        "score" => env.extend([
            ("NECTAR_TOPICS__INPUT", topics.enriched.clone()),
            ("NECTAR_TOPICS__OUTPUT", topics.scored.clone()),
            ("NECTAR_TOPICS__CHANGELOG", topics.changelog.clone()),
        ]),
        _ => env.extend([
            ("NECTAR_TOPICS__INPUT", topics.scored.clone()),
            ("NECTAR_TOPICS__DELIVER_PREFIX", topics.deliver_prefix.clone()),
        ]),
    }
    env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

fn form(i: usize, run: &str) -> FormSubmitted {
    let email = format!(
        "lead{}@{}",
        i % 2000,
        if i.is_multiple_of(3) { "gmail.com" } else { "acme.com" }
    );
    let now = nectar_core::events::now_millis();
    FormSubmitted {
        envelope: Envelope {
            event_id: nectar_core::ids::derived_event_id("bench", run, &i.to_string()),
            event_type: "form.submitted".into(),
            occurred_at: now,
            received_at: now,
            source: "form:contact".into(),
            workspace_id: "bench".into(),
            lead_key: nectar_core::ids::lead_key("bench", Some(&email), None),
            trace_parent: None,
            consent: None,
        },
        form_id: "contact".into(),
        form_type: Some(if i.is_multiple_of(5) { "demo_request" } else { "contact" }.into()),
        email: Some(email),
        fields: HashMap::from([("name".to_owned(), format!("Lead {i}")), ("company".to_owned(), "Acme".to_owned())]),
        page_url: Some("https://www.example.com/pricing?utm_source=newsletter&utm_medium=email".into()),
        referrer: Some("https://www.google.com/".into()),
        user_agent: Some("Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36".into()),
        client_ip: Some("203.0.113.7".into()),
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

/// Records per second over the span of the records' timestamps.
fn rate(records: &[Record]) -> f64 {
    let stamps: Vec<i64> = records.iter().filter_map(|r| r.timestamp).collect();
    let (Some(first), Some(last)) = (stamps.iter().min(), stamps.iter().max()) else {
        return f64::NAN;
    };
    records.len() as f64 / ((last - first).max(1) as f64 / 1000.0)
}

fn kafka_tool(stack: &Path, class: &str, args: &[String]) -> String {
    let output = Command::new(stack)
        .arg("kafka-tool")
        .arg(class)
        .args(args)
        .output()
        .expect("kafka tool runs");
    assert!(
        output.status.success(),
        "{class}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Kafka's ConsumerPerformance reading `messages` from `topic`: records/s.
pub fn consumer_perf(stack: &Path, topic: &str, messages: usize) -> f64 {
    let out = kafka_tool(
        stack,
        "org.apache.kafka.tools.ConsumerPerformance",
        &[
            "--bootstrap-server".into(),
            kafka_config().bootstrap_servers,
            "--topic".into(),
            topic.into(),
            "--messages".into(),
            messages.to_string(),
            "--timeout".into(),
            "60000".into(),
        ],
    );
    // Header: start.time, end.time, data.consumed.in.MB, MB.sec, data.consumed.in.nMsg, nMsg.sec, ...
    let line = out
        .lines()
        .rev()
        .find(|l| l.split(',').count() >= 6 && !l.starts_with("start.time"))
        .unwrap_or_default();
    line.split(',')
        .nth(5)
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(f64::NAN)
}

/// Kafka's ProducerPerformance, transactional like the processors: records/s.
fn producer_perf(stack: &Path, topic: &str, records: usize, size: usize) -> f64 {
    let mut args: Vec<String> = [
        "--topic",
        topic,
        "--num-records",
        &records.to_string(),
        "--record-size",
        &size.to_string(),
        "--throughput",
        "-1",
        "--transaction-duration-ms",
        "100",
        "--producer-props",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.push(format!("bootstrap.servers={}", kafka_config().bootstrap_servers));
    args.extend(
        [
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=5",
            "compression.type=lz4",
        ]
        .map(str::to_owned),
    );
    args.push(format!("transactional.id={}", unique("perf")));
    let out = kafka_tool(stack, "org.apache.kafka.tools.ProducerPerformance", &args);
    let summary = out
        .lines()
        .rev()
        .find(|l| l.contains("records/sec"))
        .unwrap_or_default();
    summary
        .split(',')
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

pub async fn run(args: PipelineArgs) -> anyhow::Result<()> {
    let bin_dir = super::bin_dir(args.bin_dir.as_ref());
    let stack = args
        .stack
        .clone()
        .unwrap_or_else(|| nectar_tests::repo_root().join("deploy/local/stack"));
    let run = unique("bench");
    let topics = Topics {
        raw: RawTopics {
            forms: format!("{run}.raw.forms"),
            webhooks: format!("{run}.raw.webhooks"),
            apps: format!("{run}.raw.apps"),
        },
        events: format!("{run}.events"),
        enriched: format!("{run}.enriched"),
        scored: format!("{run}.scored"),
        changelog: format!("{run}.changelog"),
        dedup: format!("{run}.dedup"),
        deliver_prefix: format!("{run}.deliver."),
        dlq: format!("{run}.dlq"),
    };
    let mut specs: Vec<TopicSpec> = [
        &topics.raw.forms,
        &topics.raw.webhooks,
        &topics.raw.apps,
        &topics.events,
        &topics.enriched,
        &topics.scored,
        &topics.dlq,
    ]
    .iter()
    .map(|t| TopicSpec::new(t.as_str(), 3))
    .collect();
    // The delivery topic measured is created here, before anything reads it (route would
    // create it only when it starts).
    specs.push(TopicSpec::new(format!("{}postgres", topics.deliver_prefix), 3));
    for changelog in [&topics.changelog, &topics.dedup] {
        let mut spec = TopicSpec::new(changelog, 3);
        spec.config.push(("cleanup.policy".into(), "compact".into()));
        specs.push(spec);
    }
    let without_dedup = format!("{run}.events-without-dedup");
    specs.push(TopicSpec::new(&without_dedup, 3));
    ensure_topics(&kafka_config(), &specs).await?;

    let producer = NectarProducer::new(&kafka_config(), &registry_config(), topics.raw.clone(), "bench")?;
    producer.register_schemas().await?;
    println!(
        "nectar-bench pipeline: {} forms in the backlog; release binaries from {}",
        args.events,
        bin_dir.display()
    );
    let forms: Vec<FormSubmitted> = (0..args.events).map(|i| form(i, &run)).collect();
    produce(&producer, &forms).await;

    println!();
    println!(
        "| processor | events/s | Kafka ConsumerPerformance records/s | Kafka ProducerPerformance (transactional) records/s | ratio to the slower |"
    );
    println!("|---|---|---|---|---|");
    // normalize with its de-duplication store off, on the same backlog: what the store costs.
    let mut plain_env = env(&topics, "normalize", &run);
    plain_env.retain(|(k, _)| k != "NECTAR_PROCESSOR__GROUP_ID" && k != "NECTAR_OUTPUT__TOPIC");
    plain_env.extend([
        (
            "NECTAR_PROCESSOR__GROUP_ID".to_owned(),
            format!("{run}-normalize-without-dedup"),
        ),
        ("NECTAR_OUTPUT__TOPIC".to_owned(), without_dedup.clone()),
        ("NECTAR_DEDUP__ENABLED".to_owned(), "false".to_owned()),
    ]);
    let mut plain = ServiceProcess::start(bin_dir.join("nectar-normalize"), plain_env);
    let out = read_topic_within(&without_dedup, args.events, Duration::from_secs(600)).await;
    anyhow::ensure!(
        out.len() >= args.events,
        "nectar-normalize (dedup off) wrote {} of {} records:\n{}",
        out.len(),
        args.events,
        plain.log()
    );
    let without_dedup_rate = rate(&out);
    plain.terminate();
    println!("| normalize, de-duplication off | {without_dedup_rate:.0} | | | (baseline of the row below) |");
    let stages: [(&str, String, String); 4] = [
        ("normalize", topics.raw.forms.clone(), topics.events.clone()),
        ("enrich", topics.events.clone(), topics.enriched.clone()),
        ("score", topics.enriched.clone(), topics.scored.clone()),
        (
            "route",
            topics.scored.clone(),
            format!("{}postgres", topics.deliver_prefix),
        ),
    ];
    let mut running = Vec::new();
    for (name, input, output) in &stages {
        let mut process = ServiceProcess::start(bin_dir.join(format!("nectar-{name}")), env(&topics, name, &run));
        // Every stage writes at least one record per form. (Waiting on committed offsets does
        // not work past the first stage: a transactional input ends with a commit marker the
        // consumer's offsets never pass.)
        let out = read_topic_within(output, args.events, Duration::from_secs(600)).await;
        if let Some(status) = process.exited() {
            anyhow::bail!("nectar-{name} exited with {status}:\n{}", process.log());
        }
        anyhow::ensure!(
            out.len() >= args.events,
            "nectar-{name} wrote {} of {} records in 10 minutes",
            out.len(),
            args.events
        );
        let processor_rate = rate(&out);
        let size = (out.iter().map(|r| r.payload.len()).sum::<usize>() / out.len().max(1)).max(1);
        let consumer = consumer_perf(&stack, input, args.events);
        let perf_topic = unique("bench.perf");
        ensure_topics(&kafka_config(), &[TopicSpec::new(&perf_topic, 3)]).await?;
        let producer_rate = producer_perf(&stack, &perf_topic, args.events.max(50_000), size);
        println!(
            "| {name} ({size} B out) | {processor_rate:.0} | {consumer:.0} | {producer_rate:.0} | {:.2} |",
            processor_rate / consumer.min(producer_rate)
        );
        if *name == "normalize" {
            println!(
                "| normalize with / without de-duplication | {:.2} | | | |",
                processor_rate / without_dedup_rate
            );
        }
        running.push(process);
    }

    // Latency: all four running, forms at a steady rate.
    let started = Instant::now();
    let total = args.rate * args.latency_secs as usize;
    let latency_forms: Vec<FormSubmitted> = (args.events..args.events + total).map(|i| form(i, &run)).collect();
    for chunk in latency_forms.chunks(args.rate / 10 + 1) {
        produce(&producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let raw = read_topic(&topics.raw.forms, args.events + total).await;
    let deliver = read_topic_within(
        &format!("{}postgres", topics.deliver_prefix),
        args.events + total,
        Duration::from_secs(300),
    )
    .await;
    let raw_at: HashMap<String, i64> = raw
        .iter()
        .filter_map(|r| Some((r.header("nectar-event-id")?.to_owned(), r.timestamp?)))
        .collect();
    let measured: std::collections::HashSet<&str> =
        latency_forms.iter().map(|f| f.envelope.event_id.as_str()).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    for r in &deliver {
        let (Some(id), Some(at)) = (r.header("nectar-event-id"), r.timestamp) else {
            continue;
        };
        if let Some(sent) = raw_at.get(id)
            && measured.contains(id)
        {
            hist.record(u64::try_from((at - sent).max(1)).unwrap_or(1)).ok();
        }
    }
    drop(running);
    println!();
    println!(
        "end-to-end latency raw form → nectar.deliver.postgres (4 stages, {} forms at {}/s): p50 {} ms, p99 {} ms, max {} ms ({} s)",
        hist.len(),
        args.rate,
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max(),
        started.elapsed().as_secs()
    );
    Ok(())
}

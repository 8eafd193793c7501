//! `nectar-bench pipeline`: each stream processor's throughput on a backlog, and the
//! end-to-end latency from a raw form to its delivery topic through normalize → enrich →
//! score → route, beside a Kafka Streams peer (`tests/bench/kstreams`: `exactly_once_v2`,
//! its default 100 ms commit interval, one thread) and Kafka's own ConsumerPerformance and
//! ProducerPerformance on the same topics in the same run.
//!
//! Throughput: the four release binaries run one after the other, each on the full backlog
//! its predecessor left, so each figure is that processor's own rate (records over the span
//! of its output's timestamps). The peer then copies the same input topic (a pass-through
//! beside normalize, enrich and score; a fan-out to 5 topics beside route). Kafka Streams
//! keeps the input's timestamps on what it writes, so the peer's outputs are topics with
//! `message.timestamp.type=LogAppendTime`: the broker's append time, as Nectar's outputs
//! carry their producer's send time. Latency: with all four running, forms are produced at a
//! steady rate and each delivery's timestamp is compared with its raw record's; then the
//! same through the peer's chain of four pass-through stages. Peak RSS: each process's
//! `VmHWM` at the end.

use std::collections::HashMap;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
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
    /// An environment variable for every Nectar processor, e.g.
    /// `--set NECTAR_PROCESSOR__MAX_BATCH=5000` (repeatable): the effect of a setting.
    #[arg(long = "set", value_parser = key_value)]
    set: Vec<(String, String)>,
    /// Nectar's figures only: no Kafka Streams peer, no Kafka perf tools (faster, for
    /// comparing settings).
    #[arg(long)]
    only_nectar: bool,
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

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("`{s}`: expected KEY=VALUE"))
}

fn env(topics: &Topics, name: &str, run: &str, set: &[(String, String)]) -> Vec<(String, String)> {
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
    let mut env: Vec<(String, String)> = env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
    env.retain(|(k, _)| !set.iter().any(|(s, _)| s == k));
    env.extend(set.iter().cloned());
    env
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
    per_second(records.len(), records.iter().filter_map(|r| r.timestamp))
}

/// `count` over the span of `stamps` (milliseconds), per second.
fn per_second(count: usize, stamps: impl Iterator<Item = i64>) -> f64 {
    let (first, last) = stamps.fold((i64::MAX, i64::MIN), |(lo, hi), t| (lo.min(t), hi.max(t)));
    if first > last {
        return f64::NAN;
    }
    count as f64 / ((last - first).max(1) as f64 / 1000.0)
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

/// The Kafka Streams peer, built (cached) by `tests/bench/kstreams/build`: its classpath.
fn build_peer() -> anyhow::Result<String> {
    let script = nectar_tests::repo_root().join("tests/bench/kstreams/build");
    let out = Command::new(&script).stderr(Stdio::inherit()).output()?;
    anyhow::ensure!(out.status.success(), "{} failed", script.display());
    String::from_utf8(out.stdout)?
        .lines()
        .last()
        .map(str::to_owned)
        .ok_or_else(|| anyhow::anyhow!("{} printed no classpath", script.display()))
}

/// A running peer process; SIGTERM on drop.
struct Peer {
    child: Child,
}

impl Peer {
    /// Start `mode` with `args` and wait until it says `peer running`.
    fn start(classpath: &str, mode: &str, args: &[String]) -> anyhow::Result<Self> {
        let mut child = Command::new("java")
            .args([
                "-cp",
                classpath,
                "io.nectar.bench.Peer",
                mode,
                &kafka_config().bootstrap_servers,
            ])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().expect("piped");
        let mut lines = std::io::BufReader::new(stdout).lines();
        let running = lines.any(|l| l.is_ok_and(|l| l.contains("peer running")));
        anyhow::ensure!(running, "the Kafka Streams peer ({mode}) stopped before it ran");
        // Keep draining its stdout so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self { child })
    }

    fn peak_rss_mib(&self) -> f64 {
        super::peak_rss_mib(self.child.id()).unwrap_or(f64::NAN)
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Topics stamped with the broker's append time (the peer keeps its input's timestamps).
async fn append_time_topics(topics: &[String]) -> anyhow::Result<()> {
    let specs: Vec<TopicSpec> = topics
        .iter()
        .map(|t| {
            let mut spec = TopicSpec::new(t.as_str(), 3);
            spec.config
                .push(("message.timestamp.type".into(), "LogAppendTime".into()));
            spec
        })
        .collect();
    ensure_topics(&kafka_config(), &specs).await?;
    Ok(())
}

/// The peer's throughput copying `input` (`events` records) to `outputs` (one: a
/// pass-through; several: a fan-out): input records per second over the span of the
/// outputs' append times, and its peak RSS.
async fn peer_rate(
    classpath: &str,
    run: &str,
    name: &str,
    input: &str,
    outputs: usize,
    events: usize,
) -> anyhow::Result<(f64, f64)> {
    let outs: Vec<String> = (0..outputs).map(|i| format!("{run}.peer.{name}.{i}")).collect();
    append_time_topics(&outs).await?;
    let mode = if outputs == 1 { "passthrough" } else { "fanout" };
    let mut args = vec![format!("{run}-peer-{name}"), input.to_owned()];
    args.extend(outs.iter().cloned());
    let peer = Peer::start(classpath, mode, &args)?;
    let mut stamps = Vec::new();
    for out in &outs {
        let records = read_topic_within(out, events, Duration::from_secs(600)).await;
        anyhow::ensure!(
            records.len() >= events,
            "the peer wrote {} of {events} records to {out}",
            records.len()
        );
        stamps.extend(records.iter().filter_map(|r| r.timestamp));
    }
    let rss = peer.peak_rss_mib();
    drop(peer);
    Ok((per_second(events, stamps.into_iter()), rss))
}

/// Latency from each measured form's raw timestamp to its record's timestamp on `out`.
fn latency(
    raw: &[Record],
    out: &[Record],
    measured: &std::collections::HashSet<&str>,
) -> anyhow::Result<Histogram<u64>> {
    let raw_at: HashMap<&str, i64> = raw
        .iter()
        .filter_map(|r| Some((r.header("nectar-event-id")?, r.timestamp?)))
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    for r in out {
        let (Some(id), Some(at)) = (r.header("nectar-event-id"), r.timestamp) else {
            continue;
        };
        if let Some(sent) = raw_at.get(id)
            && measured.contains(id)
        {
            hist.record(u64::try_from((at - sent).max(1)).unwrap_or(1)).ok();
        }
    }
    Ok(hist)
}

async fn produce_steadily(producer: &NectarProducer, forms: &[FormSubmitted], rate: usize) {
    for chunk in forms.chunks(rate / 10 + 1) {
        produce(producer, chunk).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
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
    let peer = if args.only_nectar { None } else { Some(build_peer()?) };
    if !args.set.is_empty() {
        println!("processors' environment adds: {:?}", args.set);
    }

    println!();
    println!(
        "| processor | Nectar events/s | Kafka Streams peer events/s (same input) | Nectar / peer (target) | Kafka ConsumerPerformance records/s | Kafka ProducerPerformance (transactional) records/s | Nectar / the slower tool |"
    );
    println!("|---|---|---|---|---|---|---|");
    // normalize with its de-duplication store off, on the same backlog: what the store costs.
    let mut plain_env = env(&topics, "normalize", &run, &args.set);
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
    println!("| normalize, de-duplication off | {without_dedup_rate:.0} | | | | | (baseline of the row below) |");
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
    let mut peer_rss = Vec::new();
    for (name, input, output) in &stages {
        let mut process = ServiceProcess::start(
            bin_dir.join(format!("nectar-{name}")),
            env(&topics, name, &run, &args.set),
        );
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
        let Some(peer) = &peer else {
            println!("| {name} ({size} B out) | {processor_rate:.0} | | | | | |");
            running.push(process);
            continue;
        };
        let consumer = consumer_perf(&stack, input, args.events);
        let perf_topic = unique("bench.perf");
        ensure_topics(&kafka_config(), &[TopicSpec::new(&perf_topic, 3)]).await?;
        let producer_rate = producer_perf(&stack, &perf_topic, args.events.max(50_000), size);
        // route is measured against the peer's fan-out to 5 topics (route's shipped rules send
        // each event to 2-5 sinks), the others against its pass-through.
        let (outputs, target, mode) = if *name == "route" {
            (5, 1.0, "fan-out ×5")
        } else {
            (1, 0.8, "pass-through")
        };
        let (peer_rate, rss) = peer_rate(peer, &run, name, input, outputs, args.events).await?;
        peer_rss.push((*name, mode, rss));
        println!(
            "| {name} ({size} B out) | {processor_rate:.0} | {peer_rate:.0} ({mode}) | {:.2} (≥ {target}) | {consumer:.0} | {producer_rate:.0} | {:.2} |",
            processor_rate / peer_rate,
            processor_rate / consumer.min(producer_rate)
        );
        if *name == "normalize" {
            println!(
                "| normalize with / without de-duplication | {:.2} | | | | | |",
                processor_rate / without_dedup_rate
            );
        }
        running.push(process);
    }

    // Latency: all four running, forms at a steady rate.
    let started = Instant::now();
    let total = args.rate * args.latency_secs as usize;
    let latency_forms: Vec<FormSubmitted> = (args.events..args.events + total).map(|i| form(i, &run)).collect();
    let measured: std::collections::HashSet<&str> =
        latency_forms.iter().map(|f| f.envelope.event_id.as_str()).collect();
    produce_steadily(&producer, &latency_forms, args.rate).await;
    let raw = read_topic(&topics.raw.forms, args.events + total).await;
    let deliver = read_topic_within(
        &format!("{}postgres", topics.deliver_prefix),
        args.events + total,
        Duration::from_secs(300),
    )
    .await;
    let hist = latency(&raw, &deliver, &measured)?;
    let nectar_secs = started.elapsed().as_secs();
    let rss: Vec<(&str, f64)> = stages
        .iter()
        .zip(&running)
        .map(|((name, _, _), p)| (*name, p.pid().and_then(super::peak_rss_mib).unwrap_or(f64::NAN)))
        .collect();
    drop(running);
    println!();
    println!(
        "| end-to-end latency, raw form → 4th stage's output, {} forms at {}/s | p50 ms | p99 ms | max ms |",
        total, args.rate
    );
    println!("|---|---|---|---|");
    println!(
        "| Nectar: normalize → enrich → score → route ({} measured, {nectar_secs} s) | {} | {} | {} |",
        hist.len(),
        hist.value_at_quantile(0.5),
        hist.value_at_quantile(0.99),
        hist.max()
    );
    let Some(peer) = &peer else {
        println!();
        for (name, nectar) in &rss {
            println!("peak RSS of {name}: {nectar:.0} MiB");
        }
        return Ok(());
    };

    // The same through the peer's chain of four pass-through stages, on its own topics.
    let chain: Vec<String> = (0..5).map(|i| format!("{run}.peer.chain.{i}")).collect();
    ensure_topics(&kafka_config(), &[TopicSpec::new(&chain[0], 3)]).await?;
    append_time_topics(&chain[1..]).await?;
    let chain_raw = RawTopics {
        forms: chain[0].clone(),
        ..topics.raw.clone()
    };
    let chain_producer = NectarProducer::new(&kafka_config(), &registry_config(), chain_raw, "bench")?;
    chain_producer.register_schemas().await?;
    let mut chain_args = vec![format!("{run}-peer-chain")];
    chain_args.extend(chain.iter().cloned());
    let chain_peer = Peer::start(peer, "chain", &chain_args)?;
    let chain_started = Instant::now();
    produce_steadily(&chain_producer, &latency_forms, args.rate).await;
    let chain_in = read_topic(&chain[0], total).await;
    let chain_out = read_topic_within(&chain[4], total, Duration::from_secs(300)).await;
    let peer_hist = latency(&chain_in, &chain_out, &measured)?;
    let chain_rss = chain_peer.peak_rss_mib();
    drop(chain_peer);

    println!(
        "| Kafka Streams: 4 pass-through stages ({} measured, {} s) | {} | {} | {} |",
        peer_hist.len(),
        chain_started.elapsed().as_secs(),
        peer_hist.value_at_quantile(0.5),
        peer_hist.value_at_quantile(0.99),
        peer_hist.max()
    );
    println!(
        "| Nectar / Kafka Streams (targets: p50 ≤ 200 ms, p99 ≤ 500 ms and ≤ the peer's) | {:.2} | {:.2} | |",
        hist.value_at_quantile(0.5) as f64 / peer_hist.value_at_quantile(0.5).max(1) as f64,
        hist.value_at_quantile(0.99) as f64 / peer_hist.value_at_quantile(0.99).max(1) as f64
    );

    println!();
    println!("| peak RSS (VmHWM), MiB | Nectar | Kafka Streams peer (JVM defaults) |");
    println!("|---|---|---|");
    for ((name, nectar), (_, mode, peer)) in rss.iter().zip(&peer_rss) {
        println!("| {name} | {nectar:.0} | {peer:.0} ({mode}) |");
    }
    println!(
        "| all four / the peer's 4-stage chain | {:.0} | {chain_rss:.0} |",
        rss.iter().map(|(_, m)| m).sum::<f64>()
    );
    Ok(())
}

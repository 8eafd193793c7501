//! `nectar-bench dedup`: what normalize's de-duplication store costs, measured on the real
//! release binary: the time to rebuild one partition's store of N ids from its changelog (as
//! on every assignment), beside Kafka's own ConsumerPerformance reading the same records in
//! the same run, and the memory per id (the process's RSS with the N-id store, minus the RSS
//! of the same binary with an empty store).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nectar_core::config::RawTopics;
use nectar_core::events::SeenEvent;
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_core::schema;
use nectar_tests::{ServiceProcess, kafka_config, processor_env, registry_config, unique};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};

#[derive(Debug, clap::Args)]
pub struct DedupArgs {
    /// Event ids in the partition's store.
    #[arg(long, default_value_t = 1_000_000)]
    ids: usize,
    /// Directory of the service binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long)]
    stack: Option<PathBuf>,
}

/// One-partition raw topics and a compacted changelog: the store of partition 0.
async fn topics(run: &str) -> anyhow::Result<(RawTopics, String, String)> {
    let raw = RawTopics {
        forms: format!("{run}.raw.forms"),
        webhooks: format!("{run}.raw.webhooks"),
        apps: format!("{run}.raw.apps"),
    };
    let (changelog, output) = (format!("{run}.dedup"), format!("{run}.events"));
    let mut specs: Vec<TopicSpec> = [&raw.forms, &raw.webhooks, &raw.apps, &output]
        .iter()
        .map(|t| TopicSpec::new(t.as_str(), 1))
        .collect();
    let mut spec = TopicSpec::new(&changelog, 1);
    spec.config.push(("cleanup.policy".into(), "compact".into()));
    specs.push(spec);
    ensure_topics(&kafka_config(), &specs).await?;
    Ok((raw, changelog, output))
}

/// Write `ids` remembered event ids to `changelog` as normalize writes them.
async fn fill(changelog: &str, ids: usize) -> anyhow::Result<()> {
    let codec = nectar_core::schema::Codec::new(&registry_config())?;
    codec.register(changelog, &schema::SEEN_EVENT).await?;
    let producer: FutureProducer = nectar_core::kafka::idempotent_producer(&kafka_config(), "bench-dedup")?;
    let start = nectar_core::events::now_millis();
    for chunk in (0..ids).collect::<Vec<_>>().chunks(10_000) {
        let mut records = Vec::with_capacity(chunk.len());
        for i in chunk {
            let id = nectar_core::ids::derived_event_id("bench", "dedup", &i.to_string());
            let value = codec
                .encode(
                    changelog,
                    &schema::SEEN_EVENT,
                    &SeenEvent {
                        received_at: start + *i as i64,
                    },
                )
                .await?;
            records.push((id, value));
        }
        let sends = records.iter().map(|(id, value)| {
            producer.send(
                FutureRecord::to(changelog).partition(0).key(id).payload(value),
                Duration::from_secs(30),
            )
        });
        for result in futures::future::join_all(sends).await {
            result.map_err(|(e, _)| e)?;
        }
    }
    producer.flush(Duration::from_secs(30))?;
    Ok(())
}

/// Start normalize on `changelog` and wait for its store's rebuild: (ids, elapsed ms, RSS KiB).
async fn rebuild(bin: &PathBuf, raw: &RawTopics, changelog: &str, output: &str) -> anyhow::Result<(u64, u64, u64)> {
    let group = unique("bench-dedup");
    let mut env = processor_env(
        &group,
        "bench",
        &format!("{group}.dlq"),
        &[
            ("NECTAR_TOPICS__FORMS", &raw.forms),
            ("NECTAR_TOPICS__WEBHOOKS", &raw.webhooks),
            ("NECTAR_TOPICS__APPS", &raw.apps),
            ("NECTAR_OUTPUT__TOPIC", output),
            ("NECTAR_DEDUP__CHANGELOG", changelog),
        ],
    );
    env.push(("NO_COLOR".into(), "1".into()));
    let mut process = ServiceProcess::start(bin, env);
    let deadline = Instant::now() + Duration::from_secs(600);
    let line = loop {
        if let Some(line) = process
            .log()
            .lines()
            .find(|l| l.contains("rebuilt the de-duplication store"))
        {
            break line.to_owned();
        }
        if let Some(status) = process.exited() {
            anyhow::bail!("nectar-normalize exited with {status}:\n{}", process.log());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no rebuild in 10 minutes:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Settle, then the resident set with the store in it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let field = |name: &str| -> u64 {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let rss = process
        .pid()
        .and_then(|pid| super::proc_status_kib(pid, "VmRSS"))
        .unwrap_or(0);
    process.terminate();
    Ok((field("ids"), field("elapsed_ms"), rss))
}

pub async fn run(args: DedupArgs) -> anyhow::Result<()> {
    let bin = super::bin_dir(args.bin_dir.as_ref()).join("nectar-normalize");
    let stack = args
        .stack
        .clone()
        .unwrap_or_else(|| nectar_tests::repo_root().join("deploy/local/stack"));
    let run = unique("bench-dedup");
    let (raw, changelog, output) = topics(&run).await?;
    let (_, empty_changelog, empty_output) = topics(&format!("{run}-empty")).await?;
    println!(
        "nectar-bench dedup: one partition's store of {} event ids, release binary {}",
        args.ids,
        bin.display()
    );
    let filled = Instant::now();
    fill(&changelog, args.ids).await?;
    println!("  changelog written in {:.1} s", filled.elapsed().as_secs_f64());

    let (_, _, empty_rss) = rebuild(&bin, &raw, &empty_changelog, &empty_output).await?;
    let (ids, elapsed_ms, rss) = rebuild(&bin, &raw, &changelog, &output).await?;
    anyhow::ensure!(
        ids as usize == args.ids,
        "the rebuilt store holds {ids} ids, not {}",
        args.ids
    );
    let restore_rate = ids as f64 / (elapsed_ms.max(1) as f64 / 1000.0);
    let consumer = super::pipeline::consumer_perf(&stack, &changelog, args.ids);
    let per_id = (rss.saturating_sub(empty_rss) * 1024) as f64 / ids as f64;
    println!();
    println!("| measure | nectar-normalize | Kafka ConsumerPerformance (same records) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| rebuild of a {ids}-id partition | {:.1} s ({restore_rate:.0} records/s) | {:.1} s ({consumer:.0} records/s) | {:.2} |",
        elapsed_ms as f64 / 1000.0,
        ids as f64 / consumer,
        restore_rate / consumer
    );
    println!(
        "| memory | {per_id:.0} B per id = {:.0} MiB per million ids (RSS {} MiB with the store, {} MiB empty) | | |",
        per_id * 1e6 / 1_048_576.0,
        rss / 1024,
        empty_rss / 1024
    );
    Ok(())
}

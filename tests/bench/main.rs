//! `nectar-bench ingest`: load the ingest service over HTTP on loopback and compare it with the
//! broker's raw throughput for the same record size, measured in the same run by Kafka's own
//! `ProducerPerformance` tool with the same producer settings (idempotent, `acks=all`, lz4).
//!
//! The service runs as its own process (the release binary), so its peak RSS is its own. On a
//! small machine the load generator, the service and the broker share the cores: read the
//! ratio, not the absolute figures.
//!
//! Run it with `deploy/local/bench` (builds in release mode and brings the stack up first).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_tests::{kafka_config, registry_config, repo_root, unique};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

#[derive(Debug, Parser)]
#[command(name = "nectar-bench", about = "Benchmarks of Nectar against the local stack")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, clap::Subcommand)]
enum Bench {
    /// HTTP ingest vs. Kafka's ProducerPerformance.
    Ingest(IngestArgs),
    /// Each stream processor's throughput and the end-to-end latency through all four, vs.
    /// Kafka's ConsumerPerformance and ProducerPerformance.
    Pipeline(pipeline::PipelineArgs),
    /// The PostgreSQL and OpenSearch sinks vs. bulk writes straight to the target.
    Sinks(sinks::SinksArgs),
    /// normalize's de-duplication store: rebuild time of a partition vs. Kafka's
    /// ConsumerPerformance on the same records, and memory per id.
    Dedup(dedup::DedupArgs),
    /// Where a processor transaction's time goes: begin, produce, send offsets, commit, with
    /// librdkafka setting variants side by side.
    Txn(txn::TxnArgs),
}

mod dedup;
mod pipeline;
mod sinks;
mod txn;

#[derive(Debug, clap::Args)]
struct IngestArgs {
    /// Seconds of load per scenario (after a 2 s warm-up).
    #[arg(long, default_value_t = 15)]
    duration: u64,
    /// Concurrent HTTP connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Events per request, one scenario each.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    batch_sizes: Vec<usize>,
    /// The nectar-ingest binary (default: next to this one).
    #[arg(long)]
    ingest_bin: Option<PathBuf>,
    /// The local stack script, used to run Kafka's perf tool.
    #[arg(long)]
    stack: Option<PathBuf>,
}

const API_KEY: &str = "nk_bench_key";

struct Service {
    child: Child,
    base: String,
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A memory figure of process `pid` from `/proc/<pid>/status`, in KiB: `VmHWM` (peak RSS) or
/// `VmRSS` (RSS now).
/// Peak RSS (`VmHWM`) of process `pid`, in MiB.
fn peak_rss_mib(pid: u32) -> Option<f64> {
    proc_status_kib(pid, "VmHWM").map(|k| k as f64 / 1024.0)
}

fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn free_port() -> u16 {
    nectar_tests::free_addr().port()
}

/// `--bin-dir`, else the directory of this binary (the release build's, beside the services).
fn bin_dir(arg: Option<&PathBuf>) -> PathBuf {
    arg.cloned().unwrap_or_else(|| {
        std::env::current_exe()
            .expect("exe")
            .parent()
            .expect("dir")
            .to_path_buf()
    })
}

async fn start_ingest(bin: &PathBuf, topic: &str) -> anyhow::Result<Service> {
    let (port, admin_port) = (free_port(), free_port());
    let key_hash = hex::encode(Sha256::digest(API_KEY.as_bytes()));
    let config = std::env::temp_dir().join(format!("{}.toml", unique("nectar-bench")));
    std::fs::write(
        &config,
        format!(
            "[ingest]\nlisten = \"127.0.0.1:{port}\"\n[admin]\nlisten = \"127.0.0.1:{admin_port}\"\n[log]\nfilter = \"warn\"\n\
             [topics]\napps = \"{topic}\"\n[[ingest.events.api_keys]]\nname = \"bench\"\nworkspace_id = \"bench\"\nsha256 = \"{key_hash}\"\n"
        ),
    )?;
    let child = Command::new(bin)
        .arg("--config")
        .arg(&config)
        .env("NECTAR_KAFKA__BOOTSTRAP_SERVERS", kafka_config().bootstrap_servers)
        .env("NECTAR_SCHEMA_REGISTRY__URL", registry_config().url)
        .stdout(Stdio::null())
        .spawn()?;
    let service = Service {
        child,
        base: format!("http://127.0.0.1:{port}"),
    };
    // The probes check the three raw topics; the others are the defaults the stack created.
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ready = client.get(format!("http://127.0.0.1:{admin_port}/readyz")).send().await;
        if ready.is_ok_and(|r| r.status().is_success()) {
            return Ok(service);
        }
        anyhow::ensure!(Instant::now() < deadline, "nectar-ingest did not become ready in 60 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn event(i: u64) -> Value {
    json!({
        "type": "page.viewed",
        "anonymous_id": format!("anon-{}", i % 10_000),
        "email": format!("user{}@example.com", i % 10_000),
        "properties": {"path": "/pricing", "referrer": "https://www.google.com/", "utm_source": "newsletter", "n": i}
    })
}

struct LoadResult {
    events: u64,
    requests: u64,
    errors: u64,
    elapsed: Duration,
    latency: Histogram<u64>,
}

async fn load(base: &str, batch: usize, concurrency: usize, duration: Duration) -> LoadResult {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .expect("client");
    let counter = Arc::new(AtomicU64::new(0));
    let url = format!("{base}/v1/events");
    let run = |measure: bool, length: Duration| {
        let handles: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, url, counter) = (client.clone(), url.clone(), counter.clone());
                tokio::spawn(async move {
                    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram");
                    let (mut events, mut requests, mut errors) = (0u64, 0u64, 0u64);
                    let end = Instant::now() + length;
                    while Instant::now() < end {
                        let n = counter.fetch_add(batch as u64, Ordering::Relaxed);
                        let body = if batch == 1 {
                            event(n)
                        } else {
                            Value::Array((0..batch as u64).map(|i| event(n + i)).collect())
                        };
                        let started = Instant::now();
                        let response = client.post(&url).bearer_auth(API_KEY).json(&body).send().await;
                        let ok = matches!(&response, Ok(r) if r.status().as_u16() == 202);
                        if let Ok(r) = response {
                            let _ = r.bytes().await;
                        }
                        if measure {
                            requests += 1;
                            if ok {
                                events += batch as u64;
                                let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
                                hist.record(micros.max(1)).ok();
                            } else {
                                errors += 1;
                            }
                        }
                    }
                    (hist, events, requests, errors)
                })
            })
            .collect();
        async move {
            let mut total = LoadResult {
                events: 0,
                requests: 0,
                errors: 0,
                elapsed: length,
                latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram"),
            };
            for h in handles {
                let (hist, events, requests, errors) = h.await.expect("load task");
                total.latency.add(&hist).expect("merge");
                total.events += events;
                total.requests += requests;
                total.errors += errors;
            }
            total
        }
    };
    run(false, Duration::from_secs(2)).await;
    let started = Instant::now();
    let mut result = run(true, duration).await;
    result.elapsed = started.elapsed();
    result
}

/// Figures from Kafka's ProducerPerformance summary line.
#[derive(Debug, Default)]
struct KafkaPerf {
    records_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

fn kafka_perf(stack: &PathBuf, topic: &str, records: u64, record_size: usize) -> anyhow::Result<KafkaPerf> {
    let output = Command::new(stack)
        .args([
            "kafka-tool",
            "org.apache.kafka.tools.ProducerPerformance",
            "--topic",
            topic,
            "--num-records",
            &records.to_string(),
            "--record-size",
            &record_size.to_string(),
            "--throughput",
            "-1",
            "--producer-props",
        ])
        .arg(format!("bootstrap.servers={}", kafka_config().bootstrap_servers))
        .args([
            "acks=all",
            "enable.idempotence=true",
            "linger.ms=5",
            "compression.type=lz4",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        output.status.success(),
        "ProducerPerformance failed: {}{}",
        text,
        String::from_utf8_lossy(&output.stderr)
    );
    // "N records sent, X records/sec (Y MB/sec), A ms avg latency, M ms max latency, P50 ms 50th, P95 ms 95th, P99 ms 99th, P999 ms 99.9th."
    let summary = text
        .lines()
        .rev()
        .find(|l| l.contains("records/sec") && l.contains("99.9th"))
        .ok_or_else(|| anyhow::anyhow!("no summary in: {text}"))?;
    let number_before = |marker: &str| -> f64 {
        summary
            .split(',')
            .find(|part| part.contains(marker))
            .and_then(|part| {
                part.split_whitespace()
                    .find_map(|w| w.trim_start_matches('(').parse::<f64>().ok())
            })
            .unwrap_or(f64::NAN)
    };
    Ok(KafkaPerf {
        records_per_sec: number_before("records/sec"),
        p50_ms: number_before("50th"),
        p99_ms: number_before(" 99th"),
        p999_ms: number_before("99.9th"),
    })
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = match Cli::parse().command {
        Bench::Ingest(args) => args,
        Bench::Pipeline(args) => return pipeline::run(args).await,
        Bench::Sinks(args) => return sinks::run(args).await,
        Bench::Dedup(args) => return dedup::run(args).await,
        Bench::Txn(args) => return txn::run(args).await,
    };
    let bin = args
        .ingest_bin
        .clone()
        .unwrap_or_else(|| std::env::current_exe().expect("exe").with_file_name("nectar-ingest"));
    let stack = args
        .stack
        .clone()
        .unwrap_or_else(|| repo_root().join("deploy/local/stack"));
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!(
        "nectar-bench ingest: {} s per scenario, {} connections, {cores} cores shared by load generator, service and broker",
        args.duration, args.concurrency
    );
    println!();
    println!(
        "| scenario | events/s | requests/s | p50 ms | p99 ms | p999 ms | errors | ingest peak RSS | kafka perf records/s | kafka p50/p99/p999 ms | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");

    for &batch in &args.batch_sizes {
        let topic = unique("bench.raw.apps");
        ensure_topics(&kafka_config(), &[TopicSpec::new(&topic, 3)]).await?;
        let service = start_ingest(&bin, &topic).await?;
        let result = load(
            &service.base,
            batch,
            args.concurrency,
            Duration::from_secs(args.duration),
        )
        .await;
        let rss = peak_rss_mib(service.child.id());
        drop(service);

        // Same record size as what ingest wrote: the average value size on the topic.
        let sample = nectar_tests::read_topic(&topic, 200).await;
        let record_size = (sample.iter().map(|r| r.payload.len()).sum::<usize>() / sample.len().max(1)).max(1);
        let secs = result.elapsed.as_secs_f64();
        let events_per_sec = result.events as f64 / secs;
        let perf_topic = unique("bench.kafka-perf");
        ensure_topics(&kafka_config(), &[TopicSpec::new(&perf_topic, 3)]).await?;
        // At least 200k records so the JVM tool is past its warm-up for most of the run.
        let perf_records = result.events.clamp(200_000, 2_000_000);
        let perf = kafka_perf(&stack, &perf_topic, perf_records, record_size)?;
        let h = &result.latency;
        println!(
            "| batch {batch} ({record_size} B/event) | {events_per_sec:.0} | {:.0} | {:.2} | {:.2} | {:.2} | {} | {} MiB | {:.0} | {:.0}/{:.0}/{:.0} | {:.2} |",
            result.requests as f64 / secs,
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.99)),
            ms(h.value_at_quantile(0.999)),
            result.errors,
            rss.map_or_else(|| "?".to_owned(), |m| format!("{m:.1}")),
            perf.records_per_sec,
            perf.p50_ms,
            perf.p99_ms,
            perf.p999_ms,
            events_per_sec / perf.records_per_sec,
        );
    }
    println!();
    println!(
        "ratio = ingest events/s over Kafka ProducerPerformance records/s for the same record size and producer settings."
    );
    Ok(())
}

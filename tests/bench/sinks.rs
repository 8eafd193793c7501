//! `nectar-bench sinks`: the PostgreSQL, OpenSearch and HTTP sinks beside their raw target, in
//! the same run.
//!
//! Per target: a backlog of events is produced to a fresh delivery topic. The baseline writes
//! the same events straight to the target the way the sink does, without Kafka or Nectar
//! (PostgreSQL: one `INSERT … SELECT FROM UNNEST(…) ON CONFLICT DO NOTHING` transaction per
//! 1000 rows; OpenSearch: `_bulk` requests of 1000 documents, two in flight). Then the sink's
//! release binary drains the backlog (events/s over the span from its first to its last
//! delivery). Latency: a fresh sink process, events produced at a steady rate, and the
//! sink's own `nectar_sink_delivery_latency_seconds` histogram (record timestamp → accepted
//! by the target) read from `/metrics`; the baseline's figure is the latency of one bulk
//! request. Peak RSS is the sink process's own (VmHWM).
//!
//! HTTP: `nectar-sink-http` with the generic signed webhook spec against a local receiver that
//! answers 204 at once; the baseline sends the same signed requests (one per event, as many in
//! flight as the spec's concurrency) straight to the receiver.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use hdrhistogram::Histogram;
use nectar_core::events::Event;
use nectar_tests::sink::{SinkTopics, fresh_sink_topics, produce_events, sample_events, sink_env};
use nectar_tests::{ServiceProcess, unique};
use serde_json::Value;

#[derive(Debug, clap::Args)]
pub struct SinksArgs {
    /// Events in the backlog.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Events per second in the latency phase, and for how long.
    #[arg(long, default_value_t = 500)]
    rate: usize,
    #[arg(long, default_value_t = 10)]
    latency_secs: u64,
    /// Which sinks (`http`: nectar-sink-http with the signed webhook spec).
    #[arg(long, value_delimiter = ',', default_value = "postgres,elasticsearch,http")]
    sinks: Vec<String>,
    #[arg(
        long,
        env = "NECTAR_PG_URL",
        default_value = "postgres://nectar:nectar@127.0.0.1:5432/nectar"
    )]
    pg_url: String,
    #[arg(long, env = "NECTAR_OS_URL", default_value = "http://127.0.0.1:9200")]
    os_url: String,
    /// Directory of the service binaries (default: next to this one).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// One target as the bench drives it.
enum Target {
    Postgres {
        pool: sqlx::PgPool,
        schema: String,
    },
    OpenSearch {
        http: reqwest::Client,
        url: String,
        index: String,
    },
    /// A receiver answering 204 at once: `/sink` counts the sink's requests, `/raw` the
    /// baseline's.
    Http {
        url: String,
        received: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    },
}

/// The spec's requests in flight (`limits.concurrency` of `vendors/webhook.toml`).
const HTTP_CONCURRENCY: usize = 4;

/// Start the receiver.
async fn receiver() -> anyhow::Result<Target> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let received = std::sync::Arc::new(AtomicUsize::new(0));
    let counter = received.clone();
    let app = axum::Router::new()
        .route(
            "/sink",
            axum::routing::post(move |_: axum::body::Bytes| {
                let counter = counter.clone();
                async move {
                    counter.fetch_add(1, Ordering::Relaxed);
                    axum::http::StatusCode::NO_CONTENT
                }
            }),
        )
        .route(
            "/raw",
            axum::routing::post(|_: axum::body::Bytes| async { axum::http::StatusCode::NO_CONTENT }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Target::Http { url, received })
}

impl Target {
    fn label(&self) -> &'static str {
        match self {
            Self::Postgres { .. } => "PostgreSQL",
            Self::OpenSearch { .. } => "OpenSearch",
            Self::Http { .. } => "HTTP receiver (signed webhook per event)",
        }
    }

    /// Events stored by the sink.
    async fn count(&self) -> anyhow::Result<usize> {
        match self {
            Self::Postgres { pool, schema } => {
                let sql = format!("SELECT count(*) FROM \"{schema}\".nectar_events");
                let n: i64 = sqlx::query_scalar(&sql).fetch_one(pool).await.unwrap_or(0);
                Ok(n as usize)
            }
            Self::OpenSearch { http, url, index } => {
                let _ = http.post(format!("{url}/{index}/_refresh")).send().await?;
                let r = http.get(format!("{url}/{index}/_count")).send().await?;
                if !r.status().is_success() {
                    return Ok(0);
                }
                let v: Value = r.json().await?;
                Ok(v["count"].as_u64().unwrap_or(0) as usize)
            }
            Self::Http { received, .. } => Ok(received.load(std::sync::atomic::Ordering::Relaxed)),
        }
    }

    fn sink_env(&self, topics: &SinkTopics, admin: &str) -> Vec<(String, String)> {
        let mut extra: Vec<(&str, String)> = vec![
            ("NECTAR_ADMIN__LISTEN", admin.to_owned()),
            // NECTAR_BENCH_SINK_LOG=nectar_sink=debug shows each batch's timings.
            (
                "NECTAR_LOG__FILTER",
                std::env::var("NECTAR_BENCH_SINK_LOG").unwrap_or_else(|_| "warn".to_owned()),
            ),
        ];
        match self {
            Self::Postgres { schema, .. } => extra.push(("NECTAR_TARGET__SCHEMA", schema.clone())),
            Self::OpenSearch { url, index, .. } => {
                extra.push(("NECTAR_TARGET__URL", url.clone()));
                extra.push(("NECTAR_TARGET__INDEX", index.clone()));
                extra.push(("NECTAR_TARGET__NUMBER_OF_REPLICAS", "0".to_owned()));
            }
            Self::Http { url, .. } => {
                extra.push(("NECTAR_TARGET__VENDOR", "webhook".to_owned()));
                extra.push(("NECTAR_TARGET__URL", format!("{url}/sink")));
                extra.push(("NECTAR_TARGET__SECRET", nectar_tests::fakes::webhook::SECRET.to_owned()));
                extra.push(("NECTAR_SINK__RATE_LIMIT_PER_SECOND", "0".to_owned()));
            }
        }
        let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut env = sink_env(topics, &extra);
        // The shipped batching, not the tests' short linger.
        env.retain(|(k, _)| k != "NECTAR_SINK__LINGER_MS");
        env
    }
}

/// The raw target written without Nectar: (events/s, per-request latency in ms).
async fn baseline(target: &Target, events: &[Event], run: &str) -> anyhow::Result<(f64, Histogram<u64>)> {
    let docs: Vec<(String, String, i64, Value)> = events
        .iter()
        .map(|e| {
            (
                e.envelope.event_id.clone(),
                e.envelope.event_type.clone(),
                e.envelope.occurred_at,
                serde_json::to_value(e).expect("json"),
            )
        })
        .collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000, 3)?;
    let started = Instant::now();
    match target {
        Target::Postgres { pool, .. } => {
            let schema = format!("raw_{}", run.replace('-', "_"));
            sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
                .execute(pool)
                .await?;
            sqlx::query(&format!(
                "CREATE TABLE \"{schema}\".events (event_id text PRIMARY KEY, event_type text NOT NULL, \
                 occurred_at timestamptz NOT NULL, payload jsonb NOT NULL, delivered_at timestamptz NOT NULL DEFAULT now())"
            ))
            .execute(pool)
            .await?;
            let sql = format!(
                "INSERT INTO \"{schema}\".events (event_id, event_type, occurred_at, payload) \
                 SELECT id, ty, to_timestamp(o / 1000.0), p FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::jsonb[]) AS u(id, ty, o, p) \
                 ON CONFLICT (event_id) DO NOTHING"
            );
            let started = Instant::now();
            for chunk in docs.chunks(1000) {
                let t = Instant::now();
                sqlx::query(&sql)
                    .bind(chunk.iter().map(|d| d.0.clone()).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|d| d.1.clone()).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|d| d.2).collect::<Vec<_>>())
                    .bind(chunk.iter().map(|d| d.3.clone()).collect::<Vec<_>>())
                    .execute(pool)
                    .await?;
                hist.record(t.elapsed().as_millis().max(1) as u64)?;
            }
            let rate = docs.len() as f64 / started.elapsed().as_secs_f64();
            sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                .execute(pool)
                .await?;
            Ok((rate, hist))
        }
        Target::OpenSearch { http, url, .. } => {
            let index = format!("raw-{run}");
            let bodies: Vec<String> = docs
                .chunks(1000)
                .map(|chunk| {
                    let mut body = String::new();
                    for (id, _, _, doc) in chunk {
                        body.push_str(&serde_json::json!({"index": {"_index": index, "_id": id}}).to_string());
                        body.push('\n');
                        body.push_str(&doc.to_string());
                        body.push('\n');
                    }
                    body
                })
                .collect();
            let started_at = Instant::now();
            let latencies: Vec<anyhow::Result<u64>> = futures::stream::iter(bodies)
                .map(|body| async move {
                    let t = Instant::now();
                    let r = http
                        .post(format!("{url}/_bulk"))
                        .header("content-type", "application/x-ndjson")
                        .body(body)
                        .send()
                        .await?;
                    let v: Value = r.json().await?;
                    anyhow::ensure!(v["errors"] == Value::Bool(false), "raw _bulk had errors");
                    Ok(t.elapsed().as_millis().max(1) as u64)
                })
                .buffer_unordered(2)
                .collect()
                .await;
            for l in latencies {
                hist.record(l?)?;
            }
            let rate = docs.len() as f64 / started_at.elapsed().as_secs_f64();
            let _ = started;
            http.delete(format!("{url}/{index}")).send().await?;
            Ok((rate, hist))
        }
        Target::Http { url, .. } => {
            // The requests the webhook spec sends: its body, signed the Standard Webhooks way.
            let http = reqwest::Client::new();
            let url = format!("{url}/raw");
            let started_at = Instant::now();
            let latencies: Vec<anyhow::Result<u64>> = futures::stream::iter(events)
                .map(|e| {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        let body = serde_json::to_vec(&serde_json::json!({
                            "type": e.envelope.event_type, "timestamp": e.envelope.occurred_at, "data": e,
                        }))?;
                        let now = nectar_tests::fakes::harness::now_secs();
                        let id = &e.envelope.event_id;
                        let signature =
                            nectar_tests::fakes::webhook::sign(nectar_tests::fakes::webhook::SECRET, id, now, &body);
                        let t = Instant::now();
                        let r = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("webhook-id", id.as_str())
                            .header("webhook-timestamp", now.to_string())
                            .header("webhook-signature", signature)
                            .body(body)
                            .send()
                            .await?;
                        anyhow::ensure!(r.status().is_success(), "the receiver answered {}", r.status());
                        Ok(t.elapsed().as_micros().max(1) as u64)
                    }
                })
                .buffer_unordered(HTTP_CONCURRENCY)
                .collect()
                .await;
            for l in latencies {
                // Milliseconds with a fraction kept: these requests take well under one.
                hist.record(l?)?;
            }
            Ok((events.len() as f64 / started_at.elapsed().as_secs_f64(), hist))
        }
    }
}

/// `q`-quantile of a Prometheus histogram, interpolated within its bucket (as PromQL's
/// `histogram_quantile`), in milliseconds.
fn histogram_quantile(metrics: &str, name: &str, q: f64) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}_bucket{{")))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse().ok()? };
            let count: f64 = l.rsplit(' ').next()?.parse().ok()?;
            Some((le, count))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total == 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for (le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(previous.0 * 1000.0);
            }
            let within = if count > previous.1 {
                (rank - previous.1) / (count - previous.1)
            } else {
                0.0
            };
            return Some((previous.0 + (le - previous.0) * within) * 1000.0);
        }
        previous = (le, count);
    }
    None
}

async fn wait_count(
    target: &Target,
    at_least: usize,
    process: &mut ServiceProcess,
    timeout: Duration,
) -> anyhow::Result<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if target.count().await? >= at_least {
            return Ok(Instant::now());
        }
        if let Some(status) = process.exited() {
            anyhow::bail!("the sink exited with {status}:\n{}", process.log());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sink did not deliver {at_least} events in time:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn bench_one(args: &SinksArgs, bin_dir: &Path, name: &str) -> anyhow::Result<()> {
    let run = unique("bench");
    let target = match name {
        "postgres" => {
            let pool = sqlx::postgres::PgPoolOptions::new()
                .max_connections(2)
                .connect(&args.pg_url)
                .await?;
            Target::Postgres {
                pool,
                schema: format!("bench_{}", run.replace('-', "_")),
            }
        }
        "elasticsearch" => Target::OpenSearch {
            http: reqwest::Client::new(),
            url: args.os_url.trim_end_matches('/').to_owned(),
            index: format!("bench-{run}"),
        },
        "http" => receiver().await?,
        other => anyhow::bail!("no benchmark for sink {other}"),
    };
    let topics = fresh_sink_topics(name).await;
    let events = sample_events(args.events, &run);
    produce_events(&topics.deliver, &events).await;
    let size = {
        let json: usize = events
            .iter()
            .map(|e| serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0))
            .sum();
        json / events.len().max(1)
    };

    let (raw_rate, raw_latency) = baseline(&target, &events, &run).await?;

    // Throughput: drain the backlog.
    let bin = bin_dir.join(format!("nectar-sink-{name}"));
    // The HTTP receiver's baseline latencies are in µs (its requests take well under 1 ms).
    let raw_unit = if matches!(target, Target::Http { .. }) {
        1000.0
    } else {
        1.0
    };
    let admin = format!("127.0.0.1:{}", super::free_port());
    let mut process = ServiceProcess::start(&bin, target.sink_env(&topics, &admin));
    let first = wait_count(&target, 1, &mut process, Duration::from_secs(120)).await?;
    let first_count = target.count().await?;
    let last = wait_count(&target, args.events, &mut process, Duration::from_secs(900)).await?;
    let sink_rate = (args.events - first_count.min(args.events - 1)) as f64 / (last - first).as_secs_f64().max(0.001);
    let backlog_rss = process.pid().and_then(super::peak_rss_mib);
    process.terminate();

    // Latency: a fresh process (fresh histogram), a steady rate.
    let admin = format!("127.0.0.1:{}", super::free_port());
    let mut process = ServiceProcess::start(&bin, target.sink_env(&topics, &admin));
    let ready = format!("http://{admin}/readyz");
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !http.get(&ready).send().await.is_ok_and(|r| r.status().is_success()) {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the sink did not get ready:\n{}",
            process.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = args.rate * args.latency_secs as usize;
    let steady = sample_events(total, &format!("{run}-steady"));
    let tick = Duration::from_millis(100);
    let per_tick = (args.rate / 10).max(1);
    let mut next = Instant::now();
    for chunk in steady.chunks(per_tick) {
        produce_events(&topics.deliver, chunk).await;
        next += tick;
        tokio::time::sleep_until(next.into()).await;
    }
    wait_count(&target, args.events + total, &mut process, Duration::from_secs(300)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let metrics = http.get(format!("http://{admin}/metrics")).send().await?.text().await?;
    let p50 = histogram_quantile(&metrics, "nectar_sink_delivery_latency_seconds", 0.5).unwrap_or(f64::NAN);
    let p99 = histogram_quantile(&metrics, "nectar_sink_delivery_latency_seconds", 0.99).unwrap_or(f64::NAN);
    let steady_rss = process.pid().and_then(super::peak_rss_mib);
    process.terminate();

    let rss = backlog_rss.into_iter().chain(steady_rss).fold(0.0_f64, f64::max);
    println!(
        "| {name} → {} ({size} B JSON/event) | {sink_rate:.0} | {raw_rate:.0} | {:.2} | {p50:.0} / {p99:.0} | {:.1} / {:.1} | {rss:.1} MiB |",
        target.label(),
        sink_rate / raw_rate,
        raw_latency.value_at_quantile(0.5) as f64 / raw_unit,
        raw_latency.value_at_quantile(0.99) as f64 / raw_unit,
    );
    if let Target::Postgres { pool, schema } = &target {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .execute(pool)
            .await?;
    }
    if let Target::OpenSearch { http, url, index } = &target {
        http.delete(format!("{url}/{index}")).send().await?;
    }
    Ok(())
}

pub async fn run(args: SinksArgs) -> anyhow::Result<()> {
    let bin_dir = super::bin_dir(args.bin_dir.as_ref());
    println!(
        "nectar-bench sinks: {} events in the backlog, then {}/s for {} s; release binaries from {}",
        args.events,
        args.rate,
        args.latency_secs,
        bin_dir.display()
    );
    println!();
    println!(
        "| sink → target | sink events/s | raw target events/s (same rows, no Nectar) | ratio | sink delivery latency p50 / p99 ms (record → accepted, at the steady rate) | raw request latency p50 / p99 ms (PostgreSQL, OpenSearch: 1000 rows; HTTP: one event) | sink peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|");
    for name in &args.sinks {
        bench_one(&args, &bin_dir, name).await?;
    }
    Ok(())
}

//! `nectar-bench txn`: where the time of one Kafka transaction goes, as the processor loop
//! makes them (`core/src/processor.rs`): begin, produce a batch, send the consumed offsets
//! to the transaction, commit. Each step is timed over many transactions, with librdkafka's
//! settings as the processors use them and with variants, side by side, so a change to the
//! loop's client settings is measured before it is made.
//!
//! The processors' throughput on a backlog is bounded by records per transaction divided by
//! the transaction's round trip; this shows which call the round trip is spent in.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_tests::{kafka_config, unique};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

#[derive(Debug, clap::Args)]
pub struct TxnArgs {
    /// Transactions per variant.
    #[arg(long, default_value_t = 200)]
    transactions: usize,
    /// Records produced in each transaction (~500 B each, spread over 3 partitions).
    #[arg(long, default_value_t = 100)]
    records: usize,
}

/// librdkafka producer settings to try, beside the processors' own (`processor.rs`), and
/// whether the deliveries are awaited (`wait_delivered`) before `commit_transaction`, as the
/// loop does, or left to rust-rdkafka's own flush inside it.
type Variant = (&'static str, &'static [(&'static str, &'static str)], bool);

const VARIANTS: &[Variant] = &[
    (
        "the loop's (retry.backoff.ms=20, wait_delivered)",
        &[("retry.backoff.ms", "20")],
        true,
    ),
    (
        "before: librdkafka defaults, commit_transaction's own flush",
        &[],
        false,
    ),
    ("wait_delivered only", &[], true),
    ("retry.backoff.ms=20 only", &[("retry.backoff.ms", "20")], false),
    (
        "the loop's + linger.ms=0",
        &[("retry.backoff.ms", "20"), ("linger.ms", "0")],
        true,
    ),
];

struct Steps {
    begin: Histogram<u64>,
    produce: Histogram<u64>,
    offsets: Histogram<u64>,
    commit: Histogram<u64>,
    total: Histogram<u64>,
}

impl Steps {
    fn new() -> anyhow::Result<Self> {
        let h = || Histogram::<u64>::new_with_bounds(1, 60_000_000, 3);
        Ok(Self {
            begin: h()?,
            produce: h()?,
            offsets: h()?,
            commit: h()?,
            total: h()?,
        })
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// A consumer that has joined a group and owns the input's partitions: its group metadata is
/// what `send_offsets_to_transaction` needs.
fn group_member(input: &str) -> anyhow::Result<BaseConsumer> {
    let consumer: BaseConsumer = nectar_core::kafka::client_config(&kafka_config(), "bench-txn")
        .set("group.id", unique("bench-txn"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    consumer.subscribe(&[input])?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment()?.count() == 0 {
        anyhow::ensure!(Instant::now() < deadline, "the bench consumer got no partitions");
        consumer.poll(Duration::from_millis(100));
    }
    Ok(consumer)
}

fn run_variant(
    extra: &[(&str, &str)],
    drain: bool,
    output: &str,
    input: &str,
    consumer: &BaseConsumer,
    args: &TxnArgs,
) -> anyhow::Result<(Steps, f64)> {
    let mut config = nectar_core::kafka::client_config(&kafka_config(), "bench-txn-producer");
    config
        .set("transactional.id", unique("bench-txn"))
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("transaction.timeout.ms", "60000");
    for (key, value) in extra {
        config.set(*key, *value);
    }
    // librdkafka's own timing of each request: NECTAR_BENCH_TXN_DEBUG=eos,protocol with
    // RUST_LOG=librdkafka=debug prints them.
    if let Ok(debug) = std::env::var("NECTAR_BENCH_TXN_DEBUG") {
        config.set("debug", debug);
    }
    let producer: ThreadedProducer<DefaultProducerContext> = config.create()?;
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout)?;
    let payload = vec![b'x'; 500];
    let mut offsets = TopicPartitionList::new();
    for p in 0..3 {
        offsets.add_partition_offset(input, p, Offset::Offset(0))?;
    }
    let metadata = consumer
        .group_metadata()
        .ok_or_else(|| anyhow::anyhow!("no group metadata"))?;
    let mut steps = Steps::new()?;
    let started = Instant::now();
    for t in 0..args.transactions {
        let t0 = Instant::now();
        producer.begin_transaction()?;
        let t1 = Instant::now();
        for r in 0..args.records {
            let key = format!("k{t}-{r}");
            let mut record = BaseRecord::to(output).key(&key).payload(&payload);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((_, back)) => {
                        record = back;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
            }
        }
        let t2 = Instant::now();
        producer.send_offsets_to_transaction(&offsets, &metadata, timeout)?;
        let t3 = Instant::now();
        if drain {
            nectar_core::kafka::wait_delivered(&producer, timeout)?;
        }
        producer.commit_transaction(timeout)?;
        let t4 = Instant::now();
        consumer.poll(Duration::ZERO);
        steps.begin.record(micros(t1 - t0))?;
        steps.produce.record(micros(t2 - t1))?;
        steps.offsets.record(micros(t3 - t2))?;
        steps.commit.record(micros(t4 - t3))?;
        steps.total.record(micros(t4 - t0))?;
    }
    let rate = (args.transactions * args.records) as f64 / started.elapsed().as_secs_f64();
    Ok((steps, rate))
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub async fn run(args: TxnArgs) -> anyhow::Result<()> {
    if std::env::var("NECTAR_BENCH_TXN_DEBUG").is_ok() {
        nectar_core::telemetry::init(&nectar_core::config::LogConfig::default());
    }
    let (input, output) = (unique("bench.txn.in"), unique("bench.txn.out"));
    ensure_topics(
        &kafka_config(),
        &[TopicSpec::new(&input, 3), TopicSpec::new(&output, 3)],
    )
    .await?;
    println!(
        "nectar-bench txn: {} transactions of {} records (500 B) per variant; begin → produce → send_offsets_to_transaction → commit_transaction",
        args.transactions, args.records
    );
    println!();
    println!(
        "| producer settings | records/s | begin p50 | produce p50 | send_offsets p50 / p99 | commit p50 / p99 | transaction p50 / p99 (ms) |"
    );
    println!("|---|---|---|---|---|---|---|");
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let consumer = group_member(&input)?;
        for (name, extra, drain) in VARIANTS {
            let (s, rate) = run_variant(extra, *drain, &output, &input, &consumer, &args)?;
            println!(
                "| {name} | {rate:.0} | {:.2} | {:.2} | {:.1} / {:.1} | {:.1} / {:.1} | {:.1} / {:.1} |",
                ms(&s.begin, 0.5),
                ms(&s.produce, 0.5),
                ms(&s.offsets, 0.5),
                ms(&s.offsets, 0.99),
                ms(&s.commit, 0.5),
                ms(&s.commit, 0.99),
                ms(&s.total, 0.5),
                ms(&s.total, 0.99),
            );
        }
        Ok(())
    })
    .await??;
    Ok(())
}

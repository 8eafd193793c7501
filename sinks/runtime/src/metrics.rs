//! Prometheus metrics of a sink, every series labelled `sink="<name>"`.

use prometheus::{Counter, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

#[derive(Debug, Clone)]
pub struct SinkMetrics {
    /// Events the target durably accepted.
    pub delivered: IntCounter,
    /// Item retries after a partial failure, and whole-request retries, by kind.
    pub retried: IntCounterVec,
    /// Events sent to the dead-letter queue.
    pub rejected: IntCounter,
    /// Events per batch.
    pub batch_size: Histogram,
    /// Duration of each request to the target, by outcome.
    pub request_seconds: prometheus::HistogramVec,
    /// Record timestamp → delivered.
    pub delivery_latency_seconds: Histogram,
    /// Time spent waiting for the rate limiter.
    pub rate_limit_wait_seconds: Counter,
    /// Requests that had to wait for the rate limiter.
    pub rate_limit_waits: IntCounter,
    /// Answers where the target itself said to slow down (HTTP 429 and the like).
    pub throttled: IntCounter,
    /// Events the target does not take (their type), acknowledged without sending.
    pub skipped: IntCounter,
    /// Offset commits.
    pub commits: IntCounter,
    /// Records behind the end of each partition.
    pub lag: IntGaugeVec,
    pub assigned_partitions: IntGauge,
}

impl SinkMetrics {
    pub fn new(registry: &Registry, sink: &str) -> prometheus::Result<Self> {
        let label = |o: Opts| o.const_label("sink", sink);
        let hist = |o: HistogramOpts| o.const_label("sink", sink);
        let seconds = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        ];
        let m = Self {
            delivered: IntCounter::with_opts(label(Opts::new(
                "nectar_sink_delivered_total",
                "Events the target durably accepted",
            )))?,
            retried: IntCounterVec::new(
                label(Opts::new(
                    "nectar_sink_retried_total",
                    "Events retried: kind=item (partial failure) or request (whole request failed)",
                )),
                &["kind"],
            )?,
            rejected: IntCounter::with_opts(label(Opts::new(
                "nectar_sink_rejected_total",
                "Events sent to the dead-letter queue",
            )))?,
            batch_size: Histogram::with_opts(
                hist(HistogramOpts::new("nectar_sink_batch_size", "Events per batch"))
                    .buckets(vec![1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0]),
            )?,
            request_seconds: prometheus::HistogramVec::new(
                hist(HistogramOpts::new(
                    "nectar_sink_request_seconds",
                    "Duration of each request to the target by outcome",
                ))
                .buckets(seconds.clone()),
                &["outcome"],
            )?,
            delivery_latency_seconds: Histogram::with_opts(
                hist(HistogramOpts::new(
                    "nectar_sink_delivery_latency_seconds",
                    "From the record's timestamp on the delivery topic to the target's acceptance",
                ))
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0,
                ]),
            )?,
            rate_limit_wait_seconds: Counter::with_opts(label(Opts::new(
                "nectar_sink_rate_limit_wait_seconds_total",
                "Time spent waiting for the rate limiter",
            )))?,
            rate_limit_waits: IntCounter::with_opts(label(Opts::new(
                "nectar_sink_rate_limit_waits_total",
                "Requests that waited for the rate limiter",
            )))?,
            skipped: IntCounter::with_opts(label(Opts::new(
                "nectar_sink_skipped_total",
                "Events the target does not take (by their type), acknowledged without sending.",
            )))?,
            throttled: IntCounter::with_opts(label(Opts::new(
                "nectar_sink_throttled_total",
                "Answers where the target asked to slow down (HTTP 429)",
            )))?,
            commits: IntCounter::with_opts(label(Opts::new("nectar_sink_commits_total", "Offset commits")))?,
            lag: IntGaugeVec::new(
                label(Opts::new(
                    "nectar_sink_consumer_lag",
                    "Records behind the end of each partition of the delivery topic",
                )),
                &["topic", "partition"],
            )?,
            assigned_partitions: IntGauge::with_opts(label(Opts::new(
                "nectar_sink_assigned_partitions",
                "Delivery topic partitions owned by this instance",
            )))?,
        };
        registry.register(Box::new(m.delivered.clone()))?;
        registry.register(Box::new(m.retried.clone()))?;
        registry.register(Box::new(m.rejected.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.request_seconds.clone()))?;
        registry.register(Box::new(m.delivery_latency_seconds.clone()))?;
        registry.register(Box::new(m.rate_limit_wait_seconds.clone()))?;
        registry.register(Box::new(m.rate_limit_waits.clone()))?;
        registry.register(Box::new(m.throttled.clone()))?;
        registry.register(Box::new(m.skipped.clone()))?;
        registry.register(Box::new(m.commits.clone()))?;
        registry.register(Box::new(m.lag.clone()))?;
        registry.register(Box::new(m.assigned_partitions.clone()))?;
        Ok(m)
    }
}

//! Prometheus metrics of the ingest service.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct IngestMetrics {
    /// Requests by route template and status code.
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Time from handing a record to the producer to the broker's acknowledgement.
    pub produce_duration: Histogram,
    pub in_flight: IntGauge,
    /// Records acknowledged by Kafka, by route.
    pub events: IntCounterVec,
    /// Form submissions dropped by the honeypot.
    pub spam_dropped: IntCounter,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

impl IngestMetrics {
    pub fn new(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            requests: IntCounterVec::new(
                Opts::new("nectar_ingest_requests_total", "HTTP requests by route and status"),
                &["route", "status"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "nectar_ingest_request_duration_seconds",
                    "HTTP request latency by route",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )?,
            produce_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "nectar_ingest_produce_duration_seconds",
                    "Latency from produce to broker acknowledgement",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
            )?,
            in_flight: IntGauge::new("nectar_ingest_in_flight_requests", "Requests being handled")?,
            events: IntCounterVec::new(
                Opts::new("nectar_ingest_events_total", "Events acknowledged by Kafka, by route"),
                &["route"],
            )?,
            spam_dropped: IntCounter::new(
                "nectar_ingest_spam_dropped_total",
                "Form submissions dropped by the honeypot",
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.request_duration.clone()))?;
        registry.register(Box::new(m.produce_duration.clone()))?;
        registry.register(Box::new(m.in_flight.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        registry.register(Box::new(m.spam_dropped.clone()))?;
        Ok(m)
    }
}

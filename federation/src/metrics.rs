//! The daemons' Prometheus metrics (`/metrics`), encoded by `prometheus-client`.
//!
//! A daemon keeps its figures in its own state (counters in atomics, leases in its ledger,
//! what each sliver used at the last sample), so each scrape reads them into a [`Scrape`]:
//! metric families in the order they are added, each with its name, help, type and samples.
//! [`Scrape::encode`] hands them to `prometheus-client` as a collector, which writes the
//! `# HELP` and `# TYPE` lines, escapes label values and formats the numbers (integers as
//! they are, reals in their shortest form: `2.5`).
//!
//! The text is Prometheus's text format 0.0.4 ([`CONTENT_TYPE`]), as the daemons have always
//! served it, so dashboards and alerts keep every name, help text, type and label. In that
//! format a counter's family is named with its `_total`, like its samples:
//!
//! ```text
//! # HELP planetmesh_broker_finds_total FindSlice requests answered.
//! # TYPE planetmesh_broker_finds_total counter
//! planetmesh_broker_finds_total 3
//! ```
//!
//! `prometheus-client`'s own `Counter` follows OpenMetrics instead, which names the family
//! without the suffix and appends it to the samples only (`# TYPE planetmesh_broker_finds
//! counter`); so a counter here is described under its full `_total` name and its samples are
//! written as they are. A family without samples (say, per-sliver figures on a node without
//! slivers) is left out, help and type included.

use std::fmt;

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::registry::Registry;

/// The content type of [`Scrape::encode`]'s text: Prometheus's text format 0.0.4.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// A sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value {
    /// A count or an amount of bytes, written as an integer.
    Integer(u64),
    /// A real number (seconds, a ratio), written in its shortest form.
    Real(f64),
}

impl From<u64> for Value {
    fn from(n: u64) -> Value {
        Value::Integer(n)
    }
}

impl From<usize> for Value {
    fn from(n: usize) -> Value {
        Value::Integer(u64::try_from(n).unwrap_or(u64::MAX))
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Value {
        Value::Real(x)
    }
}

/// One metric family of a scrape.
#[derive(Debug, Clone)]
struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Samples,
}

/// A family's samples: one value, one value per value of a label, one sample of value 1 with
/// several labels (an info gauge), or one histogram per value of a label.
#[derive(Debug, Clone)]
enum Samples {
    One(Value),
    By {
        label: &'static str,
        values: Vec<(String, Value)>,
    },
    Info(Vec<(&'static str, String)>),
    Histograms {
        label: &'static str,
        values: Vec<(String, HistogramSnapshot)>,
    },
}

/// What a [`Histogram`] counted, as a scrape writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Sum of the observations, in seconds.
    pub sum: f64,
    /// Observations.
    pub count: u64,
    /// Per bucket (upper bound, observations in that bucket alone), `+Inf` last.
    pub buckets: Vec<(f64, u64)>,
}

/// A latency histogram with fixed bounds ([`Histogram::BOUNDS`], seconds), lock-free.
#[derive(Debug)]
pub struct Histogram {
    buckets: [std::sync::atomic::AtomicU64; Histogram::BOUNDS.len() + 1],
    sum_micros: std::sync::atomic::AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| std::sync::atomic::AtomicU64::new(0)),
            sum_micros: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Upper bounds of the buckets, in seconds: from a millisecond (a status read) to half
    /// a minute (a busy redeem's whole wait).
    pub const BOUNDS: [f64; 13] = [
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
    ];

    /// Counts one observation.
    pub fn observe(&self, took: std::time::Duration) {
        use std::sync::atomic::Ordering::Relaxed;
        let secs = took.as_secs_f64();
        let bucket = Self::BOUNDS
            .iter()
            .position(|bound| secs <= *bound)
            .unwrap_or(Self::BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// What it counted so far.
    pub fn snapshot(&self) -> HistogramSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Relaxed)).collect();
        let bounds = Self::BOUNDS.iter().copied().chain([f64::INFINITY]);
        HistogramSnapshot {
            sum: self.sum_micros.load(Relaxed) as f64 / 1e6,
            count: counts.iter().sum(),
            buckets: bounds.zip(counts).collect(),
        }
    }
}

/// One scrape's metric families, in the order they are added. It answers an HTTP request
/// with its text ([`CONTENT_TYPE`]), or 500 if it cannot be encoded.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    families: Vec<Family>,
}

impl Scrape {
    /// No families yet.
    pub fn new() -> Scrape {
        Scrape::default()
    }

    /// A gauge `name` with one value. `help` is the sentence of its `# HELP` line.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        value: impl Into<Value>,
    ) -> &mut Scrape {
        self.add(name, help, MetricType::Gauge, Samples::One(value.into()))
    }

    /// A counter `name` (ending in `_total`) with one value.
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        value: impl Into<Value>,
    ) -> &mut Scrape {
        debug_assert!(name.ends_with("_total"), "counter {name} without _total");
        self.add(name, help, MetricType::Counter, Samples::One(value.into()))
    }

    /// A gauge `name` with one sample per value of `label` (none: the family is left out).
    pub fn gauge_by<V: Into<Value>>(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) -> &mut Scrape {
        let values = samples.into_iter().map(|(l, v)| (l, v.into())).collect();
        self.add(name, help, MetricType::Gauge, Samples::By { label, values })
    }

    /// A counter `name` (ending in `_total`) with one sample per value of `label` (none: the
    /// family is left out).
    pub fn counter_by<V: Into<Value>>(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        samples: impl IntoIterator<Item = (String, V)>,
    ) -> &mut Scrape {
        debug_assert!(name.ends_with("_total"), "counter {name} without _total");
        let values = samples.into_iter().map(|(l, v)| (l, v.into())).collect();
        self.add(
            name,
            help,
            MetricType::Counter,
            Samples::By { label, values },
        )
    }

    /// An info gauge `name` (ending in `_info`): one sample of value 1 whose labels carry the
    /// facts (`planetmesh_build_info{version="…",commit="…"} 1`).
    pub fn info(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: Vec<(&'static str, String)>,
    ) -> &mut Scrape {
        debug_assert!(name.ends_with("_info"), "info gauge {name} without _info");
        self.add(name, help, MetricType::Gauge, Samples::Info(labels))
    }

    /// A histogram `name` (in seconds) per value of `label` (none: the family is left out).
    pub fn histogram_by(
        &mut self,
        name: &'static str,
        help: &'static str,
        label: &'static str,
        values: Vec<(String, HistogramSnapshot)>,
    ) -> &mut Scrape {
        self.add(
            name,
            help,
            MetricType::Histogram,
            Samples::Histograms { label, values },
        )
    }

    fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        samples: Samples,
    ) -> &mut Scrape {
        self.families.push(Family {
            name,
            help,
            kind,
            samples,
        });
        self
    }

    /// The families in Prometheus's text format 0.0.4.
    pub fn encode(self) -> Result<String, fmt::Error> {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Families(self.families)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode_registry(&mut text, &registry)?;
        Ok(text)
    }
}

impl IntoResponse for Scrape {
    fn into_response(self) -> Response {
        match self.encode() {
            Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
            Err(e) => {
                tracing::error!("http: the metrics cannot be encoded: {e}");
                let detail = format!("the metrics cannot be encoded: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, detail).into_response()
            }
        }
    }
}

/// A scrape's families as `prometheus-client` collects them.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        for family in &self.0 {
            let empty = match &family.samples {
                Samples::By { values, .. } => values.is_empty(),
                Samples::Histograms { values, .. } => values.is_empty(),
                _ => false,
            };
            if empty {
                continue;
            }
            // Counters too are described under their `_total` name and written as their
            // values (the module docs say why): the 0.0.4 text of a counter.
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            match &family.samples {
                Samples::One(value) => write(*value, &mut metric)?,
                Samples::By { label, values } => {
                    for (label_value, value) in values {
                        let labels = [(*label, label_value.as_str())];
                        write(*value, &mut metric.encode_family(&labels)?)?;
                    }
                }
                Samples::Info(labels) => {
                    let labels: Vec<(&str, &str)> =
                        labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                    write(Value::Integer(1), &mut metric.encode_family(&labels)?)?;
                }
                Samples::Histograms { label, values } => {
                    for (label_value, h) in values {
                        let labels = [(*label, label_value.as_str())];
                        metric.encode_family(&labels)?.encode_histogram(
                            h.sum,
                            h.count,
                            &h.buckets,
                            None::<&std::collections::HashMap<usize, Exemplar<NoLabelSet, f64>>>,
                        )?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Writes one sample: the family's name, its labels and `value`, with no suffix.
fn write(value: Value, metric: &mut MetricEncoder<'_>) -> fmt::Result {
    match value {
        Value::Integer(n) => metric.encode_gauge(&n),
        Value::Real(x) => metric.encode_gauge(&x),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_and_counters_are_written_in_the_classic_text_format() {
        let mut scrape = Scrape::new();
        scrape
            .gauge("demo_nodes", "Nodes known.", 3u64)
            .counter("demo_requests_total", "Requests answered.", 7u64)
            .counter_by(
                "demo_outcomes_total",
                "Requests by outcome.",
                "outcome",
                [("ok".to_owned(), 5u64), ("refused".to_owned(), 2u64)],
            )
            .gauge_by(
                "demo_cpu_seconds_total",
                "CPU used.",
                "sliver",
                [("a".to_owned(), 2.5), ("b".to_owned(), 0.125)],
            );
        assert_eq!(
            scrape.encode().unwrap(),
            "# HELP demo_nodes Nodes known.\n\
             # TYPE demo_nodes gauge\n\
             demo_nodes 3\n\
             # HELP demo_requests_total Requests answered.\n\
             # TYPE demo_requests_total counter\n\
             demo_requests_total 7\n\
             # HELP demo_outcomes_total Requests by outcome.\n\
             # TYPE demo_outcomes_total counter\n\
             demo_outcomes_total{outcome=\"ok\"} 5\n\
             demo_outcomes_total{outcome=\"refused\"} 2\n\
             # HELP demo_cpu_seconds_total CPU used.\n\
             # TYPE demo_cpu_seconds_total gauge\n\
             demo_cpu_seconds_total{sliver=\"a\"} 2.5\n\
             demo_cpu_seconds_total{sliver=\"b\"} 0.125\n"
        );
    }

    #[test]
    fn a_family_without_samples_is_left_out_and_label_values_are_escaped() {
        let mut scrape = Scrape::new();
        scrape
            .gauge_by::<u64>("demo_empty", "Nothing.", "sliver", [])
            .gauge_by(
                "demo_named",
                "Odd names.",
                "name",
                [("say \"hi\"\\\n".to_owned(), 1u64)],
            )
            .gauge("demo_big", "Large.", usize::MAX)
            .gauge("demo_zero", "Zero.", 0.0);
        let text = scrape.encode().unwrap();
        assert!(!text.contains("demo_empty"), "{text}");
        assert!(
            text.contains("demo_named{name=\"say \\\"hi\\\"\\\\\\n\"} 1\n"),
            "{text}"
        );
        assert!(text.contains(&format!("demo_big {}\n", u64::MAX)), "{text}");
        assert!(text.contains("demo_zero 0.0\n"), "{text}");
    }

    #[tokio::test]
    async fn a_scrape_answers_with_the_prometheus_content_type() {
        let mut scrape = Scrape::new();
        scrape.gauge("demo_nodes", "Nodes known.", 1u64);
        let response = scrape.into_response();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "text/plain; version=0.0.4"
        );
    }
}

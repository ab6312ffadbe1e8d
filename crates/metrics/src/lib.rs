//! The process's metrics, served at `/_synapse/metrics`: one Prometheus registry holding
//! Synapse's metric names and labels wherever the meaning is the same (so Synapse's Grafana
//! dashboard and alerts work unchanged), the `process_*` family, and Myelin's own metrics under
//! `myelin_`.
//!
//! Metrics are process-wide, as in every Prometheus client: the families live in one static
//! [`Metrics`] ([`metrics()`]) that any crate records into with a relaxed atomic or two. The
//! server's name, a label on every Synapse-named metric (Synapse 1.163 added it), is set once
//! by [`init`]; [`encode`] renders OpenMetrics text.
//!
//! Caches are counted through [`CacheStats`] handles, read at scrape time.

#![warn(missing_docs)]

mod process;

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, OnceLock};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// A counter of seconds (or any other fraction).
pub type FloatCounter = Counter<f64, AtomicU64>;

/// Labels of a request as Synapse counts it on arrival.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `GET`, `PUT`, ...
    pub method: &'static str,
    /// Synapse's servlet class name for the endpoint, or the route template.
    pub servlet: Cow<'static, str>,
}

/// Labels of an answered request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    /// `GET`, `PUT`, ...
    pub method: &'static str,
    /// As in [`RequestLabels`].
    pub servlet: Cow<'static, str>,
    /// Synapse's request tag (empty but for `/sync`'s kinds).
    pub tag: &'static str,
    /// The HTTP status.
    pub code: u16,
}

/// Labels of an answered request without its status (Synapse's `response_count`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CountLabels {
    /// `GET`, `PUT`, ...
    pub method: &'static str,
    /// As in [`RequestLabels`].
    pub servlet: Cow<'static, str>,
    /// As in [`ResponseLabels`].
    pub tag: &'static str,
}

/// One label naming what was counted.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DescLabel {
    /// The storage call's name (the function that made it).
    pub desc: CallSite,
}

/// A function's path as `std::any::type_name` gives it, printed without the `<impl ...>::`
/// segments (`rooms::<impl myelin_core::server::Homeserver>::send` is printed `rooms::send`).
/// Tidied only when a scrape prints it, so recording costs nothing more than the pointer.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub struct CallSite(pub &'static str);

impl EncodeLabelValue for CallSite {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        let mut rest = self.0;
        while let Some(start) = rest.find("<impl ") {
            encoder.write_str(&rest[..start])?;
            // Skip to the matching `>` and the `::` after it.
            let mut depth = 0;
            let end = rest[start..]
                .char_indices()
                .find_map(|(i, c)| {
                    match c {
                        '<' => depth += 1,
                        '>' => depth -= 1,
                        _ => {}
                    }
                    (depth == 0).then_some(start + i + 1)
                })
                .unwrap_or(rest.len());
            rest = rest[end..].strip_prefix("::").unwrap_or(&rest[end..]);
        }
        encoder.write_str(rest)
    }
}

/// An event or EDU type.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TypeName {
    /// The type.
    pub r#type: String,
}

/// Labels of a persisted event (Synapse's `persisted_events_sep`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PersistedLabels {
    /// The event type.
    pub r#type: String,
    /// `local` or `remote`.
    pub origin_type: &'static str,
    /// `*client*` for local events, the sending server otherwise.
    pub origin_entity: String,
}

/// A named stream, service or outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabel {
    /// The stream woken.
    pub stream: &'static str,
}

/// An application service.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    /// The service's `id` from its registration.
    pub service: String,
}

/// Why a long-polling sync was answered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    /// `new_data` or `timeout`.
    pub outcome: &'static str,
}

/// Every metric the process records. Fields are public so that each subsystem records its
/// own with no indirection.
pub struct Metrics {
    /// `synapse_http_server_requests_received_total`.
    pub requests_received: Family<RequestLabels, Counter>,
    /// `synapse_http_server_in_flight_requests_count`.
    pub requests_in_flight: Family<RequestLabels, Gauge>,
    /// `synapse_http_server_response_count_total`.
    pub response_count: Family<CountLabels, Counter>,
    /// `synapse_http_server_response_time_seconds` (a histogram).
    pub response_time: Family<ResponseLabels, Histogram>,
    /// `synapse_storage_transaction_time_count_total`.
    pub db_transactions: Family<DescLabel, Counter>,
    /// `synapse_storage_transaction_time_sum_total` (seconds).
    pub db_transaction_seconds: Family<DescLabel, FloatCounter>,
    /// `synapse_storage_schedule_time` (seconds a storage call waited for a thread).
    pub db_schedule_time: Histogram,
    /// `synapse_storage_events_persisted_events_total`.
    pub events_persisted: Counter,
    /// `synapse_storage_events_persisted_events_sep_total`.
    pub events_persisted_by_type: Family<PersistedLabels, Counter>,
    /// `synapse_event_persisted_position`.
    pub persisted_position: Gauge,
    /// `synapse_federation_client_sent_transactions_total`.
    pub federation_transactions_sent: Counter,
    /// `synapse_federation_client_sent_pdu_destinations_count_total`: PDUs queued for one
    /// or more destinations.
    pub federation_pdus_queued: Counter,
    /// `synapse_federation_client_sent_pdu_destinations_total`: PDUs queued, counted per
    /// destination.
    pub federation_pdu_destinations: Counter,
    /// `synapse_federation_client_sent_edus_total`.
    pub federation_edus_sent: Counter,
    /// `synapse_federation_client_sent_edus_by_type_total`.
    pub federation_edus_sent_by_type: Family<TypeName, Counter>,
    /// `synapse_federation_server_received_pdus_total`.
    pub federation_pdus_received: Counter,
    /// `synapse_federation_server_received_edus_total`.
    pub federation_edus_received: Counter,
    /// `myelin_federation_transactions_received_total` (Synapse counts these only as requests
    /// to `FederationSendServlet`).
    pub federation_transactions_received: Counter,
    /// `synapse_notifier_users_woken_by_stream_total`.
    pub users_woken: Family<StreamLabel, Counter>,
    /// `synapse_appservice_api_sent_transactions_total`.
    pub appservice_transactions_sent: Family<ServiceLabel, Counter>,
    /// `synapse_appservice_api_sent_events_total`.
    pub appservice_events_sent: Family<ServiceLabel, Counter>,
    /// `synapse_http_httppusher_http_pushes_processed_total`.
    pub pushes_processed: Counter,
    /// `synapse_http_httppusher_http_pushes_failed_total`.
    pub pushes_failed: Counter,
    /// `myelin_event_writer_batch_size`: events committed together.
    pub writer_batch_size: Histogram,
    /// `myelin_sync_wakeups_total`: long-polling syncs answered, by why.
    pub sync_wakeups: Family<OutcomeLabel, Counter>,
}

fn seconds_histogram() -> Histogram {
    // Synapse's response-time buckets.
    Histogram::new([
        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 180.0,
    ])
}

impl Metrics {
    fn new() -> Metrics {
        Metrics {
            requests_received: Family::default(),
            requests_in_flight: Family::default(),
            response_count: Family::default(),
            response_time: Family::new_with_constructor(seconds_histogram),
            db_transactions: Family::default(),
            db_transaction_seconds: Family::default(),
            db_schedule_time: Histogram::new([0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0]),
            events_persisted: Counter::default(),
            events_persisted_by_type: Family::default(),
            persisted_position: Gauge::default(),
            federation_transactions_sent: Counter::default(),
            federation_pdus_queued: Counter::default(),
            federation_pdu_destinations: Counter::default(),
            federation_edus_sent: Counter::default(),
            federation_edus_sent_by_type: Family::default(),
            federation_pdus_received: Counter::default(),
            federation_edus_received: Counter::default(),
            federation_transactions_received: Counter::default(),
            users_woken: Family::default(),
            appservice_transactions_sent: Family::default(),
            appservice_events_sent: Family::default(),
            pushes_processed: Counter::default(),
            pushes_failed: Counter::default(),
            writer_batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            sync_wakeups: Family::default(),
        }
    }

    /// Registers every family: Synapse's names under a registry labelled with the server's name,
    /// Myelin's own beside them.
    fn register(&self, server_name: &str) -> Registry {
        let mut root = Registry::default();
        let synapse = root.sub_registry_with_label((Cow::Borrowed("server_name"), Cow::Owned(server_name.to_owned())));
        let m = self;
        synapse.register("synapse_http_server_requests_received", "Requests received", m.requests_received.clone());
        synapse.register(
            "synapse_http_server_in_flight_requests_count",
            "Requests in flight",
            m.requests_in_flight.clone(),
        );
        synapse.register("synapse_http_server_response_count", "Responses sent", m.response_count.clone());
        synapse.register("synapse_http_server_response_time_seconds", "sec", m.response_time.clone());
        synapse.register("synapse_storage_transaction_time_count", "sec", m.db_transactions.clone());
        synapse.register("synapse_storage_transaction_time_sum", "sec", m.db_transaction_seconds.clone());
        synapse.register("synapse_storage_schedule_time", "sec", m.db_schedule_time.clone());
        synapse.register("synapse_storage_events_persisted_events", "Events persisted", m.events_persisted.clone());
        synapse.register(
            "synapse_storage_events_persisted_events_sep",
            "Events persisted, by type and origin",
            m.events_persisted_by_type.clone(),
        );
        synapse.register(
            "synapse_event_persisted_position",
            "The last persisted stream position",
            m.persisted_position.clone(),
        );
        synapse.register(
            "synapse_federation_client_sent_transactions",
            "Federation transactions sent",
            m.federation_transactions_sent.clone(),
        );
        synapse.register(
            "synapse_federation_client_sent_pdu_destinations_count",
            "Number of PDUs queued for sending to one or more destinations",
            m.federation_pdus_queued.clone(),
        );
        synapse.register(
            "synapse_federation_client_sent_pdu_destinations",
            "Total number of PDUs queued for sending across all destinations",
            m.federation_pdu_destinations.clone(),
        );
        synapse.register(
            "synapse_federation_client_sent_edus",
            "Total number of EDUs successfully sent",
            m.federation_edus_sent.clone(),
        );
        synapse.register(
            "synapse_federation_client_sent_edus_by_type",
            "Number of sent EDUs successfully sent, by event type",
            m.federation_edus_sent_by_type.clone(),
        );
        synapse.register(
            "synapse_federation_server_received_pdus",
            "PDUs received",
            m.federation_pdus_received.clone(),
        );
        synapse.register(
            "synapse_federation_server_received_edus",
            "EDUs received",
            m.federation_edus_received.clone(),
        );
        synapse.register("synapse_notifier_users_woken_by_stream", "Waiting syncs woken", m.users_woken.clone());
        synapse.register(
            "synapse_appservice_api_sent_transactions",
            "Number of transactions sent to application services",
            m.appservice_transactions_sent.clone(),
        );
        synapse.register(
            "synapse_appservice_api_sent_events",
            "Number of events sent to application services",
            m.appservice_events_sent.clone(),
        );
        synapse.register(
            "synapse_http_httppusher_http_pushes_processed",
            "Pushes delivered",
            m.pushes_processed.clone(),
        );
        synapse.register("synapse_http_httppusher_http_pushes_failed", "Pushes that failed", m.pushes_failed.clone());
        synapse.register_collector(Box::new(SynapseInfo));
        synapse.register_collector(Box::new(CacheCollector));

        root.register(
            "myelin_federation_transactions_received",
            "Federation transactions received",
            m.federation_transactions_received.clone(),
        );
        root.register("myelin_event_writer_batch_size", "Events committed together", m.writer_batch_size.clone());
        root.register("myelin_sync_wakeups", "Long-polling syncs answered, by why", m.sync_wakeups.clone());
        root.register_collector(Box::new(process::ProcessCollector));
        root
    }
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);
static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// Names the server on every Synapse-named metric; the first call wins (one process serves
/// one homeserver).
pub fn init(server_name: &str) {
    REGISTRY.get_or_init(|| METRICS.register(server_name));
}

/// Every metric in OpenMetrics text, without the closing `# EOF` line, so that a caller can
/// append families of its own (module metrics) before [`EOF`].
pub fn encode() -> String {
    let mut out = String::new();
    let registry = REGISTRY.get_or_init(|| METRICS.register("localhost"));
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode_registry(&mut out, registry);
    out
}

/// The line that ends an OpenMetrics exposition.
pub const EOF: &str = "# EOF\n";

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `synapse_build_info` and `synapse_server_name_info`.
#[derive(Debug)]
struct SynapseInfo;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    pythonversion: &'static str,
    version: &'static str,
    osversion: &'static str,
    rustcversion: &'static str,
}

impl Collector for SynapseInfo {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let build = ConstGauge::new(1);
        let labels = BuildLabels {
            pythonversion: "",
            version: env!("CARGO_PKG_VERSION"),
            osversion: std::env::consts::OS,
            rustcversion: "",
        };
        let mut family =
            encoder.encode_descriptor("synapse_build_info", "Build information", None, build.metric_type())?;
        build.encode(family.encode_family(&labels)?)?;
        let named = ConstGauge::new(1);
        let family = encoder.encode_descriptor(
            "synapse_server_name_info",
            "Maps server names to the instances they are hosted on",
            None,
            named.metric_type(),
        )?;
        named.encode(family)
    }
}

/// Hits, lookups, size and evictions of one named cache; every cache of
/// that name shares it. Recording is a relaxed atomic add.
#[derive(Debug, Default)]
pub struct CacheStats {
    lookups: AtomicU64,
    hits: AtomicU64,
    evicted: AtomicU64,
    size: AtomicI64,
}

impl CacheStats {
    /// The statistics of the cache called `name` (Synapse's `name` label), made on first use.
    pub fn named(name: &'static str) -> Arc<CacheStats> {
        CACHES.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_default().clone()
    }

    /// A lookup, found or not.
    pub fn lookup(&self, hit: bool) {
        self.lookups.fetch_add(1, Ordering::Relaxed);
        if hit {
            self.hits.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// `n` entries dropped for lack of room.
    pub fn evicted(&self, n: usize) {
        self.evicted.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The number of entries held changed by `delta`.
    pub fn resized(&self, delta: i64) {
        self.size.fetch_add(delta, Ordering::Relaxed);
    }
}

static CACHES: LazyLock<Mutex<BTreeMap<&'static str, Arc<CacheStats>>>> = LazyLock::new(Default::default);

/// Reads one number of a [`CacheStats`].
type ReadStat = fn(&CacheStats) -> i64;

/// Synapse's `synapse_util_caches_cache*` gauges, read from every [`CacheStats`] at scrape time.
#[derive(Debug)]
struct CacheCollector;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheName {
    name: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EvictionLabels {
    name: &'static str,
    reason: &'static str,
}

impl Collector for CacheCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let caches: Vec<(&'static str, Arc<CacheStats>)> =
            CACHES.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(n, s)| (*n, s.clone())).collect();
        let gauges: [(&str, &str, ReadStat); 3] = [
            ("synapse_util_caches_cache", "Lookups", |s| s.lookups.load(Ordering::Relaxed) as i64),
            ("synapse_util_caches_cache_hits", "Lookups that found an entry", |s| {
                s.hits.load(Ordering::Relaxed) as i64
            }),
            ("synapse_util_caches_cache_size", "Entries held", |s| s.size.load(Ordering::Relaxed).max(0)),
        ];
        for (name, help, read) in gauges {
            let mut family =
                encoder.encode_descriptor(name, help, None, prometheus_client::metrics::MetricType::Gauge)?;
            for (cache, stats) in &caches {
                ConstGauge::new(read(stats)).encode(family.encode_family(&CacheName { name: cache })?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "synapse_util_caches_cache_evicted_size",
            "Entries dropped",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for (cache, stats) in &caches {
            let labels = EvictionLabels { name: cache, reason: "size" };
            ConstGauge::new(stats.evicted.load(Ordering::Relaxed) as i64).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synapse_names_carry_the_server_name_and_counters_end_in_total() {
        init("example.org");
        metrics().events_persisted.inc();
        metrics()
            .requests_received
            .get_or_create(&RequestLabels { method: "PUT", servlet: Cow::Borrowed("RoomSendEventRestServlet") })
            .inc();
        CacheStats::named("test_cache").lookup(true);
        let call = DescLabel { desc: CallSite("rooms::<impl myelin_core::server::Homeserver>::send") };
        metrics().db_transactions.get_or_create(&call).inc();
        let text = encode();
        assert!(
            text.contains("synapse_storage_events_persisted_events_total{server_name=\"example.org\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "synapse_http_server_requests_received_total{server_name=\"example.org\",method=\"PUT\",servlet=\"RoomSendEventRestServlet\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("synapse_util_caches_cache_hits{server_name=\"example.org\",name=\"test_cache\"} 1"),
            "{text}"
        );
        assert!(text.contains("synapse_build_info{"), "{text}");
        assert!(
            text.contains(
                "synapse_storage_transaction_time_count_total{server_name=\"example.org\",desc=\"rooms::send\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(!text.contains("# EOF"));
    }
}

//! Prometheus metrics served at `GET /metrics`. One process-wide registry; lock-free counters.

use std::sync::LazyLock;

use prometheus::{
    Encoder, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub struct Metrics {
    registry: Registry,
    /// Stores with an authenticated sync connection now.
    pub connected_stores: IntGauge,
    pub frames_in: IntCounterVec,
    pub frames_out: IntCounterVec,
    /// Documents held by the hub (set at start, raised when a new one is stored).
    pub documents: IntGauge,
    pub chunks_stored: IntCounter,
    /// Synced rounds whose document another session or replica had written meanwhile.
    pub stale_writes: IntCounter,
    /// Changes heard from other hub replicas on the same database, by kind.
    pub replica_events: IntCounterVec,
    pub continuations: IntCounter,
    /// Synced rounds stored without their HQ projection (a record did not decode).
    pub projection_failures: IntCounter,
    pub refused: IntCounterVec,
    pub errors: IntCounterVec,
    pub stores: IntGaugeVec,
    /// Documents erased, by reason (`customer_request`, `retention`, `store_request`).
    pub erased: IntCounterVec,
    /// Requests refused by a per-client limit (throttle.rs), by limit name.
    pub limit_exceeded: IntCounterVec,
}

fn counter_vec(name: &str, help: &str, label: &str) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), &[label]).expect("metric")
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let connected_stores = IntGauge::new(
            "aisle_hub_connected_stores",
            "Stores with an authenticated sync connection",
        )
        .expect("metric");
        let frames_in = counter_vec(
            "aisle_hub_frames_in_total",
            "Sync frames received from stores, by type",
            "type",
        );
        let frames_out = counter_vec(
            "aisle_hub_frames_out_total",
            "Sync frames sent to stores, by type",
            "type",
        );
        let documents =
            IntGauge::new("aisle_hub_documents", "Documents stored by the hub").expect("metric");
        let continuations = IntCounter::new(
            "aisle_hub_continuations_total",
            "Conversations continued at a store other than the one that opened them",
        )
        .expect("metric");
        let chunks_stored = IntCounter::new(
            "aisle_hub_document_chunks_stored_total",
            "Document chunks committed (one per received change set)",
        )
        .expect("metric");
        let stale_writes = IntCounter::new(
            "aisle_hub_stale_writes_total",
            "Synced rounds whose document had been written by another session or hub replica \
             since the writing session loaded it (appended, merged, nothing lost)",
        )
        .expect("metric");
        let replica_events = counter_vec(
            "aisle_hub_replica_events_total",
            "Changes heard from other hub replicas sharing the database, by kind",
            "kind",
        );
        let projection_failures = IntCounter::new(
            "aisle_hub_projection_failures_total",
            "Synced rounds stored without their HQ projection (a record did not decode)",
        )
        .expect("metric");
        let refused = counter_vec(
            "aisle_hub_sync_refused_total",
            "Sync connections refused at hello, by code",
            "code",
        );
        let errors = counter_vec(
            "aisle_hub_errors_total",
            "Errors returned to clients (HTTP and sync), by code",
            "code",
        );
        let stores = IntGaugeVec::new(
            Opts::new("aisle_hub_stores", "Registered stores by status"),
            &["status"],
        )
        .expect("metric");
        let erased = counter_vec(
            "aisle_hub_erased_documents_total",
            "Documents erased (content deleted, tombstone kept), by reason",
            "reason",
        );
        let limit_exceeded = counter_vec(
            "aisle_hub_limit_exceeded_total",
            "Times a configured limit was reached, by limit name",
            "limit",
        );
        for collector in [
            Box::new(connected_stores.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(frames_in.clone()),
            Box::new(frames_out.clone()),
            Box::new(documents.clone()),
            Box::new(chunks_stored.clone()),
            Box::new(stale_writes.clone()),
            Box::new(replica_events.clone()),
            Box::new(continuations.clone()),
            Box::new(projection_failures.clone()),
            Box::new(refused.clone()),
            Box::new(errors.clone()),
            Box::new(stores.clone()),
            Box::new(erased.clone()),
            Box::new(limit_exceeded.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Self {
            registry,
            connected_stores,
            frames_in,
            frames_out,
            documents,
            chunks_stored,
            stale_writes,
            replica_events,
            continuations,
            projection_failures,
            refused,
            errors,
            stores,
            erased,
            limit_exceeded,
        }
    }

    pub fn limit(&self, name: &'static str) {
        self.limit_exceeded.with_label_values(&[name]).inc();
    }

    pub fn error(&self, code: &str) {
        self.errors.with_label_values(&[code]).inc();
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

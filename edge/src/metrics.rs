//! Prometheus metrics served at `GET /metrics`.
//!
//! One process-wide registry: metrics are counted from the writer thread, connection tasks and
//! HTTP handlers alike, and the counters are lock-free atomics.

use std::sync::LazyLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::error::Code;

pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

pub struct Metrics {
    registry: Registry,
    pub connections: IntGaugeVec,
    pub connections_total: IntCounterVec,
    pub messages_persisted: IntCounter,
    pub messages_duplicate: IntCounter,
    pub frames_delivered: IntCounter,
    pub commit_batch_commands: Histogram,
    pub commit_seconds: Histogram,
    pub write_queue_depth: IntGauge,
    pub errors: IntCounterVec,
    pub limit_exceeded: IntCounterVec,
    /// Conversations erased here, by reason (`customer_request`, `retention`, `hub`).
    pub erased_conversations: IntCounterVec,
    pub hot_documents: IntGauge,
    pub document_compactions: IntCounter,
    pub conversations_started: IntCounter,
    pub state_changes: IntCounterVec,
    pub messages_merged: IntCounter,
    pub conversations_adopted: IntCounter,
    pub sync_frames: IntCounterVec,
    pub sync_errors: IntCounterVec,
    pub hub_connected: IntGauge,
    pub intents: IntCounterVec,
    pub classify_failures: IntCounterVec,
    pub model_info: IntGaugeVec,
    pub model_reloads: IntCounterVec,
    pub bot_answers: IntCounterVec,
    pub update_events: IntCounterVec,
    pub max_connections: IntGauge,
    pub open_files_limit: IntGauge,
    /// Settings swaps since start (1: the set resolved at start).
    pub settings_generation: IntGauge,
    /// HQ's settings version in force (the larger of its region and store layers'; 0: none).
    pub settings_hq_version: IntGauge,
    /// Settings changes offered, by source (`file`, `admin`, `hq`) and outcome (`applied`,
    /// `refused`).
    pub settings_changes: IntCounterVec,
}

impl Metrics {
    fn new() -> Self {
        let registry = Registry::new();
        let connections = IntGaugeVec::new(
            Opts::new("aisle_connections", "Open WebSocket connections by role"),
            &["role"],
        )
        .expect("metric");
        let connections_total = IntCounterVec::new(
            Opts::new(
                "aisle_connections_total",
                "WebSocket connections accepted, by role (after hello)",
            ),
            &["role"],
        )
        .expect("metric");
        let messages_persisted = IntCounter::new(
            "aisle_messages_persisted_total",
            "Chat messages committed to SQLite and acknowledged",
        )
        .expect("metric");
        let messages_duplicate = IntCounter::new(
            "aisle_messages_duplicate_total",
            "Retried sends answered with the original ack (nothing stored)",
        )
        .expect("metric");
        let frames_delivered = IntCounter::new(
            "aisle_frames_delivered_total",
            "Frames queued to subscribed connections by fan-out",
        )
        .expect("metric");
        let commit_batch_commands = Histogram::with_opts(
            HistogramOpts::new(
                "aisle_commit_batch_commands",
                "Commands folded into one SQLite transaction (group commit)",
            )
            .buckets(vec![
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
            ]),
        )
        .expect("metric");
        let commit_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "aisle_commit_seconds",
                "Time of one group-commit transaction, first statement to fsync",
            )
            .buckets(vec![
                0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0,
            ]),
        )
        .expect("metric");
        let write_queue_depth = IntGauge::new(
            "aisle_write_queue_depth",
            "Commands waiting for the writer thread",
        )
        .expect("metric");
        let errors = IntCounterVec::new(
            Opts::new("aisle_errors_total", "Errors returned to clients, by code"),
            &["code"],
        )
        .expect("metric");
        let limit_exceeded = IntCounterVec::new(
            Opts::new(
                "aisle_limit_exceeded_total",
                "Times a configured limit was reached, by limit name",
            ),
            &["limit"],
        )
        .expect("metric");
        let erased_conversations = IntCounterVec::new(
            Opts::new(
                "aisle_erased_conversations_total",
                "Conversations erased (content deleted, tombstone kept), by reason",
            ),
            &["reason"],
        )
        .expect("metric");
        let hot_documents = IntGauge::new(
            "aisle_hot_documents",
            "Conversation documents held in the writer's memory",
        )
        .expect("metric");
        let document_compactions = IntCounter::new(
            "aisle_document_compactions_total",
            "Conversation documents rewritten as one compacted save",
        )
        .expect("metric");
        let conversations_started = IntCounter::new(
            "aisle_conversations_started_total",
            "Conversations opened by customers",
        )
        .expect("metric");
        let state_changes = IntCounterVec::new(
            Opts::new(
                "aisle_state_changes_total",
                "Session state events applied, by event kind",
            ),
            &["kind"],
        )
        .expect("metric");
        let messages_merged = IntCounter::new(
            "aisle_messages_merged_total",
            "Messages written at another store that arrived here through the hub",
        )
        .expect("metric");
        let conversations_adopted = IntCounter::new(
            "aisle_conversations_adopted_total",
            "Conversations opened at another store that this store now holds",
        )
        .expect("metric");
        let sync_frames = IntCounterVec::new(
            Opts::new(
                "aisle_sync_frames_total",
                "Frames on the sync connection to the hub, by direction and type",
            ),
            &["direction", "type"],
        )
        .expect("metric");
        let sync_errors = IntCounterVec::new(
            Opts::new(
                "aisle_sync_errors_total",
                "Sync errors and refusals (either side), by code",
            ),
            &["code"],
        )
        .expect("metric");
        let hub_connected = IntGauge::new(
            "aisle_hub_connected",
            "1 while the sync connection to the region's hub is up",
        )
        .expect("metric");
        let intents = IntCounterVec::new(
            Opts::new(
                "aisle_intents_total",
                "Customer messages classified by the on-device model, by intent",
            ),
            &["intent"],
        )
        .expect("metric");
        let classify_failures = IntCounterVec::new(
            Opts::new(
                "aisle_classify_failures_total",
                "Customer messages stored without an intent: timeout, overloaded, error",
            ),
            &["reason"],
        )
        .expect("metric");
        let model_info = IntGaugeVec::new(
            Opts::new(
                "aisle_model_info",
                "1 for the intent model version in force",
            ),
            &["version"],
        )
        .expect("metric");
        let model_reloads = IntCounterVec::new(
            Opts::new(
                "aisle_model_reloads_total",
                "Hot swaps of the intent model file: swapped or refused",
            ),
            &["outcome"],
        )
        .expect("metric");
        let bot_answers = IntCounterVec::new(
            Opts::new(
                "aisle_bot_answers_total",
                "Answers sent by the bot, by intent",
            ),
            &["intent"],
        )
        .expect("metric");
        let update_events = IntCounterVec::new(
            Opts::new(
                "aisle_update_events_total",
                "Firmware updates: bundles installed, rejected (by reason) or failed, slots blessed",
            ),
            &["event"],
        )
        .expect("metric");
        let max_connections = IntGauge::new(
            "aisle_max_connections",
            "WebSocket connections the process accepts: limits.max_connections, lowered to \
             the open-file limit less limits.reserved_file_descriptors",
        )
        .expect("metric");
        let open_files_limit = IntGauge::new(
            "aisle_open_files_limit",
            "The process's soft RLIMIT_NOFILE after raising it to the hard limit at start",
        )
        .expect("metric");
        let settings_generation = IntGauge::new(
            "aisle_settings_generation",
            "Live settings swaps since the process started (1: the set resolved at start)",
        )
        .expect("metric");
        let settings_hq_version = IntGauge::new(
            "aisle_settings_version",
            "HQ's settings version in force at this store (the larger of the region and store \
             layers' versions; 0 when HQ set nothing)",
        )
        .expect("metric");
        let settings_changes = IntCounterVec::new(
            Opts::new(
                "aisle_settings_changes_total",
                "Live settings changes offered, by source and outcome (applied or refused)",
            ),
            &["source", "outcome"],
        )
        .expect("metric");

        for collector in [
            Box::new(connections.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(connections_total.clone()),
            Box::new(messages_persisted.clone()),
            Box::new(messages_duplicate.clone()),
            Box::new(frames_delivered.clone()),
            Box::new(commit_batch_commands.clone()),
            Box::new(commit_seconds.clone()),
            Box::new(write_queue_depth.clone()),
            Box::new(errors.clone()),
            Box::new(limit_exceeded.clone()),
            Box::new(erased_conversations.clone()),
            Box::new(hot_documents.clone()),
            Box::new(document_compactions.clone()),
            Box::new(conversations_started.clone()),
            Box::new(state_changes.clone()),
            Box::new(messages_merged.clone()),
            Box::new(conversations_adopted.clone()),
            Box::new(sync_frames.clone()),
            Box::new(sync_errors.clone()),
            Box::new(hub_connected.clone()),
            Box::new(intents.clone()),
            Box::new(classify_failures.clone()),
            Box::new(model_info.clone()),
            Box::new(model_reloads.clone()),
            Box::new(bot_answers.clone()),
            Box::new(update_events.clone()),
            Box::new(max_connections.clone()),
            Box::new(open_files_limit.clone()),
            Box::new(settings_generation.clone()),
            Box::new(settings_hq_version.clone()),
            Box::new(settings_changes.clone()),
        ] {
            registry.register(collector).expect("unique metric names");
        }
        Self {
            registry,
            connections,
            connections_total,
            messages_persisted,
            messages_duplicate,
            frames_delivered,
            commit_batch_commands,
            commit_seconds,
            write_queue_depth,
            errors,
            limit_exceeded,
            erased_conversations,
            hot_documents,
            document_compactions,
            conversations_started,
            state_changes,
            messages_merged,
            conversations_adopted,
            sync_frames,
            sync_errors,
            hub_connected,
            intents,
            classify_failures,
            model_info,
            model_reloads,
            bot_answers,
            update_events,
            max_connections,
            open_files_limit,
            settings_generation,
            settings_hq_version,
            settings_changes,
        }
    }

    /// The model version in force (the only `aisle_model_info` series set to 1).
    pub fn model_version(&self, version: &str) {
        self.model_info.reset();
        self.model_info.with_label_values(&[version]).set(1);
    }

    /// A firmware update event (`installed`, `blessed`, `failed`, `rejected_<reason>`).
    pub fn update_event(&self, event: &str) {
        self.update_events.with_label_values(&[event]).inc();
    }

    /// A sync error or refusal, by its protocol code.
    pub fn sync_error(&self, code: &str) {
        self.sync_errors.with_label_values(&[code]).inc();
    }

    pub fn error(&self, code: Code) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }

    /// A limit was reached: counted and logged (at debug, as a flood of them must not flood the
    /// log; the counter is what operators alert on).
    pub fn limit(&self, name: &'static str) {
        tracing::debug!(limit = name, "limit reached");
        self.limit_exceeded.with_label_values(&[name]).inc();
    }

    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(err) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "encoding metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

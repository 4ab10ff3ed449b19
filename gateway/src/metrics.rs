//! Prometheus metric names of the gateway, described in one place.

use metrics::{describe_counter, describe_gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const EVENTS_STORED: &str = "anxin_gateway_events_stored_total";
pub const EVENTS_DUPLICATE: &str = "anxin_gateway_events_duplicate_total";
pub const EVENTS_REJECTED: &str = "anxin_gateway_events_rejected_total";
pub const JOURNAL_ERRORS: &str = "anxin_gateway_journal_errors_total";
pub const JOURNAL_DEPTH: &str = "anxin_gateway_journal_depth";
pub const EVENTS_DELIVERED: &str = "anxin_gateway_events_delivered_total";
pub const UPLINK_CONNECTED: &str = "anxin_gateway_uplink_connected";
pub const UPLINK_CONNECTS: &str = "anxin_gateway_uplink_connects_total";
pub const DOWNLINKS: &str = "anxin_gateway_downlinks_total";

/// Installs the global recorder and returns the handle `/metrics` renders.
pub fn install() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("installing the Prometheus recorder once");
    describe_counter!(
        EVENTS_STORED,
        "Events flushed to the journal and acked `stored`, by priority."
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        "Retransmissions of events already in the journal."
    );
    describe_counter!(
        EVENTS_REJECTED,
        "Events refused, by reason (malformed, oversize, unknown_device, ...)."
    );
    describe_counter!(
        JOURNAL_ERRORS,
        "Journal writes or flushes that failed (no `stored` ack was sent)."
    );
    describe_gauge!(
        JOURNAL_DEPTH,
        "Events in the journal not yet received by the server, by priority."
    );
    describe_counter!(
        EVENTS_DELIVERED,
        "Events the server acknowledged as received."
    );
    describe_gauge!(
        UPLINK_CONNECTED,
        "1 while the uplink stream to a server is open."
    );
    describe_counter!(UPLINK_CONNECTS, "Uplink streams opened.");
    describe_counter!(
        DOWNLINKS,
        "Messages from the server published to devices (e.g. help is coming)."
    );
    handle
}

pub fn set_journal_depth(depth: [u64; 4]) {
    for (priority, count) in depth.iter().enumerate() {
        metrics::gauge!(JOURNAL_DEPTH, "priority" => PRIORITY_LABELS[priority]).set(*count as f64);
    }
}

pub const PRIORITY_LABELS: [&str; 4] = ["P0", "P1", "P2", "P3"];

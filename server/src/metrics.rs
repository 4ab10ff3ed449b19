//! Prometheus metric names of the server, described in one place.

use metrics::{describe_counter, describe_gauge};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const EVENTS_COMMITTED: &str = "anxin_server_events_committed_total";
pub const EVENTS_DUPLICATE: &str = "anxin_server_events_duplicate_total";
pub const EVENTS_INVALID: &str = "anxin_server_events_invalid_total";
pub const ALERTS_CREATED: &str = "anxin_server_alerts_created_total";
pub const ALERT_TRANSITIONS: &str = "anxin_server_alert_transitions_total";
pub const GATEWAYS_CONNECTED: &str = "anxin_server_gateways_connected";
pub const STORE_ERRORS: &str = "anxin_server_store_errors_total";

pub fn install() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("installing the Prometheus recorder once");
    describe_counter!(
        EVENTS_COMMITTED,
        "Events committed for the first time, by priority."
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        "Events received again and absorbed by deduplication."
    );
    describe_counter!(EVENTS_INVALID, "Uplink messages refused as invalid.");
    describe_counter!(ALERTS_CREATED, "Alerts raised.");
    describe_counter!(
        ALERT_TRANSITIONS,
        "Alert lifecycle transitions, by target state."
    );
    describe_gauge!(GATEWAYS_CONNECTED, "Gateways with an open uplink stream.");
    describe_counter!(STORE_ERRORS, "Store commits or flushes that failed.");
    handle
}

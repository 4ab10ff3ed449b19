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
pub const UPLINK_REFUSED: &str = "anxin_server_uplink_refused_total";
pub const ESCALATIONS: &str = "anxin_server_escalations_total";
pub const NOTIFY_DELIVERED: &str = "anxin_server_notifications_delivered_total";
pub const NOTIFY_RETRIES: &str = "anxin_server_notification_retries_total";
pub const NOTIFY_FAILED: &str = "anxin_server_notifications_failed_total";

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
    describe_counter!(
        UPLINK_REFUSED,
        "Uplink streams refused: no token, or another gateway's."
    );
    describe_counter!(
        ESCALATIONS,
        "Alerts moved along their chain, by step reached."
    );
    describe_counter!(NOTIFY_DELIVERED, "Notifications delivered.");
    describe_counter!(
        NOTIFY_RETRIES,
        "Notification attempts that failed and were retried."
    );
    describe_counter!(
        NOTIFY_FAILED,
        "Notifications given up on after every attempt."
    );
    handle
}

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
pub const STORE_FAILURES: &str = "anxin_server_store_failures_total";
pub const DISK_FREE_BYTES: &str = "anxin_server_disk_free_bytes";
pub const DISK_RESERVE_BYTES: &str = "anxin_server_disk_reserve_bytes";
pub const DISK_LEVEL: &str = "anxin_server_disk_level";
pub const UPLINK_REFUSED_DISK: &str = "anxin_server_uplink_refused_store_total";
pub const CLOCK_STEPS: &str = "anxin_server_clock_steps_total";
pub const RESTARTS_IN_PLACE: &str = "anxin_server_restarts_in_place";
pub const UPLINK_REFUSED: &str = "anxin_server_uplink_refused_total";
pub const EVENTS_DEFERRED: &str = "anxin_server_events_deferred_total";
pub const UPLINK_TOKEN_CLOSED: &str = "anxin_server_uplink_closed_token_total";
pub const ESCALATIONS: &str = "anxin_server_escalations_total";
pub const NOTIFY_DELIVERED: &str = "anxin_server_notifications_delivered_total";
pub const NOTIFY_RETRIES: &str = "anxin_server_notification_retries_total";
pub const NOTIFY_FAILED: &str = "anxin_server_notifications_failed_total";
pub const REMOTE_CHANGES: &str = "anxin_server_remote_changes_total";
pub const EVENTS_FOREIGN: &str = "anxin_server_events_foreign_device_total";
pub const DATABASE_UP: &str = "anxin_server_database_up";
pub const DATABASE_STALLED: &str = "anxin_server_database_stalled";
pub const DATABASE_STALLS: &str = "anxin_server_database_stalls_total";
pub const DATABASE_FULL: &str = "anxin_server_database_full_total";
pub const HTTPS_HANDSHAKES_FAILED: &str = "anxin_server_https_handshakes_failed_total";
pub const CHECKINS_JUDGED: &str = "anxin_server_checkins_judged_total";
pub const VISITS_MISSED: &str = "anxin_server_visits_missed_total";
pub const RETENTION_PRUNED: &str = "anxin_server_retention_pruned_total";
pub const RETENTION_LAST_RUN: &str = "anxin_server_retention_last_run_seconds";
pub const CONTROL_REFUSED: &str = "anxin_server_control_refused_total";
pub const BACKUPS_FAILED: &str = "anxin_server_backups_failed_total";
pub const ACCESS_DENIED: &str = "anxin_server_access_denied_total";
pub const FAMILY_LINKS: &str = "anxin_server_family_links_total";
pub const SMS_REPORTS: &str = "anxin_server_sms_reports_total";
pub const SIGNAL_READINGS: &str = "anxin_server_signal_readings_total";
pub const SIGNAL_RAISES: &str = "anxin_server_signal_raises_total";
pub const SIGNAL_CLEARS: &str = "anxin_server_signal_clears_total";
pub const JUDGE_QUEUE: &str = "anxin_server_judge_queue";
pub const JUDGE_WAITS: &str = "anxin_server_judge_waits_total";

pub fn install() -> PrometheusHandle {
    let handle = PrometheusBuilder::new()
        .install_recorder()
        .expect("installing the Prometheus recorder once");
    // Histogram samples pile up in the recorder until upkeep drains them
    // into their summaries; it runs on a scrape, and without one (nobody
    // reads /metrics) memory grew ~1 MB a minute at 2,000 events/s.
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(std::time::Duration::from_secs(5));
                upkeep.run_upkeep();
            }
        })
        .expect("spawning the metrics upkeep thread");
    describe_counter!(
        SIGNAL_READINGS,
        "Readings judged by the health and safety rules, by kind (vitals, fix, meter); resent ones are not counted."
    );
    describe_counter!(
        SIGNAL_RAISES,
        "Alerts the health and safety rules raised or stepped up, by rule (vitals_warning, vitals_critical, zone, meter_silent, meter_unusual)."
    );
    describe_counter!(
        SIGNAL_CLEARS,
        "Episodes that ended with readings back inside their limits or a resident back in a safe zone, by rule."
    );
    describe_gauge!(
        JUDGE_QUEUE,
        "Batches with readings waiting for their stream's judge, over all gateway streams (each stream holds at most 4)."
    );
    describe_counter!(
        JUDGE_WAITS,
        "Times a gateway's stream waited because its judge's queue was full: the rules fall behind the readings."
    );
    describe_counter!(
        EVENTS_COMMITTED,
        "Events committed for the first time, by priority."
    );
    describe_counter!(
        EVENTS_DUPLICATE,
        "Events received again and absorbed by deduplication."
    );
    describe_counter!(EVENTS_INVALID, "Uplink messages refused as invalid.");
    describe_counter!(
        CONTROL_REFUSED,
        "Requests on the control socket refused, by reason (unparsed, relative_path, busy)."
    );
    describe_counter!(
        BACKUPS_FAILED,
        "Backups asked for over the control socket that failed."
    );
    describe_counter!(ALERTS_CREATED, "Alerts raised.");
    describe_counter!(
        CHECKINS_JUDGED,
        "Residents' check-in days judged when their window closed, by outcome (ok, late, missed)."
    );
    describe_counter!(
        RETENTION_PRUNED,
        "Records removed by retention, by kind (event, event_day, alert, alert_event)."
    );
    describe_gauge!(
        RETENTION_LAST_RUN,
        "When the last pruning run finished (Unix seconds); it runs every retention.interval_secs."
    );
    describe_counter!(
        VISITS_MISSED,
        "Planned visits not recorded by the day's end (the community's supervisors are told)."
    );
    describe_counter!(
        EVENTS_FOREIGN,
        "Events a gateway sent for a device registered to another gateway: refused (acknowledged, not stored, audited)."
    );
    describe_counter!(
        REMOTE_CHANGES,
        "Changes other replicas committed, as this one heard of them."
    );
    describe_gauge!(
        DATABASE_UP,
        "1 while the shared database answers this replica, 0 while it does not."
    );
    describe_gauge!(
        DATABASE_STALLED,
        "1 while the shared database answers but does not finish writes within store.write_timeout_ms."
    );
    describe_counter!(
        DATABASE_FULL,
        "Times the database refused a write for want of space (SQLSTATE 53100): routine events deferred, alarms first."
    );
    describe_counter!(
        DATABASE_STALLS,
        "Times this replica found the database not finishing writes (a commit held for a synchronous standby, a lock)."
    );
    describe_counter!(
        ALERT_TRANSITIONS,
        "Alert lifecycle transitions, by target state."
    );
    describe_gauge!(GATEWAYS_CONNECTED, "Gateways with an open uplink stream.");
    describe_counter!(STORE_ERRORS, "Store commits or flushes that failed.");
    describe_counter!(
        STORE_FAILURES,
        "Store I/O failures that put the store out of use until a restart in place."
    );
    describe_gauge!(DISK_FREE_BYTES, "Free bytes on the store's filesystem.");
    describe_gauge!(
        DISK_RESERVE_BYTES,
        "Bytes of disk reserve held; 0 once given back."
    );
    describe_gauge!(
        DISK_LEVEL,
        "0 ok, 1 low (events refused), 2 full (running on the reserve)."
    );
    describe_counter!(
        UPLINK_REFUSED_DISK,
        "Gateway streams refused or ended because the store could not take events (disk low/full, store failed)."
    );
    describe_counter!(
        CLOCK_STEPS,
        "Wall-clock steps detected (offer deadlines were re-based by them), by direction."
    );
    describe_gauge!(
        RESTARTS_IN_PLACE,
        "Times this server restarted itself in place since it was started."
    );
    describe_counter!(
        UPLINK_REFUSED,
        "Uplink streams refused: no token, or another gateway's."
    );
    describe_counter!(
        EVENTS_DEFERRED,
        "Routine events (P2/P3) deferred back to their gateway while the store's disk is low (alarms are still taken), by reason."
    );
    describe_counter!(
        UPLINK_TOKEN_CLOSED,
        "Open uplink streams closed because their token was revoked or expired."
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

//! Prometheus metric names of the gateway, described in one place.

use metrics::{describe_counter, describe_gauge, describe_histogram};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const EVENTS_STORED: &str = "anxin_gateway_events_stored_total";
pub const EVENTS_DUPLICATE: &str = "anxin_gateway_events_duplicate_total";
pub const EVENTS_REJECTED: &str = "anxin_gateway_events_rejected_total";
pub const JOURNAL_ERRORS: &str = "anxin_gateway_journal_errors_total";
pub const JOURNAL_DEPTH: &str = "anxin_gateway_journal_depth";
pub const JOURNAL_FLUSHES: &str = "anxin_gateway_journal_flushes_total";
pub const EVENTS_DELIVERED: &str = "anxin_gateway_events_delivered_total";
pub const UPLINK_CONNECTED: &str = "anxin_gateway_uplink_connected";
pub const UPLINK_CONNECTS: &str = "anxin_gateway_uplink_connects_total";
pub const DOWNLINKS: &str = "anxin_gateway_downlinks_total";
pub const JOURNAL_BYTES: &str = "anxin_gateway_journal_bytes";
pub const JOURNAL_DISK_BYTES: &str = "anxin_gateway_journal_disk_bytes";
pub const JOURNAL_OLDEST_AGE: &str = "anxin_gateway_journal_oldest_age_seconds";
pub const EVICTIONS: &str = "anxin_gateway_journal_evictions_total";
pub const UPLINK_ACK_SECONDS: &str = "anxin_gateway_uplink_ack_seconds";
pub const SUPERVISION_EVENTS: &str = "anxin_gateway_supervision_events_total";
pub const LOCAL_ALARMS: &str = "anxin_gateway_local_alarms_total";
pub const LOCAL_ALARM_WEBHOOK_FAILURES: &str = "anxin_gateway_local_alarm_webhook_failures_total";
pub const FALLBACK_CHECKS: &str = "anxin_gateway_fallback_checks_total";
pub const FALLBACK_FIRED: &str = "anxin_gateway_fallback_p0_alarmed_total";
pub const DISK_FREE_BYTES: &str = "anxin_gateway_disk_free_bytes";
pub const DISK_RESERVE_BYTES: &str = "anxin_gateway_disk_reserve_bytes";
pub const DISK_LEVEL: &str = "anxin_gateway_disk_level";
pub const EVENTS_DEFERRED: &str = "anxin_gateway_events_deferred_total";
pub const UPLINK_DEFERRED: &str = "anxin_gateway_uplink_deferred_total";
pub const JOURNAL_DAMAGED: &str = "anxin_gateway_journal_damaged_total";
pub const JOURNAL_SALVAGED: &str = "anxin_gateway_journal_salvaged_entries";
pub const JOURNAL_SALVAGED_BATCHES: &str = "anxin_gateway_journal_salvaged_batches";
pub const JOURNAL_SKIPPED: &str = "anxin_gateway_journal_damaged_records_skipped";
pub const JOURNAL_UNREADABLE: &str = "anxin_gateway_journal_unreadable_batches";
pub const RESTARTS_IN_PLACE: &str = "anxin_gateway_restarts_in_place";
pub const MQTT_REFUSED: &str = "anxin_gateway_mqtt_refused_total";
pub const MQTT_CONNECTIONS: &str = "anxin_gateway_mqtt_connections";
pub const MQTT_DROPPED: &str = "anxin_gateway_mqtt_dropped_total";
pub const MQTT_TAKEOVERS: &str = "anxin_gateway_mqtt_session_takeovers_total";
pub const MQTT_PARALLEL: &str = "anxin_gateway_mqtt_parallel_connections_total";
pub const MQTT_SESSIONS_EVICTED: &str = "anxin_gateway_mqtt_sessions_evicted_total";
pub const MQTT_KEEPALIVE_EXPIRED: &str = "anxin_gateway_mqtt_keepalive_expired_total";
pub const CREDENTIAL_CHECKS: &str = "anxin_gateway_credential_checks_total";

/// Installs the global recorder and returns the handle `/metrics` renders.
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
        EVENTS_STORED,
        "Events flushed to the journal and acked `stored`, by priority."
    );
    describe_gauge!(
        DISK_FREE_BYTES,
        "Free bytes on the journal's filesystem (statvfs f_bavail)."
    );
    describe_gauge!(
        DISK_RESERVE_BYTES,
        "Bytes of disk reserve held; 0 once given back to keep the alarm path writing."
    );
    describe_gauge!(
        DISK_LEVEL,
        "0 ok, 1 low (P2/P3 deferred), 2 full (running on the reserve)."
    );
    describe_counter!(
        EVENTS_DEFERRED,
        "Events not taken (no ack, the device retries), by reason: disk_low (P2/P3), ingest_busy (a journal lane full), shutting_down."
    );
    describe_counter!(
        UPLINK_DEFERRED,
        "Events the server deferred (its store's disk is low: it takes alarms only), by priority; they wait in the journal and are sent again."
    );
    describe_counter!(
        JOURNAL_DAMAGED,
        "Damaged journals moved aside at start-up (see the log for what was salvaged)."
    );
    describe_gauge!(
        JOURNAL_SALVAGED,
        "Entries salvaged from a damaged journal at the last start."
    );
    describe_gauge!(
        JOURNAL_SALVAGED_BATCHES,
        "Intact batch records salvaged from a damaged journal at the last start."
    );
    describe_gauge!(
        JOURNAL_SKIPPED,
        "Damaged batch records found and skipped by the salvage at the last start."
    );
    describe_gauge!(
        JOURNAL_UNREADABLE,
        "Batch records found unreadable since start: skipped by the uplink, salvaged at the next start."
    );
    describe_gauge!(
        RESTARTS_IN_PLACE,
        "Times this gateway restarted itself in place (journal I/O failure) since it was started."
    );
    describe_counter!(
        MQTT_REFUSED,
        "Device-front refusals, by reason (bad_password, unknown_device, publish_not_allowed, subscribe_not_allowed, ...)."
    );
    describe_gauge!(MQTT_CONNECTIONS, "Device connections open now.");
    describe_counter!(
        MQTT_DROPPED,
        "Messages to devices not delivered, by reason (device_away, not_subscribed, connection_busy, session_queue_full); the device retries."
    );
    describe_counter!(
        MQTT_TAKEOVERS,
        "Connections replaced by a newer one of the same device and client id."
    );
    describe_counter!(
        MQTT_PARALLEL,
        "Connections opened beside another live one of the same device (another client id)."
    );
    describe_counter!(
        MQTT_SESSIONS_EVICTED,
        "Sessions of a device closed to make room for a new client id (mqtt.connections_per_device reached: the oldest gives way)."
    );
    describe_counter!(
        MQTT_KEEPALIVE_EXPIRED,
        "Connections closed for a missed keep-alive (their last will is published)."
    );
    describe_counter!(
        CREDENTIAL_CHECKS,
        "Passwords checked at CONNECT, by how: derived (a sealed credential, PBKDF2 on the blocking pool), cached (a login this process verified before), digest (a legacy SHA-256 from the gateway's own config)."
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
    describe_gauge!(
        JOURNAL_BYTES,
        "Logical bytes in the journal, by priority (what the quota counts)."
    );
    describe_gauge!(JOURNAL_DISK_BYTES, "Size of the journal's files on disk.");
    describe_gauge!(
        JOURNAL_OLDEST_AGE,
        "Age of the oldest journaled event, by priority."
    );
    describe_counter!(
        EVICTIONS,
        "Events evicted at the journal quota, by priority (P3, P2 only)."
    );
    describe_histogram!(
        UPLINK_ACK_SECONDS,
        "From sending an event to the server's received ack."
    );
    describe_counter!(
        SUPERVISION_EVENTS,
        "Events the gateway raised for devices (offline, online, low battery)."
    );
    describe_counter!(
        LOCAL_ALARMS,
        "Local alarms raised (server_unreachable, journal_full)."
    );
    describe_counter!(
        LOCAL_ALARM_WEBHOOK_FAILURES,
        "Local alarm webhooks that failed every attempt."
    );
    describe_counter!(
        FALLBACK_CHECKS,
        "Times the local fallback checked the uplink and the P0 lane."
    );
    describe_counter!(
        FALLBACK_FIRED,
        "P0 events alarmed locally because the server was unreachable."
    );
    handle
}

pub fn set_journal_depth(depth: [u64; 4]) {
    for (priority, count) in depth.iter().enumerate() {
        metrics::gauge!(JOURNAL_DEPTH, "priority" => PRIORITY_LABELS[priority]).set(*count as f64);
    }
}

/// Refreshes the journal gauges that are cheap to compute on scrape.
pub fn refresh_journal_gauges(journal: &crate::journal::JournalReader) {
    set_journal_depth(journal.depth());
    for (priority, bytes) in journal.bytes().iter().enumerate() {
        metrics::gauge!(JOURNAL_BYTES, "priority" => PRIORITY_LABELS[priority]).set(*bytes as f64);
    }
    metrics::gauge!(JOURNAL_UNREADABLE).set(journal.corrupt_seen() as f64);
    if let Ok(size) = journal.size_on_disk() {
        metrics::gauge!(JOURNAL_DISK_BYTES).set(size as f64);
    }
    let now = anxin_proto::now_ms();
    for (priority, label) in PRIORITY_LABELS.iter().enumerate() {
        let lane = anxin_proto::Priority::try_from(priority as i32).expect("0..=3 are priorities");
        let age = journal
            .lane(lane, 1)
            .ok()
            .and_then(|entries| entries.into_iter().next())
            .map_or(0.0, |e| (now - e.event.stored_ms).max(0) as f64 / 1000.0);
        metrics::gauge!(JOURNAL_OLDEST_AGE, "priority" => *label).set(age);
    }
}

pub const PRIORITY_LABELS: [&str; 4] = ["P0", "P1", "P2", "P3"];

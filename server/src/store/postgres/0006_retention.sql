-- Retention (issue 19): old events that belong to no alert are found by
-- time, an alert's events by the alert, without reading the rest.
create index events_plain_by_time on events (received_ms) where alert_id = '';
create index events_by_alert on events (alert_id) where alert_id <> '';

-- What is kept of pruned telemetry: per device, local day and event kind.
create table event_days (
    device_id text    not null,
    day       integer not null,
    kind      integer not null,
    events    bigint  not null,
    first_ms  bigint  not null,
    last_ms   bigint  not null,
    primary key (device_id, day, kind)
);
create index event_days_by_day on event_days (day);

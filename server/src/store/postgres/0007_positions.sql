-- Schema version 7: each device's last known position (issue 29), kept
-- so an alert raised by an event without one still says where the
-- resident was last seen.
create table positions (
    device_id text   primary key,
    at_ms     bigint not null,
    body      bytea  not null
);

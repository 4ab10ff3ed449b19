-- Anxin dispatch server, schema version 1. Records are kept as their
-- protobuf encoding (`body`, the same bytes the sled engine stores), with
-- the columns the server looks them up by beside them.

-- An event's identity is (device_id, seq). seq is a u64 (gateway-raised
-- events use 2^63 and up), kept as `seq_key = seq XOR 2^63` in a bigint so
-- that the column sorts as the u64 does.
create sequence event_commit_index;
create table events (
    device_id    text   not null,
    seq_key      bigint not null,
    commit_index bigint not null default nextval('event_commit_index'),
    received_ms  bigint not null,
    alert_id     text   not null default '',
    body         bytea  not null,
    primary key (device_id, seq_key)
);

-- Alert numbers are dense: taken from `counters` inside the raising
-- transaction, so a rolled-back raise leaves no gap.
create table counters (
    name  text   primary key,
    value bigint not null
);
insert into counters (name, value) values ('alert', 0);

-- deadline_ms is set exactly for the offered alerts with a deadline (the
-- escalation timer's index).
create table alerts (
    number      bigint  primary key,
    state       integer not null,
    deadline_ms bigint,
    body        bytea   not null
);
create index alerts_by_deadline on alerts (deadline_ms, number) where deadline_ms is not null;
create index alerts_by_state on alerts (state, number);

-- Incident key (resident/{id} or device/{id}) -> its latest open alert.
create table incidents (
    key    text   primary key,
    number bigint not null
);

-- "Help is coming" and other messages waiting for a gateway's DownlinkDone.
create table downlinks (
    id         bigserial primary key,
    gateway_id text  not null,
    body       bytea not null
);
create index downlinks_by_gateway on downlinks (gateway_id, id);

create table audit (
    id     bigserial primary key,
    at_ms  bigint not null,
    actor  text   not null,
    action text   not null,
    target text   not null,
    body   bytea  not null
);
create index audit_by_target on audit (target, id);

create table places    (id text primary key, body bytea not null);
create table residents (id text primary key, body bytea not null);
create table devices   (id text primary key, body bytea not null);
create table gateways  (id text primary key, body bytea not null);
create table staff     (id text primary key, body bytea not null);
create table tokens    (digest text primary key, body bytea not null);

-- Small named values (the clock mark of each host).
create table meta (key text primary key, value bytea not null);

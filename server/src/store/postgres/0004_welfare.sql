-- Schema version 4: residents who live alone. The latest sign of life per
-- resident; each check-in day's outcome and each planned visit's, written
-- once (the primary keys make a second replica's write a no-op).
create table signs_of_life (
    resident_id text   primary key,
    at_ms       bigint not null,
    body        bytea  not null
);
create table checkin_days (
    day         integer not null,
    resident_id text    not null,
    body        bytea   not null,
    primary key (day, resident_id)
);
create table visit_plans (
    id   text  primary key,
    body bytea not null
);
create table visits (
    day     integer not null,
    plan_id text    not null,
    body    bytea   not null,
    primary key (day, plan_id)
);

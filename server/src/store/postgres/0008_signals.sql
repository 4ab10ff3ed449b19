-- Schema version 8: health and safety signals (issue 31). Each rule's state
-- between readings, keyed as its events' source ("vitals/{resident}/{sign}",
-- "zone/{resident}", "meter/{resident}/{kind}"), and a resident's vital
-- signs as one row per sign and local day.
create table signal_states (
    key  text  primary key,
    body bytea not null
);

create table vital_days (
    resident_id text             not null,
    sign        text             not null,
    day         integer          not null,
    min         double precision not null,
    max         double precision not null,
    sum         double precision not null,
    count       bigint           not null,
    primary key (resident_id, sign, day)
);
create index vital_days_by_day on vital_days (day);

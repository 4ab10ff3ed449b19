-- Schema version 5: paged, filtered directory lists (a city of a million
-- residents). Lists are read in index order with keyset cursors, in byte
-- order (collate "C") so both engines page the same way. The columns and
-- side tables below are filled from each record's body by the server
-- (version 5's backfill) and kept in the same transaction as the record.
alter table places    alter column id type text collate "C";
alter table residents alter column id type text collate "C";
alter table devices   alter column id type text collate "C";
alter table gateways  alter column id type text collate "C";
alter table staff     alter column id type text collate "C";

alter table residents add column community_id text collate "C" not null default '';
create index residents_by_community on residents (community_id, id);
-- The start of the check-in window ('' : not enrolled): the check-in judge
-- reads the enrolled residents only.
alter table residents add column checkin_start text not null default '';
create index residents_enrolled on residents (id) where checkin_start <> '';

-- Each resident under its search terms: name, id and phone digits.
create table resident_terms (
    term text collate "C" not null,
    id   text collate "C" not null,
    primary key (term, id)
);
create index resident_terms_by_id on resident_terms (id);

alter table devices add column gateway_id  text collate "C" not null default '';
alter table devices add column resident_id text collate "C" not null default '';
create index devices_by_gateway  on devices (gateway_id, id);
create index devices_by_resident on devices (resident_id, id);

alter table gateways add column community_id text collate "C" not null default '';

create table staff_communities (
    community_id text collate "C" not null,
    id           text collate "C" not null,
    primary key (community_id, id)
);
create index staff_communities_by_id on staff_communities (id);

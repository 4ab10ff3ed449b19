-- Schema version 3: the audit chain's head (the last entry's hash). Every
-- transaction that writes audit entries locks this row first, so entries
-- are chained in id order across replicas.
create table audit_head (
    one  boolean primary key default true check (one),
    hash text not null
);
insert into audit_head (hash)
    values ('');

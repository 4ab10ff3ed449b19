-- Schema version 2: the durable outbox of notifications (webhooks). A row
-- leaves in the transaction that audits its outcome; a deliverer holds a
-- row by its lease, so a replica that dies mid-delivery lets it go.
create table outbox (
    delivery_id    text   primary key,
    next_at_ms     bigint not null,
    lease_until_ms bigint not null default 0,
    body           bytea  not null
);
create index outbox_by_due on outbox (next_at_ms);

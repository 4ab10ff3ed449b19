//! The PostgreSQL engine: one database shared by several active replicas.
//!
//! Each record is kept as the same protobuf bytes the sled engine stores,
//! with the columns it is looked up by beside it (schema in `0001_init.sql`;
//! migrations are versioned in `schema_migrations` and applied at start-up
//! under an advisory lock, so replicas starting together apply each once).
//!
//! Across replicas:
//! - an event's incident decision runs under a transaction-scoped advisory
//!   lock on its incident key, and the alert row is locked `FOR UPDATE`, so
//!   two replicas relaying alarms of one resident raise one alert;
//! - every alert change locks its row, so an offer deadline seen due by two
//!   timers escalates once (the second finds the offer no longer due);
//! - every commit that changes an alert, queues a downlink or touches the
//!   directory sends a `NOTIFY anxin` in its transaction, delivered on
//!   commit; each replica's listener turns those of other replicas into
//!   [`RemoteChange`]s (watchers, timers, gateways connected here).
//!
//! A commit is durable when it returns (`synchronous_commit` on), so
//! `flush` has nothing to do.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use anxin_proto::v1::{
    Alert, AlertState, AuditEntry, AuditQuery, CheckinDay, DeviceAck, DeviceRecord, Downlink,
    GatewayRecord, Place, Resident, SignOfLife, Staff, UplinkEvent, Visit, VisitPlan,
};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use futures::future::BoxFuture;
use prost::Message;
use tokio::sync::mpsc;
use tokio_postgres::{NoTls, Transaction};

use super::{
    AlertChange, Change, Committed, OutboxItem, RemoteChange, Storage, StoreError, StoredEvent,
    alert_number, decision_audit, decode, incident_key, latest_signs, offer_deadline,
};
use crate::{
    domain::incidents::{self, Decision, IncidentPolicy, Origin},
    domain::lifecycle,
    domain::listing::{ListQuery, Page},
    store::audit::AuditLog,
    store::directory::{Directory, DirectoryBatch, TokenRecord},
    store::welfare::WelfareStore,
};

mod check;
pub(crate) mod listing;

/// Schema versions, applied in order; never edit one that shipped.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("0001_init.sql")),
    (2, "outbox", include_str!("0002_outbox.sql")),
    (3, "audit_chain", include_str!("0003_audit_chain.sql")),
    (4, "welfare", include_str!("0004_welfare.sql")),
    (
        5,
        "directory_index",
        include_str!("0005_directory_index.sql"),
    ),
    (6, "retention", include_str!("0006_retention.sql")),
];

/// Serialises schema migrations across replicas starting together.
const MIGRATION_LOCK: i64 = 0x616e_7869_6e00_0001;
/// The NOTIFY channel every replica listens on.
const CHANNEL: &str = "anxin";

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        StoreError::Database(match err.as_db_error() {
            Some(db) => format!("{} ({})", db.message(), db.code().code()),
            None => err.to_string(),
        })
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        StoreError::Database(format!("no database connection: {err}"))
    }
}

/// Whether a failed transaction may simply be run again (a concurrent
/// commit of the same key, a serialisation failure, a deadlock).
fn retryable(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    err.code().is_some_and(|code| {
        *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// The u64 seq as a bigint that sorts the same way.
fn seq_key(seq: u64) -> i64 {
    (seq ^ (1 << 63)) as i64
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[derive(Clone)]
pub struct PgStore {
    pub(super) pool: Pool,
    url: String,
    /// This process among the replicas: notifications it sent itself are
    /// not news to it.
    replica: u64,
    feed: Arc<Mutex<Option<mpsc::UnboundedReceiver<RemoteChange>>>>,
}

/// Directory records of one table, written by [`PgStore::directory_write`]
/// with the columns and side tables their lists are paged by.
struct Upsert {
    table: &'static str,
    key: &'static str,
    ids: Vec<String>,
    bodies: Vec<Vec<u8>>,
    /// Index columns beside `body`, one value per record.
    columns: Vec<(&'static str, Vec<String>)>,
    /// Multi-valued indexes, replaced whole for these records.
    sides: Vec<listing::Side>,
}

impl Upsert {
    fn of<M: Message>(table: &'static str, records: &[M], id: impl Fn(&M) -> &str) -> Self {
        let (ids, bodies) = records
            .iter()
            .map(|r| (id(r).to_string(), r.encode_to_vec()))
            .unzip();
        Self {
            table,
            key: "id",
            ids,
            bodies,
            columns: Vec::new(),
            sides: Vec::new(),
        }
    }

    fn token(digest: &str, record: &TokenRecord) -> Self {
        Self {
            table: "tokens",
            key: "digest",
            ids: vec![digest.to_string()],
            bodies: vec![record.encode_to_vec()],
            columns: Vec::new(),
            sides: Vec::new(),
        }
    }
}

/// What a transaction wants the other replicas to hear once it commits.
enum Notice<'a> {
    Alert(u64),
    Downlinks(&'a str, &'a [u64]),
    Directory,
}

impl PgStore {
    /// Connects, applies pending migrations and starts listening for other
    /// replicas' changes.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Database(format!("store.url does not parse: {e}")))?;
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(5)))
            .create_timeout(Some(Duration::from_secs(5)))
            .recycle_timeout(Some(Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Database(format!("building the pool: {e}")))?;
        let store = Self {
            pool,
            url: url.to_string(),
            replica: rand::random(),
            feed: Default::default(),
        };
        store.migrate().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        *store.feed.lock().expect("feed lock") = Some(rx);
        tokio::spawn(listen(store.url.clone(), store.replica, tx));
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        client
            .execute("select pg_advisory_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        let result = async {
            let fresh = client
                .query_one("select to_regclass('schema_migrations') is null", &[])
                .await?
                .get::<_, bool>(0);
            if fresh {
                client
                    .batch_execute(
                        "create table schema_migrations (
                            version integer primary key,
                            name text not null,
                            applied_ms bigint not null)",
                    )
                    .await?;
            }
            // A database a newer build migrated: this build does not know
            // what those versions changed, and would serve it wrongly.
            let newest: Option<i32> = client
                .query_one("select max(version) from schema_migrations", &[])
                .await?
                .get(0);
            let known = MIGRATIONS.last().map_or(0, |m| m.0);
            if let Some(newest) = newest.filter(|&v| v > known) {
                return Err(StoreError::Refused(format!(
                    "the database's schema is at version {newest}, written by a newer \
                     anxin-server; this build knows versions up to {known}. Run the newer \
                     build, or restore a backup made with this one into an empty database \
                     (docs/operations.md, \"Upgrades\")"
                )));
            }
            for (version, name, sql) in MIGRATIONS {
                let applied = client
                    .query_opt(
                        "select 1 from schema_migrations where version = $1",
                        &[version],
                    )
                    .await?
                    .is_some();
                if applied {
                    continue;
                }
                let tx = client.transaction().await?;
                tx.batch_execute(sql).await?;
                if *version == listing::BACKFILL_VERSION {
                    listing::backfill(&tx).await?;
                }
                tx.execute(
                    "insert into schema_migrations (version, name, applied_ms) values ($1, $2, $3)",
                    &[version, name, &anxin_proto::now_ms()],
                )
                .await?;
                tx.commit().await?;
                tracing::info!(version, name, "database schema migrated");
            }
            Ok::<_, StoreError>(())
        }
        .await;
        client
            .execute("select pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
            .await?;
        result
    }

    /// The newest schema version applied to the database.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one("select max(version) from schema_migrations", &[])
            .await?;
        Ok(row.get::<_, Option<i32>>(0).unwrap_or(0))
    }

    /// Runs the async driver to completion from synchronous domain code.
    fn block<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| handle.block_on(work))
    }

    async fn notify(&self, tx: &Transaction<'_>, notice: Notice<'_>) -> Result<(), StoreError> {
        let payload = match notice {
            Notice::Alert(number) => format!("{}|a|{number}", self.replica),
            Notice::Downlinks(gateway, ids) => format!(
                "{}|d|{gateway}|{}",
                self.replica,
                ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
            ),
            Notice::Directory => format!("{}|dir", self.replica),
        };
        tx.execute("select pg_notify($1, $2)", &[&CHANNEL, &payload])
            .await?;
        Ok(())
    }

    /// Appends an audit entry, chained: the head row is locked until the
    /// transaction ends, and the id is taken under that lock, so the chain
    /// follows id order across replicas.
    async fn insert_audit(
        tx: &Transaction<'_>,
        entry: &AuditEntry,
    ) -> Result<AuditEntry, StoreError> {
        let previous: String = tx
            .query_one("select hash from audit_head for update", &[])
            .await?
            .get(0);
        let id: i64 = tx
            .query_one("select nextval(pg_get_serial_sequence('audit', 'id'))", &[])
            .await?
            .get(0);
        let mut entry = AuditEntry {
            id: id as u64,
            ..entry.clone()
        };
        entry.hash = super::chain_hash(&previous, &entry);
        tx.execute(
            "insert into audit (id, at_ms, actor, action, target, body) values ($1, $2, $3, $4, $5, $6)",
            &[
                &id,
                &entry.at_ms,
                &entry.actor,
                &entry.action,
                &entry.target,
                &entry.encode_to_vec(),
            ],
        )
        .await?;
        tx.execute("update audit_head set hash = $1", &[&entry.hash])
            .await?;
        Ok(entry)
    }

    async fn insert_outbox(
        client: &impl tokio_postgres::GenericClient,
        items: &[OutboxItem],
    ) -> Result<(), StoreError> {
        for item in items {
            client
                .execute(
                    "insert into outbox (delivery_id, next_at_ms, body) values ($1, $2, $3)
                     on conflict (delivery_id) do nothing",
                    &[&item.delivery_id, &item.next_at_ms, &item.encode_to_vec()],
                )
                .await?;
        }
        Ok(())
    }

    async fn write_alert(
        tx: &Transaction<'_>,
        before: Option<&Alert>,
        alert: &Alert,
    ) -> Result<(), StoreError> {
        let number = alert_number(&alert.id).ok_or_else(|| {
            StoreError::Refused(format!("alert id `{}` is not a number", alert.id))
        })? as i64;
        tx.execute(
            "insert into alerts (number, state, deadline_ms, body) values ($1, $2, $3, $4)
             on conflict (number) do update
             set state = excluded.state, deadline_ms = excluded.deadline_ms, body = excluded.body",
            &[
                &number,
                &alert.state,
                &offer_deadline(alert),
                &alert.encode_to_vec(),
            ],
        )
        .await?;
        if !lifecycle::is_open(alert.state())
            && before.is_none_or(|b| lifecycle::is_open(b.state()))
        {
            tx.execute(
                "delete from incidents where key = $1 and number = $2",
                &[&incident_key(alert), &number],
            )
            .await?;
        }
        Ok(())
    }

    async fn try_commit_event(
        &self,
        gateway_id: &str,
        uplink: &UplinkEvent,
        received_ms: i64,
        origin: &Origin,
        policy: &IncidentPolicy,
    ) -> Result<Result<Committed, StoreError>, tokio_postgres::Error> {
        let event = match uplink.event.as_ref() {
            Some(event) => event,
            None => return Ok(Err(StoreError::EmptyEvent)),
        };
        let incident = origin.incident_key(&event.device_id);
        let mut client = match self.pool.get().await {
            Ok(client) => client,
            Err(err) => return Ok(Err(err.into())),
        };
        let tx = client.transaction().await?;
        tx.execute(
            "select pg_advisory_xact_lock(hashtextextended($1, 0))",
            &[&incident],
        )
        .await?;
        let key = seq_key(event.seq);
        if tx
            .query_opt(
                "select 1 from events where device_id = $1 and seq_key = $2",
                &[&event.device_id, &key],
            )
            .await?
            .is_some()
        {
            return Ok(Ok(Committed::Duplicate));
        }
        let mut open: Option<Alert> = None;
        if let Some(row) = tx
            .query_opt("select number from incidents where key = $1", &[&incident])
            .await?
        {
            let number: i64 = row.get(0);
            if let Some(row) = tx
                .query_opt(
                    "select body from alerts where number = $1 for update",
                    &[&number],
                )
                .await?
            {
                match decode::<Alert>("alert", row.get(0)) {
                    Ok(alert) if lifecycle::is_open(alert.state()) => open = Some(alert),
                    Ok(_) => {}
                    Err(err) => return Ok(Err(err)),
                }
            }
        }
        let decision = incidents::decide(event, open.as_ref(), received_ms, policy);
        let alert = match (decision, open) {
            (Decision::Nothing, _) => None,
            (Decision::Raise, _) => {
                let number: i64 = tx
                    .query_one(
                        "update counters set value = value + 1 where name = 'alert' returning value",
                        &[],
                    )
                    .await?
                    .get(0);
                let alert = incidents::raise(number as u64, event, gateway_id, origin, received_ms);
                if let Err(err) = Self::write_alert(&tx, None, &alert).await {
                    return Ok(Err(err));
                }
                tx.execute(
                    "insert into incidents (key, number) values ($1, $2)
                     on conflict (key) do update set number = excluded.number",
                    &[&incident, &number],
                )
                .await?;
                Some(alert)
            }
            (decision, Some(before)) => {
                let mut alert = before.clone();
                incidents::apply(decision, &mut alert, event, received_ms);
                if let Err(err) = Self::write_alert(&tx, Some(&before), &alert).await {
                    return Ok(Err(err));
                }
                Some(alert)
            }
            (_, None) => None,
        };
        if let Some(alert) = &alert {
            let entry = decision_audit(event, alert, decision, gateway_id, received_ms);
            if let Err(err) = Self::insert_audit(&tx, &entry).await {
                return Ok(Err(err));
            }
            let number = alert_number(&alert.id).unwrap_or(0);
            if let Err(err) = self.notify(&tx, Notice::Alert(number)).await {
                return Ok(Err(err));
            }
        }
        let stored = StoredEvent {
            gateway_id: gateway_id.to_string(),
            received_ms,
            uplink: Some(uplink.clone()),
            alert_id: alert.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
            commit_index: 0,
        };
        tx.execute(
            "insert into events (device_id, seq_key, received_ms, alert_id, body)
             values ($1, $2, $3, $4, $5)",
            &[
                &event.device_id,
                &key,
                &received_ms,
                &stored.alert_id,
                &stored.encode_to_vec(),
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(Ok(Committed::New {
            alert: alert.map(|a| Box::new((a, decision))),
        }))
    }

    async fn try_update_alert(
        &self,
        number: u64,
        alert_id: &str,
        change: AlertChange<'_>,
    ) -> Result<Result<(Alert, Vec<Downlink>), StoreError>, tokio_postgres::Error> {
        let mut client = match self.pool.get().await {
            Ok(client) => client,
            Err(err) => return Ok(Err(err.into())),
        };
        let tx = client.transaction().await?;
        let Some(row) = tx
            .query_opt(
                "select body from alerts where number = $1 for update",
                &[&(number as i64)],
            )
            .await?
        else {
            return Ok(Err(StoreError::NoSuchAlert(alert_id.into())));
        };
        let before: Alert = match decode("alert", row.get(0)) {
            Ok(alert) => alert,
            Err(err) => return Ok(Err(err)),
        };
        let mut alert = before.clone();
        let Change {
            audit: entries,
            device_acks,
            notifications,
        } = match change(&mut alert) {
            Ok(change) => change,
            Err(err) => return Ok(Err(err)),
        };
        if alert.state != before.state
            && let Err(err) = lifecycle::check(before.state(), alert.state())
        {
            return Ok(Err(err.into()));
        }
        let written = async {
            Self::write_alert(&tx, Some(&before), &alert).await?;
            for entry in &entries {
                Self::insert_audit(&tx, entry).await?;
            }
            Self::insert_outbox(&*tx, &notifications).await?;
            self.notify(&tx, Notice::Alert(number)).await
        }
        .await;
        if let Err(err) = written {
            return Ok(Err(err));
        }
        let mut queued = Vec::new();
        for ack in &device_acks {
            let id: i64 = tx
                .query_one(
                    "insert into downlinks (gateway_id, body) values ($1, $2) returning id",
                    &[&alert.gateway_id, &ack.encode_to_vec()],
                )
                .await?
                .get(0);
            queued.push(Downlink {
                downlink_id: id as u64,
                ack: Some(ack.clone()),
            });
        }
        if !queued.is_empty() {
            let ids: Vec<u64> = queued.iter().map(|d| d.downlink_id).collect();
            if let Err(err) = self
                .notify(&tx, Notice::Downlinks(&alert.gateway_id, &ids))
                .await
            {
                return Ok(Err(err));
            }
        }
        tx.commit().await?;
        Ok(Ok((alert, queued)))
    }

    /// Upserts directory records with their audit entry in one
    /// transaction, and tells the other replicas that the directory changed.
    fn directory_write(&self, audit: AuditEntry, writes: Vec<Upsert>) -> Result<(), StoreError> {
        self.block(async move {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            for write in &writes {
                listing::upsert(&tx, write).await?;
            }
            Self::insert_audit(&tx, &audit).await?;
            self.notify(&tx, Notice::Directory).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn get_one<M: Message + Default>(
        &self,
        what: &str,
        sql: &str,
        key: &str,
    ) -> Result<Option<M>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            match client.query_opt(sql, &[&key]).await? {
                Some(row) => Ok(Some(decode(what, row.get(0))?)),
                None => Ok(None),
            }
        })
    }

    /// The records of `keys` that exist (`sql` takes them as `$1`, an array).
    fn get_many<M: Message + Default>(
        &self,
        what: &str,
        sql: &str,
        keys: &[String],
    ) -> Result<Vec<M>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .query(sql, &[&keys])
                .await?
                .iter()
                .map(|row| decode(what, row.get(0)))
                .collect()
        })
    }

    fn list<M: Message + Default>(&self, what: &str, sql: &str) -> Result<Vec<M>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .query(sql, &[])
                .await?
                .iter()
                .map(|row| decode(what, row.get(0)))
                .collect()
        })
    }
}

/// Runs a transaction again while it fails for a reason a retry fixes.
async fn retried<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, StoreError>, tokio_postgres::Error>>,
{
    let mut tries = 0;
    loop {
        tries += 1;
        match attempt().await {
            Ok(result) => return result,
            Err(err) if tries < 5 && retryable(&err) => {
                tracing::debug!(error = %err, tries, "transaction conflict; running it again");
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Follows the `anxin` channel on a connection of its own, reconnecting
/// after a loss (and then reporting [`RemoteChange::Resync`]: notifications
/// sent meanwhile are gone).
async fn listen(url: String, replica: u64, feed: mpsc::UnboundedSender<RemoteChange>) {
    use futures::StreamExt;
    let mut lost = false;
    loop {
        if feed.is_closed() {
            return;
        }
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut connection)) => {
                let (messages_tx, mut messages) = mpsc::unbounded_channel();
                let driver = tokio::spawn(async move {
                    let mut stream =
                        futures::stream::poll_fn(move |cx| connection.poll_message(cx));
                    while let Some(message) = stream.next().await {
                        match message {
                            Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                                if messages_tx.send(n.payload().to_string()).is_err() {
                                    return;
                                }
                            }
                            Ok(_) => {}
                            Err(err) => {
                                tracing::warn!(error = %err, "change feed connection lost");
                                return;
                            }
                        }
                    }
                });
                if let Err(err) = client.batch_execute(&format!("listen {CHANNEL}")).await {
                    tracing::warn!(error = %err, "listening for other replicas' changes failed");
                } else {
                    if lost {
                        tracing::info!("change feed back; resyncing");
                        let _ = feed.send(RemoteChange::Resync);
                    }
                    while let Some(payload) = messages.recv().await {
                        if let Some(change) = parse_notice(&payload, replica)
                            && feed.send(change).is_err()
                        {
                            return;
                        }
                    }
                }
                driver.abort();
                drop(client);
            }
            Err(err) => tracing::warn!(error = %err, "change feed cannot connect; retrying"),
        }
        lost = true;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// A notification of another replica as a [`RemoteChange`]; `None` for our
/// own and for what does not parse.
fn parse_notice(payload: &str, replica: u64) -> Option<RemoteChange> {
    let mut parts = payload.splitn(4, '|');
    let from: u64 = parts.next()?.parse().ok()?;
    if from == replica {
        return None;
    }
    match parts.next()? {
        "a" => Some(RemoteChange::Alert(parts.next()?.to_string())),
        "d" => Some(RemoteChange::Downlinks {
            gateway_id: parts.next()?.to_string(),
            ids: parts
                .next()?
                .split(',')
                .filter_map(|id| id.parse().ok())
                .collect(),
        }),
        "dir" => Some(RemoteChange::Directory),
        _ => None,
    }
}

impl Storage for PgStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn commit_plain_events(
        &self,
        gateway_id: &str,
        uplinks: &[UplinkEvent],
        received_ms: i64,
    ) -> Result<Vec<bool>, StoreError> {
        let mut devices = Vec::with_capacity(uplinks.len());
        let mut keys = Vec::with_capacity(uplinks.len());
        let mut bodies = Vec::with_capacity(uplinks.len());
        for uplink in uplinks {
            let event = uplink.event.as_ref().ok_or(StoreError::EmptyEvent)?;
            debug_assert!(!incidents::affects_incidents(event));
            devices.push(event.device_id.clone());
            keys.push(seq_key(event.seq));
            bodies.push(
                StoredEvent {
                    gateway_id: gateway_id.to_string(),
                    received_ms,
                    uplink: Some(uplink.clone()),
                    alert_id: String::new(),
                    commit_index: 0,
                }
                .encode_to_vec(),
            );
        }
        let inserted: HashSet<(String, i64)> = self.block(async {
            let client = self.pool.get().await?;
            let statement = client
                .prepare_cached(
                    "insert into events (device_id, seq_key, received_ms, body)
                     select d, k, $3, b from unnest($1::text[], $2::bigint[], $4::bytea[]) as t(d, k, b)
                     on conflict do nothing
                     returning device_id, seq_key",
                )
                .await?;
            Ok(client
                .query(&statement, &[&devices, &keys, &received_ms, &bodies])
                .await?
                .iter()
                .map(|row| (row.get(0), row.get(1)))
                .collect())
        })?;
        let mut seen = HashSet::with_capacity(uplinks.len());
        Ok(devices
            .into_iter()
            .zip(keys)
            .map(|key| inserted.contains(&key) && seen.insert(key))
            .collect())
    }

    fn commit_event(
        &self,
        gateway_id: &str,
        uplink: &UplinkEvent,
        received_ms: i64,
        origin: &Origin,
        policy: &IncidentPolicy,
    ) -> Result<Committed, StoreError> {
        self.block(retried(|| {
            self.try_commit_event(gateway_id, uplink, received_ms, origin, policy)
        }))
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    fn event(&self, device_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            let row = client
                .query_opt(
                    "select body, commit_index from events where device_id = $1 and seq_key = $2",
                    &[&device_id, &seq_key(seq)],
                )
                .await?;
            row.map(|row| event_of(&row)).transpose()
        })
    }

    fn device_events(&self, device_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .query(
                    "select body, commit_index from events where device_id = $1 order by seq_key",
                    &[&device_id],
                )
                .await?
                .iter()
                .map(event_of)
                .collect()
        })
    }

    fn event_count(&self) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            let count: i64 = client
                .query_one("select count(*) from events", &[])
                .await?
                .get(0);
            Ok(count as u64)
        })
    }

    fn prune_events(
        &self,
        before_ms: i64,
        utc_offset_minutes: i32,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let gone = tx
                .query(
                    "delete from events where ctid = any(array(
                         select ctid from events
                         where alert_id = '' and received_ms < $1
                         order by received_ms limit $2
                         for update skip locked))
                     returning body",
                    &[&before_ms, &(limit as i64)],
                )
                .await?;
            let events: Vec<StoredEvent> = gone
                .iter()
                .map(|row| decode("event", row.get::<_, &[u8]>(0)))
                .collect::<Result<_, _>>()?;
            let days = super::EventDay::fold(
                events
                    .iter()
                    .map(|e| super::EventDay::of(e, utc_offset_minutes)),
            );
            merge_event_days(&tx, &days).await?;
            tx.commit().await?;
            Ok(events.len() as u64)
        })
    }

    fn prune_event_days(&self, before_day: i32, limit: usize) -> Result<u64, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            Ok(client
                .execute(
                    "delete from event_days where ctid = any(array(
                         select ctid from event_days where day < $1 limit $2))",
                    &[&before_day, &(limit as i64)],
                )
                .await?)
        })
    }

    /// Oldest first by number (numbers follow creation), stopping at the
    /// first alert created after `before_ms`.
    fn prune_alerts(&self, before_ms: i64, limit: usize) -> Result<(u64, u64), StoreError> {
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "select number, body from alerts order by number limit $1",
                    &[&(limit as i64 * 4 + 16)],
                )
                .await?;
            let mut doomed: Vec<i64> = Vec::new();
            let mut ids: Vec<String> = Vec::new();
            for row in &rows {
                let alert: Alert = decode("alert", row.get::<_, &[u8]>(1))?;
                if alert.created_ms >= before_ms || doomed.len() >= limit {
                    break;
                }
                if !lifecycle::is_open(alert.state()) && super::closed_ms(&alert) < before_ms {
                    doomed.push(row.get(0));
                    ids.push(alert.id);
                }
            }
            if doomed.is_empty() {
                return Ok((0, 0));
            }
            let events = tx
                .execute("delete from events where alert_id = any($1)", &[&ids])
                .await?;
            let alerts = tx
                .execute("delete from alerts where number = any($1)", &[&doomed])
                .await?;
            tx.commit().await?;
            Ok((alerts, events))
        })
    }

    fn check(&self) -> super::CheckReport {
        let mut report = super::CheckReport::default();
        if let Err(err) = self.block(check::check(&self.pool, &mut report)) {
            report.problem(format!("the check stopped: {err}"));
        }
        report
    }

    /// Walks the oldest entries by id (the primary key), so the cut-off
    /// needs no index on time. One pruner at a time across replicas (an
    /// advisory lock for the transaction): the anchor moves in id order.
    fn prune_audit(&self, before_ms: i64, limit: usize) -> Result<u64, StoreError> {
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "select pg_advisory_xact_lock(hashtext('anxin.audit.prune'))",
                &[],
            )
            .await?;
            let oldest = tx
                .query(
                    "select id, at_ms from audit order by id limit $1",
                    &[&(limit as i64)],
                )
                .await?;
            let ids: Vec<i64> = oldest
                .iter()
                .take_while(|row| row.get::<_, i64>(1) < before_ms)
                .map(|row| row.get(0))
                .collect();
            let Some(&last) = ids.last() else {
                return Ok(0);
            };
            let body: Vec<u8> = tx
                .query_one("select body from audit where id = $1", &[&last])
                .await?
                .get(0);
            let entry: AuditEntry = decode("audit entry", &body)?;
            let anchor = super::AuditAnchor {
                id: entry.id,
                hash: entry.hash,
            };
            tx.execute("delete from audit where id = any($1)", &[&ids])
                .await?;
            tx.execute(
                "insert into meta (key, value) values ('audit_anchor', $1)
                 on conflict (key) do update set value = excluded.value",
                &[&anchor.encode()],
            )
            .await?;
            tx.commit().await?;
            Ok(ids.len() as u64)
        })
    }

    fn audit_anchor(&self) -> Result<Option<super::AuditAnchor>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .query_opt("select value from meta where key = 'audit_anchor'", &[])
                .await?
                .map(|row| super::AuditAnchor::decode(row.get(0)))
                .transpose()
        })
    }

    fn event_days(&self, device_id: &str) -> Result<Vec<super::EventDay>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            Ok(client
                .query(
                    "select day, kind, events, first_ms, last_ms from event_days
                     where device_id = $1 order by day, kind",
                    &[&device_id],
                )
                .await?
                .iter()
                .map(|row| super::EventDay {
                    device_id: device_id.to_string(),
                    day: row.get(0),
                    kind: row.get(1),
                    events: row.get::<_, i64>(2) as u64,
                    first_ms: row.get(3),
                    last_ms: row.get(4),
                })
                .collect())
        })
    }

    fn alert(&self, alert_id: &str) -> Result<Alert, StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        self.block(async {
            let client = self.pool.get().await?;
            let row = client
                .query_opt(
                    "select body from alerts where number = $1",
                    &[&(number as i64)],
                )
                .await?
                .ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
            decode("alert", row.get(0))
        })
    }

    fn alerts_page(&self, query: &ListQuery) -> Result<Page<Alert>, StoreError> {
        let before = query
            .before_alert()
            .map_err(|e| StoreError::Refused(e.to_string()))?;
        let states: Vec<i32> = query.states.iter().map(|s| *s as i32).collect();
        let limit = query.limit();
        self.block(async {
            let client = self.pool.get().await?;
            let mut items = Vec::new();
            let mut below = before.min(i64::MAX as u64) as i64;
            let mut looked = 0;
            loop {
                let batch = (limit + 1) as i64;
                let rows = if states.is_empty() {
                    client
                        .query(
                            "select number, body from alerts where number < $1
                             order by number desc limit $2",
                            &[&below, &batch],
                        )
                        .await?
                } else {
                    client
                        .query(
                            "select number, body from alerts
                             where number < $1 and state = any($3)
                             order by number desc limit $2",
                            &[&below, &batch, &states],
                        )
                        .await?
                };
                let exhausted = rows.len() < batch as usize;
                for row in &rows {
                    let number: i64 = row.get(0);
                    if items.len() == limit {
                        let last = items
                            .last()
                            .and_then(|a: &Alert| alert_number(&a.id))
                            .unwrap_or(0);
                        return Ok(Page {
                            items,
                            next: Some(crate::domain::listing::cursor(&last.to_be_bytes())),
                        });
                    }
                    looked += 1;
                    below = number;
                    let alert: Alert = decode("alert", row.get(1))?;
                    if query.wants_alert(&alert) {
                        items.push(alert);
                    }
                }
                if exhausted {
                    return Ok(Page { items, next: None });
                }
                if looked >= crate::domain::listing::SCAN_BUDGET {
                    return Ok(Page {
                        items,
                        next: Some(crate::domain::listing::cursor(
                            &(below as u64).to_be_bytes(),
                        )),
                    });
                }
            }
        })
    }

    fn alerts(&self, states: &[AlertState]) -> Result<Vec<Alert>, StoreError> {
        let states: Vec<i32> = states.iter().map(|s| *s as i32).collect();
        self.block(async {
            let client = self.pool.get().await?;
            let rows = if states.is_empty() {
                client
                    .query("select body from alerts order by number", &[])
                    .await?
            } else {
                client
                    .query(
                        "select body from alerts where state = any($1) order by number",
                        &[&states],
                    )
                    .await?
            };
            rows.iter().map(|row| decode("alert", row.get(0))).collect()
        })
    }

    fn import_alert(&self, alert: &Alert) -> Result<(), StoreError> {
        self.import_alerts(std::slice::from_ref(alert))
    }

    fn import_alerts(&self, alerts: &[Alert]) -> Result<(), StoreError> {
        let mut highest = 0;
        for alert in alerts {
            highest = highest.max(alert_number(&alert.id).ok_or_else(|| {
                StoreError::Refused(format!("alert id `{}` is not a number", alert.id))
            })?);
        }
        // What `write_alert` does for each, as two statements for all.
        let mut numbers = Vec::with_capacity(alerts.len());
        let mut states = Vec::with_capacity(alerts.len());
        let mut deadlines = Vec::with_capacity(alerts.len());
        let mut bodies = Vec::with_capacity(alerts.len());
        let (mut closed_keys, mut closed_numbers) = (Vec::new(), Vec::new());
        for alert in alerts {
            let number = alert_number(&alert.id).unwrap_or_default() as i64;
            numbers.push(number);
            states.push(alert.state);
            deadlines.push(offer_deadline(alert));
            bodies.push(alert.encode_to_vec());
            if !lifecycle::is_open(alert.state()) {
                closed_keys.push(incident_key(alert));
                closed_numbers.push(number);
            }
        }
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "insert into alerts (number, state, deadline_ms, body)
                 select * from unnest($1::bigint[], $2::int[], $3::bigint[], $4::bytea[])
                 on conflict (number) do update
                 set state = excluded.state, deadline_ms = excluded.deadline_ms, body = excluded.body",
                &[&numbers, &states, &deadlines, &bodies],
            )
            .await?;
            tx.execute(
                "delete from incidents i using unnest($1::text[], $2::bigint[]) as c(key, number)
                 where i.key = c.key and i.number = c.number",
                &[&closed_keys, &closed_numbers],
            )
            .await?;
            // Numbers taken later continue after the imported ones.
            tx.execute(
                "update counters set value = greatest(value, $1) where name = 'alert'",
                &[&(highest as i64)],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn update_alert_dyn(
        &self,
        alert_id: &str,
        change: AlertChange<'_>,
    ) -> Result<(Alert, Vec<Downlink>), StoreError> {
        let number =
            alert_number(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        self.block(retried(|| self.try_update_alert(number, alert_id, change)))
    }

    fn due_offers(&self, now_ms: i64) -> Result<(Vec<String>, Option<i64>), StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "(select number, deadline_ms from alerts
                      where deadline_ms is not null and deadline_ms <= $1
                      order by deadline_ms, number)
                     union all
                     (select number, deadline_ms from alerts
                      where deadline_ms is not null and deadline_ms > $1
                      order by deadline_ms, number limit 1)",
                    &[&now_ms],
                )
                .await?;
            let mut due = Vec::new();
            let mut next = None;
            for row in rows {
                let (number, at): (i64, i64) = (row.get(0), row.get(1));
                if at > now_ms {
                    next = Some(at);
                } else {
                    due.push(number.to_string());
                }
            }
            Ok((due, next))
        })
    }

    fn rebase_deadlines(&self, step_ms: i64) -> Result<usize, StoreError> {
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "select body from alerts where deadline_ms is not null for update",
                    &[],
                )
                .await?;
            let mut moved = 0;
            for row in rows {
                let mut alert: Alert = decode("alert", row.get(0))?;
                alert.offer_deadline_ms = (alert.offer_deadline_ms + step_ms).max(1);
                Self::write_alert(&tx, None, &alert).await?;
                moved += 1;
            }
            tx.commit().await?;
            Ok(moved)
        })
    }

    fn clock_mark(&self) -> Result<Option<anxin_host::clock::Mark>, StoreError> {
        let key = format!("clock@{}", hostname());
        self.block(async {
            let client = self.pool.get().await?;
            Ok(client
                .query_opt("select value from meta where key = $1", &[&key])
                .await?
                .and_then(|row| anxin_host::clock::Mark::decode(row.get(0))))
        })
    }

    fn save_clock_mark(&self, mark: &anxin_host::clock::Mark) -> Result<(), StoreError> {
        // Per host: a mark compares this host's wall clock with its own
        // boot clock, and replicas on other hosts have other clocks.
        let key = format!("clock@{}", hostname());
        let value = mark.encode().to_vec();
        self.block(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "insert into meta (key, value) values ($1, $2)
                     on conflict (key) do update set value = excluded.value",
                    &[&key, &value],
                )
                .await?;
            Ok(())
        })
    }

    fn pending_downlinks(&self, gateway_id: &str) -> Result<Vec<Downlink>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .query(
                    "select id, body from downlinks where gateway_id = $1 order by id",
                    &[&gateway_id],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(Downlink {
                        downlink_id: row.get::<_, i64>(0) as u64,
                        ack: Some(decode::<DeviceAck>("downlink", row.get(1))?),
                    })
                })
                .collect()
        })
    }

    fn enqueue_notifications(&self, items: &[OutboxItem]) -> Result<(), StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            Self::insert_outbox(&**client, items).await
        })
    }

    fn claim_notifications(
        &self,
        now_ms: i64,
        lease_ms: i64,
        max: usize,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            // SKIP LOCKED: replicas claiming at once take different rows.
            client
                .query(
                    "with due as (
                         select delivery_id from outbox
                         where next_at_ms <= $1 and lease_until_ms <= $1
                         order by next_at_ms limit $3
                         for update skip locked)
                     update outbox o set lease_until_ms = $1 + $2
                     from due where o.delivery_id = due.delivery_id
                     returning o.body, o.lease_until_ms",
                    &[&now_ms, &lease_ms, &(max as i64)],
                )
                .await?
                .iter()
                .map(|row| {
                    let mut item: OutboxItem = decode("outbox item", row.get(0))?;
                    item.lease_until_ms = row.get(1);
                    Ok(item)
                })
                .collect()
        })
    }

    fn finish_notification(
        &self,
        delivery_id: &str,
        entry: AuditEntry,
    ) -> Result<bool, StoreError> {
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let removed = tx
                .execute("delete from outbox where delivery_id = $1", &[&delivery_id])
                .await?;
            if removed == 0 {
                return Ok(false);
            }
            Self::insert_audit(&tx, &entry).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn retry_notification(&self, item: &OutboxItem) -> Result<(), StoreError> {
        let body = OutboxItem {
            lease_until_ms: 0,
            ..item.clone()
        }
        .encode_to_vec();
        self.block(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "update outbox set next_at_ms = $2, lease_until_ms = 0, body = $3
                     where delivery_id = $1",
                    &[&item.delivery_id, &item.next_at_ms, &body],
                )
                .await?;
            Ok(())
        })
    }

    fn downlink_done(&self, gateway_id: &str, downlink_id: u64) -> Result<(), StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "delete from downlinks where gateway_id = $1 and id = $2",
                    &[&gateway_id, &(downlink_id as i64)],
                )
                .await?;
            Ok(())
        })
    }

    fn remote_changes(&self) -> Option<mpsc::UnboundedReceiver<RemoteChange>> {
        self.feed.lock().expect("feed lock").take()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async {
            let client = self.pool.get().await?;
            client.execute("select 1", &[]).await?;
            Ok(())
        })
    }
}

fn event_of(row: &tokio_postgres::Row) -> Result<StoredEvent, StoreError> {
    let mut event: StoredEvent = decode("event", row.get(0))?;
    event.commit_index = row.get::<_, i64>(1) as u64;
    Ok(event)
}

impl Directory for PgStore {
    fn put_place(&self, place: &Place, audit: AuditEntry) -> Result<(), StoreError> {
        let places = Upsert::of("places", std::slice::from_ref(place), |p| &p.id);
        self.directory_write(audit, vec![places])
    }
    fn place(&self, id: &str) -> Result<Option<Place>, StoreError> {
        self.get_one("place", "select body from places where id = $1", id)
    }
    fn places(&self) -> Result<Vec<Place>, StoreError> {
        self.list("place", "select body from places order by id")
    }
    fn places_by_id(&self, ids: &[String]) -> Result<Vec<Place>, StoreError> {
        self.get_many("place", "select body from places where id = any($1)", ids)
    }
    fn residents_by_id(&self, ids: &[String]) -> Result<Vec<Resident>, StoreError> {
        self.get_many(
            "resident",
            "select body from residents where id = any($1)",
            ids,
        )
    }
    fn devices_by_id(&self, ids: &[String]) -> Result<Vec<DeviceRecord>, StoreError> {
        self.get_many("device", "select body from devices where id = any($1)", ids)
    }
    fn resident(&self, id: &str) -> Result<Option<Resident>, StoreError> {
        self.get_one("resident", "select body from residents where id = $1", id)
    }
    fn residents(&self) -> Result<Vec<Resident>, StoreError> {
        self.list("resident", "select body from residents order by id")
    }
    fn device(&self, id: &str) -> Result<Option<DeviceRecord>, StoreError> {
        self.get_one("device", "select body from devices where id = $1", id)
    }
    fn devices(&self) -> Result<Vec<DeviceRecord>, StoreError> {
        self.list("device", "select body from devices order by id")
    }
    fn put_gateway(
        &self,
        gateway: &GatewayRecord,
        token_sha256: &str,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        let mut writes = vec![listing::gateways_write(std::slice::from_ref(gateway))];
        if !token_sha256.is_empty() {
            let token = TokenRecord {
                subject_kind: "gateway".into(),
                subject_id: gateway.id.clone(),
                issued_ms: audit.at_ms,
                ..Default::default()
            };
            writes.push(Upsert::token(token_sha256, &token));
        }
        self.directory_write(audit, writes)
    }
    fn gateway(&self, id: &str) -> Result<Option<GatewayRecord>, StoreError> {
        self.get_one("gateway", "select body from gateways where id = $1", id)
    }
    fn gateways(&self) -> Result<Vec<GatewayRecord>, StoreError> {
        self.list("gateway", "select body from gateways order by id")
    }
    fn staff_member(&self, id: &str) -> Result<Option<Staff>, StoreError> {
        self.get_one("staff", "select body from staff where id = $1", id)
    }
    fn staff(&self) -> Result<Vec<Staff>, StoreError> {
        self.list("staff", "select body from staff order by id")
    }
    fn put_batch(&self, batch: &DirectoryBatch, audit: AuditEntry) -> Result<(), StoreError> {
        let writes = vec![
            listing::residents_write(&batch.residents),
            listing::devices_write(&batch.devices),
            listing::staff_write(&batch.staff),
        ];
        self.directory_write(audit, writes)
    }
    fn put_import(
        &self,
        chunks: &mut dyn Iterator<Item = DirectoryBatch>,
        expected: u64,
        audit: AuditEntry,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, StoreError> {
        // One transaction, written a chunk at a time: the database holds
        // the uncommitted rows, this process only the chunk in hand.
        let mut client = self.block(async { Ok(self.pool.get().await?) })?;
        let tx = self.block(async { Ok(client.transaction().await?) })?;
        let mut written = 0u64;
        for chunk in chunks {
            self.block(async {
                for write in [
                    listing::residents_write(&chunk.residents),
                    listing::devices_write(&chunk.devices),
                    listing::staff_write(&chunk.staff),
                ] {
                    listing::upsert(&tx, &write).await?;
                }
                Ok(())
            })?;
            written += (chunk.residents.len() + chunk.devices.len() + chunk.staff.len()) as u64;
            progress(written);
        }
        if written != expected {
            return Err(StoreError::Refused(format!(
                "the file changed while it was imported ({expected} rows checked, {written} read); nothing was written"
            )));
        }
        self.block(async {
            Self::insert_audit(&tx, &audit).await?;
            self.notify(&tx, Notice::Directory).await?;
            tx.commit().await?;
            Ok(())
        })?;
        Ok(written)
    }
    fn enrolled_residents(&self) -> Result<Vec<Resident>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::enrolled(&client).await
        })
    }
    fn residents_page(&self, query: &ListQuery) -> Result<Page<Resident>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::residents(&client, query).await
        })
    }
    fn devices_page(&self, query: &ListQuery) -> Result<Page<DeviceRecord>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::devices(&client, query).await
        })
    }
    fn staff_page(&self, query: &ListQuery) -> Result<Page<Staff>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::staff(&client, query).await
        })
    }
    fn gateways_page(&self, query: &ListQuery) -> Result<Page<GatewayRecord>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::gateways(&client, query).await
        })
    }
    fn places_page(&self, query: &ListQuery) -> Result<Page<Place>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            listing::places(&client, query).await
        })
    }
    fn put_token(
        &self,
        token_sha256: &str,
        record: &TokenRecord,
        audit: AuditEntry,
    ) -> Result<(), StoreError> {
        if token_sha256.is_empty() {
            return Err(StoreError::Refused("empty token digest".into()));
        }
        self.directory_write(audit, vec![Upsert::token(token_sha256, record)])
    }
    fn token(&self, token_sha256: &str) -> Result<Option<TokenRecord>, StoreError> {
        self.get_one(
            "token",
            "select body from tokens where digest = $1",
            token_sha256,
        )
    }
    fn tokens_of(
        &self,
        subject_kind: &str,
        subject_id: &str,
    ) -> Result<Vec<(String, TokenRecord)>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            let mut out = Vec::new();
            for row in client
                .query("select digest, body from tokens order by digest", &[])
                .await?
            {
                let record: TokenRecord = decode("token", row.get(1))?;
                if record.subject_kind == subject_kind && record.subject_id == subject_id {
                    out.push((row.get(0), record));
                }
            }
            Ok(out)
        })
    }
    fn touch_token(&self, token_sha256: &str, at_ms: i64) -> Result<(), StoreError> {
        let Some(mut record) = self.token(token_sha256)? else {
            return Ok(());
        };
        record.last_used_ms = at_ms;
        let body = record.encode_to_vec();
        self.block(async {
            let client = self.pool.get().await?;
            client
                .execute(
                    "update tokens set body = $2 where digest = $1",
                    &[&token_sha256, &body],
                )
                .await?;
            Ok(())
        })
    }
}

impl AuditLog for PgStore {
    fn append(&self, entry: AuditEntry) -> Result<AuditEntry, StoreError> {
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let entry = Self::insert_audit(&tx, &entry).await?;
            tx.commit().await?;
            Ok(entry)
        })
    }

    fn query(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = if query.limit > 0 {
            query.limit as i64
        } else {
            i64::MAX
        };
        let before = match query.before_id {
            0 => i64::MAX,
            id => id.min(i64::MAX as u64) as i64,
        };
        self.block(async {
            let client = self.pool.get().await?;
            let rows = client
                .query(
                    "select id, body from audit
                     where ($1 = '' or target = $1)
                       and ($2 = '' or actor = $2)
                       and ($3 = '' or action = $3 or starts_with(action, $3 || '.'))
                       and ($4::bigint = 0 or at_ms >= $4)
                       and ($5::bigint = 0 or at_ms < $5)
                       and id < $7
                     order by id desc limit $6",
                    &[
                        &query.target,
                        &query.actor,
                        &query.action,
                        &query.since_ms,
                        &query.until_ms,
                        &limit,
                        &before,
                    ],
                )
                .await?;
            let mut entries = rows
                .iter()
                .map(|row| {
                    let mut entry: AuditEntry = decode("audit entry", row.get(1))?;
                    entry.id = row.get::<_, i64>(0) as u64;
                    Ok(entry)
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            entries.reverse();
            Ok(entries)
        })
    }
}

/// Scratch databases for tests: `anxin_t_{pid}_{n}` beside the database
/// of `admin_url`, so that a test run cleans up after runs that died.
pub mod scratch {
    use super::*;

    /// Where tests find a PostgreSQL server they may create databases on.
    pub fn admin_url() -> String {
        std::env::var("ANXIN_TEST_PG")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
    }

    /// Creates an empty database and returns its URL; `Err` with the reason
    /// when no server can be reached.
    pub async fn create() -> Result<String, String> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let admin = admin_url();
        let (client, connection) = tokio_postgres::connect(&admin, NoTls)
            .await
            .map_err(|e| format!("PostgreSQL at {admin} (ANXIN_TEST_PG): {e}"))?;
        tokio::spawn(connection);
        let stale = client
            .query(
                "select datname from pg_database where datname like 'anxin\\_t\\_%'",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        for row in stale {
            let name: String = row.get(0);
            let pid = name.split('_').nth(2).and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = client
                    .batch_execute(&format!("drop database if exists {name} with (force)"))
                    .await;
            }
        }
        let name = format!(
            "anxin_t_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            rand::random::<u32>()
        );
        client
            .batch_execute(&format!("create database {name}"))
            .await
            .map_err(|e| e.to_string())?;
        let base = admin
            .rsplit_once('/')
            .map_or(admin.as_str(), |(base, _)| base);
        Ok(format!("{base}/{name}"))
    }

    /// Drops a database [`create`] made.
    pub async fn drop(url: &str) {
        let Some((_, name)) = url.rsplit_once('/') else {
            return;
        };
        if let Ok((client, connection)) = tokio_postgres::connect(&admin_url(), NoTls).await {
            tokio::spawn(connection);
            let _ = client
                .batch_execute(&format!("drop database if exists {name} with (force)"))
                .await;
        }
    }
}

/// Adds `days` into the daily summaries: a (device, day, kind) already
/// there gains their count and widens its first and last.
pub(in crate::store) async fn merge_event_days(
    client: &impl deadpool_postgres::GenericClient,
    days: &[super::EventDay],
) -> Result<(), StoreError> {
    let devices: Vec<&str> = days.iter().map(|d| d.device_id.as_str()).collect();
    let day: Vec<i32> = days.iter().map(|d| d.day).collect();
    let kind: Vec<i32> = days.iter().map(|d| d.kind).collect();
    let count: Vec<i64> = days.iter().map(|d| d.events as i64).collect();
    let first: Vec<i64> = days.iter().map(|d| d.first_ms).collect();
    let last: Vec<i64> = days.iter().map(|d| d.last_ms).collect();
    client
        .execute(
            "insert into event_days (device_id, day, kind, events, first_ms, last_ms)
             select * from unnest($1::text[], $2::int[], $3::int[], $4::bigint[],
                                  $5::bigint[], $6::bigint[])
             on conflict (device_id, day, kind) do update set
                 events = event_days.events + excluded.events,
                 first_ms = least(event_days.first_ms, excluded.first_ms),
                 last_ms = greatest(event_days.last_ms, excluded.last_ms)",
            &[&devices, &day, &kind, &count, &first, &last],
        )
        .await?;
    Ok(())
}

impl WelfareStore for PgStore {
    fn note_signs(&self, signs: &[SignOfLife]) -> Result<(), StoreError> {
        let latest = latest_signs(signs);
        if latest.is_empty() {
            return Ok(());
        }
        let ids: Vec<&str> = latest.iter().map(|s| s.resident_id.as_str()).collect();
        let at: Vec<i64> = latest.iter().map(|s| s.at_ms).collect();
        let bodies: Vec<Vec<u8>> = latest.iter().map(Message::encode_to_vec).collect();
        self.block(async {
            let client = self.pool.get().await?;
            // An older sign (a resend, another replica's slower batch)
            // leaves the newer one.
            client
                .execute(
                    "insert into signs_of_life (resident_id, at_ms, body)
                     select * from unnest($1::text[], $2::bigint[], $3::bytea[])
                     on conflict (resident_id) do update
                       set at_ms = excluded.at_ms, body = excluded.body
                       where signs_of_life.at_ms < excluded.at_ms",
                    &[&ids, &at, &bodies],
                )
                .await?;
            Ok(())
        })
    }

    fn sign_of_life(&self, resident_id: &str) -> Result<Option<SignOfLife>, StoreError> {
        self.get_one(
            "sign of life",
            "select body from signs_of_life where resident_id = $1",
            resident_id,
        )
    }

    fn judge_checkin_day(
        &self,
        day: &CheckinDay,
        audit: AuditEntry,
    ) -> Result<CheckinDay, StoreError> {
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let written = tx
                .execute(
                    "insert into checkin_days (day, resident_id, body) values ($1, $2, $3)
                     on conflict do nothing",
                    &[&day.day, &day.resident_id, &day.encode_to_vec()],
                )
                .await?;
            if written == 0 {
                let row = tx
                    .query_one(
                        "select body from checkin_days where day = $1 and resident_id = $2",
                        &[&day.day, &day.resident_id],
                    )
                    .await?;
                return decode("check-in day", row.get(0));
            }
            Self::insert_audit(&tx, &audit).await?;
            tx.commit().await?;
            Ok(day.clone())
        })
    }

    fn checkin_day(&self, resident_id: &str, day: i32) -> Result<Option<CheckinDay>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            match client
                .query_opt(
                    "select body from checkin_days where day = $1 and resident_id = $2",
                    &[&day, &resident_id],
                )
                .await?
            {
                Some(row) => Ok(Some(decode("check-in day", row.get(0))?)),
                None => Ok(None),
            }
        })
    }

    fn checkin_days(&self, from_day: i32, to_day: i32) -> Result<Vec<CheckinDay>, StoreError> {
        self.days(
            "check-in day",
            "checkin_days",
            "resident_id",
            from_day,
            to_day,
        )
    }

    fn put_visit_plans(&self, plans: &[VisitPlan], audit: AuditEntry) -> Result<(), StoreError> {
        let ids: Vec<&str> = plans.iter().map(|p| p.id.as_str()).collect();
        let bodies: Vec<Vec<u8>> = plans.iter().map(Message::encode_to_vec).collect();
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            tx.execute(
                "insert into visit_plans (id, body)
                 select * from unnest($1::text[], $2::bytea[])
                 on conflict (id) do update set body = excluded.body",
                &[&ids, &bodies],
            )
            .await?;
            Self::insert_audit(&tx, &audit).await?;
            // Other replicas' visit judges read the plans again.
            self.notify(&tx, Notice::Directory).await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn visit_plan(&self, id: &str) -> Result<Option<VisitPlan>, StoreError> {
        self.get_one(
            "visit plan",
            "select body from visit_plans where id = $1",
            id,
        )
    }

    fn visit_plans(&self) -> Result<Vec<VisitPlan>, StoreError> {
        self.list("visit plan", "select body from visit_plans order by id")
    }

    fn record_visit(
        &self,
        visit: &Visit,
        audit: AuditEntry,
        notifications: &[OutboxItem],
    ) -> Result<(Visit, bool), StoreError> {
        self.block(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let written = tx
                .execute(
                    "insert into visits (day, plan_id, body) values ($1, $2, $3)
                     on conflict do nothing",
                    &[&visit.day, &visit.plan_id, &visit.encode_to_vec()],
                )
                .await?;
            if written == 0 {
                let row = tx
                    .query_one(
                        "select body from visits where day = $1 and plan_id = $2",
                        &[&visit.day, &visit.plan_id],
                    )
                    .await?;
                return Ok((decode("visit", row.get(0))?, false));
            }
            Self::insert_audit(&tx, &audit).await?;
            Self::insert_outbox(&*tx, notifications).await?;
            tx.commit().await?;
            Ok((visit.clone(), true))
        })
    }

    fn visits(&self, from_day: i32, to_day: i32) -> Result<Vec<Visit>, StoreError> {
        self.days("visit", "visits", "plan_id", from_day, to_day)
    }
}

impl PgStore {
    /// Rows of a day-keyed table for local days in `[from_day, to_day)`.
    fn days<M: Message + Default>(
        &self,
        what: &str,
        table: &str,
        id: &str,
        from_day: i32,
        to_day: i32,
    ) -> Result<Vec<M>, StoreError> {
        self.block(async {
            let client = self.pool.get().await?;
            client
                .query(
                    &format!(
                        "select body from {table} where day >= $1 and day < $2 order by day, {id}"
                    ),
                    &[&from_day, &to_day],
                )
                .await?
                .iter()
                .map(|row| decode(what, row.get(0)))
                .collect()
        })
    }
}

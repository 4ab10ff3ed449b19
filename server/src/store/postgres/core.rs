//! The PostgreSQL engine's core: the [`PgStore`] handle (pool, replica
//! id, the runtime its blocking calls use), migrations at connect, the
//! transaction helpers, retries, the listener of other replicas' changes.
//! The engine's parts (`storage.rs`, `directory.rs`, `audit.rs`,
//! `welfare.rs`, `listing.rs`, `check.rs`) build on it.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use anxin_proto::v1::{Alert, AuditEntry, Downlink, UplinkEvent};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use prost::Message;
use tokio::sync::mpsc;
use tokio_postgres::Transaction;

use crate::store::{
    AlertChange, Change, Committed, OutboxItem, RemoteChange, StoreError, StoredEvent,
    alert_number, decision_audit, decode, incident_key, offer_deadline,
};
use crate::{
    domain::incidents::{self, Decision, IncidentPolicy, Origin},
    domain::lifecycle,
};

use super::listing::{self, Upsert};

/// Schema versions, applied in order; never edit one that shipped.
pub(crate) const MIGRATIONS: &[(i32, &str, &str)] = &[
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
    (7, "positions", include_str!("0007_positions.sql")),
    (8, "signals", include_str!("0008_signals.sql")),
];

/// Serialises schema migrations across replicas starting together.
pub(crate) const MIGRATION_LOCK: i64 = 0x616e_7869_6e00_0001;
/// The NOTIFY channel every replica listens on.
pub(crate) const CHANNEL: &str = "anxin";

impl From<tokio_postgres::Error> for StoreError {
    fn from(err: tokio_postgres::Error) -> Self {
        if err.code() == Some(&tokio_postgres::error::SqlState::DISK_FULL) {
            return StoreError::DatabaseFull(describe(&err));
        }
        StoreError::Database(describe(&err))
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        let detail = match &err {
            deadpool_postgres::PoolError::Backend(err) => describe(err),
            other => other.to_string(),
        };
        StoreError::Database(format!("no database connection: {detail}"))
    }
}

/// What went wrong, in full: the server's message and code for a database
/// error, else the error and its causes (a TLS handshake's reason is two
/// levels down).
fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

/// Whether a failed transaction may simply be run again (a concurrent
/// commit of the same key, a serialisation failure, a deadlock).
pub(crate) fn retryable(err: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    err.code().is_some_and(|code| {
        *code == SqlState::UNIQUE_VIOLATION
            || *code == SqlState::T_R_SERIALIZATION_FAILURE
            || *code == SqlState::T_R_DEADLOCK_DETECTED
    })
}

/// The u64 seq as a bigint that sorts the same way.
pub(crate) fn seq_key(seq: u64) -> i64 {
    (seq ^ (1 << 63)) as i64
}

pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

#[derive(Clone)]
pub struct PgStore {
    pub(crate) pool: Pool,
    /// This process among the replicas: notifications it sent itself are
    /// not news to it.
    pub(crate) replica: u64,
    pub(crate) feed: Arc<Mutex<Option<mpsc::UnboundedReceiver<RemoteChange>>>>,
    /// How long a write on the event path may take (`store.write_timeout_ms`).
    pub(crate) write_bound: Duration,
}

/// `store.write_timeout_ms` unless the config says otherwise.
pub const DEFAULT_WRITE_BOUND: Duration = Duration::from_secs(5);

impl PgStore {
    /// Connects, applies pending migrations and starts listening for other
    /// replicas' changes.
    pub async fn connect(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let target = super::tls::target(url)?;
        target.log();
        let manager = Manager::from_config(
            target.config.clone(),
            target.tls.clone(),
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
            replica: rand::random(),
            feed: Default::default(),
            write_bound: DEFAULT_WRITE_BOUND,
        };
        store.migrate().await?;
        let (tx, rx) = mpsc::unbounded_channel();
        *store.feed.lock().expect("feed lock") = Some(rx);
        tokio::spawn(listen(target, store.replica, tx));
        Ok(store)
    }

    pub(crate) async fn migrate(&self) -> Result<(), StoreError> {
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

    /// Bounds this replica's writes on the event path (see [`Self::bounded`]).
    pub fn with_write_bound(mut self, bound: Duration) -> Self {
        self.write_bound = bound;
        self
    }

    /// Runs `work` (a write on the event path) within the write bound. A
    /// commit that waits for a synchronous standby that is gone never
    /// returns, and PostgreSQL still answers reads meanwhile: without a
    /// bound the gateway's stream would hang while `/healthz` said ready.
    /// Past the bound the work is dropped and [`StoreError::Stalled`]
    /// returned; its connection went back to the pool with its backend
    /// still waiting, so the pool's idle connections are closed (fresh ones
    /// are made on demand) and none of them serves the next caller. The
    /// write may still commit later: everything on this path is idempotent
    /// (events by device and seq), and nothing was acknowledged.
    pub(crate) async fn bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.write_bound, work).await {
            Ok(out) => out,
            Err(_) => {
                self.pool.retain(|_, _| false);
                Err(StoreError::Stalled(self.write_bound.as_millis() as u64))
            }
        }
    }

    /// [`Self::block`] within the write bound.
    pub(crate) fn block_bounded<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.block(self.bounded(work))
    }

    /// A write that must wait for the commit to be durable where the
    /// database says it is (synchronous standbys included), within the
    /// write bound: the replica's health watch asks this every few seconds.
    pub(crate) async fn probe_commit(&self) -> Result<(), StoreError> {
        self.bounded(async {
            let client = self.pool.get().await?;
            // A transactional WAL record with no table behind it: its
            // commit waits for synchronous replication as an event's does
            // (a transaction that only takes an xid would not wait).
            client
                .execute(
                    "select pg_logical_emit_message(true, 'anxin-commit-probe', '')",
                    &[],
                )
                .await?;
            Ok(())
        })
        .await
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
    /// One transaction on a pooled connection: `work` runs in it, and it
    /// commits when `work` returns `Ok` (an `Err` drops it: rolled back).
    /// Every change of this engine that needs no retry on a conflict is
    /// written through here.
    pub(crate) fn write<T>(
        &self,
        work: impl AsyncFnOnce(&deadpool_postgres::Transaction<'_>) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.block_bounded(async {
            let mut client = self.pool.get().await?;
            let tx = client.transaction().await?;
            let out = work(&tx).await?;
            tx.commit().await?;
            Ok(out)
        })
    }

    /// Inserts a record keyed by (local day, `key`) into `table` unless
    /// one is there already; returns the stored record and whether it was
    /// this one. Written-once records (a judged check-in day, a recorded
    /// visit) go through here, so a second replica or a retry reads back
    /// the first.
    pub(crate) async fn insert_once<M: Message + Default + Clone>(
        tx: &deadpool_postgres::Transaction<'_>,
        what: &str,
        table: &str,
        key_column: &str,
        day: i32,
        key: &str,
        record: &M,
    ) -> Result<(M, bool), StoreError> {
        let written = tx
            .execute(
                &format!(
                    "insert into {table} (day, {key_column}, body) values ($1, $2, $3) \
                     on conflict do nothing"
                ),
                &[&day, &key, &record.encode_to_vec()],
            )
            .await?;
        if written == 1 {
            return Ok((record.clone(), true));
        }
        let row = tx
            .query_one(
                &format!("select body from {table} where day = $1 and {key_column} = $2"),
                &[&day, &key],
            )
            .await?;
        Ok((decode(what, row.get(0))?, false))
    }

    pub(crate) fn block<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| handle.block_on(work))
    }

    pub(crate) async fn notify(
        &self,
        tx: &Transaction<'_>,
        notice: Notice<'_>,
    ) -> Result<(), StoreError> {
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
    pub(crate) async fn insert_audit(
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
        entry.hash = crate::store::chain_hash(&previous, &entry);
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

    pub(crate) async fn insert_outbox(
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

    pub(crate) async fn write_alert(
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

    pub(crate) async fn try_commit_event(
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

    pub(crate) async fn try_update_alert(
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
    pub(crate) fn directory_write(
        &self,
        audit: AuditEntry,
        writes: Vec<Upsert>,
    ) -> Result<(), StoreError> {
        self.write(async |tx| {
            for write in &writes {
                listing::upsert(tx, write).await?;
            }
            Self::insert_audit(tx, &audit).await?;
            self.notify(tx, Notice::Directory).await?;
            Ok(())
        })
    }

    pub(crate) fn get_one<M: Message + Default>(
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
    pub(crate) fn get_many<M: Message + Default>(
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

    pub(crate) fn list<M: Message + Default>(
        &self,
        what: &str,
        sql: &str,
    ) -> Result<Vec<M>, StoreError> {
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
pub(crate) async fn retried<T, F, Fut>(mut attempt: F) -> Result<T, StoreError>
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
pub(crate) async fn listen(
    target: super::tls::Target,
    replica: u64,
    feed: mpsc::UnboundedSender<RemoteChange>,
) {
    use futures::StreamExt;
    let mut lost = false;
    loop {
        if feed.is_closed() {
            return;
        }
        match target.config.connect(target.tls.clone()).await {
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
pub(crate) fn parse_notice(payload: &str, replica: u64) -> Option<RemoteChange> {
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

pub(crate) fn event_of(row: &tokio_postgres::Row) -> Result<StoredEvent, StoreError> {
    let mut event: StoredEvent = decode("event", row.get(0))?;
    event.commit_index = row.get::<_, i64>(1) as u64;
    Ok(event)
}

/// Adds `days` into the daily summaries: a (device, day, kind) already
/// there gains their count and widens its first and last.
pub(crate) async fn merge_event_days(
    client: &impl deadpool_postgres::GenericClient,
    days: &[crate::store::EventDay],
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

impl PgStore {
    /// Rows of a day-keyed table for local days in `[from_day, to_day)`.
    pub(crate) fn days<M: Message + Default>(
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

/// What a transaction wants the other replicas to hear once it commits.
pub(crate) enum Notice<'a> {
    Alert(u64),
    Downlinks(&'a str, &'a [u64]),
    Directory,
}

//! The server's durable state (sled): committed events, alerts, and
//! downlinks waiting for their gateway.
//!
//! Keeps guarantee 2 (exactly-once effect): an event and the alert it raises
//! are written in one transaction keyed by `(device_id, seq)`, so a replayed
//! or retransmitted event finds its key and creates nothing. The uplink
//! flushes before it acks `received`, so a crash between commit and ack only
//! causes a retransmission, which this dedupe absorbs.
//!
//! Trees:
//! - `events`:    `device_id ‖ 0x00 ‖ seq (u64 BE)` → [`StoredEvent`]
//! - `alerts`:    `alert number (u64 BE)` → `Alert` (protobuf)
//! - `downlinks`: `gateway_id ‖ 0x00 ‖ downlink id (u64 BE)` → `Downlink`

use std::path::Path;

use anxin_proto::{
    Priority,
    v1::{Alert, AlertState, Downlink, UplinkEvent},
};
use prost::Message;
use sled::{
    Transactional,
    transaction::{ConflictableTransactionError, TransactionError},
};

use crate::lifecycle::{self, IllegalTransition};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage: {0}")]
    Storage(#[from] sled::Error),
    #[error("record {0} does not decode: {1}")]
    Corrupt(String, prost::DecodeError),
    #[error("no alert {0}")]
    NoSuchAlert(String),
    #[error(transparent)]
    Illegal(#[from] IllegalTransition),
    #[error("event has no body")]
    EmptyEvent,
}

impl From<TransactionError<StoreError>> for StoreError {
    fn from(err: TransactionError<StoreError>) -> Self {
        match err {
            TransactionError::Abort(err) => err,
            TransactionError::Storage(err) => StoreError::Storage(err),
        }
    }
}

fn abort(err: StoreError) -> ConflictableTransactionError<StoreError> {
    ConflictableTransactionError::Abort(err)
}

/// An event as the server keeps it.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredEvent {
    #[prost(string, tag = "1")]
    pub gateway_id: String,
    #[prost(int64, tag = "2")]
    pub received_ms: i64,
    #[prost(message, optional, tag = "3")]
    pub uplink: Option<UplinkEvent>,
    /// The alert this event raised, if any.
    #[prost(string, tag = "4")]
    pub alert_id: String,
    /// Increases with every commit: the order events reached the server.
    #[prost(uint64, tag = "5")]
    pub commit_index: u64,
}

#[derive(Debug)]
pub enum Committed {
    /// First time the server sees this event; `alert` is set if it raised one.
    New { alert: Option<Alert> },
    /// Already committed earlier: nothing changed.
    Duplicate,
}

fn event_key(device_id: &str, seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(device_id.len() + 9);
    key.extend_from_slice(device_id.as_bytes());
    key.push(0);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn downlink_key(gateway_id: &str, id: u64) -> Vec<u8> {
    event_key(gateway_id, id)
}

fn alert_key(alert_id: &str) -> Option<[u8; 8]> {
    alert_id.parse::<u64>().ok().map(u64::to_be_bytes)
}

fn decode<M: Message + Default>(what: &str, bytes: &[u8]) -> Result<M, StoreError> {
    M::decode(bytes).map_err(|e| StoreError::Corrupt(what.to_string(), e))
}

#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    events: sled::Tree,
    alerts: sled::Tree,
    downlinks: sled::Tree,
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = sled::Config::new().path(path).open()?;
        Ok(Self {
            events: db.open_tree("events")?,
            alerts: db.open_tree("alerts")?,
            downlinks: db.open_tree("downlinks")?,
            db,
        })
    }

    /// Commits an event (and the alert a P0 raises) unless it is already
    /// here. Durable after [`Store::flush`].
    pub fn commit_event(
        &self,
        gateway_id: &str,
        uplink: &UplinkEvent,
        received_ms: i64,
    ) -> Result<Committed, StoreError> {
        let event = uplink.event.as_ref().ok_or(StoreError::EmptyEvent)?;
        let key = event_key(&event.device_id, event.seq);
        let committed = (&self.events, &self.alerts).transaction(|(events, alerts)| {
            if events.get(&key)?.is_some() {
                return Ok(Committed::Duplicate);
            }
            let alert = if event.priority() == Priority::P0 {
                let number = events.generate_id()? + 1;
                let alert = Alert {
                    id: number.to_string(),
                    device_id: event.device_id.clone(),
                    seq: event.seq,
                    kind: event.kind,
                    priority: Priority::P0 as i32,
                    state: AlertState::New as i32,
                    gateway_id: gateway_id.to_string(),
                    device_time_ms: event.device_time_ms,
                    created_ms: received_ms,
                    battery_pct: event.battery_pct,
                    ..Default::default()
                };
                alerts.insert(&number.to_be_bytes(), alert.encode_to_vec())?;
                Some(alert)
            } else {
                None
            };
            let stored = StoredEvent {
                gateway_id: gateway_id.to_string(),
                received_ms,
                uplink: Some(uplink.clone()),
                alert_id: alert.as_ref().map(|a| a.id.clone()).unwrap_or_default(),
                commit_index: events.generate_id()?,
            };
            events.insert(key.as_slice(), stored.encode_to_vec())?;
            Ok(Committed::New { alert })
        })?;
        Ok(committed)
    }

    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }

    pub fn event(&self, device_id: &str, seq: u64) -> Result<Option<StoredEvent>, StoreError> {
        self.events
            .get(event_key(device_id, seq))?
            .map(|bytes| decode("event", &bytes))
            .transpose()
    }

    /// A device's committed events in seq order.
    pub fn device_events(&self, device_id: &str) -> Result<Vec<StoredEvent>, StoreError> {
        let mut prefix = device_id.as_bytes().to_vec();
        prefix.push(0);
        self.events
            .scan_prefix(prefix)
            .values()
            .map(|bytes| decode("event", &bytes?))
            .collect()
    }

    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    pub fn alert(&self, alert_id: &str) -> Result<Alert, StoreError> {
        let key = alert_key(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        let bytes = self
            .alerts
            .get(key)?
            .ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        decode("alert", &bytes)
    }

    /// Alerts in creation order, optionally only those in `states`.
    pub fn alerts(&self, states: &[AlertState]) -> Result<Vec<Alert>, StoreError> {
        let mut out = Vec::new();
        for item in self.alerts.iter() {
            let (_, bytes) = item?;
            let alert: Alert = decode("alert", &bytes)?;
            if states.is_empty() || states.contains(&alert.state()) {
                out.push(alert);
            }
        }
        Ok(out)
    }

    /// Applies a lifecycle transition. `change` fills in who/when/outcome;
    /// `downlink`, if given, is queued for the alert's gateway in the same
    /// transaction, so "help is coming" is never lost between the two.
    pub fn transition(
        &self,
        alert_id: &str,
        to: AlertState,
        change: impl Fn(&mut Alert),
        downlink: Option<impl Fn(&Alert, u64) -> Downlink>,
    ) -> Result<(Alert, Option<Downlink>), StoreError> {
        let key = alert_key(alert_id).ok_or_else(|| StoreError::NoSuchAlert(alert_id.into()))?;
        let result = (&self.alerts, &self.downlinks).transaction(|(alerts, downlinks)| {
            let bytes = alerts
                .get(key)?
                .ok_or_else(|| abort(StoreError::NoSuchAlert(alert_id.into())))?;
            let mut alert: Alert = decode("alert", &bytes).map_err(abort)?;
            lifecycle::check(alert.state(), to).map_err(|e| abort(e.into()))?;
            alert.set_state(to);
            change(&mut alert);
            alerts.insert(&key, alert.encode_to_vec())?;
            let queued = match &downlink {
                Some(make) => {
                    let id = downlinks.generate_id()? + 1;
                    let message = make(&alert, id);
                    downlinks
                        .insert(downlink_key(&alert.gateway_id, id), message.encode_to_vec())?;
                    Some(message)
                }
                None => None,
            };
            Ok((alert, queued))
        })?;
        Ok(result)
    }

    /// Downlinks a gateway has not yet confirmed, oldest first.
    pub fn pending_downlinks(&self, gateway_id: &str) -> Result<Vec<Downlink>, StoreError> {
        let mut prefix = gateway_id.as_bytes().to_vec();
        prefix.push(0);
        self.downlinks
            .scan_prefix(prefix)
            .values()
            .map(|bytes| decode("downlink", &bytes?))
            .collect()
    }

    pub fn downlink_done(&self, gateway_id: &str, downlink_id: u64) -> Result<(), StoreError> {
        self.downlinks
            .remove(downlink_key(gateway_id, downlink_id))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use anxin_proto::{DeviceEvent, EventKind};

    fn uplink(device: &str, seq: u64, kind: EventKind) -> UplinkEvent {
        UplinkEvent {
            event: Some(DeviceEvent {
                device_id: device.into(),
                seq,
                kind: kind as i32,
                ..Default::default()
            }),
            stored_ms: 1,
        }
    }

    #[tokio::test]
    async fn an_event_commits_once_and_raises_one_alert() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let first = store
            .commit_event("gw", &uplink("btn", 1, EventKind::Sos), 10)
            .unwrap();
        let Committed::New { alert: Some(alert) } = first else {
            panic!("{first:?}")
        };
        assert!(matches!(
            store
                .commit_event("gw", &uplink("btn", 1, EventKind::Sos), 11)
                .unwrap(),
            Committed::Duplicate
        ));
        assert!(matches!(
            store
                .commit_event("gw", &uplink("btn", 2, EventKind::Heartbeat), 12)
                .unwrap(),
            Committed::New { alert: None }
        ));
        store.flush().await.unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.alerts(&[]).unwrap(), vec![alert.clone()]);
        assert_eq!(store.event("btn", 1).unwrap().unwrap().alert_id, alert.id);
        assert_eq!(store.event_count(), 2);
    }

    #[test]
    fn acknowledging_queues_a_downlink_and_illegal_moves_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let Committed::New { alert: Some(alert) } = store
            .commit_event("gw-1", &uplink("btn", 1, EventKind::Fall), 10)
            .unwrap()
        else {
            panic!()
        };
        let make = |a: &Alert, id: u64| Downlink {
            downlink_id: id,
            ack: Some(anxin_proto::DeviceAck {
                alert_id: a.id.clone(),
                ..Default::default()
            }),
        };
        let (acked, downlink) = store
            .transition(
                &alert.id,
                AlertState::Acknowledged,
                |a| a.acknowledged_by = "li".into(),
                Some(make),
            )
            .unwrap();
        assert_eq!(acked.state(), AlertState::Acknowledged);
        assert_eq!(
            store.pending_downlinks("gw-1").unwrap(),
            vec![downlink.clone().unwrap()]
        );
        assert!(store.pending_downlinks("gw-2").unwrap().is_empty());
        store
            .downlink_done("gw-1", downlink.unwrap().downlink_id)
            .unwrap();
        assert!(store.pending_downlinks("gw-1").unwrap().is_empty());

        let err = store
            .transition(
                &alert.id,
                AlertState::Acknowledged,
                |_| {},
                None::<fn(&Alert, u64) -> Downlink>,
            )
            .unwrap_err();
        assert!(matches!(err, StoreError::Illegal(_)), "{err}");
        assert!(matches!(
            store.transition(
                "999",
                AlertState::Resolved,
                |_| {},
                None::<fn(&Alert, u64) -> Downlink>
            ),
            Err(StoreError::NoSuchAlert(_))
        ));
    }
}

//! MQTT sessions of the device front, keyed as brokers key them: by client
//! id, under the identity that logged in. One device may hold a few live
//! connections at once (a wearable's app and its firmware, an integrator's
//! `mosquitto_sub` beside `mosquitto_pub`), up to
//! `mqtt.connections_per_device`; the same client id still takes its own
//! session over. Each session has what it subscribed to and what waits
//! for it while it is away (persistent sessions). Everything the gateway
//! sends a device — `stored` and `rejected` acks, "help is coming" — is
//! addressed to one identity here and reaches each of that device's
//! sessions that subscribed to it; nothing is matched against topic
//! filters, and no connection ever gets another device's messages.
//!
//! Memory is bounded: a connection's outgoing channel and a session's
//! waiting queue have fixed capacities. What does not fit is dropped and
//! counted; an ack the device never saw makes it retry, and the retry is
//! acked again.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anxin_proto::{DeviceAck, topics::Encoding};
use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{acl::Feed, codec::DisconnectReason};
use crate::metrics as m;

/// Messages waiting for a device that is away, at most.
pub const SESSION_QUEUE: usize = 64;
/// Messages queued to a live connection, at most.
pub const CONNECTION_QUEUE: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    /// Sent before and not acknowledged: resent with DUP set.
    pub dup: bool,
}

#[derive(Debug)]
pub enum Outbound {
    Publish(Message),
    Kick(DisconnectReason),
}

struct Attached {
    conn_id: u64,
    tx: mpsc::Sender<Outbound>,
    kick: CancellationToken,
}

struct State {
    attached: Option<Attached>,
    /// Subscriptions with their granted QoS.
    feeds: HashMap<Feed, u8>,
    waiting: VecDeque<Message>,
    /// Kept after the connection ends (3.1.1 clean session off, v5 expiry
    /// interval > 0).
    persistent: bool,
    /// v5: when a detached session ends; `None`: never (3.1.1).
    expiry: Option<Duration>,
    detached_at: Option<Instant>,
}

/// Token bucket of a device's event rate, shared by all its connections
/// (a second connection does not double what a device may send).
struct Budget {
    tokens: f64,
    refilled: Instant,
}

pub struct Session {
    /// The identity: a device id (or an observer's key).
    pub key: String,
    pub client_id: String,
    budget: Arc<Mutex<Budget>>,
    state: Mutex<State>,
}

impl Session {
    fn new(key: &str, client_id: &str, budget: Arc<Mutex<Budget>>) -> Self {
        Self {
            key: key.to_string(),
            client_id: client_id.to_string(),
            budget,
            state: Mutex::new(State {
                attached: None,
                feeds: HashMap::new(),
                waiting: VecDeque::new(),
                persistent: false,
                expiry: None,
                detached_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self, feed: Feed, qos: u8) {
        self.lock().feeds.insert(feed, qos);
    }

    pub fn unsubscribe(&self, feed: &Feed) {
        self.lock().feeds.remove(feed);
    }

    /// Takes one event from the device's rate budget; `false`: over it.
    pub fn allow_event(&self, rate_per_sec: f64, burst: f64) -> bool {
        let mut state = self.budget.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        state.tokens = (state.tokens
            + now.duration_since(state.refilled).as_secs_f64() * rate_per_sec)
            .min(burst);
        state.refilled = now;
        if state.tokens >= 1.0 {
            state.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn expired(state: &State, now: Instant) -> bool {
        match (state.attached.is_some(), state.expiry, state.detached_at) {
            (false, Some(expiry), Some(at)) => now.duration_since(at) >= expiry,
            _ => false,
        }
    }

    /// Closes the live connection, if any, and drops what waits.
    fn end(&self, reason: DisconnectReason) {
        let mut state = self.lock();
        if let Some(attached) = state.attached.take() {
            let _ = attached.tx.try_send(Outbound::Kick(reason));
            attached.kick.cancel();
        }
        state.persistent = false;
        state.waiting.clear();
    }

    /// Hands a message to the live connection, or keeps it for a
    /// persistent session. `false`: dropped (counted).
    fn offer(&self, message: Message) -> bool {
        let mut state = self.lock();
        if let Some(attached) = &state.attached {
            return match attached.tx.try_send(Outbound::Publish(message)) {
                Ok(()) => true,
                Err(_) => {
                    metrics::counter!(m::MQTT_DROPPED, "reason" => "connection_busy").increment(1);
                    false
                }
            };
        }
        if !state.persistent || Self::expired(&state, Instant::now()) {
            metrics::counter!(m::MQTT_DROPPED, "reason" => "device_away").increment(1);
            return false;
        }
        if state.waiting.len() >= SESSION_QUEUE {
            state.waiting.pop_front();
            metrics::counter!(m::MQTT_DROPPED, "reason" => "session_queue_full").increment(1);
        }
        state.waiting.push_back(message);
        true
    }
}

/// What [`Sessions::attach`] gives a new connection.
pub struct Attachment {
    pub session: Arc<Session>,
    pub conn_id: u64,
    pub session_present: bool,
    /// Messages that waited while the device was away, oldest first.
    pub backlog: Vec<Message>,
    pub rx: mpsc::Receiver<Outbound>,
    pub kick: CancellationToken,
}

/// Downlinks ("help is coming") held for a device that is away or not yet
/// subscribed, at most, per device.
pub const HELD_DOWNLINKS: usize = 16;

/// Live sessions of one device at once, unless configured
/// (`mqtt.connections_per_device`).
pub const CONNECTIONS_PER_DEVICE: usize = 4;

pub struct Sessions {
    /// Each identity's sessions, one per client id, oldest first.
    map: Mutex<HashMap<String, Vec<Arc<Session>>>>,
    per_identity: usize,
    next_conn: AtomicU64,
    next_assigned: AtomicU64,
    /// Downlinks that reached no connection, by device: handed over when
    /// the device next subscribes to its acks. A resident whose button
    /// dropped off the network for a moment still hears "help is coming".
    held: Mutex<HashMap<String, VecDeque<DeviceAck>>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new(CONNECTIONS_PER_DEVICE)
    }
}

impl Sessions {
    /// `per_identity`: sessions one identity may hold at once (at least 1).
    pub fn new(per_identity: usize) -> Self {
        Self {
            map: Mutex::default(),
            per_identity: per_identity.max(1),
            next_conn: AtomicU64::new(0),
            next_assigned: AtomicU64::new(1),
            held: Mutex::default(),
        }
    }

    /// A client id for a client that sent none: unique in this process
    /// (such a session is clean, so it never outlives it).
    pub fn assign_client_id(&self) -> String {
        format!(
            "anxin-assigned-{}",
            self.next_assigned.fetch_add(1, Ordering::Relaxed)
        )
    }

    /// Binds a new connection to the session of `key` and `client_id`,
    /// taking it over from an older connection with the same client id
    /// (which is told and closed). Another client id gets a session of its
    /// own beside the others; past the limit per identity, the oldest
    /// session gives way (one away first), so a device that comes back with
    /// a new client id is never locked out.
    pub fn attach(
        &self,
        key: &str,
        client_id: &str,
        clean_start: bool,
        persistent: bool,
        expiry: Option<Duration>,
        burst: f64,
    ) -> Attachment {
        let conn_id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let kick = CancellationToken::new();
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let list = map.entry(key.to_string()).or_default();
        // Sessions that ended while away are forgotten here.
        list.retain(|s| {
            let state = s.lock();
            state.attached.is_some() || (state.persistent && !Session::expired(&state, now))
        });
        let existing = list.iter().find(|s| s.client_id == client_id).cloned();
        let (session, session_present) = match existing {
            None => {
                if list.len() >= self.per_identity {
                    let victim = list.remove(oldest(list));
                    victim.end(DisconnectReason::SessionTakenOver);
                    metrics::counter!(m::MQTT_SESSIONS_EVICTED).increment(1);
                    tracing::info!(
                        identity = key,
                        client_id,
                        gave_way = victim.client_id,
                        "connections per device reached: the oldest session gave way"
                    );
                }
                if list.iter().any(|s| s.lock().attached.is_some()) {
                    metrics::counter!(m::MQTT_PARALLEL).increment(1);
                }
                let budget = list.first().map_or_else(
                    || {
                        Arc::new(Mutex::new(Budget {
                            tokens: burst,
                            refilled: now,
                        }))
                    },
                    |s| s.budget.clone(),
                );
                let session = Arc::new(Session::new(key, client_id, budget));
                list.push(session.clone());
                (session, false)
            }
            Some(session) => {
                let mut state = session.lock();
                if let Some(old) = state.attached.take() {
                    let _ = old
                        .tx
                        .try_send(Outbound::Kick(DisconnectReason::SessionTakenOver));
                    old.kick.cancel();
                    metrics::counter!(m::MQTT_TAKEOVERS).increment(1);
                }
                let resumable = !clean_start && state.persistent && !Session::expired(&state, now);
                if !resumable {
                    state.feeds.clear();
                    state.waiting.clear();
                }
                drop(state);
                (session, resumable)
            }
        };
        drop(map);
        let mut state = session.lock();
        state.persistent = persistent;
        state.expiry = expiry;
        state.detached_at = None;
        state.attached = Some(Attached {
            conn_id,
            tx,
            kick: kick.clone(),
        });
        let backlog = state.waiting.drain(..).collect();
        drop(state);
        Attachment {
            session,
            conn_id,
            session_present,
            backlog,
            rx,
            kick,
        }
    }

    /// Ends a connection. A persistent session keeps what was not yet
    /// delivered (in flight first, then queued); a clean one is removed.
    pub fn detach(
        &self,
        session: &Arc<Session>,
        conn_id: u64,
        unacked: Vec<Message>,
        rx: &mut mpsc::Receiver<Outbound>,
    ) {
        let mut state = session.lock();
        if state.attached.as_ref().map(|a| a.conn_id) != Some(conn_id) {
            // Taken over: the new connection owns the session now.
            return;
        }
        state.attached = None;
        // Nothing more can be sent to the old channel (offer holds this
        // lock): what is in it is everything still owed.
        let mut owed: Vec<Message> = unacked;
        while let Ok(out) = rx.try_recv() {
            if let Outbound::Publish(message) = out {
                owed.push(message);
            }
        }
        if state.persistent {
            state.detached_at = Some(Instant::now());
            for message in owed.into_iter().rev() {
                if state.waiting.len() >= SESSION_QUEUE {
                    metrics::counter!(m::MQTT_DROPPED, "reason" => "session_queue_full")
                        .increment(1);
                    continue;
                }
                state.waiting.push_front(message);
            }
            return;
        }
        drop(state);
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = map.get_mut(&session.key) {
            list.retain(|s| !Arc::ptr_eq(s, session));
            if list.is_empty() {
                map.remove(&session.key);
            }
        }
    }

    fn sessions_of(&self, key: &str) -> Vec<Arc<Session>> {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
            .unwrap_or_default()
    }

    /// Sends an ack to its device, on each ack topic it subscribed to.
    /// `false`: it reached no connection or session (the device is away
    /// without a persistent session, or never subscribed).
    pub fn deliver_ack(&self, mut ack: DeviceAck) -> bool {
        let sessions = self.sessions_of(&ack.device_id);
        if sessions.is_empty() {
            metrics::counter!(m::MQTT_DROPPED, "reason" => "device_away").increment(1);
            return false;
        }
        ack.sent_ms = anxin_proto::now_ms();
        let (mut subscribed, mut delivered) = (false, false);
        let (mut protobuf, mut json) = (None, None);
        for session in sessions {
            let feeds: Vec<(Feed, u8)> = session
                .lock()
                .feeds
                .iter()
                .filter(|(f, _)| matches!(f, Feed::Ack(_)))
                .map(|(f, q)| (f.clone(), *q))
                .collect();
            for (feed, qos) in feeds {
                let payload = match feed {
                    Feed::Ack(Encoding::Protobuf) => protobuf
                        .get_or_insert_with(|| Bytes::from(ack.encode_to_vec()))
                        .clone(),
                    Feed::Ack(Encoding::Json) => json
                        .get_or_insert_with(|| {
                            Bytes::from(serde_json::to_vec(&ack).expect("acks serialize"))
                        })
                        .clone(),
                    Feed::Local(_) => continue,
                };
                subscribed = true;
                delivered |= session.offer(Message {
                    topic: feed.topic(&ack.device_id),
                    payload,
                    qos,
                    dup: false,
                });
            }
        }
        if !subscribed {
            metrics::counter!(m::MQTT_DROPPED, "reason" => "not_subscribed").increment(1);
        }
        delivered
    }

    /// Sends a downlink to its device; if it reaches no connection or
    /// persistent session, keeps it (bounded) until the device subscribes
    /// to its acks again.
    pub fn deliver_downlink(&self, ack: DeviceAck) -> bool {
        if self.deliver_ack(ack.clone()) {
            return true;
        }
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let queue = held.entry(ack.device_id.clone()).or_default();
        if queue.len() >= HELD_DOWNLINKS {
            queue.pop_front();
            metrics::counter!(m::MQTT_DROPPED, "reason" => "held_downlinks_full").increment(1);
        }
        queue.push_back(ack);
        false
    }

    /// The device subscribed to its acks: what was held for it goes now.
    pub fn release_held(&self, device_id: &str) {
        let held = self
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(device_id);
        for ack in held.into_iter().flatten() {
            tracing::info!(
                device_id,
                seq = ack.seq,
                "held downlink delivered on the device's return"
            );
            self.deliver_ack(ack);
        }
    }

    /// Sends a message to every connection subscribed to a local topic
    /// (on-site consoles, sirens). Returns how many it reached.
    pub fn deliver_local(&self, topic: &str, payload: Bytes) -> usize {
        let sessions: Vec<Arc<Session>> = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .flatten()
            .cloned()
            .collect();
        let feed = Feed::Local(topic.to_string());
        let mut reached = 0;
        for session in sessions {
            let qos = session.lock().feeds.get(&feed).copied();
            if let Some(qos) = qos
                && session.offer(Message {
                    topic: topic.to_string(),
                    payload: payload.clone(),
                    qos,
                    dup: false,
                })
            {
                reached += 1;
            }
        }
        reached
    }

    /// Closes every connection of an identity (deactivated, re-keyed) and
    /// forgets its sessions.
    pub fn kick(&self, key: &str, reason: DisconnectReason) {
        let removed = self
            .map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        for session in removed.into_iter().flatten() {
            session.end(reason);
        }
    }
}

/// Which of an identity's sessions gives way to a new one: the one away
/// the longest, else the oldest connection.
fn oldest(list: &[Arc<Session>]) -> usize {
    list.iter()
        .enumerate()
        .min_by_key(|(_, s)| {
            let state = s.lock();
            match &state.attached {
                None => (false, state.detached_at, 0),
                Some(a) => (true, None, a.conn_id),
            }
        })
        .map_or(0, |(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(device: &str, seq: u64) -> DeviceAck {
        DeviceAck {
            device_id: device.into(),
            seq,
            kind: anxin_proto::AckKind::Stored as i32,
            ..Default::default()
        }
    }

    #[test]
    fn an_ack_reaches_only_its_device() {
        let sessions = Sessions::default();
        let mut one = sessions.attach("btn-1", "c-btn-1", true, false, None, 20.0);
        let mut two = sessions.attach("btn-2", "c-btn-2", true, false, None, 20.0);
        one.session.subscribe(Feed::Ack(Encoding::Protobuf), 1);
        two.session.subscribe(Feed::Ack(Encoding::Json), 1);
        assert!(sessions.deliver_ack(ack("btn-1", 7)));
        let Ok(Outbound::Publish(message)) = one.rx.try_recv() else {
            panic!("btn-1 got nothing");
        };
        assert_eq!(message.topic, "anxin/v1/dev/btn-1/ack");
        assert_eq!(DeviceAck::decode(message.payload).unwrap().seq, 7);
        assert!(two.rx.try_recv().is_err());
        assert!(!sessions.deliver_ack(ack("btn-3", 1)));
    }

    #[test]
    fn a_persistent_session_keeps_what_came_while_away_and_a_clean_one_does_not() {
        let sessions = Sessions::default();
        let mut first = sessions.attach("btn-1", "c-btn-1", false, true, None, 20.0);
        first.session.subscribe(Feed::Ack(Encoding::Protobuf), 1);
        sessions.detach(&first.session, first.conn_id, Vec::new(), &mut first.rx);
        assert!(sessions.deliver_ack(ack("btn-1", 1)));
        assert!(sessions.deliver_ack(ack("btn-1", 2)));
        let back = sessions.attach("btn-1", "c-btn-1", false, true, None, 20.0);
        assert!(back.session_present);
        assert_eq!(back.backlog.len(), 2);
        let mut again = back;
        sessions.detach(&again.session, again.conn_id, Vec::new(), &mut again.rx);
        assert!(sessions.deliver_ack(ack("btn-1", 3)));
        let clean = sessions.attach("btn-1", "c-btn-1", true, false, None, 20.0);
        assert!(!clean.session_present);
        assert!(clean.backlog.is_empty());
    }

    #[test]
    fn a_second_connection_takes_the_session_over() {
        let sessions = Sessions::default();
        let mut old = sessions.attach("btn-1", "c-btn-1", true, false, None, 20.0);
        let new = sessions.attach("btn-1", "c-btn-1", true, false, None, 20.0);
        assert!(old.kick.is_cancelled());
        assert!(matches!(
            old.rx.try_recv(),
            Ok(Outbound::Kick(DisconnectReason::SessionTakenOver))
        ));
        // The old connection's exit does not end the new one's session.
        sessions.detach(&old.session, old.conn_id, Vec::new(), &mut old.rx);
        new.session.subscribe(Feed::Ack(Encoding::Protobuf), 0);
        assert!(sessions.deliver_ack(ack("btn-1", 1)));
    }

    #[test]
    fn two_client_ids_of_one_device_each_get_its_acks_and_nothing_else() {
        let sessions = Sessions::default();
        // mosquitto_sub listening, mosquitto_pub sending: one device, two
        // client ids.
        let mut listener = sessions.attach("btn-1", "sub-1", true, false, None, 20.0);
        let mut publisher = sessions.attach("btn-1", "pub-1", true, false, None, 20.0);
        assert!(!listener.kick.is_cancelled(), "the listener stays");
        let mut other = sessions.attach("btn-2", "sub-2", true, false, None, 20.0);
        listener.session.subscribe(Feed::Ack(Encoding::Json), 1);
        publisher
            .session
            .subscribe(Feed::Ack(Encoding::Protobuf), 1);
        other.session.subscribe(Feed::Ack(Encoding::Json), 1);
        assert!(sessions.deliver_ack(ack("btn-1", 5)));
        let Ok(Outbound::Publish(json)) = listener.rx.try_recv() else {
            panic!("the listener got nothing");
        };
        assert_eq!(json.topic, "anxin/v1/dev/btn-1/ack/json");
        let Ok(Outbound::Publish(proto)) = publisher.rx.try_recv() else {
            panic!("the publisher got nothing");
        };
        assert_eq!(DeviceAck::decode(proto.payload).unwrap().seq, 5);
        assert!(other.rx.try_recv().is_err(), "btn-2 got btn-1's ack");
        // One ends; the other keeps getting its acks.
        sessions.detach(
            &publisher.session,
            publisher.conn_id,
            Vec::new(),
            &mut publisher.rx,
        );
        assert!(sessions.deliver_ack(ack("btn-1", 6)));
        assert!(matches!(listener.rx.try_recv(), Ok(Outbound::Publish(_))));
        // A revoked device loses every connection.
        sessions.kick("btn-1", DisconnectReason::Revoked);
        assert!(listener.kick.is_cancelled());
        assert!(!sessions.deliver_ack(ack("btn-1", 7)));
    }

    #[test]
    fn past_the_limit_the_oldest_gives_way_away_ones_first() {
        let sessions = Sessions::new(2);
        let mut a = sessions.attach("btn-1", "a", false, true, None, 20.0);
        let b = sessions.attach("btn-1", "b", true, false, None, 20.0);
        // a goes away, keeping a persistent session.
        sessions.detach(&a.session, a.conn_id, Vec::new(), &mut a.rx);
        let c = sessions.attach("btn-1", "c", true, false, None, 20.0);
        assert!(!b.kick.is_cancelled(), "the away session gives way, not b");
        let back = sessions.attach("btn-1", "a", false, true, None, 20.0);
        assert!(!back.session_present, "a's session was given up");
        assert!(b.kick.is_cancelled(), "then the oldest live connection");
        assert!(!c.kick.is_cancelled());
    }

    #[test]
    fn connections_of_one_device_share_its_event_budget() {
        let sessions = Sessions::default();
        let one = sessions.attach("btn-1", "a", true, false, None, 3.0);
        let two = sessions.attach("btn-1", "b", true, false, None, 3.0);
        let allowed = (0..6)
            .filter(|i| {
                let session = if i % 2 == 0 {
                    &one.session
                } else {
                    &two.session
                };
                session.allow_event(0.0, 3.0)
            })
            .count();
        assert_eq!(allowed, 3);
    }

    #[test]
    fn a_downlink_for_an_absent_device_waits_for_its_return() {
        let sessions = Sessions::default();
        assert!(!sessions.deliver_downlink(ack("btn-1", 9)));
        let mut back = sessions.attach("btn-1", "c-btn-1", true, false, None, 20.0);
        back.session.subscribe(Feed::Ack(Encoding::Protobuf), 1);
        sessions.release_held("btn-1");
        let Ok(Outbound::Publish(message)) = back.rx.try_recv() else {
            panic!("the held downlink did not come");
        };
        assert_eq!(DeviceAck::decode(message.payload).unwrap().seq, 9);
        // Handed over once.
        sessions.release_held("btn-1");
        assert!(back.rx.try_recv().is_err());
    }

    #[test]
    fn waiting_messages_are_bounded() {
        let sessions = Sessions::default();
        let mut first = sessions.attach("btn-1", "c-btn-1", false, true, None, 20.0);
        first.session.subscribe(Feed::Ack(Encoding::Protobuf), 1);
        sessions.detach(&first.session, first.conn_id, Vec::new(), &mut first.rx);
        for seq in 0..(SESSION_QUEUE as u64 + 10) {
            sessions.deliver_ack(ack("btn-1", seq));
        }
        let back = sessions.attach("btn-1", "c-btn-1", false, true, None, 20.0);
        assert_eq!(back.backlog.len(), SESSION_QUEUE);
        // The newest are kept.
        let last = back.backlog.last().unwrap().payload.clone();
        assert_eq!(
            DeviceAck::decode(last).unwrap().seq,
            SESSION_QUEUE as u64 + 9
        );
    }
}

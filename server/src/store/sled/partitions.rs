//! Plain events (those no alert can claim: telemetry, heartbeats, battery
//! and fault reports) live in trees that each hold a span of receipt time,
//! `events@{start ms}-{end ms}` (zero-padded), keyed like `events`.
//! Retention removes a whole span by dropping its tree. Removing events one
//! by one spread deletes over every device's range of one tree: sled
//! reclaims a log segment only once half of it is dead, so the files kept
//! growing for several retention periods before they levelled off.
//!
//! A span is a tenth of how long plain events are kept (so they stay at
//! most a tenth longer than the policy says), set once at start-up from
//! the retention config; a span already written keeps its bounds if the
//! config changes. Invariants:
//! - an event key is in at most one span or `events` (a commit looks in
//!   all of them first, under the plain-commit lock);
//! - nothing is written to a span that ends at or before the horizon
//!   (`meta` `events_horizon`): spans behind it are *claimed* by retention,
//!   summarised into `event_days` and dropped. The horizon is written
//!   before a claimed span is read, so a span is summarised only once no
//!   event can be added to it;
//! - `meta` `fold:{span}` is how far a claimed span has been summarised,
//!   written in the transaction of the summaries, so a restart neither
//!   counts an event twice nor skips one.

use std::{
    collections::BTreeMap,
    sync::{
        RwLock,
        atomic::{AtomicU64, Ordering},
    },
};

use sled::IVec;

use crate::store::StoreError;

pub(super) const PREFIX: &[u8] = b"events@";
const HORIZON: &[u8] = b"events_horizon";
const FOLD: &[u8] = b"fold:";
/// Until [`Partitions::set_keep`] says otherwise.
const DEFAULT_SPAN_MS: u64 = 60 * 60 * 1000;
/// Where events are kept for good, so there is no end to prune at.
const KEPT_SPAN_MS: u64 = 30 * 24 * 60 * 60 * 1000;

#[derive(Clone)]
pub(super) struct Span {
    pub start_ms: u64,
    pub end_ms: u64,
    pub tree: sled::Tree,
}

impl Span {
    pub fn name(&self) -> IVec {
        name(self.start_ms, self.end_ms)
    }
}

fn name(start_ms: u64, end_ms: u64) -> IVec {
    let mut name = PREFIX.to_vec();
    name.extend_from_slice(format!("{start_ms:020}-{end_ms:020}").as_bytes());
    name.into()
}

/// The bounds a span's tree name carries; `None` for any other tree.
pub(super) fn bounds(tree_name: &[u8]) -> Option<(u64, u64)> {
    let rest = std::str::from_utf8(tree_name.strip_prefix(PREFIX)?).ok()?;
    let (start, end) = rest.split_once('-')?;
    let (start, end) = (start.parse().ok()?, end.parse().ok()?);
    (start < end).then_some((start, end))
}

/// Called with every span created while set, before anything is written
/// to it (the online backup watches it from there).
pub(super) type OnCreate = Box<dyn Fn(&Span) + Send + Sync>;

struct Inner {
    /// By (start, end): every span that exists.
    spans: BTreeMap<(u64, u64), Span>,
    horizon_ms: u64,
    on_create: Option<OnCreate>,
}

pub(super) struct Partitions {
    span_ms: AtomicU64,
    inner: RwLock<Inner>,
}

impl Partitions {
    /// The spans of `db`, as its tree names tell.
    pub fn open(db: &sled::Db, meta: &sled::Tree) -> Result<Self, StoreError> {
        let mut spans = BTreeMap::new();
        for tree_name in db.tree_names() {
            if let Some((start_ms, end_ms)) = bounds(&tree_name) {
                let tree = db.open_tree(&tree_name)?;
                spans.insert(
                    (start_ms, end_ms),
                    Span {
                        start_ms,
                        end_ms,
                        tree,
                    },
                );
            }
        }
        let horizon_ms = meta
            .get(HORIZON)?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map_or(0, u64::from_be_bytes);
        // A span dropped just before a crash leaves its fold mark behind.
        for item in meta.scan_prefix(FOLD) {
            let (key, _) = item?;
            if bounds(&key[FOLD.len()..]).is_none_or(|b| !spans.contains_key(&b)) {
                meta.remove(key)?;
            }
        }
        Ok(Self {
            span_ms: AtomicU64::new(DEFAULT_SPAN_MS),
            inner: RwLock::new(Inner {
                spans,
                horizon_ms,
                on_create: None,
            }),
        })
    }

    /// Lays new spans out for events kept `keep_ms` (`None`: for good).
    pub fn set_keep(&self, keep_ms: Option<i64>) {
        let span = match keep_ms {
            Some(keep) => (keep.max(0) as u64 / 10).max(1_000),
            None => KEPT_SPAN_MS,
        };
        self.span_ms.store(span, Ordering::Relaxed);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().expect("partition lock poisoned")
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().expect("partition lock poisoned")
    }

    /// Runs `f` with the span for an event received at `received_ms` (made
    /// if need be) and every span, none of them dropped meanwhile.
    pub fn with_target<T>(
        &self,
        db: &sled::Db,
        received_ms: i64,
        f: impl FnOnce(&sled::Tree, &[&sled::Tree]) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let span_ms = self.span_ms.load(Ordering::Relaxed);
        loop {
            let inner = self.read();
            // Never into a span behind the horizon: a clock stepped back
            // lands in the first span after it.
            let at = (received_ms.max(0) as u64).max(inner.horizon_ms);
            let start_ms = at / span_ms * span_ms;
            let bounds = (start_ms, start_ms + span_ms);
            if let Some(span) = inner.spans.get(&bounds) {
                let all: Vec<&sled::Tree> = inner.spans.values().map(|s| &s.tree).collect();
                return f(&span.tree, &all);
            }
            drop(inner);
            let mut inner = self.write();
            if inner.spans.contains_key(&bounds) || inner.horizon_ms > at {
                continue;
            }
            let span = Span {
                start_ms: bounds.0,
                end_ms: bounds.1,
                tree: db.open_tree(name(bounds.0, bounds.1))?,
            };
            if let Some(on_create) = &inner.on_create {
                on_create(&span);
            }
            inner.spans.insert(bounds, span);
        }
    }

    /// Whether any span holds `key`.
    pub fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        for span in self.read().spans.values() {
            if span.tree.contains_key(key)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<IVec>, StoreError> {
        for span in self.read().spans.values() {
            if let Some(value) = span.tree.get(key)? {
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    /// Runs `f` with every span, oldest first, none dropped meanwhile.
    pub fn with_spans<T>(&self, f: impl FnOnce(&[&Span]) -> T) -> T {
        let inner = self.read();
        let spans: Vec<&Span> = inner.spans.values().collect();
        f(&spans)
    }

    /// Moves the horizon to the end of the last span that ends by
    /// `before_ms` (written to `meta` first), and returns the spans behind
    /// it: those retention summarises and drops.
    pub fn claim(&self, meta: &sled::Tree, before_ms: i64) -> Result<Vec<Span>, StoreError> {
        let before = before_ms.max(0) as u64;
        let mut inner = self.write();
        let end = inner
            .spans
            .values()
            .map(|s| s.end_ms)
            .filter(|&end| end <= before)
            .max()
            .unwrap_or(0);
        if end > inner.horizon_ms {
            meta.insert(HORIZON, &end.to_be_bytes())?;
            inner.horizon_ms = end;
        }
        let horizon = inner.horizon_ms;
        Ok(inner
            .spans
            .values()
            .filter(|s| s.end_ms <= horizon)
            .cloned()
            .collect())
    }

    /// Sets the creation hook and runs `f` before any span can be made
    /// after it: whatever `f` sees, and every span the hook is told of,
    /// is every span there is.
    pub fn watch<T>(&self, hook: OnCreate, f: impl FnOnce(&[&Span]) -> T) -> T {
        let mut inner = self.write();
        inner.on_create = Some(hook);
        let spans: Vec<&Span> = inner.spans.values().collect();
        f(&spans)
    }

    pub fn unwatch(&self) {
        self.write().on_create = None;
    }

    /// Forgets a claimed span, so it can be dropped; `false` while a
    /// backup runs (it is dropped on a later run).
    pub fn forget(&self, span: &Span) -> bool {
        let mut inner = self.write();
        if inner.on_create.is_some() {
            return false;
        }
        inner.spans.remove(&(span.start_ms, span.end_ms));
        true
    }
}

/// `meta`'s key for how far `span` is summarised.
pub(super) fn fold_key(span: &Span) -> Vec<u8> {
    let mut key = FOLD.to_vec();
    key.extend_from_slice(&span.name());
    key
}

/// A fold mark: the last key summarised, and whether the span is done.
pub(super) fn fold_mark(done: bool, last: &[u8]) -> Vec<u8> {
    let mut mark = vec![u8::from(done)];
    mark.extend_from_slice(last);
    mark
}

pub(super) fn read_fold_mark(mark: &[u8]) -> (bool, &[u8]) {
    match mark.split_first() {
        Some((&done, last)) => (done == 1, last),
        None => (false, &[]),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use anxin_proto::v1::{DeviceEvent, EventKind, UplinkEvent};

    use super::*;
    use crate::store::{EventDay, Storage, sled::SledStore};

    /// Telemetry `seq` of the device `sensor` (a plain event).
    pub(in crate::store::sled) fn telemetry(seq: u64) -> UplinkEvent {
        UplinkEvent {
            event: Some(DeviceEvent {
                device_id: "sensor".into(),
                seq,
                kind: EventKind::Telemetry as i32,
                ..Default::default()
            }),
            stored_ms: 1,
        }
    }

    fn span_starts(store: &SledStore) -> Vec<u64> {
        let mut starts: Vec<u64> = store
            .db
            .tree_names()
            .iter()
            .filter_map(|name| bounds(name))
            .map(|(start, _)| start)
            .collect();
        starts.sort();
        starts
    }

    /// sled's background threads let go of a dropped store's file lock a
    /// moment after the drop (longer on a loaded machine): a reopen at once
    /// may have to wait for it.
    fn reopen(path: &std::path::Path) -> SledStore {
        for _ in 0..100 {
            match SledStore::open(path) {
                Err(StoreError::Storage(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(50))
                }
                opened => return opened.unwrap(),
            }
        }
        SledStore::open(path).unwrap()
    }

    fn prune_all(store: &SledStore, before_ms: i64) -> u64 {
        let mut pruned = 0;
        loop {
            let n = store.prune_events(before_ms, 0, 4).unwrap();
            pruned += n;
            if n < 4 {
                return pruned;
            }
        }
    }

    /// Events kept 60 s go into spans of 6 s; retention summarises and
    /// drops the spans behind its cut-off, each event counted once across
    /// a restart half way, never while a backup watches, and an event
    /// received with the clock stepped back behind the horizon is kept.
    #[test]
    fn retention_drops_whole_spans_and_counts_each_event_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store");
        let store = SledStore::open(&path).unwrap();
        store.retain_events_for(Some(60_000));
        for seq in 1..=30u64 {
            let at = 1_000 + seq as i64 * 1_000;
            assert_eq!(
                store
                    .commit_plain_events("gw", &[telemetry(seq)], at)
                    .unwrap(),
                vec![true]
            );
        }
        assert_eq!(
            span_starts(&store),
            vec![0, 6_000, 12_000, 18_000, 24_000, 30_000]
        );
        // A retransmission arriving later finds the event in its old span.
        assert_eq!(
            store
                .commit_plain_events("gw", &[telemetry(5)], 31_500)
                .unwrap(),
            vec![false]
        );

        // Spans ending by 20 s: events of 2 s .. 17 s (seqs 1..=16). One
        // batch, then a restart.
        assert_eq!(store.prune_events(20_000, 0, 4).unwrap(), 4);
        drop(store);
        let store = reopen(&path);
        store.retain_events_for(Some(60_000));
        assert_eq!(prune_all(&store, 20_000), 12);
        assert_eq!(span_starts(&store), vec![18_000, 24_000, 30_000]);
        assert!(store.event("sensor", 16).unwrap().is_none());
        assert!(store.event("sensor", 17).unwrap().is_some());
        assert_eq!(store.event_count().unwrap(), 14);
        let day = |events, last_ms| EventDay {
            device_id: "sensor".into(),
            day: 0,
            kind: EventKind::Telemetry as i32,
            events,
            first_ms: 2_000,
            last_ms,
        };
        assert_eq!(store.event_days("sensor").unwrap(), vec![day(16, 17_000)]);

        // The clock stepped back to 1 s: the event lands after the horizon.
        assert_eq!(
            store
                .commit_plain_events("gw", &[telemetry(100)], 1_000)
                .unwrap(),
            vec![true]
        );
        assert_eq!(span_starts(&store), vec![18_000, 24_000, 30_000]);
        assert_eq!(prune_all(&store, 20_000), 0, "18 s .. 24 s is not over");

        // While a backup watches, a span is summarised but not dropped.
        store.partitions.watch(Box::new(|_| {}), |_| ());
        assert_eq!(prune_all(&store, 25_000), 7, "seqs 17..=22 and 100");
        assert_eq!(span_starts(&store), vec![18_000, 24_000, 30_000]);
        store.partitions.unwatch();
        assert_eq!(prune_all(&store, 25_000), 0, "already counted");
        assert_eq!(span_starts(&store), vec![24_000, 30_000]);
        let days = store.event_days("sensor").unwrap();
        assert_eq!(days.len(), 1);
        assert_eq!((days[0].events, days[0].first_ms), (23, 1_000));
        assert!(store.check().is_ok());

        // An event in two spans (only a bug could put it there) is named.
        let span = |start: u64| {
            let names = store.db.tree_names();
            let name = names
                .iter()
                .find(|n| bounds(n).is_some_and(|(s, _)| s == start))
                .expect("the span")
                .clone();
            store.db.open_tree(name).unwrap()
        };
        let (older, newer) = (span(24_000), span(30_000));
        let (key, value) = older.first().unwrap().unwrap();
        newer.insert(key, value).unwrap();
        let report = store.check();
        assert!(
            report
                .problems
                .iter()
                .any(|p| p.starts_with("1 events are stored twice")
                    && p.contains("events@00000000000000024000")
                    && p.contains("events@00000000000000030000")),
            "{:?}",
            report.problems
        );
    }

    #[test]
    fn a_span_name_carries_its_bounds_and_sorts_by_start() {
        let a = name(5_000, 10_000);
        let b = name(10_000, 15_000);
        assert!(a < b);
        assert_eq!(bounds(&a), Some((5_000, 10_000)));
        assert_eq!(bounds(b"events"), None);
        assert_eq!(bounds(b"events@20-10"), None);
        assert_eq!(bounds(b"events@x-10"), None);
    }
}

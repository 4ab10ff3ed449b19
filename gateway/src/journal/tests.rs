//! The journal's tests: lanes, quota, deletes, damage and salvage.

use anxin_proto::{DeviceEvent, EventKind, v1::UplinkEvent};
use prost::Message;

use super::{format::*, open::*, reader::*, recovery::*};

fn event(device: &str, seq: u64, kind: EventKind) -> DeviceEvent {
    DeviceEvent {
        device_id: device.into(),
        seq,
        kind: kind as i32,
        ..Default::default()
    }
}

fn pending_ids(reader: &JournalReader) -> Vec<(String, u64)> {
    reader
        .next_unsent(&mut Cursor::default(), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|e| {
            let ev = e.event.event.unwrap();
            (ev.device_id, ev.seq)
        })
        .collect()
}

#[tokio::test]
async fn sends_by_priority_then_fifo_and_collapses_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
    writer
        .append(&event("a", 1, EventKind::Telemetry), 0)
        .unwrap();
    writer
        .append(&event("a", 2, EventKind::LowBattery), 0)
        .unwrap();
    writer.append(&event("b", 1, EventKind::Sos), 0).unwrap();
    writer
        .append(&event("a", 3, EventKind::Telemetry), 0)
        .unwrap();
    writer.append(&event("c", 9, EventKind::Fall), 0).unwrap();
    assert!(matches!(
        writer.append(&event("b", 1, EventKind::Sos), 0).unwrap(),
        Appended::Duplicate(_)
    ));
    writer.flush().await.unwrap();
    assert_eq!(
        pending_ids(&reader),
        vec![
            ("b".into(), 1),
            ("c".into(), 9),
            ("a".into(), 2),
            ("a".into(), 1),
            ("a".into(), 3)
        ]
    );
    assert_eq!(reader.depth(), [2, 0, 1, 2]);
}

#[tokio::test]
async fn entries_survive_reopen_until_removed() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
        writer.append(&event("a", 1, EventKind::Sos), 5).unwrap();
        writer
            .append(&event("a", 2, EventKind::Heartbeat), 6)
            .unwrap();
        writer.flush().await.unwrap();
        assert!(reader.remove("a", 2).unwrap().is_some());
        assert!(reader.remove("a", 2).unwrap().is_none());
        reader.flush().await.unwrap();
    }
    let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
    assert_eq!(pending_ids(&reader), vec![("a".into(), 1)]);
    assert_eq!(reader.depth(), [1, 0, 0, 0]);
    // The journal seq keeps increasing across reopen: FIFO holds.
    writer.append(&event("z", 1, EventKind::Sos), 7).unwrap();
    assert_eq!(pending_ids(&reader), vec![("a".into(), 1), ("z".into(), 1)]);
}

fn seqs(entries: &[Entry]) -> Vec<u64> {
    entries
        .iter()
        .map(|e| e.event.event.as_ref().unwrap().seq)
        .collect()
}

#[tokio::test]
async fn the_cursor_reads_only_unsent_entries_and_a_new_alarm_first() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
    for seq in 1..=5 {
        writer
            .append(&event("a", seq, EventKind::Telemetry), 0)
            .unwrap();
    }
    let mut cursor = Cursor::default();
    assert_eq!(
        seqs(&reader.next_unsent(&mut cursor, 2).unwrap()),
        vec![1, 2]
    );
    assert_eq!(
        seqs(&reader.next_unsent(&mut cursor, 2).unwrap()),
        vec![3, 4]
    );
    // An alarm raised after the cursor passed goes before the rest.
    writer.append(&event("b", 9, EventKind::Sos), 0).unwrap();
    assert_eq!(
        seqs(&reader.next_unsent(&mut cursor, 5).unwrap()),
        vec![9, 5]
    );
    assert!(reader.next_unsent(&mut cursor, 5).unwrap().is_empty());
    // A new connection starts over: nothing was deleted.
    assert_eq!(
        reader
            .next_unsent(&mut Cursor::default(), 10)
            .unwrap()
            .len(),
        6
    );
}

#[tokio::test]
async fn one_staged_batch_dedupes_within_itself_and_removes_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
    let mut staging = writer.stage();
    assert!(matches!(
        staging.add(&event("a", 1, EventKind::Sos), 0).unwrap(),
        Appended::New { .. }
    ));
    assert!(matches!(
        staging.add(&event("a", 1, EventKind::Sos), 0).unwrap(),
        Appended::Duplicate(_)
    ));
    staging
        .add(&event("a", 2, EventKind::Telemetry), 0)
        .unwrap();
    // Nothing is visible before the commit.
    assert_eq!(reader.depth(), [0, 0, 0, 0]);
    staging.commit().unwrap();
    assert_eq!(reader.depth(), [1, 0, 0, 1]);
    let gone = reader
        .remove_many(&[("a", 1), ("a", 7), ("a", 2), ("a", 1)])
        .unwrap();
    assert_eq!(
        gone.iter().map(Option::is_some).collect::<Vec<_>>(),
        [true, false, true, false]
    );
    assert_eq!(reader.depth(), [0, 0, 0, 0]);
    assert_eq!(reader.bytes(), [0, 0, 0, 0]);
    assert!(pending_ids(&reader).is_empty());
}

#[tokio::test]
async fn quota_evicts_p3_then_p2_oldest_first_and_never_p0_or_p1() {
    let dir = tempfile::tempdir().unwrap();
    // Room for about ten records of this size.
    let one = record_bytes(
        1 + UplinkEvent {
            event: Some(event("d", 1, EventKind::Telemetry)),
            stored_ms: 0,
        }
        .encoded_len(),
        "d",
    );
    let (writer, reader) = open(dir.path(), Quota::bytes(one * 10)).unwrap();
    for seq in 1..=8 {
        writer
            .append(&event("d", seq, EventKind::Telemetry), 0)
            .unwrap();
    }
    writer
        .append(&event("d", 9, EventKind::LowBattery), 0)
        .unwrap();
    writer
        .append(&event("d", 10, EventKind::LowBattery), 0)
        .unwrap();
    assert_eq!(reader.depth(), [0, 0, 2, 8]);

    // A P0 at the quota evicts the oldest P3.
    let Appended::New {
        evicted,
        over_quota,
        ..
    } = writer.append(&event("d", 11, EventKind::Sos), 0).unwrap()
    else {
        panic!("P0 must be stored")
    };
    assert_eq!(
        evicted
            .iter()
            .map(|e| (e.seq, e.priority))
            .collect::<Vec<_>>(),
        vec![(1, 3)]
    );
    assert!(!over_quota);

    // More life-safety events push out every P3, then the P2s, oldest first.
    let mut evicted_order = Vec::new();
    for seq in 12..=21 {
        match writer.append(&event("d", seq, EventKind::Fall), 0).unwrap() {
            Appended::New { evicted, .. } => {
                evicted_order.extend(evicted.into_iter().map(|e| e.seq))
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(evicted_order, vec![2, 3, 4, 5, 6, 7, 8, 9, 10]);
    assert_eq!(reader.depth(), [11, 0, 0, 0]);

    // Full of P0: telemetry is refused, a P1 or P0 still goes in.
    assert_eq!(
        writer
            .append(&event("d", 30, EventKind::Telemetry), 0)
            .unwrap(),
        Appended::Refused
    );
    assert_eq!(
        writer
            .append(&event("d", 31, EventKind::LowBattery), 0)
            .unwrap(),
        Appended::Refused
    );
    let Appended::New {
        over_quota,
        evicted,
        ..
    } = writer
        .append(&event("d", 32, EventKind::DeviceOffline), 0)
        .unwrap()
    else {
        panic!("P1 must be stored")
    };
    assert!(over_quota && evicted.is_empty());
    assert_eq!(reader.depth(), [11, 1, 0, 0]);

    // Byte accounting survives a reopen.
    let bytes = reader.bytes();
    drop((writer, reader));
    let (_, reader) = open(dir.path(), Quota::bytes(one * 10)).unwrap();
    assert_eq!(reader.bytes(), bytes);
}

#[tokio::test]
async fn a_clean_journal_reopens_as_is_and_a_changed_one_is_moved_aside_and_salvaged() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (writer, _) = open(dir.path(), Quota::unlimited()).unwrap();
        for seq in 1..=50 {
            writer
                .append(&event("a", seq, EventKind::Telemetry), 0)
                .unwrap();
        }
        writer.flush().await.unwrap();
        writer.mark_clean(dir.path()).unwrap();
    }
    // Untouched: no recovery, the marker is consumed.
    {
        let (writer, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
        assert_eq!(recovery, None);
        assert_eq!(reader.depth(), [0, 0, 0, 50]);
        assert!(!dir.path().join(CLEAN_MARKER).exists());
        writer.mark_clean(dir.path()).unwrap();
    }
    // One byte changed after the clean stop: damage, even if sled would
    // not notice.
    let db = dir.path().join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&db, bytes).unwrap();
    let (writer, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
    let recovery = recovery.expect("the change is found");
    assert_eq!(recovery.expected, Some(50));
    assert!(
        recovery.kept_at.join("db").exists(),
        "the damaged log is kept"
    );
    assert_eq!(reader.depth()[3], recovery.salvaged);
    assert!(recovery.summary().contains("entries salvaged"));
    // The gateway's own seqs continue past anything the lost journal
    // handed out.
    assert!(writer.gateway_seq().unwrap() > anxin_proto::GATEWAY_SEQ_BASE | 1 << 40);
}

#[tokio::test]
async fn a_p0_behind_100k_queued_telemetry_events_goes_out_first() {
    let dir = tempfile::tempdir().unwrap();
    let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
    for seq in 1..=100_000 {
        writer
            .append(&event("meter", seq, EventKind::Telemetry), 0)
            .unwrap();
    }
    writer.append(&event("btn", 1, EventKind::Sos), 0).unwrap();
    writer.flush().await.unwrap();
    let next = reader.next_unsent(&mut Cursor::default(), 2).unwrap();
    let ids: Vec<_> = next
        .iter()
        .map(|e| {
            let ev = e.event.event.as_ref().unwrap();
            (ev.device_id.as_str(), ev.seq)
        })
        .collect();
    assert_eq!(ids, vec![("btn", 1), ("meter", 1)]);
}

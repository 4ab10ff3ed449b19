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
    // Each append is its own batch record.
    let one = RECORD_OVERHEAD
        + event_bytes(
            UplinkEvent {
                event: Some(event("d", 1, EventKind::Telemetry)),
                stored_ms: 0,
            }
            .encoded_len(),
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
    let db = dir.path().join("bulk").join("db");
    let mut bytes = std::fs::read(&db).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&db, bytes).unwrap();
    let (writer, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
    let recovery = recovery.expect("the change is found");
    assert_eq!(recovery.expected, Some(50));
    assert!(
        recovery.kept_at.join("bulk").join("db").exists(),
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

#[tokio::test]
async fn a_batch_is_deleted_when_every_event_in_it_is_received_and_resent_whole_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (writer, reader) = open(dir.path(), Quota::unlimited()).unwrap();
        let mut staging = writer.stage();
        for seq in 1..=3 {
            staging
                .add(&event("m", seq, EventKind::Telemetry), 0)
                .unwrap();
        }
        staging.commit().unwrap();
        writer.flush().await.unwrap();
        let bytes = reader.bytes()[3];
        assert!(bytes > 0);
        assert!(reader.remove("m", 2).unwrap().is_some());
        assert_eq!(reader.depth()[3], 2);
        assert_eq!(
            reader.bytes()[3],
            bytes,
            "the record stays while any of it is pending"
        );
        assert!(!reader.contains("m", 2).unwrap());
        let ids: Vec<u64> = pending_ids(&reader).into_iter().map(|(_, s)| s).collect();
        assert_eq!(ids, vec![1, 3], "a received event is not sent again");
    }
    // Partial progress is memory only: after a restart the batch is whole
    // again (the server deduplicates what it had).
    let (_, reader) = open(dir.path(), Quota::unlimited()).unwrap();
    assert_eq!(reader.depth()[3], 3);
    let gone = reader.remove_many(&[("m", 1), ("m", 2), ("m", 3)]).unwrap();
    assert!(gone.iter().all(Option::is_some));
    assert_eq!(reader.bytes(), [0, 0, 0, 0]);
    drop(reader);
    let (_, reader) = open(dir.path(), Quota::unlimited()).unwrap();
    assert_eq!(
        reader.depth(),
        [0, 0, 0, 0],
        "the emptied record was deleted"
    );
}

#[tokio::test]
async fn a_journal_of_the_previous_format_is_converted() {
    let dir = tempfile::tempdir().unwrap();
    let fixture =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/journal-v1");
    for file in ["anxin-clean", "conf", "db"] {
        std::fs::copy(fixture.join(file), dir.path().join(file)).unwrap();
    }
    let (writer, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
    assert_eq!(recovery, None);
    // The fixture held seven events, one of them received since.
    let mut ids = pending_ids(&reader);
    assert_eq!(ids.len(), 6);
    assert_eq!(ids[0], ("btn-1".into(), 7), "the SOS first");
    ids.sort();
    assert_eq!(
        ids,
        vec![
            ("btn-1".into(), 7),
            ("meter-1".into(), 1),
            ("meter-1".into(), 3),
            ("meter-1".into(), 4),
            ("meter-2".into(), 1),
            ("pendant-1".into(), 3),
        ]
    );
    let stored: Vec<i64> = reader
        .next_unsent(&mut Cursor::default(), 10)
        .unwrap()
        .iter()
        .map(|e| e.event.stored_ms)
        .collect();
    assert!(
        stored.iter().all(|ms| (1_000..=1_006).contains(ms)),
        "{stored:?}"
    );
    assert_eq!(
        writer
            .aux_tree("supervision")
            .unwrap()
            .get("btn-1")
            .unwrap()
            .as_deref(),
        Some(&[1u8][..])
    );
    assert_eq!(
        reader
            .aux_tree("fallback_fired")
            .unwrap()
            .get("pendant-1")
            .unwrap()
            .as_deref(),
        Some(&[2u8][..])
    );
    // The fixture's journal had handed out gateway seq ...815.
    assert!(writer.gateway_seq().unwrap() > 9_223_372_036_854_775_815);
    assert!(!dir.path().join("db").exists(), "the old files are gone");
    assert!(!dir.path().join(CLEAN_MARKER).exists());
    writer.flush().await.unwrap();
    writer.mark_clean(dir.path()).unwrap();
    drop((writer, reader));
    let (_, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
    assert_eq!(recovery, None);
    assert_eq!(reader.depth().iter().sum::<u64>(), 6);
}

/// Waits for the seal to record what was flushed.
async fn sealed(writer: &super::JournalWriter) {
    let want = writer.0.written_marks();
    for _ in 0..300 {
        if writer.0.seal.written() == want {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("the seal never caught up with {want:?}");
}

#[tokio::test]
async fn a_lane_that_opens_behind_its_seal_is_damaged_not_shorter() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (writer, _) = open(dir.path(), Quota::unlimited()).unwrap();
        for seq in 1..=20 {
            writer
                .append(&event("m", seq, EventKind::Telemetry), 0)
                .unwrap();
        }
        writer.append(&event("b", 1, EventKind::Sos), 0).unwrap();
        writer.flush().await.unwrap();
        sealed(&writer).await;
    }
    // What a crash-damaged log does: sled opens it without its last
    // batches. Here the lane is replaced by an older copy of itself.
    let marks = super::seal::read(dir.path()).unwrap().unwrap();
    assert!(marks[1] > 0 && marks[0] > 0);
    super::seal::write(dir.path(), [marks[0], marks[1] + 5]).unwrap();
    let (_, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
    let recovery = recovery.expect("behind its seal is damage");
    assert!(
        recovery.reason.contains("behind its seal"),
        "{}",
        recovery.reason
    );
    assert_eq!(recovery.salvaged, 21);
    assert_eq!(reader.depth(), [1, 0, 0, 20]);
    // A damaged seal is damage too (it can no longer vouch for the lanes).
    drop(reader);
    std::fs::write(dir.path().join(SEAL_FILE), b"anxin-seal-v1 1 2 00000000\n").unwrap();
    let (_, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
    assert!(recovery.unwrap().reason.contains("seal"));
    assert_eq!(reader.depth(), [1, 0, 0, 20]);
}

#[tokio::test]
async fn salvage_reads_every_intact_batch_past_a_damaged_one() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (writer, _) = open(dir.path(), Quota::unlimited()).unwrap();
        for seq in 1..=100 {
            let mut staging = writer.stage();
            for n in 0..3 {
                staging
                    .add(&event("m", seq * 10 + n, EventKind::Telemetry), 0)
                    .unwrap();
            }
            staging.commit().unwrap();
            writer.flush().await.unwrap();
        }
        sealed(&writer).await;
    }
    let (spans, bad) = scan_records(&dir.path().join("bulk")).unwrap();
    assert_eq!(bad, 0);
    let mut keys: Vec<u64> = spans.iter().map(|s| s.seq).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 100, "every batch found in the raw files");
    // Damage every copy of one batch in the middle of the log.
    let victim = keys[40];
    for span in spans.iter().filter(|s| s.seq == victim) {
        let mut bytes = std::fs::read(&span.file).unwrap();
        bytes[(span.offset + span.len / 2) as usize] ^= 0x5a;
        std::fs::write(&span.file, bytes).unwrap();
    }
    let (_, reader, recovery) = open_or_recover(dir.path(), Quota::unlimited()).unwrap();
    let recovery = recovery.expect("the damage is found");
    assert_eq!(recovery.salvaged_batches, 99, "{}", recovery.summary());
    assert!(recovery.skipped >= 1);
    assert_eq!(reader.depth()[3], 297);
}

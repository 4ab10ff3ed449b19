//! What every device shares: identity, seq counter, outbox, battery.

use crate::{
    event::{Detail, DeviceId, Event, Kind},
    outbox::{Backoff, Full, Outbox, Pushed},
    seq::{SeqCounter, SeqStore},
    wire::{Ack, AckKind},
};

pub struct DeviceCore<S: SeqStore, const N: usize> {
    pub id: DeviceId,
    seq: SeqCounter<S>,
    pub outbox: Outbox<N>,
    /// Battery charge in milli-percent, drained by [`DeviceCore::drain`].
    battery_mpct: u32,
    /// Added to the device clock (clock-skew simulation).
    pub clock_skew_ms: i64,
    /// Unix time in ms at `now_ms = 0` of the device's monotonic clock.
    pub epoch_ms: i64,
}

/// What an ack meant to the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// `stored`: the event left the outbox.
    Stored(Event),
    /// `rejected`: the gateway will never store it; dropped.
    Rejected(Event),
    /// `acknowledged`: help is coming for this seq.
    HelpIsComing(u64),
    /// An ack for something no longer pending (a repeat).
    Stale,
}

impl<S: SeqStore, const N: usize> DeviceCore<S, N> {
    pub fn new(id: DeviceId, seq_store: S, backoff: Backoff, battery_pct: u32) -> Self {
        Self {
            id,
            seq: SeqCounter::boot(seq_store),
            outbox: Outbox::new(backoff),
            battery_mpct: battery_pct.min(100) * 1000,
            clock_skew_ms: 0,
            epoch_ms: 0,
        }
    }

    pub fn battery_pct(&self) -> u32 {
        self.battery_mpct.div_ceil(1000)
    }

    /// Drains the battery by `milli_pct` thousandths of a percent.
    pub fn drain(&mut self, milli_pct: u32) {
        self.battery_mpct = self.battery_mpct.saturating_sub(milli_pct);
    }

    /// Raises an event: numbers it and queues it for transmission.
    pub fn raise(
        &mut self,
        kind: Kind,
        detail: Detail,
        cancels_seq: u64,
        now_ms: u64,
    ) -> Result<(u64, Pushed), Full> {
        let event = Event {
            device_id: self.id.clone(),
            seq: self.seq.next_seq(),
            kind,
            device_time_ms: self.epoch_ms + now_ms as i64 + self.clock_skew_ms,
            battery_pct: self.battery_pct(),
            detail,
            cancels_seq,
        };
        let seq = event.seq;
        let pushed = self.outbox.push(event, now_ms)?;
        Ok((seq, pushed))
    }

    pub fn on_ack(&mut self, ack: Ack) -> Heard {
        match ack.kind {
            AckKind::Stored => self
                .outbox
                .settle(ack.seq)
                .map_or(Heard::Stale, Heard::Stored),
            AckKind::Rejected => self
                .outbox
                .settle(ack.seq)
                .map_or(Heard::Stale, Heard::Rejected),
            AckKind::Acknowledged => Heard::HelpIsComing(ack.seq),
            AckKind::Received | AckKind::Unknown => Heard::Stale,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq::RamSeqStore;

    #[test]
    fn raised_events_wait_in_the_outbox_until_stored() {
        let mut device: DeviceCore<RamSeqStore, 8> = DeviceCore::new(
            "btn-1".try_into().unwrap(),
            RamSeqStore::default(),
            Backoff::default(),
            90,
        );
        device.epoch_ms = 1_000_000;
        let (seq, _) = device.raise(Kind::Sos, Detail::None, 0, 5).unwrap();
        let sent = device.outbox.next_due(5).unwrap().clone();
        assert_eq!(
            (sent.seq, sent.device_time_ms, sent.battery_pct),
            (seq, 1_000_005, 90)
        );
        assert_eq!(
            device.on_ack(Ack {
                seq,
                kind: AckKind::Stored
            }),
            Heard::Stored(sent)
        );
        assert_eq!(
            device.on_ack(Ack {
                seq,
                kind: AckKind::Stored
            }),
            Heard::Stale
        );
        assert_eq!(
            device.on_ack(Ack {
                seq,
                kind: AckKind::Acknowledged
            }),
            Heard::HelpIsComing(seq)
        );
        assert!(device.outbox.is_empty());
        device.drain(500);
        assert_eq!(device.battery_pct(), 90); // 89.5 rounds up
        device.drain(1000);
        assert_eq!(device.battery_pct(), 89);
    }
}

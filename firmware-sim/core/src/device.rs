//! What every device shares: identity, seq counter, battery and clock. The
//! events it raises go to an [`crate::outbox::Outbox`], owned by whatever
//! talks to the network.

use crate::{
    event::{Detail, DeviceId, Event, Kind},
    seq::{SeqCounter, SeqStore},
};

pub struct DeviceCore<S: SeqStore> {
    pub id: DeviceId,
    seq: SeqCounter<S>,
    /// Battery charge in milli-percent, drained by [`DeviceCore::drain`].
    battery_mpct: u32,
    /// Added to the device clock (clock-skew simulation).
    pub clock_skew_ms: i64,
    /// Unix time in ms at `now_ms = 0` of the device's monotonic clock.
    pub epoch_ms: i64,
}

impl<S: SeqStore> DeviceCore<S> {
    pub fn new(id: DeviceId, seq_store: S, battery_pct: u32) -> Self {
        Self {
            id,
            seq: SeqCounter::boot(seq_store),
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

    /// Raises an event: numbered, timestamped, with the battery level.
    pub fn raise(&mut self, kind: Kind, detail: Detail, cancels_seq: u64, now_ms: u64) -> Event {
        Event {
            device_id: self.id.clone(),
            seq: self.seq.next_seq(),
            kind,
            device_time_ms: self.epoch_ms + now_ms as i64 + self.clock_skew_ms,
            battery_pct: self.battery_pct(),
            detail,
            cancels_seq,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq::RamSeqStore;

    #[test]
    fn raised_events_carry_identity_time_and_battery() {
        let mut device = DeviceCore::new("btn-1".try_into().unwrap(), RamSeqStore::default(), 90);
        device.epoch_ms = 1_000_000;
        let first = device.raise(Kind::Sos, Detail::None, 0, 5);
        let second = device.raise(Kind::Cancel, Detail::None, first.seq, 9);
        assert_eq!(
            (first.seq, first.device_time_ms, first.battery_pct),
            (1, 1_000_005, 90)
        );
        assert_eq!((second.seq, second.cancels_seq), (2, 1));
        device.clock_skew_ms = -3_600_000;
        assert_eq!(
            device
                .raise(Kind::Heartbeat, Detail::None, 0, 10)
                .device_time_ms,
            1_000_010 - 3_600_000
        );
        device.drain(500);
        assert_eq!(device.battery_pct(), 90); // 89.5 rounds up
        device.drain(1000);
        assert_eq!(device.battery_pct(), 89);
    }
}

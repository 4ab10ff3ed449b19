//! Sequence numbers that never repeat, across reboots, with few flash
//! writes: the counter reserves a block of numbers in persistent storage and
//! hands them out from RAM; after a reboot it starts past the last reserved
//! block (at most one block of numbers is skipped, none reused).

/// Where the device keeps its reserved high-water mark (flash, EEPROM…).
pub trait SeqStore {
    fn load(&mut self) -> Option<u64>;
    fn save(&mut self, reserved_up_to: u64);
}

pub const BLOCK: u64 = 64;

pub struct SeqCounter<S: SeqStore> {
    store: S,
    next: u64,
    reserved_up_to: u64,
}

impl<S: SeqStore> SeqCounter<S> {
    /// Boots the counter: continues after everything reserved before.
    pub fn boot(mut store: S) -> Self {
        let start = store.load().unwrap_or(0);
        let reserved_up_to = start + BLOCK;
        store.save(reserved_up_to);
        Self {
            store,
            next: start + 1,
            reserved_up_to,
        }
    }

    pub fn next_seq(&mut self) -> u64 {
        if self.next > self.reserved_up_to {
            self.reserved_up_to += BLOCK;
            self.store.save(self.reserved_up_to);
        }
        let seq = self.next;
        self.next += 1;
        seq
    }

    pub fn into_store(self) -> S {
        self.store
    }
}

/// A seq store in RAM, for tests and simulations that start at a given value.
#[derive(Debug, Clone, Copy, Default)]
pub struct RamSeqStore {
    pub value: Option<u64>,
    pub writes: u32,
}

impl SeqStore for RamSeqStore {
    fn load(&mut self) -> Option<u64> {
        self.value
    }
    fn save(&mut self, reserved_up_to: u64) {
        self.value = Some(reserved_up_to);
        self.writes += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_repeats_across_reboots_and_writes_rarely() {
        let mut seen = std::collections::BTreeSet::new();
        let mut flash = RamSeqStore::default();
        for boot in 0..5 {
            let mut counter = SeqCounter::boot(flash);
            // A different number of events in each life, some crossing blocks.
            for _ in 0..(boot * 50 + 7) {
                let seq = counter.next_seq();
                assert!(seq >= 1);
                assert!(seen.insert(seq), "seq {seq} repeated after reboot {boot}");
            }
            flash = counter.into_store();
        }
        // 5 boots + block refills, far fewer writes than the 535 events.
        assert!(flash.writes < 20, "{} flash writes", flash.writes);
        // Strictly increasing within and across lives.
        let all: std::vec::Vec<u64> = seen.into_iter().collect();
        assert!(all.windows(2).all(|w| w[0] < w[1]));
    }
}

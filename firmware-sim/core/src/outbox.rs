//! The retry outbox: every event stays here until the gateway's `stored` ack
//! for its seq (or a `rejected`), and is retransmitted with exponential
//! backoff meanwhile. Bounded: when full, a new event displaces the oldest
//! event of a strictly lower priority; life-safety events are never
//! displaced, and a new event that outranks nothing is refused.

use heapless::Vec;

use crate::event::Event;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first_retry_ms: u64,
    pub max_retry_ms: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            first_retry_ms: 1_000,
            max_retry_ms: 30_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Slot {
    event: Event,
    attempts: u32,
    due_ms: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// Queued by displacing this lower-priority event.
    Displaced(Event),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

pub struct Outbox<const N: usize> {
    slots: Vec<Slot, N>,
    backoff: Backoff,
}

impl<const N: usize> Outbox<N> {
    pub const fn new(backoff: Backoff) -> Self {
        Self {
            slots: Vec::new(),
            backoff,
        }
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Queues an event, due at once.
    pub fn push(&mut self, event: Event, now_ms: u64) -> Result<Pushed, Full> {
        let slot = Slot {
            event,
            attempts: 0,
            due_ms: now_ms,
        };
        if !self.slots.is_full() {
            self.slots.push(slot).map_err(|_| Full)?;
            return Ok(Pushed::Queued);
        }
        // Oldest (lowest seq) among the lowest priority present.
        let victim = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.event.priority() > slot.event.priority())
            .max_by(|(_, a), (_, b)| {
                a.event
                    .priority()
                    .cmp(&b.event.priority())
                    .then(b.event.seq.cmp(&a.event.seq))
            })
            .map(|(i, _)| i)
            .ok_or(Full)?;
        let displaced = core::mem::replace(&mut self.slots[victim], slot);
        Ok(Pushed::Displaced(displaced.event))
    }

    /// The next event to (re)transmit now, by priority then age; its next
    /// retry is scheduled with exponential backoff.
    pub fn next_due(&mut self, now_ms: u64) -> Option<&Event> {
        let index = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.due_ms <= now_ms)
            .min_by(|(_, a), (_, b)| {
                a.event
                    .priority()
                    .cmp(&b.event.priority())
                    .then(a.event.seq.cmp(&b.event.seq))
            })
            .map(|(i, _)| i)?;
        let backoff = self.backoff;
        let slot = &mut self.slots[index];
        let delay = backoff
            .first_retry_ms
            .saturating_mul(1u64 << slot.attempts.min(20))
            .min(backoff.max_retry_ms);
        slot.attempts += 1;
        slot.due_ms = now_ms + delay;
        Some(&slot.event)
    }

    /// Milliseconds until the next retransmission is due, if any event waits.
    pub fn next_due_in(&self, now_ms: u64) -> Option<u64> {
        self.slots
            .iter()
            .map(|s| s.due_ms.saturating_sub(now_ms))
            .min()
    }

    /// Makes every event due now (after a reconnect).
    pub fn all_due(&mut self, now_ms: u64) {
        for slot in self.slots.iter_mut() {
            slot.due_ms = now_ms;
        }
    }

    /// The gateway has the event: forget it. False if it was not here.
    pub fn settle(&mut self, seq: u64) -> Option<Event> {
        let index = self.slots.iter().position(|s| s.event.seq == seq)?;
        Some(self.slots.swap_remove(index).event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Detail, Kind};

    fn event(seq: u64, kind: Kind) -> Event {
        Event {
            device_id: "d".try_into().unwrap(),
            seq,
            kind,
            device_time_ms: 0,
            battery_pct: 50,
            detail: Detail::None,
            cancels_seq: 0,
        }
    }

    #[test]
    fn retransmits_with_backoff_until_settled() {
        let mut outbox: Outbox<4> = Outbox::new(Backoff {
            first_retry_ms: 100,
            max_retry_ms: 350,
        });
        outbox.push(event(1, Kind::Sos), 0).unwrap();
        assert_eq!(outbox.next_due(0).unwrap().seq, 1);
        assert!(outbox.next_due(99).is_none());
        assert_eq!(outbox.next_due(100).unwrap().seq, 1); // after 100
        assert!(outbox.next_due(299).is_none());
        assert_eq!(outbox.next_due(300).unwrap().seq, 1); // after 200
        assert_eq!(outbox.next_due_in(300), Some(350)); // capped at 350
        assert!(outbox.settle(1).is_some());
        assert!(outbox.settle(1).is_none());
        assert!(outbox.next_due(10_000).is_none());
    }

    #[test]
    fn sends_by_priority_then_age() {
        let mut outbox: Outbox<4> = Outbox::new(Backoff::default());
        outbox.push(event(1, Kind::Heartbeat), 0).unwrap();
        outbox.push(event(2, Kind::Inactivity), 0).unwrap();
        outbox.push(event(3, Kind::Sos), 0).unwrap();
        let order: std::vec::Vec<u64> = (0..3).map(|_| outbox.next_due(0).unwrap().seq).collect();
        assert_eq!(order, [3, 2, 1]);
    }

    #[test]
    fn when_full_an_alarm_displaces_the_oldest_lowest_priority_event() {
        let mut outbox: Outbox<3> = Outbox::new(Backoff::default());
        outbox.push(event(1, Kind::Heartbeat), 0).unwrap();
        outbox.push(event(2, Kind::Heartbeat), 0).unwrap();
        outbox.push(event(3, Kind::Sos), 0).unwrap();
        assert_eq!(
            outbox.push(event(4, Kind::Fall), 0),
            Ok(Pushed::Displaced(event(1, Kind::Heartbeat)))
        );
        assert_eq!(outbox.push(event(5, Kind::Heartbeat), 0), Err(Full));
        assert_eq!(
            outbox.push(event(6, Kind::Smoke), 0),
            Ok(Pushed::Displaced(event(2, Kind::Heartbeat)))
        );
        // Only P0 left: nothing displaces them.
        assert_eq!(outbox.push(event(7, Kind::Sos), 0), Err(Full));
        assert_eq!(outbox.len(), 3);
    }
}

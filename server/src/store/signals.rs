//! The health and safety signals' seam: each rule's state between readings
//! (a vital sign's episode, a resident's run of fixes against their zones,
//! a household meter's totals) and a resident's vital signs as daily
//! summaries. Both engines implement it (the contract is in
//! `store/tests.rs`).

use anxin_proto::v1::VitalDay;

use super::error::StoreError;

pub trait SignalStore {
    /// The stored states of these keys, in their order (None where there
    /// is none).
    fn signal_states(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// Writes states (None removes one) and folds readings into the daily
    /// summaries, in one transaction: a reading counts in its day exactly
    /// when the state that judged it is stored.
    fn save_signals(
        &self,
        states: &[(String, Option<Vec<u8>>)],
        days: &[VitalDay],
    ) -> Result<(), StoreError>;
    /// Every state whose key starts with `prefix` (the meters' timer).
    fn signal_states_under(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError>;
    /// A resident's summaries of local days in `[from_day, to_day)`, by
    /// sign then day.
    fn vital_days(
        &self,
        resident_id: &str,
        from_day: i32,
        to_day: i32,
    ) -> Result<Vec<VitalDay>, StoreError>;
    /// Removes up to `limit` summaries of days before `before_day`.
    fn prune_vital_days(&self, before_day: i32, limit: usize) -> Result<u64, StoreError>;
}

//! The welfare records' seam: signs of life, judged check-in days, visit
//! plans and visits; both engines implement it (the contract is in
//! `store/tests.rs`).

use anxin_proto::v1::{AuditEntry, CheckinDay, SignOfLife, Visit, VisitPlan};

use super::{error::StoreError, outbox::OutboxItem};

/// What the server stores for check-ins and visits; both engines implement
/// it (the contract is in `store/tests.rs`).
pub trait WelfareStore {
    /// Keeps, per resident, the latest of the stored sign and these; an
    /// older sign changes nothing, so signs may arrive in any order and
    /// twice.
    fn note_signs(&self, signs: &[SignOfLife]) -> Result<(), StoreError>;
    fn sign_of_life(&self, resident_id: &str) -> Result<Option<SignOfLife>, StoreError>;
    /// Writes a day's outcome with its audit entry unless the day is judged
    /// already; returns the outcome stored (the earlier one if there was).
    fn judge_checkin_day(
        &self,
        day: &CheckinDay,
        audit: AuditEntry,
    ) -> Result<CheckinDay, StoreError>;
    fn checkin_day(&self, resident_id: &str, day: i32) -> Result<Option<CheckinDay>, StoreError>;
    /// Outcomes of local days in `[from_day, to_day)`.
    fn checkin_days(&self, from_day: i32, to_day: i32) -> Result<Vec<CheckinDay>, StoreError>;

    /// Saves plans (all or none) with one audit entry.
    fn put_visit_plans(&self, plans: &[VisitPlan], audit: AuditEntry) -> Result<(), StoreError>;
    fn visit_plan(&self, id: &str) -> Result<Option<VisitPlan>, StoreError>;
    fn visit_plans(&self) -> Result<Vec<VisitPlan>, StoreError>;
    /// Records a planned visit's outcome with its audit entry and the
    /// notifications it causes, in one transaction, unless the day has one
    /// already. Returns the stored visit and whether this call wrote it.
    fn record_visit(
        &self,
        visit: &Visit,
        audit: AuditEntry,
        notifications: &[OutboxItem],
    ) -> Result<(Visit, bool), StoreError>;
    /// Visits of local days in `[from_day, to_day)`.
    fn visits(&self, from_day: i32, to_day: i32) -> Result<Vec<Visit>, StoreError>;
}

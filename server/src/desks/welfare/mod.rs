//! Residents who live alone (独居, 空巢): the daily check-in and scheduled
//! visits (定期巡访).
//!
//! - **Check-in.** A resident enrolled with a window (local time, e.g.
//!   07:00–10:00) must show a sign of life from the window's start: their
//!   own "I'm OK" (`CHECKIN_OK`), activity from their room sensor or
//!   wearable, a call, or a carer's confirmation. The server keeps only the
//!   latest sign per resident ([`crate::store::welfare::WelfareStore::note_signs`]). When a window
//!   ends without one, [`checkins`] raises a P1 `CHECKIN_MISSED` alert
//!   through the ordinary event path, so it is routed, escalated, audited and
//!   deduplicated like any other: its identity is `("checkin/{resident}",
//!   local day)`, so a restart or a second replica cannot raise it twice.
//! - **Visits.** A [`VisitPlan`] names the weekdays a resident is visited;
//!   a carer records arrival on the day; [`visits`] marks a planned visit
//!   not recorded by the day's end as missed and tells the community's
//!   supervisors.
//!
//! Nothing here is held only in memory: windows are on the resident, signs
//! and outcomes in the store, so a kill -9 between a window's end and its
//! alert changes nothing but the moment the alert appears.

pub mod checkins;
pub mod desk;
pub mod plans;
pub mod view;
pub mod visits;

//! Faults of the host a deployed Anxin box meets most often after crashes:
//! a disk that fills up ([`disk`]), a store that cannot be trusted after an
//! I/O error ([`restart`]), and a wall clock that steps ([`clock`]).
//! Shared by `anxin-gateway` and `anxin-server`, so both answer them alike.

pub mod clock;
pub mod disk;
pub mod net;
pub mod restart;

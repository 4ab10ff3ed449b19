//! Faults of the host a deployed Anxin box meets most often after crashes:
//! a disk that fills up ([`disk`]), a store that cannot be trusted after an
//! I/O error ([`restart`]), a wall clock that steps ([`clock`]), and a port
//! that another program holds ([`net`]).
//! Shared by `anxin-gateway` and `anxin-server`, so both answer them alike.

pub mod clock;
pub mod disk;
pub mod net;
pub mod restart;
pub mod skip;

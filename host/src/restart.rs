//! Restarting a process in place.
//!
//! sled keeps its page cache failed after one I/O error until the database
//! is opened again, and every handle to it must be gone before it can be
//! (it holds an exclusive file lock). The one way to be sure of that is a
//! fresh process: `execve` of the same binary with the same arguments keeps
//! the PID (a supervisor sees no exit), closes every descriptor (Rust opens
//! them close-on-exec) and runs the normal start-up, recovery included.

use std::os::unix::process::CommandExt;

/// Environment variable counting restarts in place, for logs and metrics.
pub const RESTARTS_ENV: &str = "ANXIN_RESTARTS_IN_PLACE";

/// How many times this process has restarted itself in place.
pub fn restarts() -> u64 {
    std::env::var(RESTARTS_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Replaces this process with a fresh copy of itself. Only returns if the
/// exec failed, in which case the process exits with status 75
/// (EX_TEMPFAIL) so its supervisor restarts it.
pub fn in_place(reason: &str) -> ! {
    tracing::error!(reason, restarts = restarts() + 1, "restarting in place");
    let exe = std::env::current_exe();
    let err = match exe {
        Ok(exe) => std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env(RESTARTS_ENV, (restarts() + 1).to_string())
            .exec(),
        Err(err) => err,
    };
    tracing::error!(error = %err, "restart in place failed; exiting for the supervisor to restart");
    std::process::exit(75)
}

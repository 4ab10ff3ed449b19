//! The one rule for a test that cannot run here (a tool, root or a
//! database missing): it says SKIPPED with the reason and returns; under
//! `CI=true` (which `.ci/run` sets) it fails instead, so CI never passes a
//! test it did not run.

/// Says why `test` cannot run here; panics under `CI=true`.
pub fn skip(test: &str, why: &str) {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{test} cannot run here ({why}), and CI=true requires it");
    }
    eprintln!("SKIPPED {test}: {why}");
}

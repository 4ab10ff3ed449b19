//! Device secrets at rest (docs/security.md, "Device secrets").
//!
//! A device logs in to its gateway with its id and a password. What the
//! server stores and hands to the gateway in its roster is a *sealed*
//! credential: PBKDF2-HMAC-SHA256 with a random 16-byte salt, in a PHC
//! string (`$pbkdf2-sha256$i=…,l=32$salt$hash`), run over the password's
//! hex SHA-256 — the digest earlier versions stored. Sealing the digest
//! rather than the password lets a stored digest be upgraded where it
//! lies, without the password: every record is sealed at once, not only
//! those whose device happens to log in.
//!
//! The iteration count is in each string, so a later release can raise
//! [`ITERATIONS`] and re-seal; it is chosen by what a gateway can verify
//! while 10,000 devices reconnect at once (BENCHMARKS.md, "Device
//! secrets"), on top of a gateway's cache of logins it already verified.

use password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng};
use pbkdf2::{Algorithm, Params, Pbkdf2};
use sha2::{Digest, Sha256};

/// PBKDF2 rounds for a newly sealed credential: ~0.11 ms a verification
/// here, so a gateway restarted under 10,000 devices has them all back in
/// ~3.3 s (1.9 s with bare digests; 7.7 s at 4,096 rounds) while one core
/// stays with the alarm path.
pub const ITERATIONS: u32 = 1_024;

const SEALED_PREFIX: &str = "$pbkdf2-sha256$";

/// The password's hex SHA-256 (lowercase): the legacy stored form, and
/// the input a sealed credential is derived from.
pub fn legacy_digest(password: &str) -> String {
    hex::encode(Sha256::digest(password.as_bytes()))
}

/// A sealed credential for `password`, salted afresh.
pub fn seal(password: &str) -> String {
    seal_digest(&legacy_digest(password))
}

/// Seals a legacy digest (64 hex digits, any case), salted afresh.
pub fn seal_digest(digest: &str) -> String {
    seal_digest_with(digest, ITERATIONS)
}

/// [`seal_digest`] with a chosen iteration count (benchmarks, tests).
pub fn seal_digest_with(digest: &str, iterations: u32) -> String {
    let salt = SaltString::generate(&mut OsRng);
    let params = Params {
        rounds: iterations,
        output_length: 32,
    };
    Pbkdf2
        .hash_password_customized(
            digest.to_ascii_lowercase().as_bytes(),
            Some(Algorithm::Pbkdf2Sha256.ident()),
            None,
            params,
            &salt,
        )
        .expect("PBKDF2 with a generated salt and 32 output bytes cannot fail")
        .to_string()
}

/// A sealed credential (else a legacy digest, or nothing usable).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// 64 hex digits: the legacy stored form.
pub fn is_legacy_digest(stored: &str) -> bool {
    stored.len() == 64 && stored.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A stored credential as written by an operator or an older version:
/// sealed, or a legacy digest. Says what is wrong otherwise.
pub fn check_stored(stored: &str) -> Result<(), String> {
    if is_legacy_digest(stored) {
        return Ok(());
    }
    if !is_sealed(stored) {
        return Err("must be a sealed credential ($pbkdf2-sha256$…) or 64 hex digits".into());
    }
    let hash = PasswordHash::new(stored).map_err(|err| format!("not a PHC string: {err}"))?;
    Params::try_from(&hash).map_err(|err| format!("bad PBKDF2 parameters: {err}"))?;
    if hash.hash.is_none() {
        return Err("the PHC string has no hash".into());
    }
    Ok(())
}

/// Whether `password` is the one `stored` (sealed or legacy) was made
/// from. A sealed credential costs its iterations; run it where blocking
/// for a millisecond is fine.
pub fn verify(password: &str, stored: &str) -> bool {
    verify_digest(&legacy_digest(password), stored)
}

/// [`verify`] from the password's digest: also tells whether a sealed
/// credential was sealed from a legacy digest.
pub fn verify_digest(digest: &str, stored: &str) -> bool {
    let digest = digest.to_ascii_lowercase();
    if is_sealed(stored) {
        return PasswordHash::new(stored)
            .is_ok_and(|hash| Pbkdf2.verify_password(digest.as_bytes(), &hash).is_ok());
    }
    constant_time_eq(stored.to_ascii_lowercase().as_bytes(), digest.as_bytes())
}

/// Equal, in a time that does not depend on where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The PBKDF2 rounds of a sealed credential.
pub fn iterations_of(stored: &str) -> Option<u32> {
    let hash = PasswordHash::new(stored).ok()?;
    Params::try_from(&hash).ok().map(|p| p.rounds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_credential_takes_its_own_password_only() {
        let sealed = seal("a-generated-secret-0001");
        assert!(is_sealed(&sealed), "{sealed}");
        let head = format!("$pbkdf2-sha256$i={ITERATIONS},l=32$");
        assert!(sealed.starts_with(&head), "{sealed}");
        assert_eq!(check_stored(&sealed), Ok(()));
        assert!(verify("a-generated-secret-0001", &sealed));
        assert!(!verify("a-generated-secret-0002", &sealed));
        assert!(!verify("", &sealed));
        assert_eq!(iterations_of(&sealed), Some(ITERATIONS));
    }

    #[test]
    fn the_same_password_seals_differently_each_time() {
        assert_ne!(seal("same-password-123"), seal("same-password-123"));
    }

    #[test]
    fn a_legacy_digest_is_sealed_where_it_lies_and_still_takes_the_password() {
        let legacy = legacy_digest("a-generated-secret-0001");
        assert!(is_legacy_digest(&legacy));
        assert!(verify("a-generated-secret-0001", &legacy));
        assert!(verify("a-generated-secret-0001", &legacy.to_uppercase()));
        assert!(!verify("a-generated-secret-0002", &legacy));
        let sealed = seal_digest(&legacy.to_uppercase());
        assert!(verify("a-generated-secret-0001", &sealed));
        assert!(verify_digest(&legacy, &sealed));
        assert!(!verify_digest(&legacy_digest("other-secret-0001"), &sealed));
    }

    #[test]
    fn damaged_or_foreign_strings_are_refused_and_never_verify() {
        for bad in [
            "",
            "abc",
            "$pbkdf2-sha256$",
            "$pbkdf2-sha256$i=0,l=32$c2FsdHNhbHQ$aGFzaA",
            "$argon2id$v=19$m=65536,t=3,p=4$c2FsdHNhbHQ$aGFzaA",
        ] {
            assert!(check_stored(bad).is_err(), "{bad}");
            assert!(!verify("", bad), "{bad}");
            assert!(!verify("x", bad), "{bad}");
        }
        // A sealed string cut short does not verify either.
        let sealed = seal("a-generated-secret-0001");
        assert!(!verify(
            "a-generated-secret-0001",
            &sealed[..sealed.len() - 4]
        ));
    }
}

#[cfg(test)]
mod cost {
    /// What one verification costs here, at a few iteration counts
    /// (`cargo test --release -p anxin-credentials -- --ignored --nocapture`).
    #[test]
    #[ignore = "a measurement, not a check"]
    fn verification_cost() {
        let digest = super::legacy_digest("a-generated-secret-0001");
        for iterations in [1_000, 4_096, 10_000, 100_000] {
            let sealed = super::seal_digest_with(&digest, iterations);
            let start = std::time::Instant::now();
            let n = 200;
            for _ in 0..n {
                assert!(super::verify_digest(&digest, &sealed));
            }
            println!(
                "{iterations} iterations: {:.1} µs per verification",
                start.elapsed().as_secs_f64() * 1e6 / n as f64
            );
        }
    }
}

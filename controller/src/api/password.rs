//! Password hashing (argon2id, PHC strings) and the per-controller login throttle. Hashing
//! happens on the controller that answers the request, never in `apply` (I2): the hash (with
//! its random salt) is stamped into the command.
use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use parking_lot::Mutex;
use rand::RngCore as _;
use tonic::Status;

pub const MIN_PASSWORD_CHARS: usize = 8;
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// A new password must be long enough and not absurdly long (hashing cost).
pub fn check_new(password: &str) -> Result<(), Status> {
    if password.chars().count() < MIN_PASSWORD_CHARS {
        return Err(Status::invalid_argument(format!(
            "the password must be at least {MIN_PASSWORD_CHARS} characters"
        )));
    }
    if password.len() > MAX_PASSWORD_BYTES {
        return Err(Status::invalid_argument(format!(
            "the password must be at most {MAX_PASSWORD_BYTES} bytes"
        )));
    }
    Ok(())
}

/// argon2id with the crate's default cost and a fresh random salt.
pub fn hash(password: &str) -> Result<String, argon2::password_hash::Error> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt)?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)?
        .to_string())
}

/// False for a wrong password, an empty hash (no password set) or an unreadable hash.
pub fn verify(password: &str, phc: &str) -> bool {
    PasswordHash::new(phc)
        .map(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Hashes off the async workers (argon2 takes tens of milliseconds on purpose).
pub async fn hash_blocking(password: String) -> Result<String, Status> {
    tokio::task::spawn_blocking(move || hash(&password))
        .await
        .map_err(|e| Status::internal(format!("password hashing failed: {e}")))?
        .map_err(|e| Status::internal(format!("password hashing failed: {e}")))
}

/// Verifies off the async workers. With no hash (unknown user) it still spends the time of a
/// verification, so answers do not reveal which user names exist.
pub async fn verify_blocking(password: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || match phc {
        Some(phc) if !phc.is_empty() => verify(&password, &phc),
        _ => {
            verify(&password, dummy_hash());
            false
        }
    })
    .await
    .unwrap_or(false)
}

fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash("flotilla-dummy-password").unwrap_or_default())
}

/// Failed logins per user name, kept in memory by each controller: after `max_failures` within
/// `window` the name is refused until the oldest failure leaves the window. Because it is per
/// controller, a client spreading attempts over N controllers gets N times the budget.
pub struct LoginThrottle {
    max_failures: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

/// Names tracked before stale entries are swept.
const SWEEP_AT: usize = 10_000;

impl Default for LoginThrottle {
    fn default() -> Self {
        LoginThrottle::new(5, Duration::from_secs(60))
    }
}

impl LoginThrottle {
    pub fn new(max_failures: usize, window: Duration) -> Self {
        LoginThrottle {
            max_failures,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `user` is throttled.
    pub fn check(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock();
        let Some(q) = map.get_mut(user) else {
            return Ok(());
        };
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.len() >= self.max_failures {
            let oldest = *q.front().expect("non-empty");
            return Err(self.window.saturating_sub(now.duration_since(oldest)));
        }
        Ok(())
    }

    pub fn failed(&self, user: &str, now: Instant) {
        let mut map = self.failures.lock();
        if map.len() >= SWEEP_AT {
            let window = self.window;
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < window));
        }
        let q = map.entry(user.to_owned()).or_default();
        q.push_back(now);
        while q.len() > self.max_failures {
            q.pop_front();
        }
    }

    pub fn succeeded(&self, user: &str) {
        self.failures.lock().remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_only_its_password_and_salts_differ() {
        let a = hash("correct horse").unwrap();
        let b = hash("correct horse").unwrap();
        assert!(a.starts_with("$argon2id$"), "{a}");
        assert_ne!(a, b, "fresh salt each time");
        assert!(verify("correct horse", &a));
        assert!(!verify("wrong horse", &a));
        assert!(!verify("anything", ""));
    }

    #[test]
    fn five_failures_in_a_minute_throttle_a_name_until_the_window_passes() {
        let t = LoginThrottle::default();
        let start = Instant::now();
        for i in 0..5 {
            assert!(t.check("alice", start).is_ok(), "attempt {i}");
            t.failed("alice", start + Duration::from_secs(i));
        }
        let wait = t
            .check("alice", start + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        assert!(
            t.check("bob", start).is_ok(),
            "other names are not affected"
        );
        assert!(t.check("alice", start + Duration::from_secs(61)).is_ok());
        t.failed("alice", start + Duration::from_secs(62));
        t.succeeded("alice");
        assert!(t.check("alice", start + Duration::from_secs(62)).is_ok());
    }
}

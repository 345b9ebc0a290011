//! Sign-in attempts: failures counted over a sliding window per (account,
//! client address), per client address, and per account, so that passwords
//! cannot be guessed quickly from one place or against one account — while
//! someone guessing from elsewhere cannot lock the owner out of their
//! account from the owner's own address.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(300);
/// Failures allowed per (account, client address) within [`WINDOW`]: past
/// it, that address may not try that account.
pub const PER_ACCOUNT_ADDRESS: usize = 5;
/// Failures allowed per client address within [`WINDOW`], whatever the
/// accounts (several people behind one proxy share an address).
pub const PER_ADDRESS: usize = 20;
/// Failures allowed per account within [`WINDOW`], from all addresses
/// together. Past it, an address that has already failed for the account
/// may not try again, but an address with no failures still gets its try:
/// guessing from many addresses slows to one guess per address per window,
/// and the owner signing in from their own address is not locked out.
pub const PER_ACCOUNT: usize = 100;
/// The most failures kept per key (the largest limit).
const KEEP: usize = PER_ACCOUNT;
const MAX_KEYS: usize = 50_000;

#[derive(Default)]
pub struct Limiter {
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl Limiter {
    /// How long the caller must wait, if any of `keys` (with its limit) is
    /// over its limit.
    pub fn blocked(&self, keys: &[(&str, usize)]) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("lock");
        let mut wait = None;
        for (key, limit) in keys {
            if let Some(q) = map.get_mut(*key) {
                while q.front().is_some_and(|t| now.duration_since(*t) >= WINDOW) {
                    q.pop_front();
                }
                if q.len() >= *limit {
                    let w = WINDOW - now.duration_since(q[q.len() - limit]);
                    wait = Some(wait.map_or(w, |x: Duration| x.max(w)));
                }
            }
        }
        wait
    }

    pub fn failed(&self, keys: &[&str]) {
        let now = Instant::now();
        let mut map = self.failures.lock().expect("lock");
        if map.len() > MAX_KEYS {
            map.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) < WINDOW));
        }
        for key in keys {
            let q = map.entry((*key).to_owned()).or_default();
            q.push_back(now);
            if q.len() > KEEP {
                q.pop_front();
            }
        }
    }

    /// Failures counted under `key` within [`WINDOW`].
    pub fn count(&self, key: &str) -> usize {
        let now = Instant::now();
        let map = self.failures.lock().expect("lock");
        map.get(key).map_or(0, |q| q.iter().filter(|t| now.duration_since(**t) < WINDOW).count())
    }

    pub fn succeeded(&self, key: &str) {
        self.failures.lock().expect("lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_and_names_the_wait() {
        let l = Limiter::default();
        for _ in 0..PER_ACCOUNT_ADDRESS {
            assert!(l.blocked(&[("acct:a", PER_ACCOUNT_ADDRESS)]).is_none());
            l.failed(&["acct:a"]);
        }
        let wait = l.blocked(&[("acct:a", PER_ACCOUNT_ADDRESS)]).expect("blocked");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert!(l.blocked(&[("acct:b", PER_ACCOUNT_ADDRESS)]).is_none());
        assert_eq!(l.count("acct:a"), PER_ACCOUNT_ADDRESS);
        l.succeeded("acct:a");
        assert!(l.blocked(&[("acct:a", PER_ACCOUNT_ADDRESS)]).is_none());
        // Keys keep up to the largest limit.
        for _ in 0..PER_ACCOUNT + 10 {
            l.failed(&["acct:c"]);
        }
        assert_eq!(l.count("acct:c"), PER_ACCOUNT);
        assert!(l.blocked(&[("acct:c", PER_ACCOUNT)]).is_some());
    }
}

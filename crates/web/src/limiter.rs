//! Sign-in attempts: failures counted per account and per client address
//! over a sliding window, so that passwords cannot be guessed quickly from
//! one place or against one account.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(300);
/// Failures allowed per account within [`WINDOW`].
pub const PER_ACCOUNT: usize = 5;
/// Failures allowed per client address within [`WINDOW`] (several people
/// behind one proxy share an address).
pub const PER_ADDRESS: usize = 20;
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
            if q.len() > PER_ADDRESS {
                q.pop_front();
            }
        }
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
        for _ in 0..PER_ACCOUNT {
            assert!(l.blocked(&[("acct:a", PER_ACCOUNT)]).is_none());
            l.failed(&["acct:a"]);
        }
        let wait = l.blocked(&[("acct:a", PER_ACCOUNT)]).expect("blocked");
        assert!(wait <= WINDOW && wait > WINDOW - Duration::from_secs(5));
        assert!(l.blocked(&[("acct:b", PER_ACCOUNT)]).is_none());
        l.succeeded("acct:a");
        assert!(l.blocked(&[("acct:a", PER_ACCOUNT)]).is_none());
    }
}

//! Failed logins, throttled per source address and per principal name.
//!
//! Each key (a client address, a user or token name) may fail `limit`
//! times within `window`; after that its logins are refused, without
//! checking the credentials, until the window that began with its first
//! failure is over. Credentials that were verified lately are still
//! accepted (they are answered from memory, before the throttle), so an
//! attacker guessing a user's password blocks further guesses, not the
//! user's running pulls. Both maps are bounded: when one is full, expired
//! entries go; if it is still full, a new key is not tracked (the other
//! map still throttles it).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys tracked at once, per map.
const MAX_TRACKED: usize = 10_000;

/// How failed logins are throttled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleSettings {
    /// Failures allowed per source address within `window` (default 10).
    pub per_source: u32,
    /// Failures allowed per principal name within `window` (default 20).
    pub per_principal: u32,
    /// The window (default 60 s).
    pub window: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> Self {
        ThrottleSettings {
            per_source: 10,
            per_principal: 20,
            window: Duration::from_secs(60),
        }
    }
}

#[derive(Debug)]
struct Window {
    start: Instant,
    failures: u32,
}

#[derive(Debug)]
struct Map<K>(HashMap<K, Window>);

impl<K> Default for Map<K> {
    fn default() -> Self {
        Map(HashMap::new())
    }
}

impl<K: std::hash::Hash + Eq> Map<K> {
    /// How long `k` is still refused for, if it is.
    fn blocked(&self, k: &K, limit: u32, window: Duration, now: Instant) -> Option<Duration> {
        let w = self.0.get(k)?;
        let left = window.checked_sub(now.duration_since(w.start))?;
        (w.failures >= limit && !left.is_zero()).then_some(left)
    }

    fn fail(&mut self, k: K, window: Duration, now: Instant) {
        if !self.0.contains_key(&k) && self.0.len() >= MAX_TRACKED {
            self.0.retain(|_, w| now.duration_since(w.start) < window);
            if self.0.len() >= MAX_TRACKED {
                return;
            }
        }
        let w = self.0.entry(k).or_insert(Window {
            start: now,
            failures: 0,
        });
        if now.duration_since(w.start) >= window {
            *w = Window {
                start: now,
                failures: 0,
            };
        }
        w.failures = w.failures.saturating_add(1);
    }
}

/// Failed-login counters (see the module docs).
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    settings: ThrottleSettings,
    sources: Mutex<Map<IpAddr>>,
    principals: Mutex<Map<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Throttle {
    pub(crate) fn new(settings: ThrottleSettings) -> Self {
        Throttle {
            settings,
            ..Throttle::default()
        }
    }

    /// How long logins from `source` or as `principal` are still refused,
    /// if they are.
    pub(crate) fn blocked(
        &self,
        source: Option<IpAddr>,
        principal: Option<&str>,
    ) -> Option<Duration> {
        let s = &self.settings;
        let now = Instant::now();
        let by_source =
            source.and_then(|ip| lock(&self.sources).blocked(&ip, s.per_source, s.window, now));
        let by_name = principal.and_then(|n| {
            lock(&self.principals).blocked(&n.to_owned(), s.per_principal, s.window, now)
        });
        by_source.max(by_name)
    }

    /// Counts a failed login.
    pub(crate) fn fail(&self, source: Option<IpAddr>, principal: Option<&str>) {
        let (window, now) = (self.settings.window, Instant::now());
        if let Some(ip) = source {
            lock(&self.sources).fail(ip, window, now);
        }
        if let Some(n) = principal {
            lock(&self.principals).fail(n.chars().take(128).collect(), window, now);
        }
    }

    /// Carries the counts of `old` over (a reload keeps them).
    pub(crate) fn take_counts(&self, old: &Throttle) {
        std::mem::swap(&mut *lock(&self.sources), &mut *lock(&old.sources));
        std::mem::swap(&mut *lock(&self.principals), &mut *lock(&old.principals));
    }

    #[cfg(test)]
    fn tracked(&self) -> (usize, usize) {
        (lock(&self.sources).0.len(), lock(&self.principals).0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(n: u32) -> Option<IpAddr> {
        Some(IpAddr::V4(std::net::Ipv4Addr::from(n)))
    }

    #[test]
    fn a_source_is_refused_after_its_failures_and_others_are_not() {
        let t = Throttle::new(ThrottleSettings {
            per_source: 3,
            per_principal: 100,
            window: Duration::from_secs(60),
        });
        for _ in 0..3 {
            assert_eq!(t.blocked(ip(1), Some("alice")), None);
            t.fail(ip(1), Some("alice"));
        }
        let left = t.blocked(ip(1), None).expect("refused");
        assert!(left <= Duration::from_secs(60) && left > Duration::from_secs(50));
        assert_eq!(t.blocked(ip(2), Some("alice")), None, "another source");
    }

    #[test]
    fn a_principal_is_refused_from_every_source_after_its_failures() {
        let t = Throttle::new(ThrottleSettings {
            per_source: 100,
            per_principal: 2,
            window: Duration::from_secs(60),
        });
        t.fail(ip(1), Some("alice"));
        t.fail(ip(2), Some("alice"));
        assert!(t.blocked(ip(3), Some("alice")).is_some());
        assert_eq!(t.blocked(ip(3), Some("bob")), None);
    }

    #[test]
    fn the_window_ends() {
        let t = Throttle::new(ThrottleSettings {
            per_source: 1,
            per_principal: 1,
            window: Duration::from_millis(50),
        });
        t.fail(ip(1), Some("a"));
        assert!(t.blocked(ip(1), Some("a")).is_some());
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(t.blocked(ip(1), Some("a")), None);
    }

    #[test]
    fn the_maps_stay_bounded() {
        let t = Throttle::new(ThrottleSettings::default());
        for i in 0..(MAX_TRACKED as u32 + 500) {
            t.fail(ip(i), Some(&format!("u{i}")));
        }
        let (s, p) = t.tracked();
        assert!(s <= MAX_TRACKED && p <= MAX_TRACKED, "{s} {p}");
    }
}

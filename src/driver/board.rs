//! The system-wide police figures, shared by the queue workers.
//!
//! Each worker posts its own figures at its timer and takes back the merge of every
//! worker's latest: one lock per worker per tick, never one per packet. Its sender
//! report is posted less often, for the control socket. The victim's list of senders
//! it withholds feedback from, and its port policies, are changed here by the control
//! socket and picked up by each worker at its next tick.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::Config;
use crate::driver::nft::Prefix;
use crate::police::{Figures, PoliceReport, System};
use crate::ports::Policies;

/// What the workers share: their latest figures and sender reports, by worker index.
pub struct Board {
    figures: Mutex<Vec<Figures>>,
    reports: Mutex<Vec<Option<PoliceReport>>>,
    /// Capabilities the SLR needs before it counts.
    min_sample: u32,
    withheld: Versioned<Vec<Prefix>>,
    /// victim: the port policies in force.
    policies: Versioned<Arc<Policies>>,
    /// The config a reload put in force (None, version 0: the one at start, which every
    /// pipeline starts with).
    config: Versioned<Option<Arc<Config>>>,
}

/// A value the control socket changes and the workers pick up: the version is bumped
/// at each change and read by the workers without the lock.
pub struct Versioned<T> {
    value: Mutex<T>,
    version: AtomicU64,
}

impl<T: Clone> Versioned<T> {
    /// Version 0 (the workers start with the same value).
    pub fn new(value: T) -> Self {
        Versioned {
            value: Mutex::new(value),
            version: AtomicU64::new(0),
        }
    }

    pub fn get(&self) -> T {
        self.value.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Change the value with `f`, which says whether it changed it (and what to return).
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> (bool, R)) -> R {
        let mut value = self.value.lock().unwrap_or_else(|p| p.into_inner());
        let (changed, r) = f(&mut value);
        if changed {
            self.version.fetch_add(1, Ordering::Release);
        }
        r
    }

    /// The value, if it changed since version `seen` (which is then brought up to date).
    pub fn since(&self, seen: &mut u64) -> Option<T> {
        let now = self.version.load(Ordering::Acquire);
        if now == *seen {
            return None;
        }
        *seen = now;
        Some(self.get())
    }
}

impl Board {
    /// A board for `workers` workers, withholding feedback from `withheld` at start
    /// (the workers' pipelines start with the same list: version 0).
    pub fn new(workers: usize, min_sample: u32, withheld: Vec<Prefix>) -> Board {
        Board {
            figures: Mutex::new(vec![Figures::default(); workers]),
            reports: Mutex::new(vec![None; workers]),
            min_sample,
            withheld: Versioned::new(withheld),
            policies: Versioned::new(Arc::new(Policies::default())),
            config: Versioned::new(None),
        }
    }

    /// The config in force: every reload's (the workers take from it what changes
    /// live; see `Pipeline::reconfigure`).
    pub fn config(&self) -> &Versioned<Option<Arc<Config>>> {
        &self.config
    }

    /// The senders feedback is withheld from.
    pub fn withheld(&self) -> Vec<Prefix> {
        self.withheld.get()
    }

    /// Withhold feedback from `p` (`add`) or no longer; true if that changed the list.
    /// Withhold feedback from exactly `list` (a reload); whether that changed it.
    pub fn set_withheld(&self, list: Vec<Prefix>) -> bool {
        self.withheld.update(|now| {
            let changed = *now != list;
            *now = list;
            (changed, changed)
        })
    }

    pub fn change_withheld(&self, p: Prefix, add: bool) -> bool {
        self.withheld.update(|list| {
            let at = list.iter().position(|q| *q == p);
            let changed = match (add, at) {
                (true, None) => {
                    list.push(p);
                    true
                }
                (false, Some(i)) => {
                    list.remove(i);
                    true
                }
                _ => false,
            };
            (changed, changed)
        })
    }

    /// The list, if it changed since version `seen` (which is then brought up to date).
    pub fn withheld_since(&self, seen: &mut u64) -> Option<Vec<Prefix>> {
        self.withheld.since(seen)
    }

    /// The port policies the workers start with (version 0).
    pub fn start_policies(&self, p: Policies) {
        self.policies.update(|v| {
            *v = Arc::new(p);
            (false, ())
        });
    }

    /// The port policies: the ones the workers start with, and every change.
    pub fn policies(&self) -> &Versioned<Arc<Policies>> {
        &self.policies
    }

    /// Post worker `i`'s figures; the system-wide view merged from every worker's latest.
    pub fn post(&self, i: usize, f: Figures) -> System {
        let mut all = self.figures.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = all.get_mut(i) {
            *slot = f;
        }
        System::merge(all.iter(), self.min_sample)
    }

    /// Post worker `i`'s sender report.
    pub fn post_report(&self, i: usize, r: PoliceReport) {
        let mut all = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = all.get_mut(i) {
            *slot = Some(r);
        }
    }

    /// Every worker's report in one: the policy, the system-wide view, and the
    /// `limit` most active senders (None if no worker polices).
    pub fn report(&self, limit: usize) -> Option<PoliceReport> {
        let all = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        let mut merged: Option<PoliceReport> = None;
        for r in all.iter().flatten() {
            match merged.as_mut() {
                None => merged = Some(r.clone()),
                Some(m) => m.senders.extend(r.senders.iter().cloned()),
            }
        }
        if let Some(m) = merged.as_mut() {
            m.senders
                .sort_by_key(|s| std::cmp::Reverse((s.delivered, s.nr + s.other)));
            m.senders.truncate(limit);
        }
        merged
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::police::Totals;

    #[test]
    fn workers_see_each_change_of_the_withheld_list_once() {
        let p: Prefix = "198.18.9.0/24".parse().unwrap();
        let b = Board::new(1, 1, vec![p]);
        let mut seen = 0;
        assert_eq!(b.withheld_since(&mut seen), None, "the start list is known");
        assert!(!b.change_withheld(p, true), "already there");
        let q: Prefix = "2001:2::/48".parse().unwrap();
        assert!(b.change_withheld(q, true));
        assert_eq!(b.withheld_since(&mut seen), Some(vec![p, q]));
        assert_eq!(b.withheld_since(&mut seen), None);
        assert!(b.change_withheld(p, false));
        assert!(!b.change_withheld(p, false));
        assert_eq!(b.withheld_since(&mut seen), Some(vec![q]));
    }

    #[test]
    fn the_system_view_sums_every_workers_latest_figures() {
        let b = Board::new(2, 100, Vec::new());
        let f = |issued, returned, delivered| Figures {
            slr_issued: issued,
            slr_returned: returned,
            totals: Totals {
                delivered,
                active: 1,
                ..Totals::default()
            },
        };
        // Too few capabilities yet: no SLR.
        assert_eq!(b.post(0, f(60, 30, 500)).slr, 0.0);
        let s = b.post(1, f(140, 130, 700));
        assert!((s.slr - 0.2).abs() < 1e-9, "40 of 200 lost");
        assert_eq!((s.totals.delivered, s.totals.active), (1200, 2));
        // A worker's newer figures replace its older ones.
        let s = b.post(0, f(60, 60, 100));
        assert!((s.slr - 0.05).abs() < 1e-9);
        assert_eq!(s.totals.delivered, 800);
    }
}

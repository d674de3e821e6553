//! The system-wide police figures, shared by the queue workers.
//!
//! Each worker posts its own figures at its timer and takes back the merge of every
//! worker's latest: one lock per worker per tick, never one per packet. Its sender
//! report is posted less often, for the control socket.

use std::sync::Mutex;

use crate::police::{Figures, PoliceReport, System};

/// What the workers share: their latest figures and sender reports, by worker index.
pub struct Board {
    figures: Mutex<Vec<Figures>>,
    reports: Mutex<Vec<Option<PoliceReport>>>,
    /// Capabilities the SLR needs before it counts.
    min_sample: u32,
}

impl Board {
    /// A board for `workers` workers.
    pub fn new(workers: usize, min_sample: u32) -> Board {
        Board {
            figures: Mutex::new(vec![Figures::default(); workers]),
            reports: Mutex::new(vec![None; workers]),
            min_sample,
        }
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
    fn the_system_view_sums_every_workers_latest_figures() {
        let b = Board::new(2, 100);
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

//! The network term from measurement: a [`CommProfile`] is the ring all-reduce's time
//! model, `t(S) = 2(n−1)/n × S ÷ bw + 2(n−1) × latency` ([`crate::model::ring_time`]),
//! fitted to what `dlc bench allreduce --save` timed on this machine (one host: the
//! links between processes of one node) or across hosts (`--worker` under a launcher,
//! one rank per host: the network).
//!
//! The fit minimises the squared *relative* error over the measured sizes, so small
//! messages (which fix the latency) weigh as much as large ones (which fix the
//! bandwidth).

use serde::{Deserialize, Serialize};

use crate::model::ring_time;

/// A fitted all-reduce model (`comm-profile.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommProfile {
    /// Ranks in the measured ring.
    pub ranks: usize,
    /// Distinct hosts they ran on (1: processes of one machine).
    pub hosts: usize,
    /// Fitted bandwidth of the ring's slowest hop, GB/s (1e9 bytes/s).
    pub bandwidth_gbps: f64,
    /// Fitted latency per ring hop, seconds.
    pub latency_s: f64,
    /// Rate of the links between the hosts, GB/s, when the user gave it
    /// (`--link`): then `bandwidth_gbps / link_gbps` is the fraction of a link
    /// dlc's ring reaches, which the planner applies to catalog networks.
    #[serde(default)]
    pub link_gbps: Option<f64>,
    /// The measurements: (bytes, median seconds).
    pub points: Vec<(usize, f64)>,
    /// Largest relative error of the fitted model over the points.
    pub fit_error: f64,
}

/// Why no model could be fitted.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FitError {
    /// Too few or unusable points.
    #[error("{0}")]
    Points(String),
}

impl CommProfile {
    /// Fits the ring model to `points` measured over `ranks` ranks on `hosts` hosts.
    pub fn fit(ranks: usize, hosts: usize, points: &[(usize, f64)]) -> Result<Self, FitError> {
        if ranks < 2 {
            return Err(FitError::Points(
                "a communication profile needs at least 2 ranks".into(),
            ));
        }
        let good: Vec<(f64, f64)> = points
            .iter()
            .filter(|(b, t)| *b > 0 && t.is_finite() && *t > 0.0)
            .map(|&(b, t)| (b as f64, t))
            .collect();
        let mut sizes: Vec<u64> = good.iter().map(|p| p.0 as u64).collect();
        sizes.sort_unstable();
        sizes.dedup();
        if good.len() != points.len() || sizes.len() < 2 {
            return Err(FitError::Points(format!(
                "fitting bandwidth and latency needs positive times for at least 2 sizes, got {points:?}"
            )));
        }
        let n = ranks as f64;
        let volume = 2.0 * (n - 1.0) / n; // bytes each rank sends per byte reduced
        let hops = 2.0 * (n - 1.0);
        // t = x·u + c with x = volume·S, u = 1/bw (s/byte), c = hops·latency; weighted
        // least squares with weights 1/t² (relative error).
        let (mut sw, mut sx, mut st, mut sxx, mut sxt) = (0.0, 0.0, 0.0, 0.0, 0.0);
        for &(b, t) in &good {
            let w = 1.0 / (t * t);
            let x = volume * b;
            sw += w;
            sx += w * x;
            st += w * t;
            sxx += w * x * x;
            sxt += w * x * t;
        }
        let det = sw * sxx - sx * sx;
        let mut u = (sw * sxt - sx * st) / det;
        let mut c = (st - u * sx) / sw;
        if c < 0.0 {
            // No measurable latency: refit the slope through the origin.
            c = 0.0;
            u = sxt / sxx;
        }
        if !(u.is_finite() && u > 0.0) {
            return Err(FitError::Points(format!(
                "the times do not grow with the size ({points:?}): measure sizes further apart, e.g. 4KiB and 16MiB"
            )));
        }
        let bandwidth_gbps = 1.0 / u / 1e9;
        let latency_s = c / hops;
        let fit_error = good
            .iter()
            .map(|&(b, t)| (ring_time(b, ranks, bandwidth_gbps, latency_s) - t).abs() / t)
            .fold(0.0, f64::max);
        Ok(Self {
            ranks,
            hosts,
            bandwidth_gbps,
            latency_s,
            link_gbps: None,
            points: points.to_vec(),
            fit_error,
        })
    }

    /// The fraction of the stated link rate the ring reached, when the link is known.
    pub fn link_efficiency(&self) -> Option<f64> {
        self.link_gbps
            .filter(|l| *l > 0.0)
            .map(|l| (self.bandwidth_gbps / l).min(1.0))
    }

    /// One line for people: what was measured and fitted.
    pub fn describe(&self) -> String {
        let link = match self.link_efficiency() {
            Some(e) => format!(
                " ({:.0} % of the {} GB/s links)",
                e * 100.0,
                self.link_gbps.unwrap_or(0.0)
            ),
            None => String::new(),
        };
        format!(
            "{} ranks on {} host(s): {:.4} GB/s{link}, {:.1} µs per hop (model within {:.0} % of every measured size)",
            self.ranks,
            self.hosts,
            self.bandwidth_gbps,
            self.latency_s * 1e6,
            self.fit_error * 100.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fit_recovers_the_model_it_was_made_from() {
        for ranks in [2, 3, 8] {
            let (bw, lat) = (1.7, 23e-6);
            let points: Vec<(usize, f64)> = [4096usize, 65536, 1 << 20, 16 << 20]
                .iter()
                .map(|&b| (b, ring_time(b as f64, ranks, bw, lat)))
                .collect();
            let p = CommProfile::fit(ranks, 1, &points).unwrap();
            assert!((p.bandwidth_gbps - bw).abs() / bw < 1e-9, "{p:?}");
            assert!((p.latency_s - lat).abs() / lat < 1e-6, "{p:?}");
            assert!(p.fit_error < 1e-9, "{p:?}");
        }
    }

    #[test]
    fn small_sizes_still_count_against_a_large_one() {
        // 5 % noise on every size: both parameters stay within 10 %.
        let (bw, lat) = (0.125, 60e-6);
        let points: Vec<(usize, f64)> = [
            (4096usize, 1.05),
            (65536, 0.95),
            (1 << 20, 1.05),
            (8 << 20, 0.95),
        ]
        .iter()
        .map(|&(b, k)| (b, k * ring_time(b as f64, 4, bw, lat)))
        .collect();
        let p = CommProfile::fit(4, 4, &points).unwrap();
        assert!((p.bandwidth_gbps - bw).abs() / bw < 0.1, "{p:?}");
        assert!((p.latency_s - lat).abs() / lat < 0.1, "{p:?}");
        assert!(p.fit_error < 0.1, "{p:?}");
    }

    #[test]
    fn unusable_points_are_refused_with_a_reason() {
        let e = CommProfile::fit(2, 1, &[(4096, 1e-4)]).unwrap_err();
        assert!(e.to_string().contains("at least 2 sizes"), "{e}");
        let e = CommProfile::fit(2, 1, &[(4096, 1e-3), (1 << 20, 1e-4)]).unwrap_err();
        assert!(e.to_string().contains("do not grow"), "{e}");
        let e = CommProfile::fit(1, 1, &[(4096, 1e-3), (1 << 20, 1e-2)]).unwrap_err();
        assert!(e.to_string().contains("2 ranks"), "{e}");
        assert!(CommProfile::fit(2, 1, &[(4096, f64::NAN), (1 << 20, 1e-2)]).is_err());
    }

    #[test]
    fn link_efficiency_is_capped_at_one() {
        let points = [(4096usize, 1e-4), (1 << 20, 1e-2)];
        let mut p = CommProfile::fit(2, 2, &points).unwrap();
        assert_eq!(p.link_efficiency(), None);
        p.link_gbps = Some(p.bandwidth_gbps * 2.0);
        assert!((p.link_efficiency().unwrap() - 0.5).abs() < 1e-12);
        p.link_gbps = Some(p.bandwidth_gbps / 2.0);
        assert_eq!(p.link_efficiency(), Some(1.0));
    }
}

//! Histograms counted per request thread and merged when `/metrics` is scraped: a request adds
//! to its thread's bucket counts (no shared atomics, no allocation), the scrape adds them into
//! the exported histogram.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::{Arc, Mutex};

/// Kong's `kong_latency` buckets (ms).
pub const KONG_LATENCY: &[f64] = &[
    1.0, 2.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 75.0, 100.0, 200.0, 500.0, 750.0, 1000.0,
    3000.0, 6000.0,
];

/// Kong's upstream and request latency buckets (ms).
pub const KONG_UPSTREAM: &[f64] = &[
    25.0, 50.0, 80.0, 100.0, 250.0, 400.0, 700.0, 1000.0, 2000.0, 5000.0, 10000.0, 30000.0, 60000.0,
];

/// keygate's own latency buckets (ms): fine below a millisecond, where a gateway lives.
pub const KEYGATE_LATENCY: &[f64] = &[
    0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0,
    10000.0, 30000.0, 60000.0,
];

/// One thread's observations since the last scrape.
#[derive(Clone)]
pub struct Tally {
    bounds: &'static [f64],
    /// One per bound, then `+Inf`.
    counts: Box<[u64]>,
    sum: f64,
    count: u64,
}

impl Tally {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1].into_boxed_slice(),
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, value: f64) {
        let bucket = self
            .bounds
            .iter()
            .position(|bound| value <= *bound)
            .unwrap_or(self.bounds.len());
        self.counts[bucket] += 1;
        self.sum += value;
        self.count += 1;
    }
}

/// The exported histogram: what every scrape merged so far.
#[derive(Clone)]
pub struct Merged(Arc<Mutex<Tally>>);

impl Merged {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self(Arc::new(Mutex::new(Tally::new(bounds))))
    }

    /// Add a thread's tally and zero it (its buckets stay, so counting stays allocation-free).
    pub fn take(&self, from: &mut Tally) {
        if from.count == 0 {
            return;
        }
        let mut into = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for (into, from) in into.counts.iter_mut().zip(from.counts.iter_mut()) {
            *into += std::mem::take(from);
        }
        into.sum += std::mem::take(&mut from.sum);
        into.count += std::mem::take(&mut from.count);
    }

    /// The value below which `quantile` (0..1) of the observations fall, interpolated within
    /// its bucket; `None` without observations. For the dashboard.
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .quantile(quantile)
    }

    /// A copy of the counts so far, to diff against a later one.
    pub fn snapshot(&self) -> Tally {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Tally {
    /// See [`Merged::quantile`].
    pub fn quantile(&self, quantile: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = quantile.clamp(0.0, 1.0) * self.count as f64;
        let mut below = 0u64;
        for (i, &n) in self.counts.iter().enumerate() {
            if n > 0 && (below + n) as f64 >= rank {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let Some(&upper) = self.bounds.get(i) else {
                    return Some(lower);
                };
                let within = (rank - below as f64) / n as f64;
                return Some(lower + (upper - lower) * within.clamp(0.0, 1.0));
            }
            below += n;
        }
        self.bounds.last().copied()
    }

    /// What was observed since `earlier` (a snapshot of the same histogram).
    pub fn since(&self, earlier: &Tally) -> Tally {
        let mut diff = self.clone();
        for (d, e) in diff.counts.iter_mut().zip(earlier.counts.iter()) {
            *d = d.saturating_sub(*e);
        }
        diff.sum -= earlier.sum;
        diff.count = diff.count.saturating_sub(earlier.count);
        diff
    }
}

impl std::fmt::Debug for Merged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tally = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Merged")
            .field("count", &tally.count)
            .field("sum", &tally.sum)
            .finish()
    }
}

impl TypedMetric for Merged {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Merged {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let tally = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let buckets: Vec<(f64, u64)> = tally
            .bounds
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(tally.counts.iter().copied())
            .collect();
        encoder.encode_histogram::<NoLabelSet>(tally.sum, tally.count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_adds_thread_counts_and_quantiles_interpolate() {
        let merged = Merged::new(&[1.0, 2.0, 5.0]);
        let mut a = Tally::new(&[1.0, 2.0, 5.0]);
        let mut b = Tally::new(&[1.0, 2.0, 5.0]);
        for value in [0.5, 0.5, 1.5, 4.0] {
            a.observe(value);
        }
        b.observe(9.0);
        merged.take(&mut a);
        merged.take(&mut b);
        merged.take(&mut a);
        let total = merged.snapshot();
        assert_eq!((total.count, &*total.counts), (5, &[2, 1, 1, 1][..]));
        assert_eq!(total.sum, 15.5);
        assert_eq!(merged.quantile(0.2), Some(0.5));
        assert_eq!(merged.quantile(0.5), Some(1.5));
        assert_eq!(
            merged.quantile(1.0),
            Some(5.0),
            "+Inf reports the last bound"
        );
        let mut later = Tally::new(&[1.0, 2.0, 5.0]);
        later.observe(1.5);
        merged.take(&mut later);
        let diff = merged.snapshot().since(&total);
        assert_eq!((diff.count, &*diff.counts), (1, &[0, 1, 0, 0][..]));
    }
}

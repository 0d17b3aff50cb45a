//! One measurement and the figures derived from it; medians over repeats.

pub const MIB: f64 = (1u64 << 20) as f64;
pub const GIB: f64 = (1u64 << 30) as f64;

/// One job against one server, once.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Sample {
    /// Seconds the transfer took (fio's runtime, nbdcopy's wall clock).
    pub secs: f64,
    pub bytes: f64,
    pub requests: f64,
    /// Server CPU seconds (utime + stime) over the run.
    pub cpu: f64,
}

impl Sample {
    pub fn iops(&self) -> f64 {
        self.requests / self.secs
    }

    pub fn mib_s(&self) -> f64 {
        self.bytes / MIB / self.secs
    }

    pub fn cpu_us_per_req(&self) -> f64 {
        self.cpu * 1e6 / self.requests
    }

    pub fn cpu_s_per_gib(&self) -> f64 {
        self.cpu / (self.bytes / GIB)
    }
}

/// Medians of each figure over the repeats (taken separately, so the
/// median IOPS and the median CPU per request may come from different
/// repeats), and the spread of throughput.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub iops: f64,
    pub mib_s: f64,
    pub cpu_us_per_req: f64,
    pub cpu_s_per_gib: f64,
    /// (max - min) / median of MiB/s, in percent.
    pub spread_pct: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(samples: &[Sample]) -> Self {
        let m = |f: fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let mib: Vec<f64> = samples.iter().map(Sample::mib_s).collect();
        let lo = mib.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = mib.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mid = median(mib);
        Self {
            iops: m(Sample::iops),
            mib_s: mid,
            cpu_us_per_req: m(Sample::cpu_us_per_req),
            cpu_s_per_gib: m(Sample::cpu_s_per_gib),
            spread_pct: if samples.len() > 1 {
                (hi - lo) / mid * 100.0
            } else {
                0.0
            },
            n: samples.len(),
        }
    }
}

/// The median; NaN for no values.
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_none() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn derived_figures() {
        // 1 GiB in 2 s as 4 KiB requests, 0.5 s of server CPU.
        let s = Sample {
            secs: 2.0,
            bytes: GIB,
            requests: GIB / 4096.0,
            cpu: 0.5,
        };
        assert_eq!(s.mib_s(), 512.0);
        assert_eq!(s.iops(), 131_072.0);
        assert_eq!(s.cpu_s_per_gib(), 0.5);
        assert!((s.cpu_us_per_req() - 1.907_348_6).abs() < 1e-6);
    }

    #[test]
    fn summary_takes_medians_and_spread() {
        let s = |secs| Sample {
            secs,
            bytes: MIB * 100.0,
            requests: 100.0,
            cpu: 0.1,
        };
        let sum = Summary::of(&[s(1.0), s(2.0), s(0.5)]);
        assert_eq!(sum.mib_s, 100.0);
        assert_eq!(sum.spread_pct, 150.0);
        assert_eq!(sum.n, 3);
    }
}

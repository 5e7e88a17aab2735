//! Intervals for the bench's ratios. Every configuration runs once per round,
//! one after the other, so values of one round share the machine's mood: a
//! ratio is taken between means of the same rounds, and the rounds are
//! resampled (percentile bootstrap) for its 95% interval. A goal counts as met
//! only when the whole interval is inside it.

/// Bootstrap resamples per interval.
const RESAMPLES: usize = 4000;

/// The statistic over all rounds and its 95% interval over resampled rounds;
/// None when the statistic has no value (a configuration never measured).
/// `stat` gets the picked round indices (with repeats).
pub fn interval(rounds: usize, stat: impl Fn(&[usize]) -> Option<f64>) -> Option<Estimate> {
    let all: Vec<usize> = (0..rounds).collect();
    let value = stat(&all).filter(|v| v.is_finite())?;
    // Fixed seed: the same rounds give the same interval.
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut picks = vec![0; rounds];
    let mut values = Vec::with_capacity(RESAMPLES);
    for _ in 0..RESAMPLES {
        for pick in &mut picks {
            *pick = (next() % rounds as u64) as usize;
        }
        if let Some(v) = stat(&picks).filter(|v| v.is_finite()) {
            values.push(v);
        }
    }
    if values.len() < RESAMPLES / 2 {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    Some(Estimate {
        value,
        low: at(0.025),
        high: at(0.975),
    })
}

/// Mean of the picked rounds that were measured (NaN: not measured).
pub fn mean(values: &[f64], picks: &[usize]) -> Option<f64> {
    let picked: Vec<f64> = picks
        .iter()
        .filter_map(|&i| values.get(i).copied())
        .filter(|v| v.is_finite())
        .collect();
    (!picked.is_empty()).then(|| picked.iter().sum::<f64>() / picked.len() as f64)
}

/// A ratio of paired rounds with its 95% interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl Estimate {
    /// Whether the goal `value <= limit` is met: only when all of the interval is.
    pub fn verdict(&self, limit: f64) -> Verdict {
        if self.high <= limit {
            Verdict::Met
        } else if self.low > limit {
            Verdict::NotMet
        } else {
            Verdict::Undecided
        }
    }

    pub fn to_json(self) -> serde_json::Value {
        serde_json::json!({ "value": self.value, "low": self.low, "high": self.high })
    }

    pub fn from_json(value: &serde_json::Value) -> Option<Estimate> {
        Some(Estimate {
            value: value["value"].as_f64()?,
            low: value["low"].as_f64()?,
            high: value["high"].as_f64()?,
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Met,
    NotMet,
    /// The interval straddles the limit: more rounds, or a quieter machine.
    Undecided,
}

impl Verdict {
    pub fn name(self) -> &'static str {
        match self {
            Verdict::Met => "met",
            Verdict::NotMet => "not met",
            Verdict::Undecided => "undecided (the interval straddles the goal)",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_ratio_has_a_narrow_interval() {
        let a = [100.0, 101.0, 99.0, 100.5, 99.5];
        let b = [200.0, 202.0, 198.0, 201.0, 199.0];
        let ratio = interval(5, |p| Some(mean(&b, p)? / mean(&a, p)?)).unwrap();
        assert!((ratio.value - 2.0).abs() < 1e-9);
        assert!(ratio.low > 1.98 && ratio.high < 2.02, "{ratio:?}");
        assert_eq!(ratio.verdict(2.1), Verdict::Met);
        assert_eq!(ratio.verdict(1.9), Verdict::NotMet);
    }

    #[test]
    fn a_noisy_ratio_straddles_a_close_goal() {
        let a = [100.0, 100.0, 100.0, 100.0, 100.0];
        let b = [90.0, 130.0, 95.0, 125.0, 110.0];
        let ratio = interval(5, |p| Some(mean(&b, p)? / mean(&a, p)?)).unwrap();
        assert!(ratio.low < 1.1 && ratio.high > 1.1, "{ratio:?}");
        assert_eq!(ratio.verdict(1.1), Verdict::Undecided);
    }

    #[test]
    fn unmeasured_rounds_are_left_out() {
        let a = [100.0, 100.0, 100.0];
        let b = [150.0, f64::NAN, 150.0];
        let ratio = interval(3, |p| Some(mean(&b, p)? / mean(&a, p)?)).unwrap();
        assert_eq!(ratio.value, 1.5);
        assert!(interval(3, |p| mean(&[f64::NAN; 3], p)).is_none());
    }
}

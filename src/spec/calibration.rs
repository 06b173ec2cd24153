//! How far a speculator's own scores can be trusted: each score is mapped to the acceptance
//! rate that scores like it have realised, learned online by the controller (`controller.rs`)
//! from every verified node.
//!
//! Scores are binned, and kept apart per level of the proposal's evidence (for the suffix
//! index, how long the matched suffix was: a continuation seen once after a 1-token match is a
//! weaker claim than one after an 8-token match) and per how the round before ended: whether
//! the target accepted everything it verified (text being copied goes on being copied; after
//! a round cut short the next one is a guess more often). Everything is exponentially weighted
//! so that drift shows within tens of rounds.

/// Bins of score, 0.1 wide.
pub const BINS: usize = 10;
/// Weight of one observation against the past in a calibration bin (a window of ~50).
const DECAY: f64 = 0.98;
/// Levels of a proposal's evidence (`TokenTree::evidence`) calibrated apart...
const EVIDENCE_LEVELS: usize = 4;
/// ...each twice: after a round that did not, and after one that did, have its whole tree
/// accepted. (Three traced rewrite runs: after a round whose drafts were all accepted the next
/// round's first node was accepted 93-95% of the time where the calibration said 83-86%; after
/// any other round 57-71% where it said 66-77%.)
pub const LEVELS: usize = 2 * EVIDENCE_LEVELS;

/// The level a proposal falls in: its evidence (matches of 1, 2, 3-4 and 5 or more tokens),
/// and whether the round before had every node it verified accepted (`after_full`).
pub fn level(evidence: u8, after_full: bool) -> usize {
    let e = match evidence {
        0 | 1 => 0,
        2 => 1,
        3 | 4 => 2,
        _ => 3,
    };
    e + if after_full { EVIDENCE_LEVELS } else { 0 }
}

/// Weight, in observations, of the pooled estimate as the prior of one level's bin.
const POOL_PRIOR: f64 = 4.0;

/// Weight, in observations, of the speculator's scores taken at face value in its overall
/// ratio of accepted to predicted.
const RATIO_PRIOR: f64 = 2.0;
/// Optimism, in acceptance probability, for a bin never observed (fading as it fills).
const EXPLORE_BONUS: f64 = 0.5;

/// Realised acceptance per bin of a speculator's own score, per level of evidence and pooled
/// over levels; and over all bins, how its realised acceptance compares with its scores.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// (weight, accepted weight) per bin; row LEVELS pools every level.
    bins: [[(f64, f64); BINS]; LEVELS + 1],
    /// Over every observation: (sum of scores, accepted), weighted as the bins are.
    overall: (f64, f64),
}

impl Default for Calibration {
    fn default() -> Self {
        Self::new()
    }
}

impl Calibration {
    pub fn new() -> Calibration {
        Calibration { bins: [[(0.0, 0.0); BINS]; LEVELS + 1], overall: (0.0, 0.0) }
    }

    /// Accepted over predicted, over all bins: what a bin with few observations of its own
    /// scales its score by. A speculator whose 0.5s and 0.8s are right a fifth of the time is
    /// doubted in the bins it has not filled yet, instead of each bin finding out alone (on
    /// Spec-Bench's qa a drafter meets only ~30 verified nodes per 10 questions, too few for
    /// 40 bins).
    fn ratio(&self) -> f64 {
        let (scores, accepted) = self.overall;
        ((accepted + RATIO_PRIOR) / (scores + RATIO_PRIOR)).clamp(0.1, 3.0)
    }

    /// The bin a score falls in.
    pub fn bin(score: f32) -> usize {
        ((score.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1)
    }

    /// The acceptance probability of a node scored `score` on evidence `level`.
    ///
    /// Pooled over levels: the bin's rate, with the score scaled by the speculator's overall
    /// accepted-to-predicted ratio as a prior worth two observations (a cold start trusts the
    /// score itself), plus, when `explore`, an optimism bonus that fades with observations, so
    /// that a bin never tried gets tried (without it, drafts the prior undervalues would never
    /// be verified, and never learned to be good). The level's own bin then starts from the
    /// pooled estimate and moves to its own rate as it fills, so levels split apart without
    /// multiplying what exploration costs.
    ///
    /// The controller explores with a tree's first level only: one verified node teaches a bin
    /// as much as a chain of them, and a cold chain of 8 one-token-match guesses, each lifted by
    /// the bonus, cost 4-5 plain steps a round for nothing (session 6's qa trace); and with one
    /// first-level node per bin a round, for the same reason among siblings.
    pub fn p(&self, level: usize, score: f32, explore: bool) -> f64 {
        let b = Self::bin(score);
        let (n, a) = self.bins[LEVELS][b];
        let bonus = if explore { EXPLORE_BONUS / (1.0 + n) } else { 0.0 };
        let prior = (score as f64 * self.ratio()).min(1.0);
        let pooled = ((a + 2.0 * prior) / (n + 2.0) + bonus).min(1.0);
        let (nl, al) = self.bins[level][b];
        (al + POOL_PRIOR * pooled) / (nl + POOL_PRIOR)
    }

    pub fn observe(&mut self, level: usize, score: f32, accepted: bool) {
        let b = Self::bin(score);
        let o = &mut self.overall;
        o.0 = o.0 * DECAY + score.clamp(0.0, 1.0) as f64;
        o.1 = o.1 * DECAY + accepted as u32 as f64;
        for row in [level, LEVELS] {
            let c = &mut self.bins[row][b];
            c.0 = c.0 * DECAY + 1.0;
            c.1 = c.1 * DECAY + accepted as u32 as f64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bins_not_yet_observed_follow_how_the_speculator_did_elsewhere() {
        let (mut doubtful, mut modest) = (Calibration::new(), Calibration::new());
        assert!((doubtful.p(0, 0.9, false) - 0.9).abs() < 1e-6, "cold: the score itself");
        // one speculator is right a fifth as often as its 0.5s and 0.6s say, the other about
        // twice as often as its 0.3s and 0.4s say
        for i in 0..60 {
            let score = [0.55, 0.65][i % 2];
            doubtful.observe(0, score, i % 10 == 0);
            modest.observe(0, [0.35, 0.45][i % 2], i % 5 != 0);
        }
        let (d, m) = (doubtful.p(0, 0.9, false), modest.p(0, 0.2, false));
        assert!(d < 0.4, "an untried 0.9 of a speculator right 1 in 5 times it said: {d}");
        assert!(m > 0.3, "an untried 0.2 of one right twice as often as it said: {m}");
        // a bin's own observations still decide once there are enough of them
        for _ in 0..40 {
            doubtful.observe(0, 0.95, true);
        }
        assert!(doubtful.p(0, 0.9, false) > 0.8);
    }
}

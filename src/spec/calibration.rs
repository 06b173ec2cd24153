//! How far a speculator's own scores can be trusted: each score is mapped to the acceptance
//! rate that scores like it have realised, learned online by the controller (`controller.rs`)
//! from every verified node.
//!
//! Scores are binned, and kept apart per level of the proposal's evidence (for the suffix
//! index, how long the matched suffix was: a continuation seen once after a 1-token match is a
//! weaker claim than one after an 8-token match). Everything is exponentially weighted so that
//! drift shows within tens of rounds.

/// Bins of score, 0.1 wide.
pub const BINS: usize = 10;
/// Weight of one observation against the past in a calibration bin (a window of ~50).
const DECAY: f64 = 0.98;
/// Levels of a proposal's evidence (`TokenTree::evidence`) calibrated apart.
pub const LEVELS: usize = 4;

/// The level a proposal's evidence falls in: matches of 1, 2, 3-4 and 5 or more tokens.
pub fn level(evidence: u8) -> usize {
    match evidence {
        0 | 1 => 0,
        2 => 1,
        3 | 4 => 2,
        _ => 3,
    }
}

/// Weight, in observations, of the pooled estimate as the prior of one level's bin.
const POOL_PRIOR: f64 = 4.0;

/// Realised acceptance per bin of a speculator's own score, per level of evidence and pooled
/// over levels.
#[derive(Debug, Clone)]
pub struct Calibration {
    /// (weight, accepted weight) per bin; row LEVELS pools every level.
    bins: [[(f64, f64); BINS]; LEVELS + 1],
}

impl Calibration {
    pub fn new() -> Calibration {
        Calibration { bins: [[(0.0, 0.0); BINS]; LEVELS + 1] }
    }

    fn bin(score: f32) -> usize {
        ((score.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1)
    }

    /// The acceptance probability of a node scored `score` on evidence `level`.
    ///
    /// Pooled over levels: the bin's rate, with the score itself as a prior worth two
    /// observations (what a cold start trusts), plus, when `explore`, an optimism bonus that
    /// fades with observations, so that a bin never tried gets tried (without it, drafts the
    /// prior undervalues would never be verified, and never learned to be good). The level's
    /// own bin then starts from the pooled estimate and moves to its own rate as it fills, so
    /// levels split apart without multiplying what exploration costs.
    ///
    /// The controller explores with a tree's first level only: one verified node teaches a bin
    /// as much as a chain of them, and a cold chain of 8 one-token-match guesses, each lifted by
    /// the bonus, cost 4-5 plain steps a round for nothing (session 6's qa trace).
    pub fn p(&self, level: usize, score: f32, explore: bool) -> f64 {
        let b = Self::bin(score);
        let (n, a) = self.bins[LEVELS][b];
        let bonus = if explore { 0.5 / (1.0 + n) } else { 0.0 };
        let pooled = ((a + 2.0 * score as f64) / (n + 2.0) + bonus).min(1.0);
        let (nl, al) = self.bins[level][b];
        (al + POOL_PRIOR * pooled) / (nl + POOL_PRIOR)
    }

    pub fn observe(&mut self, level: usize, score: f32, accepted: bool) {
        let b = Self::bin(score);
        for row in [level, LEVELS] {
            let c = &mut self.bins[row][b];
            c.0 = c.0 * DECAY + 1.0;
            c.1 = c.1 * DECAY + accepted as u32 as f64;
        }
    }
}

//! Guard rails of online training. A step whose loss is not finite changes nothing (head.wgsl's
//! `head_check`) and is counted; and `LossGuard` watches the smoothed loss for divergence (a
//! learning rate too high for the data): when it climbs far above its long-run level, the head
//! goes back to its last good snapshot and the learning rate halves. A domain shift raises the
//! loss too, but by a small factor and the long-run level follows it; divergence is explosive,
//! hence the wide margin.

/// Steps before the guard judges (the loss falls fast at first).
const WARMUP: u64 = 50;
/// Smoothed loss over its long-run level that counts as divergence.
const DIVERGED: f64 = 4.0;
/// Weight of each step in the long-run level (a window of ~50 steps).
const LEVEL_RATE: f64 = 0.02;
/// Steps between snapshots, taken only while the loss is near its best.
const SNAPSHOT_EVERY: u32 = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardAction {
    Continue,
    /// The weights are good: keep a copy.
    Snapshot,
    /// Diverged: restore the last copy and lower the learning rate.
    RollBack,
}

#[derive(Debug, Clone, Default)]
pub struct LossGuard {
    level: Option<f64>,
    since_snapshot: u32,
}

impl LossGuard {
    /// After step number `step` (from 1) with smoothed loss `loss`.
    pub fn after_step(&mut self, loss: f64, step: u64) -> GuardAction {
        if !loss.is_finite() {
            return GuardAction::RollBack;
        }
        let level = *self.level.get_or_insert(loss);
        if step > WARMUP && loss > DIVERGED * level {
            self.since_snapshot = 0;
            return GuardAction::RollBack;
        }
        self.level = Some(level + LEVEL_RATE * (loss - level));
        self.since_snapshot += 1;
        if self.since_snapshot >= SNAPSHOT_EVERY && loss <= 1.2 * level {
            self.since_snapshot = 0;
            return GuardAction::Snapshot;
        }
        GuardAction::Continue
    }

    /// After a roll-back the loss starts again from the snapshot's level.
    pub fn rolled_back(&mut self) {
        self.since_snapshot = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_while_learning_rolls_back_on_divergence_not_on_a_shift() {
        let mut g = LossGuard::default();
        let mut snaps = 0;
        for step in 1..=200u64 {
            let loss = 3.0 / (1.0 + step as f64 / 20.0); // learning
            match g.after_step(loss, step) {
                GuardAction::Snapshot => snaps += 1,
                GuardAction::RollBack => panic!("rolled back while learning at step {step}"),
                GuardAction::Continue => {}
            }
        }
        assert!(snaps >= 4, "{snaps} snapshots");
        // a domain shift doubles the loss: no roll-back
        for step in 201..=260 {
            assert_ne!(g.after_step(0.6, step), GuardAction::RollBack);
        }
        // divergence: the loss explodes
        assert_eq!(g.after_step(50.0, 261), GuardAction::RollBack);
        assert_eq!(g.after_step(f64::NAN, 262), GuardAction::RollBack);
    }
}

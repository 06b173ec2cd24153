//! What speculation did in a request: rounds, drafted and accepted tokens, acceptance per depth,
//! and where the time went.

use super::Drafter;
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize)]
pub struct SpecStats {
    pub mode: String,
    pub rounds: usize,
    /// Tree nodes verified.
    pub drafted: usize,
    /// Tree nodes accepted.
    pub accepted: usize,
    /// Rounds that verified at least one drafted node.
    pub rounds_with_draft: usize,
    /// attempted[d - 1]: rounds whose accepted path reached depth d - 1 and had a child there.
    pub attempted_by_depth: Vec<usize>,
    pub accepted_by_depth: Vec<usize>,
    /// Drafted and accepted nodes per speculator.
    pub per_drafter: std::collections::BTreeMap<String, DrafterCounts>,
    pub draft_ms: f64,
    /// Verification passes, without their acceptance when it was timed.
    pub verify_ms: f64,
    /// Acceptance and KV compaction on the GPU, from timestamp queries (0 where the device has
    /// none: then it is in verify_ms).
    pub accept_ms: f64,
    /// Draft-head training between rounds.
    pub train_ms: f64,
    pub other_ms: f64,
    /// The controller's choices in this request (`--speculate auto`).
    pub controller: Option<super::controller::ControllerStats>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct DrafterCounts {
    pub drafted: usize,
    pub accepted: usize,
}

impl SpecStats {
    pub fn count_drafted(&mut self, d: Drafter) {
        self.per_drafter.entry(d.name().into()).or_default().drafted += 1;
    }

    pub fn count_accepted(&mut self, d: Drafter) {
        self.per_drafter.entry(d.name().into()).or_default().accepted += 1;
    }

    /// Mean tokens produced per round (accepted drafts plus the bonus token).
    pub fn tau(&self) -> f64 {
        if self.rounds == 0 { 0.0 } else { (self.accepted + self.rounds) as f64 / self.rounds as f64 }
    }

    pub fn acceptance_by_depth(&self) -> Vec<f64> {
        self.attempted_by_depth
            .iter()
            .zip(&self.accepted_by_depth)
            .map(|(&a, &b)| if a == 0 { 0.0 } else { b as f64 / a as f64 })
            .collect()
    }

    pub fn record(&mut self, attempted_depths: usize, accepted: usize, drafted: usize) {
        self.rounds += 1;
        self.drafted += drafted;
        self.accepted += accepted;
        if drafted > 0 {
            self.rounds_with_draft += 1;
        }
        let need = attempted_depths.max(accepted);
        if self.attempted_by_depth.len() < need {
            self.attempted_by_depth.resize(need, 0);
            self.accepted_by_depth.resize(need, 0);
        }
        for d in 0..attempted_depths {
            self.attempted_by_depth[d] += 1;
        }
        for d in 0..accepted {
            self.accepted_by_depth[d] += 1;
        }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "mode": self.mode,
            "rounds": self.rounds,
            "drafted": self.drafted,
            "accepted": self.accepted,
            "tau": self.tau(),
            "acceptance_by_depth": self.acceptance_by_depth(),
            "rounds_with_draft": self.rounds_with_draft,
            "per_speculator": self.per_drafter,
            "time_ms": {
                "draft": self.draft_ms,
                "verify": self.verify_ms,
                "accept": self.accept_ms,
                "train": self.train_ms,
                "other": self.other_ms,
            },
            "controller": self.controller.as_ref().map(|c| {
                let share: std::collections::BTreeMap<&String, f64> =
                    c.drafted_rounds.iter().map(|(k, v)| (k, *v as f64 / c.rounds.max(1) as f64)).collect();
                serde_json::json!({
                    "rounds": c.rounds,
                    "rounds_with_tree": c.rounds_with_tree,
                    "share_of_rounds_drafting": share,
                    "verified_nodes_from": c.nodes_from,
                    "mean_tree_size": c.mean_tree(),
                    "mean_depth": c.mean_depth(),
                    "policy_us_per_round": c.policy_us / c.rounds.max(1) as f64,
                })
            }),
        })
    }
}

//! The confidence-aware controller behind `--speculate auto`. Every round it decides which
//! speculators draft and which of their nodes the target verifies, from what it keeps measuring
//! on this device:
//! - calibration: for each speculator, how often a node it scored s was accepted (its own
//!   confidence mapped to a realised acceptance rate, per score bin, exponentially weighted so
//!   that drift shows within tens of rounds);
//! - cost: what a verification pass of M rows takes (`cost.rs`), and what each expensive
//!   speculator's drafting takes.
//!
//! The proposals of all speculators that drafted are merged into one tree (a token proposed by
//! two keeps the better estimate), nodes are ordered by calibrated acceptance probability, and
//! the tree verified is the prefix that maximises expected tokens per millisecond:
//! (1 + sum of the nodes' probabilities) / verify_ms(1 + nodes). When nothing is likely enough
//! to pay for its rows, that is the empty tree: plain decoding. An expensive speculator (the
//! draft head, a draft model) drafts only while the tokens it alone got accepted are worth more
//! than its drafting time plus what verifying its own nodes added to the pass, with a look every
//! `EXPLORE_EVERY` rounds to notice recovery.
//!
//! It runs on the host, between the readback of one round and the submission of the next: the
//! host builds every round's tree anyway (the suffix matches are found on the CPU), so a GPU
//! pass here would add a readback instead of saving one. Its cost is reported (`policy_us`).

use super::cost::CostModel;
use super::tree::{Drafter, TokenTree};
use serde::Serialize;

const BINS: usize = 10;
/// Weight of one observation against the past in a calibration bin (a window of ~50).
const DECAY: f64 = 0.98;
/// Rounds between looks at an expensive speculator that is not paying.
const EXPLORE_EVERY: u64 = 16;

/// Levels of a proposal's evidence (`TokenTree::evidence`) calibrated apart.
const LEVELS: usize = 4;
/// Weight, in observations, of the pooled estimate as the prior of one level's bin.
const POOL_PRIOR: f64 = 4.0;

fn level(evidence: u8) -> usize {
    match evidence {
        0 | 1 => 0,
        2 => 1,
        3 | 4 => 2,
        _ => 3,
    }
}

/// Realised acceptance per bin of a speculator's own score, per level of evidence and pooled
/// over levels.
#[derive(Debug, Clone)]
struct Calibration {
    /// (weight, accepted weight) per bin; row LEVELS pools every level.
    bins: [[(f64, f64); BINS]; LEVELS + 1],
}

impl Calibration {
    fn new() -> Calibration {
        Calibration { bins: [[(0.0, 0.0); BINS]; LEVELS + 1] }
    }

    fn bin(score: f32) -> usize {
        ((score.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1)
    }

    /// The acceptance probability of a node scored `score` on evidence `level`.
    ///
    /// Pooled over levels: the bin's rate, with the score itself as a prior worth two
    /// observations (what a cold start trusts), plus an optimism bonus that fades with
    /// observations, so that a bin never tried gets tried (without it, drafts the prior
    /// undervalues would never be verified, and never learned to be good). The level's own bin
    /// then starts from the pooled estimate and moves to its own rate as it fills, so levels
    /// split apart without multiplying what exploration costs.
    fn p(&self, level: usize, score: f32) -> f64 {
        let b = Self::bin(score);
        let (n, a) = self.bins[LEVELS][b];
        let pooled = ((a + 2.0 * score as f64) / (n + 2.0) + 0.5 / (1.0 + n)).min(1.0);
        let (nl, al) = self.bins[level][b];
        (al + POOL_PRIOR * pooled) / (nl + POOL_PRIOR)
    }

    fn observe(&mut self, level: usize, score: f32, accepted: bool) {
        let b = Self::bin(score);
        for row in [level, LEVELS] {
            let c = &mut self.bins[row][b];
            c.0 = c.0 * DECAY + 1.0;
            c.1 = c.1 * DECAY + accepted as u32 as f64;
        }
    }
}

/// Whether drafting with an expensive speculator pays: its accepted-alone tokens per round
/// (valued at one plain step each) against its drafting time and the verification rows of its
/// own nodes, exponentially weighted.
#[derive(Debug, Clone, Default)]
struct Worth {
    net_ms: Option<f64>,
    last_tried: u64,
}

/// What the controller did, for `--json` and benchmarks.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ControllerStats {
    pub rounds: u64,
    /// Rounds that verified at least one node.
    pub rounds_with_tree: u64,
    /// Rounds each speculator drafted in, and verified nodes from each.
    pub drafted_rounds: std::collections::BTreeMap<String, u64>,
    pub nodes_from: std::collections::BTreeMap<String, u64>,
    pub nodes: u64,
    pub depth_sum: u64,
    /// Time spent choosing (merge, calibration, the size decision), microseconds in all.
    pub policy_us: f64,
}

impl ControllerStats {
    /// What happened since `before` (the same controller's earlier stats).
    pub fn since(&self, before: &ControllerStats) -> ControllerStats {
        let diff = |a: &std::collections::BTreeMap<String, u64>, b: &std::collections::BTreeMap<String, u64>| {
            a.iter().map(|(k, v)| (k.clone(), v - b.get(k).copied().unwrap_or(0))).filter(|(_, v)| *v > 0).collect()
        };
        ControllerStats {
            rounds: self.rounds - before.rounds,
            rounds_with_tree: self.rounds_with_tree - before.rounds_with_tree,
            drafted_rounds: diff(&self.drafted_rounds, &before.drafted_rounds),
            nodes_from: diff(&self.nodes_from, &before.nodes_from),
            nodes: self.nodes - before.nodes,
            depth_sum: self.depth_sum - before.depth_sum,
            policy_us: self.policy_us - before.policy_us,
        }
    }

    pub fn mean_tree(&self) -> f64 {
        self.nodes as f64 / self.rounds.max(1) as f64
    }
    pub fn mean_depth(&self) -> f64 {
        self.depth_sum as f64 / self.rounds.max(1) as f64
    }
}

/// One speculator's proposal of a verified node.
#[derive(Debug, Clone, Copy)]
pub struct Source {
    pub drafter: Drafter,
    /// The node's index in that speculator's proposal.
    pub index: usize,
    /// Its score there.
    pub score: f32,
    /// The proposal's evidence level (`level`).
    pub level: usize,
}

/// A verified tree and where each node came from.
pub struct Plan {
    pub tree: TokenTree,
    /// Per node: every speculator that proposed it.
    pub sources: Vec<Vec<Source>>,
}

pub struct Controller {
    pub cost: CostModel,
    calib: [Calibration; 3],
    worth: [Worth; 3],
    pub stats: ControllerStats,
}

fn idx(d: Drafter) -> usize {
    match d {
        Drafter::Suffix => 0,
        Drafter::Draft => 1,
        Drafter::Head => 2,
    }
}

impl Controller {
    pub fn new(cost: CostModel) -> Controller {
        Controller {
            cost,
            calib: [Calibration::new(), Calibration::new(), Calibration::new()],
            worth: Default::default(),
            stats: ControllerStats::default(),
        }
    }

    /// Whether an expensive speculator should draft this round.
    pub fn wants(&mut self, d: Drafter) -> bool {
        let w = &mut self.worth[idx(d)];
        let r = self.stats.rounds;
        let go = match w.net_ms {
            None => true,
            Some(n) => n > 0.0 || r.saturating_sub(w.last_tried) >= EXPLORE_EVERY,
        };
        if go {
            w.last_tried = r;
        }
        go
    }

    /// Whether an expensive speculator is paying for its drafting (or has not been measured yet).
    pub fn pays(&self, d: Drafter) -> bool {
        self.worth[idx(d)].net_ms.is_none_or(|n| n > 0.0)
    }

    /// Merges the proposals and keeps the prefix (by calibrated acceptance probability) that
    /// maximises expected tokens per millisecond; at most `limit` nodes.
    pub fn choose(&mut self, proposals: &[(Drafter, TokenTree)], limit: usize) -> Plan {
        let t = std::time::Instant::now();
        // merged nodes: (parent, token, depth, p, sources)
        struct M {
            parent: Option<usize>,
            token: u32,
            depth: usize,
            p: f64,
            sources: Vec<Source>,
        }
        let mut merged: Vec<M> = Vec::new();
        for (d, tree) in proposals {
            let cal = &self.calib[idx(*d)];
            let lv = level(tree.evidence);
            let mut map = vec![0usize; tree.len()];
            let mut own_p = vec![0f64; tree.len()];
            for (i, n) in tree.nodes.iter().enumerate() {
                // a node is never likelier than its parent
                let p = cal.p(lv, n.score).min(n.parent.map_or(1.0, |q| own_p[q]));
                let src = Source { drafter: *d, index: i, score: n.score, level: lv };
                own_p[i] = p;
                let parent = n.parent.map(|q| map[q]);
                let hit = merged.iter().position(|m| m.parent == parent && m.token == n.token);
                map[i] = match hit {
                    Some(j) => {
                        merged[j].p = merged[j].p.max(p);
                        merged[j].sources.push(src);
                        j
                    }
                    None => {
                        let depth = parent.map_or(1, |q| merged[q].depth + 1);
                        merged.push(M { parent, token: n.token, depth, p, sources: vec![src] });
                        merged.len() - 1
                    }
                };
            }
        }
        // most likely first, parents before children on ties
        let mut order: Vec<usize> = (0..merged.len()).collect();
        order.sort_by(|&a, &b| merged[b].p.total_cmp(&merged[a].p).then(merged[a].depth.cmp(&merged[b].depth)));
        order.truncate(limit);
        let (mut best_n, mut best_rate, mut expected) = (0, 1.0 / self.cost.verify_ms(1), 0.0);
        for (n, &i) in order.iter().enumerate() {
            expected += merged[i].p;
            let rate = (1.0 + expected) / self.cost.verify_ms(n + 2);
            if rate > best_rate {
                (best_n, best_rate) = (n + 1, rate);
            }
        }
        let mut keep: Vec<usize> = order[..best_n].to_vec();
        keep.sort_by_key(|&i| merged[i].depth);
        let mut tree = TokenTree::default();
        let mut sources = Vec::new();
        let mut at = vec![usize::MAX; merged.len()];
        for i in keep {
            let parent = match merged[i].parent {
                None => None,
                Some(q) if at[q] != usize::MAX => Some(at[q]),
                Some(_) => continue, // its parent was cut: the limit fell between them
            };
            let m = &merged[i];
            at[i] = tree.push(parent, m.token, m.p as f32, m.sources[0].drafter);
            sources.push(m.sources.clone());
        }
        self.stats.policy_us += t.elapsed().as_secs_f64() * 1e6;
        Plan { tree, sources }
    }

    /// The plan's round is over: `accepted[i]` says whether node i was on the accepted path,
    /// the pass of `rows` rows took `verify_ms`, and each speculator in `drafted` ran for the
    /// given milliseconds.
    pub fn observe(&mut self, plan: &Plan, accepted: &[bool], rows: usize, verify_ms: f64, drafted: &[(Drafter, f64)]) {
        let t = std::time::Instant::now();
        self.cost.observe(rows, verify_ms);
        // per speculator: its nodes that no other speculator proposed, and those accepted
        let (mut own, mut alone) = ([0usize; 3], [0usize; 3]);
        for (srcs, &ok) in plan.sources.iter().zip(accepted) {
            for src in srcs {
                self.calib[idx(src.drafter)].observe(src.level, src.score, ok);
                self.stats.nodes_from.entry(src.drafter.name().into()).and_modify(|c| *c += 1).or_insert(1);
            }
            if srcs.len() == 1 {
                own[idx(srcs[0].drafter)] += 1;
                alone[idx(srcs[0].drafter)] += ok as usize;
            }
        }
        // each token it alone got accepted saves a plain step; against that, its drafting time
        // and the rows its own nodes added to the verification pass (on a device where rows are
        // dear, a draft model can be right most of the time and still not pay)
        let step = self.cost.verify_ms(1);
        for &(d, ms) in drafted {
            *self.stats.drafted_rounds.entry(d.name().into()).or_default() += 1;
            let rows_cost = self.cost.verify_ms(rows) - self.cost.verify_ms(rows - own[idx(d)]);
            let net = alone[idx(d)] as f64 * step - ms - rows_cost;
            let w = &mut self.worth[idx(d)];
            w.net_ms = Some(w.net_ms.map_or(net, |n| n + 0.2 * (net - n)));
        }
        let s = &mut self.stats;
        s.rounds += 1;
        s.rounds_with_tree += !plan.tree.is_empty() as u64;
        s.nodes += plan.tree.len() as u64;
        s.depth_sum += plan.tree.depth() as u64;
        s.policy_us += t.elapsed().as_secs_f64() * 1e6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flat_cost() -> CostModel {
        CostModel::from_curve(vec![(1, 10.0), (2, 10.5), (16, 12.0), (64, 20.0)])
    }
    fn steep_cost() -> CostModel {
        CostModel::from_curve(vec![(1, 10.0), (2, 14.0), (3, 17.0), (4, 21.0), (5, 30.0), (16, 80.0)])
    }

    fn chain(scores: &[f32], d: Drafter) -> TokenTree {
        let mut t = TokenTree::default();
        let mut parent = None;
        for (i, &s) in scores.iter().enumerate() {
            parent = Some(t.push(parent, 100 + i as u32, s, d));
        }
        t
    }

    #[test]
    fn cheap_verification_takes_more_nodes_than_expensive() {
        let scores = [0.9, 0.7, 0.5, 0.35, 0.25, 0.15, 0.1];
        let prop = [(Drafter::Suffix, chain(&scores, Drafter::Suffix))];
        let wide = Controller::new(flat_cost()).choose(&prop, 63).tree.len();
        let narrow = Controller::new(steep_cost()).choose(&prop, 63).tree.len();
        assert_eq!(wide, scores.len(), "a flat cost curve verifies everything likely at all");
        assert!((1..4).contains(&narrow), "a steep one only the likely head of the chain: {narrow}");
    }

    #[test]
    fn untried_drafts_are_tried_then_unlikely_ones_mean_plain_decoding() {
        let mut c = Controller::new(steep_cost());
        let prop = [(Drafter::Suffix, chain(&[0.1, 0.05], Drafter::Suffix))];
        assert!(!c.choose(&prop, 63).tree.is_empty(), "a score never tried gets a look");
        for _ in 0..30 {
            let plan = c.choose(&prop, 63);
            let n = plan.tree.len();
            // accepted as often as the score says
            let accepted: Vec<bool> = (0..n).map(|i| i == 0 && c.stats.rounds.is_multiple_of(10)).collect();
            let ms = steep_cost().verify_ms(n + 1);
            c.observe(&plan, &accepted, n + 1, ms, &[]);
        }
        assert!(c.choose(&prop, 63).tree.is_empty(), "a 10% draft does not pay for a 40% dearer pass");
    }

    #[test]
    fn calibration_learns_that_a_confident_speculator_is_wrong() {
        let mut c = Controller::new(steep_cost());
        let prop = [(Drafter::Head, chain(&[0.9, 0.8], Drafter::Head))];
        assert!(!c.choose(&prop, 63).tree.is_empty(), "trusted at first");
        for _ in 0..100 {
            let plan = c.choose(&prop, 63);
            let n = plan.tree.len();
            let ms = steep_cost().verify_ms(n + 1);
            c.observe(&plan, &vec![false; n], n + 1, ms, &[]);
            if n == 0 {
                break;
            }
        }
        assert!(c.choose(&prop, 63).tree.is_empty(), "never accepted: no longer verified");
    }

    #[test]
    fn the_same_score_is_trusted_on_long_matches_and_not_on_short_ones() {
        let mut c = Controller::new(steep_cost());
        let prop = |evidence| {
            let mut t = chain(&[0.5, 0.5], Drafter::Suffix);
            t.evidence = evidence;
            [(Drafter::Suffix, t)]
        };
        // short matches are never accepted, long ones always
        for r in 0..200 {
            let evidence = if r % 2 == 0 { 1 } else { 8 };
            let plan = c.choose(&prop(evidence), 63);
            let n = plan.tree.len();
            c.observe(&plan, &vec![evidence == 8; n], n + 1, steep_cost().verify_ms(n + 1), &[]);
        }
        assert!(c.choose(&prop(1), 63).tree.is_empty(), "a 1-token match's guesses are not verified");
        assert_eq!(c.choose(&prop(8), 63).tree.len(), 2, "an 8-token match's are");
    }

    #[test]
    fn a_draft_model_that_is_always_right_but_dear_to_verify_is_dropped() {
        // the steep curve verifies 3 of the 4 drafts: all accepted, they save 3 steps (30 ms);
        // the 4-row pass costs 11 ms more than a plain one, so drafting may take at most 19 ms
        for (draft_ms, pays) in [(15.0, true), (25.0, false)] {
            let mut c = Controller::new(steep_cost());
            assert!(c.wants(Drafter::Draft));
            let plan = c.choose(&[(Drafter::Draft, chain(&[0.95; 4], Drafter::Draft))], 63);
            assert_eq!(plan.tree.len(), 3);
            c.observe(&plan, &[true; 3], 4, steep_cost().verify_ms(4), &[(Drafter::Draft, draft_ms)]);
            assert_eq!(c.wants(Drafter::Draft), pays, "drafting for {draft_ms} ms");
        }
    }

    #[test]
    fn merges_proposals_and_keeps_sources() {
        let mut c = Controller::new(flat_cost());
        let a = chain(&[0.9, 0.8], Drafter::Suffix);
        let mut b = chain(&[0.6], Drafter::Head); // the same first token
        b.push(None, 7, 0.5, Drafter::Head);
        let plan = c.choose(&[(Drafter::Suffix, a), (Drafter::Head, b)], 63);
        assert_eq!(plan.tree.len(), 3);
        let first = plan.tree.nodes.iter().position(|n| n.token == 100).unwrap();
        assert_eq!(plan.sources[first].len(), 2, "proposed by both");
        assert!(plan.tree.nodes.iter().any(|n| n.token == 7 && n.drafter == Drafter::Head));
        // the tree is well formed: parents first
        for (i, n) in plan.tree.nodes.iter().enumerate() {
            assert!(n.parent.is_none_or(|p| p < i));
        }
    }

    #[test]
    fn an_expensive_speculator_that_does_not_pay_is_dropped_and_retried() {
        let mut c = Controller::new(steep_cost());
        let empty = Plan { tree: TokenTree::default(), sources: vec![] };
        assert!(c.wants(Drafter::Head));
        c.observe(&empty, &[], 1, 10.0, &[(Drafter::Head, 30.0)]);
        let skipped = (0..EXPLORE_EVERY - 1).filter(|_| {
            let w = c.wants(Drafter::Head);
            c.observe(&empty, &[], 1, 10.0, &[]);
            !w
        });
        assert_eq!(skipped.count() as u64, EXPLORE_EVERY - 1);
        assert!(c.wants(Drafter::Head), "looked at again after {EXPLORE_EVERY} rounds");
    }
}

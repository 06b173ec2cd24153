//! The confidence-aware controller behind `--speculate auto`. Every round it decides which
//! speculators draft and which of their nodes the target verifies, from what it keeps measuring
//! on this device:
//! - calibration: for each speculator, how often a node it gave conditional score s (its
//!   chance once its parent is accepted) was accepted when its parent was (its own confidence
//!   mapped to a realised acceptance rate, per score bin, exponentially weighted so that drift
//!   shows within tens of rounds, kept apart by the proposal's evidence and by whether the last
//!   round's tree was accepted whole); a node's estimate is the product of these along its path;
//! - cost: what a verification pass of M rows takes (`cost.rs`), and what each expensive
//!   speculator's drafting takes.
//!
//! The proposals of all speculators that drafted are merged into one tree (a token proposed by
//! two keeps the better estimate), nodes are ordered by calibrated acceptance probability, and
//! the tree verified is the prefix that maximises expected tokens per millisecond:
//! (1 + sum of the nodes' probabilities) / verify_ms(1 + nodes), if that beats plain decoding
//! by `MIN_GAIN`. When nothing is likely enough to pay for its rows, that is the empty tree:
//! plain decoding.
//!
//! An expensive speculator (the draft head, a draft model) drafts only while the tokens it alone
//! got accepted are worth more than its drafting time plus what verifying its own nodes added to
//! the pass. How deep it drafts (its lookahead) is searched the same way: one level deeper after
//! a round whose deepest level paid for its pass and its rows, one level shallower after one
//! whose deepest level did not. One that does not pay is looked at again, one level deep (one
//! pass), at the start of a request, and within a request every `EXPLORE_EVERY` rounds, that
//! interval doubling after each look that did not pay (up to `EXPLORE_MAX`). Every look has to
//! fit in `EXPLORE_SHARE` of the time decoded so far (its drafting and its rows; a draft model
//! skips the prompt of a request it will not look at). A look within a request also pays for
//! catching up: a draft model that sat out must first feed every token committed meanwhile, and
//! where each of those costs a tenth of a target step (lavapipe) no back-off makes that cheap,
//! so there it is looked at again only when a request starts; where they cost little (a GPU),
//! it is looked at within requests too.
//! Until a look has measured that price, the drafter's own (a draft model times its prefill)
//! stands in. Within a round, a drafter that drafts level by level in passes of its own expands
//! only nodes likely enough to pay for the next level's pass and a row (`min_expand_score`).
//! Drafting times are set against steps at the speed the machine runs now: each round's saved
//! steps and added rows are priced by the cost curve's shape scaled to that round's own pass.
//! One that pays sits out a round whose tokens the suffix index already proposes (`sits_out`),
//! and starts every request one level deep, its first round's net replacing the last request's.
//!
//! It runs on the host, between the readback of one round and the submission of the next: the
//! host builds every round's tree anyway (the suffix matches are found on the CPU), so a GPU
//! pass here would add a readback instead of saving one. Its cost is reported (`policy_us`).

use super::calibration::{BINS, Calibration, level};
use super::cost::CostModel;
use super::tree::{Drafter, TokenTree};
use serde::Serialize;

/// Rounds between looks at an expensive speculator that is not paying, at first...
const EXPLORE_EVERY: u64 = 16;
/// ...and at most, after looks that kept finding it not paying.
const EXPLORE_MAX: u64 = 256;
/// Most of the decoding time that looks at expensive speculators may take.
const EXPLORE_SHARE: f64 = 0.03;
/// Least gain in expected tokens per millisecond over plain decoding for which a tree is
/// verified. The estimates behind the gain are uncertain, and worst when the text has just
/// changed (the bins learn over ~50 observations): a tree predicted to gain 3% on lavapipe is a
/// 1-node guess at the break-even rate, the kind of tree most of Spec-Bench's qa verified in
/// session 7, accepted 20-30% of the time where 35-60% was believed. A cut of 5% costs little
/// where speculation pays (accepted drafts promise 20-80%).
const MIN_GAIN: f64 = 0.05;
/// Deepest lookahead the controller asks of an expensive speculator (the round clamps it too).
const MAX_LOOKAHEAD: usize = 16;

/// Whether drafting with an expensive speculator pays: its accepted-alone tokens per round
/// (valued at one plain step each) against its drafting time and the verification rows of its
/// own nodes, exponentially weighted; and how deep it drafts.
#[derive(Debug, Clone)]
struct Worth {
    net_ms: Option<f64>,
    last_tried: u64,
    /// Rounds between looks while it does not pay.
    explore_every: u64,
    /// The lookahead it gets when it next drafts.
    depth: usize,
    /// The lookahead it was given in the round being observed, and whether that round was a look.
    asked: usize,
    looking: bool,
    /// A new request began: look at it in its first round.
    look_due: bool,
    /// A new request began while it paid: its first drafting round's net replaces what the
    /// last request left (the text may have changed).
    fresh: bool,
    /// Tokens committed since it last drafted (what it must feed first, if it keeps a cache).
    since: usize,
    /// What its last look cost: drafting, and feeding each token committed while it sat out
    /// (None until a look has measured it).
    look_ms: f64,
    idle_ms_per_token: Option<f64>,
}

impl Default for Worth {
    fn default() -> Worth {
        Worth {
            net_ms: None,
            last_tried: 0,
            explore_every: EXPLORE_EVERY,
            depth: 1,
            asked: 0,
            looking: false,
            look_due: false,
            fresh: false,
            since: 0,
            look_ms: 0.0,
            idle_ms_per_token: None,
        }
    }
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
    /// Its conditional score there: its own score over its parent's, the chance that drafter
    /// gives it once its parent is accepted (scores are path probabilities). That is what is
    /// calibrated, so a chain's estimate is a product that falls with depth: a calibration of
    /// path scores pooled the depths, and its mean let 8-deep chains of once-seen continuations
    /// (path scores 0.5 all along) through that were accepted 7 times in 35 predicted (qa).
    pub score: f32,
    /// The proposal's evidence level (`level`).
    pub level: usize,
}

/// An expensive speculator drafted in the round: for `ms` milliseconds, plus `idle_ms` feeding
/// tokens committed in rounds it sat out (`Speculator::idle_catch_up_ms`); its deepest level
/// and that level's pass (`Speculator::deepest_level`).
#[derive(Debug, Clone, Copy)]
pub struct Drafting {
    pub drafter: Drafter,
    pub ms: f64,
    pub idle_ms: f64,
    pub deepest: Option<(usize, f64)>,
}

/// A verified tree and where each node came from.
pub struct Plan {
    pub tree: TokenTree,
    /// Per node: every speculator that proposed it.
    pub sources: Vec<Vec<Source>>,
    /// Proposed nodes left out of the tree whose parent is in it (or who have none): once the
    /// round is over, the token the target chose after the accepted path says whether those
    /// hanging from its end would have been accepted (`observe_declined`).
    pub declined: Vec<Declined>,
    /// Nodes proposed in all (merged), and the best estimate among those left out (for the
    /// trace: what the controller declined).
    pub proposed: usize,
    pub best_declined: f64,
}

/// A proposed node the controller did not verify.
#[derive(Debug, Clone)]
pub struct Declined {
    /// Its parent's index in the verified tree (None: a first-level node).
    pub parent: Option<usize>,
    pub token: u32,
    pub sources: Vec<Source>,
}

pub struct Controller {
    pub cost: CostModel,
    calib: [Calibration; 3],
    worth: [Worth; 3],
    /// Time of every round (verification and drafting), and of the looks within them.
    total_ms: f64,
    look_ms: f64,
    /// A plain step at the speed of the last rounds (each round's pass priced by the curve's
    /// shape, exponentially weighted over ~2 rounds): what drafting times are set against.
    step_now: Option<f64>,
    /// Whether the last round of this request verified a tree and had all of it accepted (its
    /// accepted path reached the tree's deepest level): what the next round is calibrated on.
    after_full: bool,
    pub stats: ControllerStats,
}

fn idx(d: Drafter) -> usize {
    match d {
        Drafter::Suffix => 0,
        Drafter::Draft => 1,
        Drafter::Head => 2,
    }
}

/// Node i's score given its parent's acceptance: the ratio of path scores (a drafter's
/// conditional probability of the token; for the suffix index, how often the continuation
/// followed its parent's).
fn conditional(tree: &TokenTree, i: usize) -> f32 {
    let n = &tree.nodes[i];
    match n.parent.map(|q| tree.nodes[q].score) {
        Some(ps) if ps > 0.0 => (n.score / ps).min(1.0),
        _ => n.score,
    }
}

impl Controller {
    pub fn new(cost: CostModel) -> Controller {
        Controller {
            cost,
            calib: [Calibration::new(), Calibration::new(), Calibration::new()],
            worth: Default::default(),
            total_ms: 0.0,
            look_ms: 0.0,
            step_now: None,
            after_full: false,
            stats: ControllerStats::default(),
        }
    }

    /// Whether an expensive speculator should draft this round, and how deep: None, or its
    /// lookahead (1 for a look at one that is not paying). `feed_ms_per_token`: what it says
    /// feeding a token into its own cache costs (`Speculator::feed_ms_per_token`), the price of
    /// a look until a look has measured it.
    pub fn wants(&mut self, d: Drafter, feed_ms_per_token: Option<f64>) -> Option<usize> {
        let budget = EXPLORE_SHARE * self.total_ms - self.look_ms;
        let w = &mut self.worth[idx(d)];
        let r = self.stats.rounds;
        let paying = w.net_ms.is_none_or(|n| n > 0.0);
        let due = r.saturating_sub(w.last_tried) >= w.explore_every;
        let per_token = w.idle_ms_per_token.or(feed_ms_per_token).unwrap_or(0.0);
        let affordable = w.look_ms + per_token * w.since as f64 <= budget;
        let look = !paying && (w.look_due || (due && affordable));
        w.look_due = false;
        if !paying && !look {
            return None;
        }
        w.last_tried = r;
        w.looking = look;
        w.asked = if look { 1 } else { w.depth };
        Some(w.asked)
    }

    /// A new request begins: its first round looks at every expensive speculator that is not
    /// paying (the text may have changed; a draft model feeds the prompt during prefill, so a
    /// look costs its drafting and the rows of its nodes) if its last look's price fits in
    /// `EXPLORE_SHARE` of the decoding so far. Without that share, a draft model that a device
    /// makes too dear would cost every short request a look: on lavapipe a 0.5B model's look
    /// at one level and its rows take 1-2 steps of a 1.5B target, 5-10% of a 24-token answer.
    pub fn begin_request(&mut self) {
        self.after_full = false;
        let budget = EXPLORE_SHARE * self.total_ms - self.look_ms;
        for w in &mut self.worth {
            w.look_due = w.net_ms.is_some_and(|n| n <= 0.0) && w.look_ms <= budget;
            // one that pays starts the request one level deep, and its first round's net
            // replaces the last request's: a net earned in code carried into translation, at
            // the depth code had reached, cost 3-4 rounds of deep drafting before it turned
            if w.net_ms.is_some_and(|n| n > 0.0) {
                w.depth = 1;
                w.fresh = true;
            }
        }
    }

    /// Whether an expensive speculator that pays sits this round out because the suffix
    /// index's proposal already covers what it could add: at full acceptance of its own
    /// drafts, each of its levels adds a token only where the suffix index's best node at that
    /// depth would not be accepted (1 less that node's calibrated chance), and those tokens,
    /// at a step each, would not pay for its levels (`level_ms` each, as measured). A paying
    /// draft model otherwise drafts the very tokens the suffix index proposed for free: 479,
    /// 279 and 198 ms in three rounds of a code rewrite (session 34).
    pub fn sits_out(&self, d: Drafter, suffix: &TokenTree, max_depth: usize, level_ms: Option<f64>) -> bool {
        let w = &self.worth[idx(d)];
        let (Some(level_ms), true) = (level_ms, w.net_ms.is_some_and(|n| n > 0.0) && !w.look_due) else {
            return false;
        };
        let depth = w.depth.min(max_depth);
        let cal = &self.calib[idx(Drafter::Suffix)];
        let lv = level(suffix.evidence, self.after_full);
        let mut sure = vec![0.0; suffix.len()];
        let mut best = vec![0.0f64; depth + 1];
        for (i, n) in suffix.nodes.iter().enumerate() {
            sure[i] = n.parent.map_or(1.0, |q| sure[q]) * cal.p(lv, conditional(suffix, i), false);
            if n.depth <= depth {
                best[n.depth] = best[n.depth].max(sure[i]);
            }
        }
        let step = self.step_ms();
        let adds: f64 = best[1..].iter().map(|b| 1.0 - b).sum();
        adds * step < depth as f64 * level_ms
    }

    /// Whether an expensive speculator may draft in this request's first round (it pays, has
    /// not been measured, or a look is due): a draft model that will not feeds no prompt.
    pub fn may_draft(&self, d: Drafter) -> bool {
        let w = &self.worth[idx(d)];
        w.net_ms.is_none_or(|n| n > 0.0) || w.look_due
    }

    /// The lowest own score of a node worth drafting for `d`: below it, the calibrated chance
    /// of acceptance is under the price of one more verification row (relative to a plain
    /// step), so the controller would not verify it, and a drafter expanding it would spend a
    /// row of its own pass for nothing (a child never outscores its parent).
    pub fn min_score(&self, d: Drafter) -> f32 {
        let price = self.cost.verify_ms(2) / self.cost.verify_ms(1) - 1.0;
        self.lowest_score_worth(d, price, true)
    }

    /// The lowest own score of a node worth expanding into a further level for `d`, whose
    /// levels cost `level_ms` each (`Speculator::level_ms`): its children can add at most its
    /// own chance of acceptance in tokens, each worth a plain step, so below the price of the
    /// pass (relative to a step) and of a row, the level cannot pay. On lavapipe a 0.5B draft
    /// model's level costs 0.3-0.5 of a 1.5B step, and levels drafted past nodes at 0.5 were
    /// spent on drafts that at best broke even; where levels are cheap (a GPU) this is
    /// `min_score`. No optimism: the level is paid whatever the calibration learns from it.
    pub fn min_expand_score(&self, d: Drafter, level_ms: Option<f64>) -> f32 {
        let step = self.step_ms();
        let price = self.cost.verify_ms(2) / self.cost.verify_ms(1) - 1.0 + level_ms.unwrap_or(0.0) / step;
        self.min_score(d).max(self.lowest_score_worth(d, price, false))
    }

    /// A plain step at the machine's current speed (the cost model's until a round has run).
    fn step_ms(&self) -> f64 {
        self.step_now.unwrap_or_else(|| self.cost.verify_ms(1))
    }

    /// The lowest score (to a bin's width) whose calibrated acceptance covers `price`.
    fn lowest_score_worth(&self, d: Drafter, price: f64, explore: bool) -> f32 {
        let cal = &self.calib[idx(d)];
        (0..BINS)
            .map(|b| b as f32 / BINS as f32)
            .find(|&s| cal.p(level(0, false), s.max(0.01), explore) >= price)
            .unwrap_or(1.0)
    }

    /// What an expensive speculator is believed to net per round it drafts, in milliseconds
    /// (None until measured).
    pub fn net_ms(&self, d: Drafter) -> Option<f64> {
        self.worth[idx(d)].net_ms
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
            /// The estimated chance of acceptance, with the optimism that gets an untried
            /// first-level bin verified (what orders the nodes and prices the tree)...
            p: f64,
            /// ...and without it (what a child's estimate builds on).
            sure: f64,
            sources: Vec<Source>,
        }
        let mut merged: Vec<M> = Vec::new();
        // bins whose optimism a first-level node already took this round, per speculator: one
        // verified node teaches a bin, and a cold draft model's 3-4 siblings, each lifted to
        // ~0.5, made a 1.5B target's first pass on lavapipe cost two steps
        let mut explored = [[false; BINS]; 3];
        for (d, tree) in proposals {
            let cal = &self.calib[idx(*d)];
            let lv = level(tree.evidence, self.after_full);
            let mut map = vec![0usize; tree.len()];
            for (i, n) in tree.nodes.iter().enumerate() {
                let score = conditional(tree, i);
                let parent = n.parent.map(|q| map[q]);
                // accepted only if its parent is: the product along the path; only the first
                // level explores
                let sure = parent.map_or(1.0, |q| merged[q].sure) * cal.p(lv, score, false);
                let p = match parent {
                    None => {
                        let first = !std::mem::replace(&mut explored[idx(*d)][Calibration::bin(score)], true);
                        cal.p(lv, score, first)
                    }
                    Some(_) => sure,
                };
                let src = Source { drafter: *d, index: i, score, level: lv };
                let hit = merged.iter().position(|m| m.parent == parent && m.token == n.token);
                map[i] = match hit {
                    Some(j) => {
                        merged[j].p = merged[j].p.max(p);
                        merged[j].sure = merged[j].sure.max(sure);
                        merged[j].sources.push(src);
                        j
                    }
                    None => {
                        let depth = parent.map_or(1, |q| merged[q].depth + 1);
                        merged.push(M { parent, token: n.token, depth, p, sure, sources: vec![src] });
                        merged.len() - 1
                    }
                };
            }
        }
        // most likely first, parents before children on ties
        let mut order: Vec<usize> = (0..merged.len()).collect();
        order.sort_by(|&a, &b| merged[b].p.total_cmp(&merged[a].p).then(merged[a].depth.cmp(&merged[b].depth)));
        order.truncate(limit);
        // a tree must promise MIN_GAIN over plain decoding, not merely break even
        let plain = 1.0 / self.cost.verify_ms(1);
        let (mut best_n, mut best_rate, mut expected) = (0, plain * (1.0 + MIN_GAIN), 0.0);
        for (n, &i) in order.iter().enumerate() {
            expected += merged[i].p;
            let rate = (1.0 + expected) / self.cost.verify_ms(n + 2);
            if rate > best_rate {
                (best_n, best_rate) = (n + 1, rate);
            }
        }
        let best_declined = order.get(best_n).map_or(0.0, |&i| merged[i].p);
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
        let declined = (0..merged.len())
            .filter(|&i| at[i] == usize::MAX)
            .filter_map(|i| {
                let m = &merged[i];
                let parent = match m.parent {
                    None => None,
                    Some(q) if at[q] != usize::MAX => Some(at[q]),
                    Some(_) => return None,
                };
                Some(Declined { parent, token: m.token, sources: m.sources.clone() })
            })
            .collect();
        self.stats.policy_us += t.elapsed().as_secs_f64() * 1e6;
        Plan { tree, sources, declined, proposed: merged.len(), best_declined }
    }

    /// The plan's round is over: `accepted[i]` says whether node i was on the accepted path,
    /// the pass of `rows` rows took `verify_ms`, and the speculators in `drafted` drafted.
    pub fn observe(&mut self, plan: &Plan, accepted: &[bool], rows: usize, verify_ms: f64, drafted: &[Drafting]) {
        let t = std::time::Instant::now();
        // passes priced at this round's speed: the curve's shape, scaled by what this pass took.
        // Drafting times are this round's too; a step priced at the speed of rounds ago (the
        // scale follows the machine over ~10 rounds) once valued a token at twice what it saved
        // after the machine sped up, and made a draft model that lost look as if it paid
        let now = verify_ms / self.cost.verify_ms(rows).max(1e-9);
        let priced: Vec<f64> = (0..=rows).map(|m| self.cost.verify_ms(m.max(1)) * now).collect();
        self.step_now = Some(self.step_now.map_or(priced[1], |s| s + 0.5 * (priced[1] - s)));
        self.cost.observe(rows, verify_ms);
        self.total_ms += verify_ms + drafted.iter().map(|d| d.ms + d.idle_ms).sum::<f64>();
        let committed = 1 + accepted.iter().filter(|&&a| a).count();
        self.after_full = !plan.tree.is_empty() && committed - 1 == plan.tree.depth();
        for w in &mut self.worth {
            w.since += committed;
        }
        // per speculator: its nodes that no other speculator proposed, and those accepted; the
        // same at the deepest level it was asked for
        let (mut own, mut alone) = ([0usize; 3], [0usize; 3]);
        let (mut deep_own, mut deep_alone) = ([0usize; 3], [0usize; 3]);
        for ((srcs, &ok), node) in plan.sources.iter().zip(accepted).zip(&plan.tree.nodes) {
            // a conditional chance is learned where its condition held: the parent accepted
            let tried = node.parent.is_none_or(|q| accepted[q]);
            for src in srcs {
                if tried {
                    self.calib[idx(src.drafter)].observe(src.level, src.score, ok);
                }
                self.stats.nodes_from.entry(src.drafter.name().into()).and_modify(|c| *c += 1).or_insert(1);
            }
            if let [src] = srcs.as_slice() {
                let i = idx(src.drafter);
                own[i] += 1;
                alone[i] += ok as usize;
                if node.depth == self.worth[i].asked {
                    deep_own[i] += 1;
                    deep_alone[i] += ok as usize;
                }
            }
        }
        // each token it alone got accepted saves a plain step; against that, its drafting time
        // and the rows its own nodes added to the verification pass (on a device where rows are
        // dear, a draft model can be right most of the time and still not pay)
        let step = priced[1];
        let rows_cost = |own: usize| priced[rows] - priced[rows - own];
        for &Drafting { drafter: d, ms, idle_ms, deepest } in drafted {
            *self.stats.drafted_rounds.entry(d.name().into()).or_default() += 1;
            let i = idx(d);
            let net = alone[i] as f64 * step - ms - rows_cost(own[i]);
            let w = &mut self.worth[i];
            // a look replaces the estimate: it is the news about text the speculator sat out
            w.net_ms = Some(match w.net_ms {
                Some(n) if !w.looking && !w.fresh => n + 0.2 * (net - n),
                _ => net,
            });
            w.fresh = false;
            // its deepest level: the pass that drafted it and the rows of its nodes there (a
            // drafter that stopped short by itself says nothing about going deeper)
            if let Some((reached, pass_ms)) = deepest
                && reached >= w.asked
            {
                let worth = deep_alone[i] as f64 * step - pass_ms - rows_cost(deep_own[i]);
                w.depth = if worth > 0.0 { (w.asked + 1).min(MAX_LOOKAHEAD) } else { w.asked.saturating_sub(1).max(1) };
            }
            if w.net_ms.is_some_and(|n| n > 0.0) {
                w.explore_every = EXPLORE_EVERY;
            } else if w.looking {
                w.explore_every = (w.explore_every * 2).min(EXPLORE_MAX);
            }
            if w.looking {
                // a look's price: its drafting, feeding what it sat out, and its rows
                self.look_ms += ms + idle_ms + rows_cost(own[i]);
                w.look_ms = ms + rows_cost(own[i]);
                w.idle_ms_per_token = Some(idle_ms / (w.since - committed).max(1) as f64);
            }
            w.since = committed;
            w.looking = false;
        }
        let s = &mut self.stats;
        s.rounds += 1;
        s.rounds_with_tree += !plan.tree.is_empty() as u64;
        s.nodes += plan.tree.len() as u64;
        s.depth_sum += plan.tree.depth() as u64;
        s.policy_us += t.elapsed().as_secs_f64() * 1e6;
    }

    /// What the round says about the nodes the controller declined, at no cost: `next` is the
    /// token the target chose after the accepted path, so a declined node hanging from the
    /// path's end would have been accepted exactly when it is that token (greedy), and for a
    /// deterministic drafter (the suffix index: q one-hot) with the probability that `next` is
    /// it when sampling, provided `next` was drawn from the target's own distribution there
    /// (no verified sibling rejected first, which would leave a residual).
    ///
    /// Without this, a drafter is learned only where its nodes are verified, and once its
    /// calibration says its drafts are poor (Spec-Bench qa for the suffix index) they are
    /// declined, so nothing shows when the text changes to one where they are good
    /// (translation): session 8's stream kept the suffix index out for four requests after the
    /// shift. Declined nodes deeper than the path's end would need later rounds' tokens, and
    /// are left out.
    pub fn observe_declined(&mut self, plan: &Plan, accepted: &[bool], next: u32, greedy: bool) {
        let t = std::time::Instant::now();
        let end = (0..accepted.len()).filter(|&i| accepted[i]).max_by_key(|&i| plan.tree.nodes[i].depth);
        let untouched = !plan.tree.nodes.iter().any(|n| n.parent == end);
        if !greedy && !untouched {
            return;
        }
        for d in plan.declined.iter().filter(|d| d.parent == end) {
            for src in d.sources.iter().filter(|s| greedy || s.drafter == Drafter::Suffix) {
                self.calib[idx(src.drafter)].observe(src.level, src.score, d.token == next);
            }
        }
        self.stats.policy_us += t.elapsed().as_secs_f64() * 1e6;
    }
}

#[cfg(test)]
mod tests;

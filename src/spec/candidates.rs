//! Growing a draft tree from top-k candidates, shared by the drafters that expand it level by
//! level (a draft model, the draft head): a node's score is the product of the drafter's
//! probabilities along its path (its estimated chance of acceptance); each level expands the
//! best nodes that could still make the final tree, and the tree verified is the `budget`
//! best-scoring nodes (a child never outscores its parent, so that set is a tree).

use super::tree::{Drafter, TokenTree};
use crate::gpu::kernels::CANDIDATES;
use crate::model::gpu::DRAW_BYTES;

/// A drafted token before the tree is chosen.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub token: u32,
    pub parent: Option<usize>,
    pub depth: usize,
    /// The drafter's (calibrated) probability of the token after its parent.
    pub prob: f32,
    /// Product of `prob` along the path.
    pub score: f32,
    /// The drafter's slot for this node once it has been expanded.
    pub slot: Option<usize>,
}

/// The price of a level to a drafter that expands its tree level by level in passes of its own
/// (a draft model, the draft head): the least score of a node worth expanding into the next
/// level (`Speculator::set_expand_confidence`) and what a level's pass has taken, exponentially
/// weighted (`Speculator::level_ms`).
#[derive(Debug, Default, Clone, Copy)]
pub struct LevelPrice {
    pub expand_confidence: f32,
    pub level_ms: Option<f64>,
}

impl LevelPrice {
    /// The least score of a node expanded into the next level, for a drafter whose own floor
    /// is `min_confidence`.
    pub fn floor(&self, min_confidence: f32) -> f32 {
        min_confidence.max(self.expand_confidence)
    }

    /// A level's pass took `ms`.
    pub fn record(&mut self, ms: f64) {
        self.level_ms = Some(self.level_ms.map_or(ms, |l| l + 0.3 * (ms - l)));
    }
}

#[derive(Debug, Default)]
pub struct Candidates {
    pub nodes: Vec<Candidate>,
}

/// Top-k readback ([row][CANDIDATES][id, bits of p]) as (id, p) lists, empty slots dropped.
pub fn parse(raw: &[u32]) -> Vec<Vec<(u32, f32)>> {
    raw.chunks(CANDIDATES * 2)
        .map(|r| r.chunks(2).map(|c| (c[0], f32::from_bits(c[1]))).filter(|c| c.1 > 0.0).collect())
        .collect()
}

/// A drafter's draw of one row with the noise the target will use at that position (accept.wgsl
/// draw_rows): the token, its chance of matching the target's draw, and the runner-up of the
/// draw (the likeliest token where it misses).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoupledDraw {
    pub token: u32,
    pub score: f32,
    pub runner_up: Option<u32>,
}

impl CoupledDraw {
    /// draw_rows' readback (DRAW_BYTES a row) as one draw per row; None where a row drew no
    /// token of the vocabulary.
    pub fn parse(raw: &[u32], vocab: usize) -> Vec<Option<CoupledDraw>> {
        let ok = |t: u32| (t as usize) < vocab;
        raw.chunks(DRAW_BYTES / 4)
            .map(|d| {
                ok(d[0]).then(|| CoupledDraw {
                    token: d[0],
                    score: f32::from_bits(d[1]).clamp(0.0, 1.0),
                    runner_up: ok(d[2]).then_some(d[2]),
                })
            })
            .collect()
    }

    /// The row's children: the draw, and the runner-up with the chance that the draw misses.
    /// The drafter's top candidates are left out: with the draw coupled, they are the target's
    /// token only where the runner-up is not.
    pub fn children(&self) -> Vec<(u32, f32)> {
        std::iter::once((self.token, self.score)).chain(self.runner_up.map(|r| (r, 1.0 - self.score))).collect()
    }
}

/// One row's candidates: (token, probability) pairs.
pub type Row = Vec<(u32, f32)>;

/// A drafting pass's readback: CANDIDATES (id, bits of p) pairs per row, then, when the target
/// samples, a DRAW_BYTES coupled draw per row. Returns each row's top candidates and its
/// children: its coupled draw's where it has one, else its top candidates.
pub fn read_level(raw: &[u32], rows: usize, vocab: usize) -> (Vec<Row>, Vec<Row>) {
    let (top, draws) = raw.split_at(rows * CANDIDATES * 2);
    let top = parse(top);
    let mut children = top.clone();
    for (row, d) in children.iter_mut().zip(CoupledDraw::parse(draws, vocab)) {
        if let Some(d) = d {
            *row = d.children();
        }
    }
    (top, children)
}

impl Candidates {
    /// Adds the children `row` of `parent` (None: the root), probabilities times `scale`.
    pub fn add(&mut self, parent: Option<usize>, row: Vec<(u32, f32)>, scale: f32) {
        let (depth, score) = parent.map_or((1, 1.0), |p| (self.nodes[p].depth + 1, self.nodes[p].score));
        for (token, p) in row {
            let prob = (p * scale).min(1.0);
            self.nodes.push(Candidate { token, parent, depth, prob, score: score * prob, slot: None });
        }
    }

    /// The best (at most `width`) nodes at `depth` scoring at least `min` that could still be
    /// among the `budget` best: the ones worth expanding.
    pub fn level(&self, depth: usize, budget: usize, width: usize, min: f32) -> Vec<usize> {
        let mut scores: Vec<f32> = self.nodes.iter().map(|c| c.score).collect();
        scores.sort_by(|a, b| b.total_cmp(a));
        let cutoff = if budget > 0 && scores.len() >= budget { scores[budget - 1] } else { 0.0 };
        let c = &self.nodes;
        let mut level: Vec<usize> =
            (0..c.len()).filter(|&i| c[i].depth == depth && c[i].score >= min && c[i].score >= cutoff).collect();
        level.sort_by(|&a, &b| c[b].score.total_cmp(&c[a].score));
        level.truncate(width);
        level
    }

    /// The `budget` best nodes scoring at least `min`, parents first, and the candidate behind
    /// each tree node.
    pub fn best_tree(&self, budget: usize, min: f32, drafter: Drafter) -> (TokenTree, Vec<usize>) {
        let c = &self.nodes;
        let mut order: Vec<usize> = (0..c.len()).filter(|&i| c[i].score >= min).collect();
        order.sort_by(|&a, &b| c[b].score.total_cmp(&c[a].score).then(c[a].depth.cmp(&c[b].depth)));
        order.truncate(budget);
        order.sort_by_key(|&i| c[i].depth);
        let mut node_of = vec![usize::MAX; c.len()];
        let mut tree = TokenTree::default();
        let mut picked = Vec::new();
        for i in order {
            let parent = match c[i].parent {
                None => None,
                Some(p) if node_of[p] != usize::MAX => Some(node_of[p]),
                Some(_) => continue, // parent left out (equal scores): drop the orphan
            };
            node_of[i] = tree.push(parent, c[i].token, c[i].score, drafter);
            picked.push(i);
        }
        (tree, picked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A coupled draw leads its row and the runner-up takes the rest of the chance; a row that
    /// drew nothing (an id past the vocabulary) gives no draw, and a lone kept token no runner-up.
    #[test]
    fn coupled_draws_parse_into_children() {
        let raw = [7, 0.8f32.to_bits(), 9, 0, u32::MAX, 0, 0, 0, 3, 1.0f32.to_bits(), u32::MAX, 0];
        let d = CoupledDraw::parse(&raw, 10);
        assert_eq!(d[0], Some(CoupledDraw { token: 7, score: 0.8, runner_up: Some(9) }));
        assert_eq!(d[1], None);
        assert_eq!(d[2], Some(CoupledDraw { token: 3, score: 1.0, runner_up: None }));
        let c = d[0].unwrap().children();
        assert_eq!(c.iter().map(|x| x.0).collect::<Vec<_>>(), [7, 9]);
        assert!((c[0].1 + c[1].1 - 1.0).abs() < 1e-6 && c[0].1 > c[1].1);
        assert_eq!(d[2].unwrap().children(), [(3, 1.0)]);
    }
}

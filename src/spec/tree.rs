//! Token trees: what speculators propose and the target verifies in one pass.

use crate::model::gpu::TreeRows;

/// Which speculator drafted a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Drafter {
    Suffix,
    Draft,
    Head,
}

impl Drafter {
    pub fn name(self) -> &'static str {
        match self {
            Drafter::Suffix => "suffix",
            Drafter::Draft => "draft",
            Drafter::Head => "head",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub token: u32,
    /// Index of the parent node, None for a child of the root (the last committed token).
    pub parent: Option<usize>,
    /// 1 for children of the root.
    pub depth: usize,
    /// The drafter's estimate that this node is accepted: the probability of its whole path
    /// (the controller calibrates it per drafter; acceptance itself never looks at it).
    pub score: f32,
    pub drafter: Drafter,
}

/// Nodes in topological order (every parent before its children); siblings carry distinct tokens.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TokenTree {
    pub nodes: Vec<Node>,
    /// How much context backs the whole proposal, in the drafter's own terms (the suffix
    /// speculator: the length of the suffix it matched; 0 when a drafter has no such notion).
    /// The controller calibrates scores separately per level of evidence: a continuation seen
    /// once after a 1-token match is a guess, after an 8-token match it is usually a copy.
    pub evidence: u8,
}

impl TokenTree {
    /// A chain of tokens (a tree of width 1).
    pub fn chain(tokens: &[u32], drafter: Drafter) -> TokenTree {
        let nodes = tokens
            .iter()
            .enumerate()
            .map(|(i, &t)| Node { token: t, parent: i.checked_sub(1), depth: i + 1, score: 1.0, drafter })
            .collect();
        TokenTree { nodes, evidence: 0 }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn depth(&self) -> usize {
        self.nodes.iter().map(|n| n.depth).max().unwrap_or(0)
    }

    /// Adds a node under `parent` unless a sibling already has the token; returns its index.
    pub fn push(&mut self, parent: Option<usize>, token: u32, score: f32, drafter: Drafter) -> usize {
        if let Some(i) = self.nodes.iter().position(|n| n.parent == parent && n.token == token) {
            return i;
        }
        let depth = parent.map_or(1, |p| self.nodes[p].depth + 1);
        self.nodes.push(Node { token, parent, depth, score, drafter });
        self.nodes.len() - 1
    }

    /// Keeps the first `n` nodes (topological order keeps it a tree).
    pub fn truncate(&mut self, n: usize) {
        self.nodes.truncate(n);
    }

    /// Node indices from the root's child down to `i`.
    pub fn path(&self, i: usize) -> Vec<usize> {
        let mut p = vec![i];
        while let Some(q) = self.nodes[*p.last().unwrap()].parent {
            p.push(q);
        }
        p.reverse();
        p
    }

    /// How many nodes the continuation `tokens` follows from the root: what greedy verification
    /// accepts when the target's output is known in advance (`examples/spec_ceiling`).
    pub fn accepted_along(&self, tokens: &[u32]) -> usize {
        let mut parent = None;
        let mut n = 0;
        while let Some(&t) = tokens.get(n) {
            match self.nodes.iter().position(|x| x.parent == parent && x.token == t) {
                Some(i) => parent = Some(i),
                None => break,
            }
            n += 1;
        }
        n
    }

    /// The verification pass's rows: row 0 is the root (the last committed token, at position
    /// `n_past`), row i + 1 is node i at position n_past + depth. Each row sees the committed
    /// cache, its ancestors and itself.
    pub fn rows(&self, n_past: usize) -> TreeRows {
        let m = self.nodes.len() + 1;
        assert!(m <= 64, "a verified tree holds at most 63 nodes");
        let mut masks = vec![[0u32; 2]; m];
        let mut positions = vec![n_past as u32; m];
        let mut parents = vec![u32::MAX; m];
        masks[0][0] = 1;
        for (i, n) in self.nodes.iter().enumerate() {
            let row = i + 1;
            let parent_row = n.parent.map_or(0, |p| p + 1);
            assert!(parent_row < row, "tree nodes must come after their parents");
            let mut mk = masks[parent_row];
            mk[row / 32] |= 1 << (row % 32);
            masks[row] = mk;
            positions[row] = (n_past + n.depth) as u32;
            parents[row] = parent_row as u32;
        }
        TreeRows { base: n_past, masks, positions, parents }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_of_a_small_tree() {
        let mut t = TokenTree::default();
        let a = t.push(None, 10, 1.0, Drafter::Suffix);
        let b = t.push(None, 11, 1.0, Drafter::Suffix);
        let c = t.push(Some(a), 12, 1.0, Drafter::Suffix);
        assert_eq!(t.push(None, 10, 1.0, Drafter::Suffix), a, "siblings are deduplicated");
        let r = t.rows(5);
        assert_eq!(r.positions, [5, 6, 6, 7]);
        assert_eq!(r.parents, [u32::MAX, 0, 0, 1]);
        assert_eq!(r.masks[0][0], 0b1);
        assert_eq!(r.masks[1][0], 0b11);
        assert_eq!(r.masks[2][0], 0b101);
        assert_eq!(r.masks[3][0], 0b1011);
        assert_eq!(t.path(c), [a, c]);
        assert_eq!(b, 1);
        assert_eq!(TokenTree::chain(&[1, 2, 3], Drafter::Suffix).depth(), 3);
    }

    #[test]
    fn accepted_along_follows_the_matching_branch() {
        let mut t = TokenTree::default();
        let a = t.push(None, 10, 1.0, Drafter::Suffix);
        let b = t.push(None, 11, 1.0, Drafter::Suffix);
        t.push(Some(a), 12, 1.0, Drafter::Suffix);
        t.push(Some(b), 13, 1.0, Drafter::Suffix);
        t.push(Some(b), 12, 1.0, Drafter::Suffix);
        assert_eq!(t.accepted_along(&[11, 12, 99]), 2, "the second root child, then its second child");
        assert_eq!(t.accepted_along(&[10, 13]), 1, "13 hangs from the other branch");
        assert_eq!(t.accepted_along(&[12]), 0);
        assert_eq!(t.accepted_along(&[]), 0);
        assert_eq!(TokenTree::chain(&[1, 2, 3], Drafter::Suffix).accepted_along(&[1, 2, 3, 4]), 3);
    }
}

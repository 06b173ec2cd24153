//! The suffix speculator: model-free, after SuffixDecoding. It indexes every n-gram (n up to
//! MAX_N) of this request's prompt and output, and of a bounded store of past requests, by the
//! position that follows it. To draft, it finds the longest suffix of the context that occurred
//! before, merges what followed each occurrence into a trie, and keeps the most frequent
//! continuations (count / occurrences, an empirical acceptance estimate) as a tree.
//!
//! The store learns from every finished request at once (a chat's next turn, whose prompt holds
//! the turns before it, extends the entry of the last one rather than storing it again) and
//! persists under
//! $AUGUR_HOME/suffix/<model key>.bin (at most STORE_CAP tokens, oldest dropped first, written
//! atomically), so a user's history keeps helping across runs.

use super::{Drafter, Speculator, TokenTree};
use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Longest n-gram indexed.
pub const MAX_N: usize = 8;
/// Most occurrences merged per proposal (the most recent ones).
const MAX_OCCURRENCES: usize = 64;
/// Tokens kept in the persistent store of past requests (4 MiB on disk).
pub const STORE_CAP: usize = 1 << 20;
/// Separates requests in the store; never a real token.
const SEP: u32 = u32::MAX;
const MAGIC: &[u8; 8] = b"AUGSUFX1";

/// n-gram -> positions following its occurrences, over one growing token sequence.
#[derive(Default, Clone)]
pub struct NgramIndex {
    pub seq: Vec<u32>,
    map: HashMap<(u8, u64), Vec<u32>>,
}

fn key(gram: &[u32]) -> (u8, u64) {
    // FNV-1a over the tokens; collisions are checked against the sequence on lookup
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &t in gram {
        h ^= t as u64;
        h = h.wrapping_mul(0x100_0000_01b3);
    }
    (gram.len() as u8, h)
}

impl NgramIndex {
    pub fn push(&mut self, t: u32) {
        self.seq.push(t);
        let len = self.seq.len();
        if t == SEP {
            return;
        }
        // n-grams ending at the previous token map to this token's position
        for n in 1..=MAX_N.min(len - 1) {
            let gram = &self.seq[len - 1 - n..len - 1];
            if gram.contains(&SEP) {
                break;
            }
            self.map.entry(key(gram)).or_default().push((len - 1) as u32);
        }
    }

    /// Positions that follow earlier occurrences of `gram` (most recent last).
    fn follows<'a>(&'a self, gram: &'a [u32]) -> impl Iterator<Item = usize> + 'a {
        self.map
            .get(&key(gram))
            .map(|v| v.as_slice())
            .unwrap_or(&[])
            .iter()
            .map(|&p| p as usize)
            .filter(move |&p| p >= gram.len() && &self.seq[p - gram.len()..p] == gram)
    }

    fn rebuild(seq: &[u32]) -> NgramIndex {
        let mut ix = NgramIndex::default();
        for &t in seq {
            ix.push(t);
        }
        ix
    }
}

pub struct SuffixSpeculator {
    request: NgramIndex,
    store: NgramIndex,
    path: Option<PathBuf>,
    /// Drop candidates whose estimated acceptance is below this.
    pub min_score: f32,
}

struct TrieNode {
    token: u32,
    parent: Option<usize>,
    count: usize,
    depth: usize,
    tree_index: Option<usize>,
}

impl SuffixSpeculator {
    /// A speculator with an empty store that is not persisted.
    pub fn in_memory() -> SuffixSpeculator {
        SuffixSpeculator { request: NgramIndex::default(), store: NgramIndex::default(), path: None, min_score: 0.1 }
    }

    /// Loads the store at `path` if it exists (a corrupt one is reported and ignored).
    pub fn persistent(path: PathBuf) -> SuffixSpeculator {
        let mut s = SuffixSpeculator::in_memory();
        match load_store(&path) {
            Ok(seq) => s.store = NgramIndex::rebuild(&seq),
            Err(e) if path.exists() => eprintln!("augur: ignoring the suffix store: {e}"),
            Err(_) => {}
        }
        s.path = Some(path);
        s
    }

    pub fn store_len(&self) -> usize {
        self.store.seq.len()
    }

    /// Adds a finished request's tokens to the store (dropping the oldest beyond the cap) and
    /// saves it when persistent.
    pub fn learn(&mut self, tokens: &[u32]) -> Result<()> {
        if tokens.is_empty() {
            return Ok(());
        }
        // the store's newest entry: what follows the separator before its last one
        let seq = &self.store.seq;
        let end = seq.len().saturating_sub(1);
        let newest = &seq[seq[..end].iter().rposition(|&t| t == SEP).map_or(0, |i| i + 1)..end];
        let mut new = tokens;
        let closed = seq.last() == Some(&SEP);
        if closed && !newest.is_empty() && newest.len() < tokens.len() && tokens.starts_with(newest) {
            // this request begins with it (the next turn of a chat): take its separator off
            // (no n-gram maps to a separator's position) and append the rest
            new = &tokens[newest.len()..];
            self.store.seq.pop();
        }
        for &t in new.iter().chain([SEP].iter()) {
            self.store.push(t);
        }
        let seq = &self.store.seq;
        if seq.len() > STORE_CAP {
            // keep the newest half of the cap, starting at a request boundary when there is one
            let cut = seq.len() - STORE_CAP / 2;
            let start = seq[cut..].iter().position(|&t| t == SEP).map_or(cut, |i| cut + i + 1);
            self.store = NgramIndex::rebuild(&seq[start.min(seq.len())..]);
        }
        if let Some(p) = &self.path {
            save_store(p, &self.store.seq)?;
        }
        Ok(())
    }

    fn sync(&mut self, context: &[u32]) {
        if !context.starts_with(&self.request.seq) {
            self.request = NgramIndex::default();
        }
        for &t in &context[self.request.seq.len()..] {
            self.request.push(t);
        }
    }
}

impl Speculator for SuffixSpeculator {
    fn drafter(&self) -> Drafter {
        Drafter::Suffix
    }

    fn begin(&mut self, prompt: &[u32]) {
        self.request = NgramIndex::default();
        self.sync(prompt);
    }

    fn propose(&mut self, context: &[u32], budget: usize, max_depth: usize) -> TokenTree {
        self.sync(context);
        let mut tree = TokenTree::default();
        if budget == 0 || max_depth == 0 || context.is_empty() {
            return tree;
        }
        let len = context.len();
        // longest suffix with earlier occurrences; continuations are read from the same sequence
        let mut occurrences: Vec<(&[u32], usize)> = Vec::new();
        let mut matched = 0;
        for n in (1..=MAX_N.min(len)).rev() {
            let gram = &context[len - n..];
            let mut found: Vec<(&[u32], usize)> =
                self.request.follows(gram).filter(|&p| p < len).map(|p| (&self.request.seq[..], p)).collect();
            found.extend(self.store.follows(gram).map(|p| (&self.store.seq[..], p)));
            if !found.is_empty() {
                occurrences = found;
                matched = n;
                break;
            }
        }
        if occurrences.is_empty() {
            return tree;
        }
        tree.evidence = matched as u8;
        let skip = occurrences.len().saturating_sub(MAX_OCCURRENCES);
        let total = occurrences.len() - skip;
        let mut trie: Vec<TrieNode> = Vec::new();
        let mut children: HashMap<(Option<usize>, u32), usize> = HashMap::new();
        for &(seq, p) in &occurrences[skip..] {
            let mut parent = None;
            for (d, &t) in seq[p..].iter().take(max_depth).enumerate() {
                if t == SEP {
                    break;
                }
                let id = *children.entry((parent, t)).or_insert_with(|| {
                    trie.push(TrieNode { token: t, parent, count: 0, depth: d + 1, tree_index: None });
                    trie.len() - 1
                });
                trie[id].count += 1;
                parent = Some(id);
            }
        }
        // best-first by frequency; a child's count never exceeds its parent's, and ties go to the
        // shallower (then earlier) node, so parents are always taken before their children
        let mut order: Vec<usize> = (0..trie.len()).collect();
        order.sort_by(|&a, &b| {
            trie[b].count.cmp(&trie[a].count).then(trie[a].depth.cmp(&trie[b].depth)).then(a.cmp(&b))
        });
        for id in order {
            if tree.len() >= budget {
                break;
            }
            // occurrences with this continuation over all occurrences, plus one: a continuation
            // seen once is a coin flip, one seen 9 times in 9 is likely
            let score = trie[id].count as f32 / (total + 1) as f32;
            if score < self.min_score {
                break;
            }
            let parent = match trie[id].parent {
                None => None,
                Some(p) => match trie[p].tree_index {
                    Some(ti) => Some(ti),
                    None => continue,
                },
            };
            trie[id].tree_index = Some(tree.push(parent, trie[id].token, score, Drafter::Suffix));
        }
        tree
    }

    fn set_min_confidence(&mut self, c: f32) {
        self.min_score = c;
    }

    fn finish(&mut self, context: &[u32], _prompt_len: usize) {
        if let Err(e) = self.learn(context) {
            eprintln!("augur: could not save the suffix store ({e}); continuing without saving");
        }
    }
}

fn load_store(path: &Path) -> Result<Vec<u32>> {
    let b = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    if b.len() < 16 || &b[..8] != MAGIC {
        return Err(Error::msg(format!("{}: not a suffix store", path.display())));
    }
    let n = u64::from_le_bytes(b[8..16].try_into().unwrap()) as usize;
    if n > STORE_CAP * 2 || b.len() != 16 + 4 * n {
        return Err(Error::msg(format!("{}: suffix store is truncated or corrupt", path.display())));
    }
    Ok(b[16..].chunks_exact(4).map(|c| u32::from_le_bytes(c.try_into().unwrap())).collect())
}

/// Writes to a temporary file and renames it over the old one: never half-written.
fn save_store(path: &Path, seq: &[u32]) -> Result<()> {
    let mut b = Vec::with_capacity(16 + 4 * seq.len());
    b.extend_from_slice(MAGIC);
    b.extend_from_slice(&(seq.len() as u64).to_le_bytes());
    for t in seq {
        b.extend_from_slice(&t.to_le_bytes());
    }
    crate::util::write_atomic(path, &b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proposes_what_followed_before() {
        let mut s = SuffixSpeculator::in_memory();
        let ctx = [1, 2, 3, 4, 5, 9, 9, 1, 2, 3];
        s.begin(&ctx);
        let t = s.propose(&ctx, 8, 4);
        let chain: Vec<u32> = t.nodes.iter().map(|n| n.token).collect();
        assert_eq!(chain, [4, 5, 9, 9]);
        assert_eq!(t.evidence, 3, "the matched suffix is 1 2 3");
        // one earlier occurrence: estimated acceptance 1 / (1 + 1)
        assert!(t.nodes.iter().all(|n| n.score == 0.5));
    }

    #[test]
    fn branches_by_frequency_and_respects_budget() {
        let mut s = SuffixSpeculator::in_memory();
        // the longest earlier suffix, "5 7 8", was followed by 1 twice and by 2 once
        let ctx = [5, 7, 8, 1, 5, 7, 8, 2, 5, 7, 8, 1, 9, 5, 7, 8];
        s.begin(&ctx);
        let t = s.propose(&ctx, 2, 3);
        assert_eq!(t.len(), 2);
        assert_eq!(t.nodes[0].token, 1);
        assert!((t.nodes[0].score - 2.0 / 4.0).abs() < 1e-6);
        let t = s.propose(&ctx, 10, 1);
        let mut toks: Vec<u32> = t.nodes.iter().map(|n| n.token).collect();
        toks.sort();
        assert_eq!(toks, [1, 2]);
        assert!(t.nodes.iter().all(|n| n.parent.is_none()));
    }

    #[test]
    fn learns_across_requests_and_persists_atomically() {
        let dir = std::env::temp_dir().join(format!("augur-suffix-{}", std::process::id()));
        let path = dir.join("m.bin");
        let mut s = SuffixSpeculator::persistent(path.clone());
        s.finish(&[40, 41, 42, 43, 44], 2);
        let mut s2 = SuffixSpeculator::persistent(path.clone());
        assert_eq!(s2.store_len(), 6);
        s2.begin(&[5, 40, 41]);
        let t = s2.propose(&[5, 40, 41], 4, 4);
        let chain: Vec<u32> = t.nodes.iter().map(|n| n.token).collect();
        assert_eq!(chain, [42, 43, 44], "continuations stop at the request boundary");
        // a corrupt store is ignored, not trusted
        std::fs::write(&path, b"AUGSUFX1garbage").unwrap();
        assert_eq!(SuffixSpeculator::persistent(path.clone()).store_len(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_conversation_is_stored_once_as_it_grows() {
        let mut s = SuffixSpeculator::in_memory();
        s.learn(&[1, 2, 3, 4]).unwrap();
        // the next turn of the same chat: its prompt is the first turn and more
        s.learn(&[1, 2, 3, 4, 5, 6]).unwrap();
        assert_eq!(s.store.seq, [1, 2, 3, 4, 5, 6, SEP]);
        // the n-gram across the old boundary was indexed: "4 5" -> 6
        s.begin(&[9, 4, 5]);
        let t = s.propose(&[9, 4, 5], 4, 1);
        assert_eq!(t.nodes[0].token, 6);
        assert_eq!(t.evidence, 2);
        // another request is an entry of its own, and so is a later one that does not extend it
        s.learn(&[7, 8]).unwrap();
        s.learn(&[1, 2, 3]).unwrap();
        assert_eq!(s.store.seq, [1, 2, 3, 4, 5, 6, SEP, 7, 8, SEP, 1, 2, 3, SEP]);
        // the same request twice is stored twice (it happened twice)
        s.learn(&[1, 2, 3]).unwrap();
        assert_eq!(s.store_len(), 18);
    }

    #[test]
    fn store_stays_under_its_cap() {
        let mut s = SuffixSpeculator::in_memory();
        let chunk: Vec<u32> = (0..100_000).map(|i| i % 5000).collect();
        for _ in 0..12 {
            s.learn(&chunk).unwrap();
        }
        assert!(s.store_len() <= STORE_CAP);
        assert!(s.store_len() >= STORE_CAP / 2 - 100_001);
    }
}

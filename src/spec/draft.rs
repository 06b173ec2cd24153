//! Draft-model speculator: a smaller model of the target's family, with the same vocabulary and
//! its own KV cache, drafts a token tree EAGLE-2 style.
//!
//! Each round it first feeds the committed tokens it has not seen (the prompt on the first round,
//! then the accepted drafts and the bonus token), and reads the top candidates after the root.
//! Then, depth by depth, it expands the `width` most likely nodes of the newest level in one
//! tree-masked pass (the tree's KV rows sit above the committed ones; each row sees its
//! ancestors) and reads back only CANDIDATES (id, probability) pairs per expanded row. A node's
//! score is the product of the draft probabilities along its path, an estimate of the chance
//! that the target accepts it; the tree sent for verification is the `budget` best-scoring nodes
//! (a child never outscores its parent, so that set is a tree). Drafting stops deepening once
//! no node of the new level is likely enough to be kept.
//!
//! Drafts are fixed proposals (q one-hot in the acceptance rule), so verification stays lossless
//! when sampling too.

use super::Speculator;
use super::tree::{Drafter, TokenTree};
use crate::error::{Error, Result};
use crate::gpu::kernels::CANDIDATES;
use crate::gpu::map_read;
use crate::model::LoadedModel;
use crate::model::gpu::{GpuModel, PassSpec, TreeRows};
use std::sync::Arc;

/// Nodes expanded per level: more finds more siblings, but each pass costs more rows.
const DEFAULT_WIDTH: usize = 4;

pub struct DraftModelSpeculator {
    model: GpuModel,
    staging: wgpu::Buffer,
    /// Committed tokens whose KV rows are in the draft model's cache, at slots 0..fed.len().
    fed: Vec<u32>,
    width: usize,
    min_confidence: f32,
    /// Where the model came from (for messages).
    pub source: String,
}

/// A drafted token before the tree is chosen.
#[derive(Debug, Clone)]
struct Candidate {
    token: u32,
    parent: Option<usize>,
    depth: usize,
    /// The draft model's probability of the token after its parent.
    prob: f32,
    /// Product of `prob` along the path.
    score: f32,
    /// Tree slot (above the committed rows) once the node has been fed, and its visibility mask.
    slot: Option<(usize, [u32; 2])>,
}

impl DraftModelSpeculator {
    /// Uploads `draft` next to the target. Refuses a model whose vocabulary differs from the
    /// target's: its token ids would mean other text.
    pub fn new(
        target: &GpuModel,
        target_tokens: &crate::model::tokenizer::Tokenizer,
        draft: LoadedModel,
    ) -> Result<Self> {
        if draft.config.vocab != target.cfg.vocab {
            return Err(Error::msg(format!(
                "draft model {} has {} vocabulary entries but the target has {}; use a draft model of the target's family (same tokenizer)",
                draft.source, draft.config.vocab, target.cfg.vocab
            )));
        }
        if let Some(id) = target_tokens.first_difference(&draft.tokenizer) {
            return Err(Error::msg(format!(
                "draft model {} has another vocabulary than the target (token {id} is {:?} there, {:?} in the target); use a draft model of the target's family",
                draft.source,
                draft.tokenizer.id_to_token(id).unwrap_or_default(),
                target_tokens.id_to_token(id).unwrap_or_default(),
            )));
        }
        let gpu: Arc<_> = target.gpu.clone();
        let model = GpuModel::new(gpu.clone(), &draft.config, &draft.weights, target.max_ctx, target.max_batch)?;
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("candidates readback"),
            size: (model.max_batch * CANDIDATES * 8) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(DraftModelSpeculator {
            model,
            staging,
            fed: Vec::new(),
            width: DEFAULT_WIDTH,
            min_confidence: 0.0,
            source: draft.source,
        })
    }

    /// Runs one pass and returns the top candidates of its LM-head rows: [row][CANDIDATES].
    fn candidates(&self, spec: &PassSpec) -> Result<Vec<Vec<(u32, f32)>>> {
        let gpu = &self.model.gpu;
        let rows = spec.logits_rows.len();
        let bytes = (rows * CANDIDATES * 8) as u64;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.model.encode(&mut enc, spec, None)?;
        self.model.encode_candidates(&mut enc, rows);
        enc.copy_buffer_to_buffer(&self.model.candidates, 0, &self.staging, 0, bytes);
        gpu.queue.submit([enc.finish()]);
        let raw: Vec<u32> = bytemuck::pod_collect_to_vec(&map_read(gpu, &self.staging, bytes));
        Ok(raw
            .chunks(CANDIDATES * 2)
            .map(|r| r.chunks(2).map(|c| (c[0], f32::from_bits(c[1]))).filter(|c| c.1 > 0.0).collect())
            .collect())
    }

    /// Feeds the committed tokens the draft cache lacks; returns the candidates after the last.
    fn catch_up(&mut self, context: &[u32]) -> Result<Vec<(u32, f32)>> {
        let common = self.fed.iter().zip(context).take_while(|(a, b)| a == b).count().min(context.len() - 1);
        self.fed.truncate(common);
        let pending = context[common..].to_vec();
        let mb = self.model.max_batch;
        let mut out = Vec::new();
        for (i, chunk) in pending.chunks(mb).enumerate() {
            let last = (i + 1) * mb >= pending.len();
            self.model.set_tokens(chunk);
            let spec = PassSpec {
                m: chunk.len(),
                n_past: self.fed.len(),
                tree: None,
                logits_rows: if last { chunk.len() - 1..chunk.len() } else { 0..0 },
                accept: None,
                compact: false,
            };
            if last {
                out = self.candidates(&spec)?.remove(0);
            } else {
                self.model.run(&spec)?;
            }
            self.fed.extend_from_slice(chunk);
        }
        Ok(out)
    }

    fn draft(&mut self, context: &[u32], budget: usize, max_depth: usize) -> Result<TokenTree> {
        let root = self.catch_up(context)?;
        let base = self.fed.len(); // the root sits at slot base - 1
        let keep = |c: &Candidate, min: f32| c.score >= min;
        let mut cands: Vec<Candidate> = root
            .into_iter()
            .map(|(token, prob)| Candidate { token, parent: None, depth: 1, prob, score: prob, slot: None })
            .collect();
        let mut used_slots = 0;
        for depth in 1..max_depth {
            // the best nodes of the newest level that could still make the final tree
            let cutoff = kth_score(&cands, budget);
            let mut level: Vec<usize> = (0..cands.len())
                .filter(|&i| {
                    cands[i].depth == depth && keep(&cands[i], self.min_confidence) && cands[i].score >= cutoff
                })
                .collect();
            level.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score));
            level.truncate(self.width);
            if level.is_empty()
                || used_slots + level.len() > 64
                || base + used_slots + level.len() > self.model.max_ctx
                || level.len() > self.model.max_batch
            {
                break;
            }
            let mut rows = TreeRows { base, ..Default::default() };
            for (r, &i) in level.iter().enumerate() {
                let slot = used_slots + r;
                let mut mask = cands[i].parent.and_then(|p| cands[p].slot).map_or([0; 2], |(_, m)| m);
                mask[slot / 32] |= 1 << (slot % 32);
                cands[i].slot = Some((slot, mask));
                rows.masks.push(mask);
                rows.positions.push((base - 1 + depth) as u32);
                rows.parents.push(u32::MAX);
            }
            let tokens: Vec<u32> = level.iter().map(|&i| cands[i].token).collect();
            self.model.set_tokens(&tokens);
            let spec = PassSpec {
                m: level.len(),
                n_past: base + used_slots,
                tree: Some(rows),
                logits_rows: 0..level.len(),
                accept: None,
                compact: false,
            };
            let next = self.candidates(&spec)?;
            used_slots += level.len();
            for (&i, row) in level.iter().zip(next) {
                let score = cands[i].score;
                for (token, prob) in row {
                    cands.push(Candidate {
                        token,
                        parent: Some(i),
                        depth: depth + 1,
                        prob,
                        score: score * prob,
                        slot: None,
                    });
                }
            }
        }
        // the `budget` best nodes, parents first
        let mut order: Vec<usize> = (0..cands.len()).filter(|&i| keep(&cands[i], self.min_confidence)).collect();
        order.sort_by(|&a, &b| cands[b].score.total_cmp(&cands[a].score).then(cands[a].depth.cmp(&cands[b].depth)));
        order.truncate(budget);
        order.sort_by_key(|&i| cands[i].depth);
        let mut node_of = vec![usize::MAX; cands.len()];
        let mut tree = TokenTree::default();
        for i in order {
            let parent = match cands[i].parent {
                None => None,
                Some(p) if node_of[p] != usize::MAX => Some(node_of[p]),
                Some(_) => continue, // parent left out (equal scores): drop the orphan
            };
            node_of[i] = tree.push(parent, cands[i].token, cands[i].prob, Drafter::Draft);
        }
        Ok(tree)
    }
}

/// The score of the k-th best candidate (0 when there are fewer).
fn kth_score(cands: &[Candidate], k: usize) -> f32 {
    if k == 0 || cands.len() < k {
        return 0.0;
    }
    let mut s: Vec<f32> = cands.iter().map(|c| c.score).collect();
    s.sort_by(|a, b| b.total_cmp(a));
    s[k - 1]
}

impl Speculator for DraftModelSpeculator {
    fn drafter(&self) -> Drafter {
        Drafter::Draft
    }

    /// Prefills the draft model's cache with the prompt while the request is still in prefill.
    fn begin(&mut self, prompt: &[u32]) {
        if prompt.is_empty() || self.catch_up(prompt).is_err() {
            self.fed.clear();
        }
    }

    fn propose(&mut self, context: &[u32], budget: usize, max_depth: usize) -> TokenTree {
        if budget == 0 || max_depth == 0 || context.is_empty() {
            return TokenTree::default();
        }
        match self.draft(context, budget, max_depth) {
            Ok(t) => t,
            Err(_) => {
                // a failed draft costs only this round: plain decoding, and a fresh cache next time
                self.fed.clear();
                TokenTree::default()
            }
        }
    }

    fn set_min_confidence(&mut self, c: f32) {
        self.min_confidence = c;
    }

    fn finish(&mut self, _context: &[u32], _prompt_len: usize) {}
}

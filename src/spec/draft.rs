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
//! no node of the new level is likely enough to be kept, or, under the controller, to pay for
//! another level's pass (`Speculator::set_expand_confidence`).
//!
//! Drafts are fixed proposals (q one-hot in the acceptance rule), so verification stays lossless
//! when sampling too. When the target samples, an expanded row's children are instead the draft
//! model's own draw with the noise the target will use at that position (accept.wgsl
//! draw_rows), scored by the gap to its runner-up, and that runner-up
//! (`candidates::CoupledDraw`). With greedy decoding they are its top candidates (the first is
//! its argmax).

use super::Speculator;
use super::candidates::{self, Candidates, LevelPrice};
use super::tree::{Drafter, TokenTree};
use crate::error::{Error, Result};
use crate::gpu::kernels::CANDIDATES;
use crate::gpu::map_read;
use crate::model::LoadedModel;
use crate::model::gpu::{DRAW_BYTES, GpuModel, PassSpec, Sampling, TreeRows};
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
    level_price: LevelPrice,
    /// Deepest level of the last proposal: at most that many drafts and the bonus token can have
    /// been committed since, if it drafted in the round before.
    last_depth: usize,
    /// `Speculator::idle_catch_up_ms` and `deepest_level` of the last proposal.
    idle_ms: f64,
    deepest: Option<(usize, f64)>,
    /// Milliseconds per token of its last prefill of a prompt, and tokens the last catch-up fed
    /// (a prefix shared with the cache is kept).
    feed_ms: Option<f64>,
    last_fed: usize,
    /// How the target samples this round (`Speculator::set_sampling`).
    sampling: Sampling,
    /// Where the model came from (for messages).
    pub source: String,
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
            size: (model.max_batch * (CANDIDATES * 8 + DRAW_BYTES)) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(DraftModelSpeculator {
            model,
            staging,
            fed: Vec::new(),
            width: DEFAULT_WIDTH,
            min_confidence: 0.0,
            level_price: LevelPrice::default(),
            last_depth: 0,
            idle_ms: 0.0,
            deepest: None,
            feed_ms: None,
            last_fed: 0,
            sampling: Sampling::default(),
            source: draft.source,
        })
    }

    /// Runs one pass whose LM-head rows predict the generated token `depth` places after the
    /// round's root, and returns each row's children: [row][CANDIDATES] top candidates, led by
    /// the coupled draw when the target samples (see the module notes).
    fn candidates(&self, spec: &PassSpec, depth: usize) -> Result<Vec<Vec<(u32, f32)>>> {
        let gpu = &self.model.gpu;
        let rows = spec.logits_rows.len();
        let bytes = (rows * CANDIDATES * 8) as u64;
        let coupled = self.sampling.coupled_at(depth);
        let spec = PassSpec { coupled, ..spec.clone() };
        let draw_bytes = if coupled.is_some() { (rows * DRAW_BYTES) as u64 } else { 0 };
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.model.encode(&mut enc, &spec, None)?;
        self.model.encode_candidates(&mut enc, rows, coupled.is_some());
        enc.copy_buffer_to_buffer(&self.model.candidates, 0, &self.staging, 0, bytes);
        if draw_bytes > 0 {
            enc.copy_buffer_to_buffer(self.model.draws(), 0, &self.staging, bytes, draw_bytes);
        }
        gpu.queue.submit([enc.finish()]);
        let raw: Vec<u32> = bytemuck::pod_collect_to_vec(&map_read(gpu, &self.staging, bytes + draw_bytes));
        Ok(candidates::read_level(&raw, rows, self.model.cfg.vocab).1)
    }

    /// Feeds the committed tokens the draft cache lacks; returns the candidates after the last.
    fn catch_up(&mut self, context: &[u32]) -> Result<Vec<(u32, f32)>> {
        let common = self.fed.iter().zip(context).take_while(|(a, b)| a == b).count().min(context.len() - 1);
        self.fed.truncate(common);
        let pending = context[common..].to_vec();
        self.last_fed = pending.len();
        let t = std::time::Instant::now();
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
                ..Default::default()
            };
            if last {
                out = self.candidates(&spec, 0)?.remove(0);
            } else {
                self.model.run(&spec)?;
            }
            self.fed.extend_from_slice(chunk);
        }
        // beyond what one round commits, the tokens are ones it would have fed in rounds it sat
        // out; a pass costs about its rows on the devices where this matters
        let one_round = self.last_depth + 1;
        if pending.len() > one_round {
            self.idle_ms = t.elapsed().as_secs_f64() * 1e3 * (pending.len() - one_round) as f64 / pending.len() as f64;
        }
        Ok(out)
    }

    fn draft(&mut self, context: &[u32], budget: usize, max_depth: usize) -> Result<TokenTree> {
        let t = std::time::Instant::now();
        let root = self.catch_up(context)?;
        self.deepest = Some((1, t.elapsed().as_secs_f64() * 1e3 - self.idle_ms));
        let base = self.fed.len(); // the root sits at slot base - 1
        let mut cands = Candidates::default();
        cands.add(None, root, 1.0);
        // visibility mask of each tree slot the draft model has written this round
        let mut masks: Vec<[u32; 2]> = Vec::new();
        for depth in 1..max_depth {
            let level = cands.level(depth, budget, self.width, self.level_price.floor(self.min_confidence));
            let used_slots = masks.len();
            if level.is_empty()
                || used_slots + level.len() > 64
                || base + used_slots + level.len() > self.model.max_ctx
                || level.len() > self.model.max_batch
            {
                break;
            }
            let mut rows = TreeRows { base, ..Default::default() };
            for &i in &level {
                let slot = masks.len();
                let c = &cands.nodes[i];
                let mut mask = c.parent.and_then(|p| cands.nodes[p].slot).map_or([0; 2], |s| masks[s]);
                mask[slot / 32] |= 1 << (slot % 32);
                masks.push(mask);
                cands.nodes[i].slot = Some(slot);
                rows.masks.push(mask);
                rows.positions.push((base - 1 + depth) as u32);
                rows.parents.push(u32::MAX);
            }
            let tokens: Vec<u32> = level.iter().map(|&i| cands.nodes[i].token).collect();
            self.model.set_tokens(&tokens);
            let spec = PassSpec {
                m: level.len(),
                n_past: base + used_slots,
                tree: Some(rows),
                logits_rows: 0..level.len(),
                ..Default::default()
            };
            let t = std::time::Instant::now();
            for (&i, row) in level.iter().zip(self.candidates(&spec, depth)?) {
                cands.add(Some(i), row, 1.0);
            }
            let ms = t.elapsed().as_secs_f64() * 1e3;
            self.deepest = Some((depth + 1, ms));
            self.level_price.record(ms);
        }
        Ok(cands.best_tree(budget, self.min_confidence, Drafter::Draft).0)
    }
}

impl Speculator for DraftModelSpeculator {
    fn drafter(&self) -> Drafter {
        Drafter::Draft
    }

    fn warm_up(&mut self) -> Result<()> {
        // the calibrated sizes, and a whole catch-up chunk
        let whole = (self.model.max_batch <= self.model.max_ctx).then_some(self.model.max_batch);
        for m in crate::spec::cost::calibration_sizes(&self.model).into_iter().chain(whole) {
            let tokens: Vec<u32> = (0..m as u32).map(|i| 100 + i).collect();
            // a drafting level (tree rows, every row's candidates) and a catch-up chunk
            let tree = TokenTree::chain(&tokens[1..], Drafter::Draft);
            for (tree, logits_rows) in [(Some(tree.rows(0)), 0..m), (None, m - 1..m)] {
                self.model.set_tokens(&tokens);
                self.candidates(&PassSpec { m, n_past: 0, tree, logits_rows, ..Default::default() }, 0)?;
            }
        }
        // and the coupled draw of a sampled round
        let sampling = std::mem::replace(&mut self.sampling, Sampling { temperature: 1.0, ..Default::default() });
        self.model.set_tokens(&[100]);
        let one = PassSpec { m: 1, logits_rows: 0..1, ..Default::default() };
        let warmed = self.candidates(&one, 0);
        self.sampling = sampling;
        warmed?;
        self.fed.clear();
        Ok(())
    }

    /// Prefills the draft model's cache with the prompt while the request is still in prefill.
    fn begin(&mut self, prompt: &[u32]) {
        let t = std::time::Instant::now();
        if prompt.is_empty() || self.catch_up(prompt).is_err() {
            self.fed.clear();
            return;
        }
        if self.last_fed >= 8 {
            self.feed_ms = Some(t.elapsed().as_secs_f64() * 1e3 / self.last_fed as f64);
        }
    }

    fn propose(&mut self, context: &[u32], budget: usize, max_depth: usize) -> TokenTree {
        if budget == 0 || max_depth == 0 || context.is_empty() {
            return TokenTree::default();
        }
        self.idle_ms = 0.0;
        self.deepest = None;
        match self.draft(context, budget, max_depth) {
            Ok(t) => {
                self.last_depth = t.depth();
                t
            }
            Err(_) => {
                // a failed draft costs only this round: plain decoding, and a fresh cache next time
                self.fed.clear();
                TokenTree::default()
            }
        }
    }

    fn set_sampling(&mut self, s: Sampling) {
        self.sampling = s;
    }

    fn set_min_confidence(&mut self, c: f32) {
        self.min_confidence = c;
    }

    fn finish(&mut self, _context: &[u32], _prompt_len: usize) {}

    fn idle_catch_up_ms(&self) -> f64 {
        self.idle_ms
    }

    fn deepest_level(&self) -> Option<(usize, f64)> {
        self.deepest
    }

    fn set_expand_confidence(&mut self, c: f32) {
        self.level_price.expand_confidence = c;
    }

    fn level_ms(&self) -> Option<f64> {
        self.level_price.level_ms
    }

    fn feed_ms_per_token(&self) -> Option<f64> {
        self.feed_ms
    }
}

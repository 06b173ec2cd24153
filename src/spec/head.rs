//! Adaptive speculator: the draft head (src/train/head.rs) drafting on the target's own hidden
//! states, and learning online from what verification accepted.
//!
//! Drafting mirrors the draft-model speculator: depth by depth, the `width` most likely nodes of
//! the newest level are expanded in one submission (embedding lookups, the head's forward, the
//! target's final norm + LM head + top-k on the predicted hidden states) and only CANDIDATES
//! (id, probability) pairs per node come back. A node's input hidden state is its parent's
//! prediction (the target's real hidden state before the root for depth 1).
//!
//! Learning: every verify submission also records the accepted path into the replay ring
//! (src/train/replay.rs) and moves `prev_h`; between rounds, training steps run as their own
//! submissions while their measured cost stays within `train_share` of decoding time. Weights
//! change only between rounds, so a round always drafts with one consistent head.

use super::Speculator;
use super::candidates::{self, Candidates, LevelPrice};
use super::tree::{Drafter, TokenTree};
use crate::error::Result;
use crate::gpu::kernels::CANDIDATES;
use crate::gpu::map_read;
use crate::model::gpu::{DRAW_BYTES, GpuModel, LmHeadRig, Sampling};
use crate::train::checkpoint::{HeadFile, HeadMeta, ReplayState};
use crate::train::gpu::GpuHead;
use crate::train::guard::{GuardAction, LossGuard};
use crate::train::head::{AdamW, HeadDims};
use crate::train::replay::{META, Replay};
use std::time::Instant;

/// Settings of the adaptive head.
#[derive(Debug, Clone)]
pub struct HeadOptions {
    /// Train online (false: `--no-learn`, the head stays as loaded).
    pub learn: bool,
    /// Most of decoding time that training may take.
    pub train_share: f64,
    /// The share while the controller finds the head not worth drafting: it keeps learning, more
    /// slowly, so that it can earn its place without costing full price meanwhile.
    pub idle_train_share: f64,
    pub batch: usize,
    pub replay_capacity: usize,
    pub opt: AdamW,
    /// Weight of the target's top-k distribution against the realised token in the loss.
    pub alpha: f32,
    /// Nodes expanded per level when drafting.
    pub width: usize,
    /// The guard rail: draft only while the head's top guess after the root matches the
    /// target's next token at least this often (exponentially weighted over ~20 rounds); below
    /// it, only probe every `probe_every` rounds to keep measuring. The static path's own
    /// agreement: that of the offline-trained head this one started from (the CLI sets it), 0
    /// without one (the static path is then plain decoding, which drafts nothing). Whether
    /// drafting pays on a device is the controller's question (`--speculate auto`); a fixed
    /// `--speculate head` drafts whatever its calibrated confidence puts above the floor every
    /// fixed mode has (`Speculator::set_min_confidence`).
    pub min_agreement: f64,
    pub probe_every: u64,
    /// The learning rate falls as 1/sqrt(1 + step / lr_decay_steps), to `LR_FLOOR` of
    /// `opt.lr` (0: constant). At a constant rate the head chased the last ~20 requests its
    /// replay ring holds: over 100 HumanEval requests in separate processes its agreement peaked
    /// at 0.34 (requests 20-49) and sank to 0.23; decayed, it held 0.29-0.38 and tau on the last
    /// ten was 1.45 against 1.27 (BENCHMARKS.md, session 9). The floor keeps it learning after a
    /// change of domain.
    pub lr_decay_steps: u32,
}

/// The least fraction of its initial learning rate the head's decays to.
pub const LR_FLOOR: f32 = 0.3;

/// The learning rate of training step `step` (counted from 1).
pub fn lr_at(lr: f32, decay_steps: u32, step: u32) -> f32 {
    if decay_steps == 0 {
        return lr;
    }
    lr * (1.0 / (1.0 + step as f32 / decay_steps as f32).sqrt()).max(LR_FLOOR)
}

impl Default for HeadOptions {
    fn default() -> Self {
        HeadOptions {
            learn: true,
            train_share: 0.1,
            idle_train_share: 0.025,
            batch: 32,
            replay_capacity: 4096,
            opt: AdamW::default(),
            alpha: 0.5,
            width: 2,
            min_agreement: 0.0,
            probe_every: 4,
            lr_decay_steps: 400,
        }
    }
}

/// Counters a user (and the controller) can read.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HeadStats {
    pub train_steps: u64,
    pub train_ms: f64,
    /// Accepted positions recorded into the replay ring.
    pub samples_recorded: u64,
    /// Training loss, exponentially weighted over steps.
    pub loss: f64,
    /// How often the head's top token after the root was the target's next token, and the
    /// probability the head gave it (both exponentially weighted over probed rounds).
    pub agreement: f64,
    pub top1_prob: f64,
    pub probes: u64,
    /// How often its top guess was the token it was fed (the untrained identity's guess).
    pub repeats: f64,
    /// Training steps skipped for a non-finite loss, and roll-backs after divergence.
    pub skipped_steps: u64,
    pub rollbacks: u64,
}

pub struct HeadSpeculator {
    pub head: GpuHead,
    pub replay: Replay,
    lm: LmHeadRig,
    /// Predicted hidden states of the nodes expanded this round, and their top-k pairs, by
    /// expansion slot.
    tree_y: wgpu::Buffer,
    tree_cands: wgpu::Buffer,
    /// Expansion slot of each verify row of the tree this round proposed (None: the round's
    /// tree came from another speculator).
    row_slots: Option<Vec<u32>>,
    staging: wgpu::Buffer,
    pub opts: HeadOptions,
    min_confidence: f32,
    /// Each level runs the target's LM head over its rows.
    level_price: LevelPrice,
    /// `Speculator::deepest_level` of the last proposal.
    deepest: Option<(usize, f64)>,
    /// prev_h holds the target's hidden state before the current root.
    have_prev: bool,
    /// AdamW steps taken (saved with the head).
    pub step: u32,
    rng: u64,
    /// Decoding time not yet spent on training, times train_share.
    train_credit_ms: f64,
    /// Whether the head's drafts are being used (the controller sets this each round; alone,
    /// the head is always in use). Training takes `idle_train_share` while it is not.
    pub in_use: bool,
    rounds: u64,
    guard: LossGuard,
    /// The head's top guess after this round's root (when it probed), and the root.
    root_top1: Option<(u32, f32)>,
    root: u32,
    /// How the target samples this round (`Speculator::set_sampling`): when it samples, each
    /// expanded row's first child is the head's coupled draw (as the draft model's).
    sampling: Sampling,
    pub stats: HeadStats,
}

/// Slots of `tree_y` (expanded nodes per round, plus the root's prediction).
const TREE_SLOTS: usize = 64;

impl HeadSpeculator {
    /// A head for `target` with parameters `params` (from a checkpoint, or `train::head::init`).
    pub fn new(target: &GpuModel, dims: HeadDims, params: &[f32], opts: HeadOptions) -> Result<HeadSpeculator> {
        let gpu = target.gpu.clone();
        let batch = opts.batch.max(opts.width).max(1);
        let head = GpuHead::new(
            gpu.clone(),
            dims,
            params,
            &target.output,
            target.cfg.vocab,
            &target.out_gamma,
            target.cfg.rms_eps,
            batch,
        )?;
        let tree_cands = gpu.storage_zeroed("head tree candidates", (TREE_SLOTS * CANDIDATES * 8) as u64);
        let replay = Replay::new(target, &head, &tree_cands, opts.replay_capacity.max(batch))?;
        let lm = target.lm_head_rig(opts.width.max(1));
        let tree_y = gpu.storage_zeroed("head tree y", (TREE_SLOTS * dims.d * 4) as u64);
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("head candidates readback"),
            size: (lm.rows * (CANDIDATES * 8 + DRAW_BYTES)) as u64,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(HeadSpeculator {
            head,
            replay,
            lm,
            tree_y,
            tree_cands,
            row_slots: None,
            staging,
            opts,
            min_confidence: 0.0,
            level_price: LevelPrice::default(),
            deepest: None,
            have_prev: false,
            step: 0,
            rng: 0x5EED,
            train_credit_ms: 0.0,
            in_use: true,
            rounds: 0,
            guard: LossGuard::default(),
            root_top1: None,
            root: 0,
            sampling: Sampling::default(),
            stats: HeadStats::default(),
        })
    }

    /// Continues from a saved head: AdamW moments and step count.
    pub fn restore(&mut self, f: &HeadFile) {
        let q = &self.head.gpu.queue;
        q.write_buffer(&self.head.adam_m, 0, bytemuck::cast_slice(&f.adam_m));
        q.write_buffer(&self.head.adam_v, 0, bytemuck::cast_slice(&f.adam_v));
        self.step = f.meta.step;
        self.stats.samples_recorded = f.meta.samples;
        self.stats.agreement = f.meta.acceptance;
        self.stats.top1_prob = f.meta.top1_prob;
        self.stats.probes = f.meta.probes;
        if let Some(r) = &f.replay {
            let d = self.head.dims.d;
            let cap = self.replay.capacity;
            if r.h.len() == cap * 2 * d && r.meta.len() == cap * META && f.meta.replay_filled <= cap {
                q.write_buffer(&self.replay.ring_h, 0, bytemuck::cast_slice(&r.h));
                q.write_buffer(&self.replay.ring_meta, 0, bytemuck::cast_slice(&r.meta));
                self.replay.write_pos = f.meta.replay_write_pos % cap;
                self.replay.filled = f.meta.replay_filled;
            }
        }
        // what was saved is the known-good state
        let mut enc = self.head.gpu.device.create_command_encoder(&Default::default());
        self.head.encode_snapshot(&mut enc);
        q.submit([enc.finish()]);
    }

    /// The head's parameters and optimiser state, read back from the GPU (not on a hot path).
    pub fn to_file(&self, target: &str, source: &str) -> HeadFile {
        let n = self.head.dims.n_params();
        let g = &self.head.gpu;
        let mut meta = HeadMeta::new(target, source, self.head.dims);
        meta.step = self.step;
        meta.samples = self.stats.samples_recorded;
        meta.acceptance = self.stats.agreement;
        meta.top1_prob = self.stats.top1_prob;
        meta.probes = self.stats.probes;
        meta.replay_write_pos = self.replay.write_pos;
        meta.replay_filled = self.replay.filled;
        let cap = self.replay.capacity;
        let replay = ReplayState {
            h: g.read_f32(&self.replay.ring_h, cap * 2 * self.head.dims.d),
            meta: bytemuck::pod_collect_to_vec(&g.read(&self.replay.ring_meta, (cap * META * 4) as u64)),
        };
        HeadFile {
            meta,
            params: g.read_f32(&self.head.params, n),
            adam_m: g.read_f32(&self.head.adam_m, n),
            adam_v: g.read_f32(&self.head.adam_v, n),
            replay: Some(replay),
        }
    }

    /// After prefill: the target's hidden state of the prompt's last token (row `row` of its
    /// last pass) is what the first round drafts from.
    pub fn after_prefill(&mut self, target: &GpuModel, row: usize) {
        let d = self.head.dims.d as u64;
        let gpu = &target.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(&target.x, row as u64 * d * 4, &self.replay.prev_h, 0, d * 4);
        gpu.queue.submit([enc.finish()]);
        self.have_prev = true;
    }

    /// After a prefill pass over `rows` prompt tokens followed by `next` (if the prompt goes on):
    /// its rows become training samples (when learning).
    pub fn record_prompt(&mut self, target: &GpuModel, rows: usize, next: Option<u32>) {
        if !self.opts.learn {
            return;
        }
        let mut enc = target.gpu.device.create_command_encoder(&Default::default());
        let n = self.replay.encode_record_prompt(&mut enc, rows, next);
        target.gpu.queue.submit([enc.finish()]);
        self.stats.samples_recorded += n as u64;
    }

    /// Records into a verify submission (after acceptance): top-k of every verified row, then
    /// the accepted path into the replay ring and the new prev_h.
    pub fn encode_after_verify(&self, enc: &mut wgpu::CommandEncoder, target: &GpuModel, rows: usize, root: u32) {
        target.encode_candidates(enc, rows, false);
        self.replay.encode_record(enc, self.have_prev, root, self.row_slots.as_deref().unwrap_or(&[]));
    }

    /// The verified tree is not the one this head proposed (the controller merged and cut
    /// proposals): `own[i]` is the node of the head's proposal behind verified node i, if any.
    pub fn verify_rows_from(&mut self, own: &[Option<usize>]) {
        if let Some(slots) = self.row_slots.take() {
            let mut rows = vec![slots[0]];
            rows.extend(own.iter().map(|o| o.and_then(|j| slots.get(j + 1).copied()).unwrap_or(u32::MAX)));
            self.row_slots = Some(rows);
        }
    }

    /// Whether the head's measured agreement lets it draft.
    pub fn trusted(&self) -> bool {
        self.stats.agreement >= self.opts.min_agreement
    }

    /// The verified round accepted `k` drafts, `next` followed the root, and the round took
    /// `round_ms`; updates the agreement and trains if the budget allows.
    pub fn after_round(&mut self, k: usize, next: u32, round_ms: f64) -> Result<()> {
        if let Some((t, p)) = self.root_top1.take() {
            // a fast start, then a window of ~20 probes
            let a = (1.0 / (self.stats.probes + 1) as f64).max(0.05);
            self.stats.agreement += a * ((t == next) as u32 as f64 - self.stats.agreement);
            self.stats.top1_prob += a * (p as f64 - self.stats.top1_prob);
            self.stats.repeats += a * ((t == self.root) as u32 as f64 - self.stats.repeats);
            self.stats.probes += 1;
        }
        self.stats.samples_recorded += (k + self.have_prev as usize) as u64;
        self.row_slots = None;
        self.replay.advance(k, self.have_prev);
        self.have_prev = true;
        if !self.opts.learn {
            return Ok(());
        }
        let share = if self.in_use { self.opts.train_share } else { self.opts.idle_train_share };
        self.train_credit_ms += round_ms * share;
        if self.train_credit_ms > 0.0 && self.replay.filled >= self.head.max_batch {
            self.train_credit_ms -= self.train_step();
        }
        Ok(())
    }

    /// `n` training steps now, whatever the budget (offline training: `augur train-head`).
    pub fn train_steps(&mut self, n: usize) {
        for _ in 0..n {
            if self.replay.filled < self.head.max_batch {
                return;
            }
            self.train_step();
        }
    }

    /// One AdamW step on a batch drawn uniformly from the ring; returns its wall time in ms.
    fn train_step(&mut self) -> f64 {
        let t = Instant::now();
        let batch = self.head.max_batch;
        let slots: Vec<u32> = (0..batch).map(|_| (self.next_rand() % self.replay.filled as u64) as u32).collect();
        let seed = self.next_rand() as u32;
        self.step += 1;
        let gpu = &self.head.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.replay.encode_gather(&mut enc, &slots, seed, self.opts.alpha);
        let opt = AdamW { lr: lr_at(self.opts.opt.lr, self.opts.lr_decay_steps, self.step), ..self.opts.opt };
        self.head.encode_train_step(&mut enc, batch, &opt, self.step, None);
        gpu.queue.submit([enc.finish()]);
        let loss = self.head.read_losses(batch).iter().map(|&l| l as f64).sum::<f64>() / batch as f64;
        if loss.is_finite() {
            self.stats.loss = if self.stats.train_steps == 0 { loss } else { 0.95 * self.stats.loss + 0.05 * loss };
            self.stats.train_steps += 1;
            let action = self.guard.after_step(self.stats.loss, self.stats.train_steps);
            if action != GuardAction::Continue {
                let mut enc = gpu.device.create_command_encoder(&Default::default());
                if action == GuardAction::Snapshot {
                    self.head.encode_snapshot(&mut enc);
                } else {
                    self.head.encode_roll_back(&mut enc);
                    self.opts.opt.lr = (self.opts.opt.lr * 0.5).max(1e-5);
                    self.guard.rolled_back();
                    self.stats.rollbacks += 1;
                }
                gpu.queue.submit([enc.finish()]);
            }
        } else {
            // head.wgsl left the weights as they were
            self.step -= 1;
            self.stats.skipped_steps += 1;
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        self.stats.train_ms += ms;
        ms
    }

    fn next_rand(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    /// One drafting level, its rows predicting the generated token `depth` places after the
    /// round's root: for each (input slot, token) row, the head's prediction goes to
    /// `tree_y[out slot]` and its top candidates come back, with its coupled draw when the target
    /// samples. Input slot None = prev_h.
    fn expand(&self, rows: &[(Option<usize>, u32, usize)], depth: usize) -> Result<Level> {
        let gpu = &self.head.gpu;
        let d4 = (self.head.dims.d * 4) as u64;
        let w = rows.len();
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        for (r, &(src, _, _)) in rows.iter().enumerate() {
            match src {
                None => enc.copy_buffer_to_buffer(&self.replay.prev_h, 0, &self.head.h, r as u64 * d4, d4),
                Some(s) => enc.copy_buffer_to_buffer(&self.tree_y, s as u64 * d4, &self.head.h, r as u64 * d4, d4),
            }
        }
        let tokens: Vec<u32> = rows.iter().map(|r| r.1).collect();
        self.replay.encode_embed(&mut enc, &tokens);
        self.head.encode_forward(&mut enc, w);
        let y0 = self.head.y_offset(w) as u64 * 4;
        enc.copy_buffer_to_buffer(&self.head.act, y0, &self.lm.x, 0, w as u64 * d4);
        for (r, &(_, _, dst)) in rows.iter().enumerate() {
            enc.copy_buffer_to_buffer(&self.head.act, y0 + r as u64 * d4, &self.tree_y, dst as u64 * d4, d4);
        }
        let coupled = self.sampling.coupled_at(depth);
        self.lm.encode(&mut enc, w, coupled);
        let bytes = (w * CANDIDATES * 8) as u64;
        enc.copy_buffer_to_buffer(&self.lm.candidates, 0, &self.staging, 0, bytes);
        let draw_bytes = if coupled.is_some() { (w * DRAW_BYTES) as u64 } else { 0 };
        if draw_bytes > 0 {
            enc.copy_buffer_to_buffer(self.lm.draws(), 0, &self.staging, bytes, draw_bytes);
        }
        // expansion slots of one level are consecutive
        let first = rows[0].2 as u64 * (CANDIDATES * 8) as u64;
        enc.copy_buffer_to_buffer(&self.lm.candidates, 0, &self.tree_cands, first, bytes);
        gpu.queue.submit([enc.finish()]);
        let raw: Vec<u32> = bytemuck::pod_collect_to_vec(&map_read(gpu, &self.staging, bytes + draw_bytes));
        let (top, children) = candidates::read_level(&raw, w, self.lm.vocab);
        Ok(Level { top, children, coupled: coupled.is_some() })
    }

    fn draft(&mut self, context: &[u32], budget: usize, max_depth: usize) -> Result<TokenTree> {
        let root = *context.last().expect("context is never empty");
        self.rounds += 1;
        let trusted = self.trusted();
        if !trusted && !self.rounds.is_multiple_of(self.opts.probe_every.max(1)) {
            return Ok(TokenTree::default());
        }
        // slot 0: the root's prediction (input: prev_h)
        let t = Instant::now();
        let mut level = self.expand(&[(None, root, 0)], 0)?;
        self.deepest = Some((1, t.elapsed().as_secs_f64() * 1e3));
        self.root_top1 = level.top[0].first().copied();
        self.root = root;
        if !trusted {
            self.row_slots = Some(vec![0]); // the probe's guesses still teach the head
            return Ok(TokenTree::default());
        }
        // calibrate: the head's own probabilities scaled by how often its top guess is right
        // (a coupled draw's score is its own estimate)
        let calib = (self.stats.agreement / self.stats.top1_prob.max(1e-3)).min(1.5) as f32;
        let mut cands = Candidates::default();
        let scale = if level.coupled { 1.0 } else { calib };
        cands.add(None, level.children.swap_remove(0), scale);
        let mut used = 1;
        for depth in 1..max_depth {
            let level = cands.level(depth, budget, self.opts.width, self.level_price.floor(self.min_confidence));
            if level.is_empty() || used + level.len() > TREE_SLOTS {
                break;
            }
            // a node's input is its parent's prediction (slot 0 for the root's children)
            let c = &cands.nodes;
            let rows: Vec<(Option<usize>, u32, usize)> = level
                .iter()
                .enumerate()
                .map(|(r, &i)| (Some(c[i].parent.and_then(|p| c[p].slot).unwrap_or(0)), c[i].token, used + r))
                .collect();
            for (r, &i) in level.iter().enumerate() {
                cands.nodes[i].slot = Some(used + r);
            }
            used += level.len();
            let t = Instant::now();
            for (&i, row) in level.iter().zip(self.expand(&rows, depth)?.children) {
                cands.add(Some(i), row, 1.0);
            }
            let ms = t.elapsed().as_secs_f64() * 1e3;
            self.deepest = Some((depth + 1, ms));
            self.level_price.record(ms);
        }
        let (tree, picked) = cands.best_tree(budget, self.min_confidence, Drafter::Head);
        // verify row 0 is the root, whose prediction sits in slot 0
        let row_slots =
            std::iter::once(0).chain(picked.iter().map(|&i| cands.nodes[i].slot.map_or(u32::MAX, |s| s as u32)));
        self.row_slots = Some(row_slots.collect());
        Ok(tree)
    }
}

/// What one drafting level read back: each row's top candidates and its children (led by its
/// coupled draw when the target samples: `candidates::read_level`).
struct Level {
    top: Vec<candidates::Row>,
    children: Vec<candidates::Row>,
    coupled: bool,
}

impl Speculator for HeadSpeculator {
    fn drafter(&self) -> Drafter {
        Drafter::Head
    }

    fn begin(&mut self, _prompt: &[u32]) {
        self.have_prev = false; // until after_prefill
    }

    fn propose(&mut self, context: &[u32], budget: usize, max_depth: usize) -> TokenTree {
        self.deepest = None;
        if budget == 0 || max_depth == 0 || context.is_empty() || !self.have_prev {
            return TokenTree::default();
        }
        self.draft(context, budget, max_depth).unwrap_or_default()
    }

    fn deepest_level(&self) -> Option<(usize, f64)> {
        self.deepest
    }

    fn set_sampling(&mut self, s: Sampling) {
        self.sampling = s;
    }

    fn set_min_confidence(&mut self, c: f32) {
        self.min_confidence = c;
    }

    fn set_expand_confidence(&mut self, c: f32) {
        self.level_price.expand_confidence = c;
    }

    fn level_ms(&self) -> Option<f64> {
        self.level_price.level_ms
    }

    fn finish(&mut self, _context: &[u32], _prompt_len: usize) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn learning_rate_decays_to_its_floor() {
        assert_eq!(lr_at(2e-3, 0, 5000), 2e-3, "0: constant");
        let lrs: Vec<f32> = [1, 400, 1200, 4000, 100_000].iter().map(|&s| lr_at(2e-3, 400, s)).collect();
        assert!(lrs.windows(2).all(|w| w[1] <= w[0]), "{lrs:?}");
        assert!((lrs[1] - 2e-3 / 2f32.sqrt()).abs() < 1e-7);
        assert_eq!(lrs[4], 2e-3 * LR_FLOOR);
    }
}

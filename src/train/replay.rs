//! The replay buffer: what verification computed anyway, kept on the GPU as training data for
//! the draft head (shaders/replay.wgsl). The host mirrors only the ring's write position and
//! fill, from the accepted counts it reads back each round; hidden states never leave the GPU.
//!
//! `record_cpu` and `gather_cpu` are the plain-Rust definitions the kernels are tested against.

use super::gpu::GpuHead;
use super::head::{CANDIDATES, NO_TOKEN};
use crate::gpu::kernels::{CANDIDATES as TEACH, ReplayParams};
use crate::gpu::{Gpu, Pipeline};
use crate::model::gpu::{GpuModel, RESULT_BONUS};
use crate::sampler::hash;
use std::sync::Arc;

/// u32s per ring slot: next token, realised token, teacher ids [8], teacher probabilities [8],
/// 2 spare, the head's own top ids [8].
pub const META: usize = 28;
const NEG: usize = 20;

pub struct Replay {
    gpu: Arc<Gpu>,
    d: usize,
    vocab: usize,
    pub capacity: usize,
    /// The target's hidden state before the current root: what the head drafts from.
    pub prev_h: wgpu::Buffer,
    pub ring_h: wgpu::Buffer,
    pub ring_meta: wgpu::Buffer,
    /// Slots (gather) or tokens (embed_tokens).
    pub idx: wgpu::Buffer,
    record_u: wgpu::Buffer,
    gather_u: wgpu::Buffer,
    embed_u: wgpu::Buffer,
    prompt_u: wgpu::Buffer,
    pipelines: [Arc<Pipeline>; 4],
    binds: [wgpu::BindGroup; 4],
    /// Next slot to write, and how many slots hold samples.
    pub write_pos: usize,
    pub filled: usize,
}

impl Replay {
    /// A ring of `capacity` samples fed by `target`'s verification passes, feeding `head`;
    /// `expansions` holds the head's top-k pairs per drafting slot ([slot][8][id, p]).
    pub fn new(target: &GpuModel, head: &GpuHead, expansions: &wgpu::Buffer, capacity: usize) -> crate::Result<Replay> {
        let gpu = target.gpu.clone();
        let g = &*gpu;
        let d = target.cfg.dim;
        let Some([ew, es, eo]) = target.embedding.single_part() else {
            return Err(crate::Error::msg(
                "this model's embedding is too large for one GPU binding; the draft head needs it whole",
            ));
        };
        let prev_h = g.storage_zeroed("replay prev_h", (d * 4) as u64);
        let ring_h = g.storage_zeroed("replay h", (capacity * 2 * d * 4) as u64);
        let ring_meta = g.storage_zeroed("replay meta", (capacity * META * 4) as u64);
        let idx = g.storage_zeroed("replay idx", (head.max_batch.max(64) * 4) as u64);
        let uni = || g.uniform("replay params", &ReplayParams::default());
        let (record_u, gather_u, embed_u, prompt_u) = (uni(), uni(), uni(), uni());
        let kernels = &g.kernels;
        let f = target.embedding.format();
        let pipelines = ["record", "gather", "embed_tokens", "record_prompt"].map(|e| kernels.replay(g, e, f));
        let bind = |u: &wgpu::Buffer, p: &Pipeline, idx: &wgpu::Buffer| {
            g.bind(
                p,
                &[
                    u,
                    &target.result,
                    &target.x,
                    &target.tokens,
                    &target.candidates,
                    &prev_h,
                    &ring_h,
                    &ring_meta,
                    idx,
                    ew,
                    es,
                    eo,
                    &head.h,
                    &head.e,
                    &head.cands,
                    &head.target,
                    &head.h_next,
                ],
            )
        };
        let binds = [
            bind(&record_u, &pipelines[0], expansions),
            bind(&gather_u, &pipelines[1], &idx),
            bind(&embed_u, &pipelines[2], &idx),
            bind(&prompt_u, &pipelines[3], &idx),
        ];
        Ok(Replay {
            gpu: gpu.clone(),
            d,
            vocab: target.cfg.vocab,
            capacity,
            prev_h,
            ring_h,
            ring_meta,
            idx,
            record_u,
            gather_u,
            embed_u,
            prompt_u,
            pipelines,
            binds,
            write_pos: 0,
            filled: 0,
        })
    }

    fn params(&self) -> ReplayParams {
        ReplayParams {
            d: self.d as u32,
            vocab: self.vocab as u32,
            capacity: self.capacity as u32,
            ..Default::default()
        }
    }

    fn dispatch(&self, enc: &mut wgpu::CommandEncoder, which: usize, groups: u32) {
        let mut cp =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("replay"), timestamp_writes: None });
        cp.set_pipeline(&self.pipelines[which].pipeline);
        cp.set_bind_group(0, &self.binds[which], &[]);
        cp.dispatch_workgroups(groups, 1, 1);
    }

    /// Records, after a verify pass with acceptance and top-k candidates for every row, the
    /// accepted path's samples (sample 0 only when `have_prev`); `row_slot[row]` is the head's
    /// drafting slot for a verified row (u32::MAX: it did not draft there). Call `advance` with
    /// the accepted count once it is read back.
    pub fn encode_record(&self, enc: &mut wgpu::CommandEncoder, have_prev: bool, root: u32, row_slot: &[u32]) {
        let mut u = ReplayParams { base: self.write_pos as u32, have_prev: have_prev as u32, root, ..self.params() };
        for (d, &s) in u.row_slot.iter_mut().zip(row_slot) {
            *d = s;
        }
        self.gpu.queue.write_buffer(&self.record_u, 0, bytemuck::bytes_of(&u));
        self.dispatch(enc, 0, 1);
    }

    /// The ring after a recorded round that accepted `k` drafts.
    pub fn advance(&mut self, k: usize, have_prev: bool) {
        let n = k + have_prev as usize;
        self.write_pos = (self.write_pos + n) % self.capacity;
        self.filled = (self.filled + n).min(self.capacity);
    }

    /// Records, after a prefill pass over `rows` prompt tokens, a sample for each row from 1 on
    /// whose following token is known (`next`: the prompt token after the pass, if any), and
    /// advances the ring; returns the number of samples.
    pub fn encode_record_prompt(&mut self, enc: &mut wgpu::CommandEncoder, rows: usize, next: Option<u32>) -> usize {
        let n = (rows + next.is_some() as usize).saturating_sub(2).min(self.capacity);
        if n == 0 {
            return 0;
        }
        let u = ReplayParams {
            base: self.write_pos as u32,
            batch: n as u32,
            root: next.unwrap_or(NO_TOKEN),
            rows: rows as u32,
            ..self.params()
        };
        self.gpu.queue.write_buffer(&self.prompt_u, 0, bytemuck::bytes_of(&u));
        self.dispatch(enc, 3, n as u32);
        self.write_pos = (self.write_pos + n) % self.capacity;
        self.filled = (self.filled + n).min(self.capacity);
        n
    }

    /// Records a training batch from ring `slots` into the head's inputs.
    pub fn encode_gather(&self, enc: &mut wgpu::CommandEncoder, slots: &[u32], seed: u32, alpha: f32) {
        self.gpu.queue.write_buffer(&self.idx, 0, bytemuck::cast_slice(slots));
        let u = ReplayParams { batch: slots.len() as u32, seed, alpha, ..self.params() };
        self.gpu.queue.write_buffer(&self.gather_u, 0, bytemuck::bytes_of(&u));
        self.dispatch(enc, 1, slots.len() as u32);
    }

    /// Records embedding lookups of `tokens` into the head's `e` rows.
    pub fn encode_embed(&self, enc: &mut wgpu::CommandEncoder, tokens: &[u32]) {
        self.gpu.queue.write_buffer(&self.idx, 0, bytemuck::cast_slice(tokens));
        let u = ReplayParams { batch: tokens.len() as u32, ..self.params() };
        self.gpu.queue.write_buffer(&self.embed_u, 0, bytemuck::bytes_of(&u));
        self.dispatch(enc, 2, tokens.len() as u32);
    }
}

/// What `record` writes: (slot, hidden before and at the node, meta) per sample, and the new
/// prev_h.
#[allow(clippy::type_complexity, clippy::too_many_arguments)]
pub fn record_cpu(
    result: &[u32],
    x: &[f32],
    tokens: &[u32],
    topk: &[u32],
    prev_h: &[f32],
    have_prev: bool,
    base: usize,
    capacity: usize,
    row_slot: &[u32],
    expansions: &[u32],
    root: u32,
) -> (Vec<(usize, Vec<f32>, [u32; META])>, Vec<f32>) {
    let d = prev_h.len();
    let k = result[0] as usize;
    let row_of = |j: usize| if j == 0 { 0 } else { result[j] as usize };
    let mut out = Vec::new();
    let first = if have_prev { 0 } else { 1 };
    for j in first..=k {
        let slot = (base + j - first) % capacity;
        let mut h = if j == 0 { prev_h.to_vec() } else { x[row_of(j - 1) * d..(row_of(j - 1) + 1) * d].to_vec() };
        let row = row_of(j);
        h.extend_from_slice(&x[row * d..(row + 1) * d]);
        let mut meta = [0u32; META];
        meta[0] = if row == 0 { root } else { tokens[row] };
        meta[1] = if j < k { tokens[result[j + 1] as usize] } else { result[RESULT_BONUS] };
        let hs = row_slot.get(row).copied().unwrap_or(u32::MAX);
        for t in 0..TEACH {
            meta[2 + t] = topk[(row * TEACH + t) * 2];
            meta[2 + TEACH + t] = topk[(row * TEACH + t) * 2 + 1];
            meta[NEG + t] = if hs == u32::MAX { NO_TOKEN } else { expansions[(hs as usize * TEACH + t) * 2] };
        }
        out.push((slot, h, meta));
    }
    let last = row_of(k);
    (out, x[last * d..(last + 1) * d].to_vec())
}

/// What `record_prompt` writes after a prefill pass over `tokens` (hidden states `x`, one row
/// per token) followed by `next`: (slot, hidden before and at the row, meta) per sample.
pub fn record_prompt_cpu(
    x: &[f32],
    tokens: &[u32],
    next: Option<u32>,
    d: usize,
    base: usize,
    capacity: usize,
) -> Vec<(usize, Vec<f32>, [u32; META])> {
    let rows = tokens.len();
    let n = (rows + next.is_some() as usize).saturating_sub(2).min(capacity);
    (1..=n)
        .map(|r| {
            let mut meta = [0u32; META];
            meta[0] = tokens[r];
            meta[1] = tokens.get(r + 1).copied().or(next).expect("a following token");
            meta[2..2 + TEACH].fill(NO_TOKEN);
            meta[NEG..NEG + TEACH].fill(NO_TOKEN);
            ((base + r - 1) % capacity, x[(r - 1) * d..(r + 1) * d].to_vec(), meta)
        })
        .collect()
}

/// The candidate set and target distribution that `gather` builds for batch row `b`.
pub fn gather_cpu(
    meta: &[u32; META],
    b: usize,
    seed: u32,
    alpha: f32,
    vocab: usize,
) -> ([u32; CANDIDATES], [f32; CANDIDATES]) {
    let mut c = [NO_TOKEN; CANDIDATES];
    let mut t = [0f32; CANDIDATES];
    let realised = meta[1];
    let total: f32 = (0..TEACH).map(|i| f32::from_bits(meta[2 + TEACH + i])).sum();
    // prompt samples (no teacher) learn by regression alone
    let realised_w = if total > 0.0 { 1.0 - alpha } else { 0.0 };
    let mut n = 0;
    let mut realised_in = false;
    for i in 0..TEACH {
        let id = meta[2 + i];
        let mut p = alpha * f32::from_bits(meta[2 + TEACH + i]) / total.max(1e-30);
        if id == realised {
            p += realised_w;
            realised_in = true;
        }
        c[n] = id;
        t[n] = p;
        n += 1;
    }
    if !realised_in {
        c[n] = realised;
        t[n] = realised_w;
        n += 1;
    }
    if !c[..n].contains(&meta[0]) {
        c[n] = meta[0];
        n += 1;
    }
    for t in 0..TEACH {
        let neg = meta[NEG + t];
        if neg != NO_TOKEN && !c[..n].contains(&neg) {
            c[n] = neg;
            n += 1;
        }
    }
    for i in n..CANDIDATES {
        let mut neg = hash(seed ^ hash((b * CANDIDATES + i) as u32)) % vocab as u32;
        if c[..i].contains(&neg) {
            neg = NO_TOKEN;
        }
        c[i] = neg;
    }
    (c, t)
}

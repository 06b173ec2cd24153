//! The draft head on the GPU: its parameters and AdamW state, a batch of inputs, and the passes
//! of shaders/head.wgsl (forward, and the training step) recorded into the caller's encoder.
//! Everything is made once; a step writes one small uniform and records dispatches.

use super::head::{AdamW, CANDIDATES, HeadDims};
use crate::error::{Error, Result};
use crate::gpu::kernels::HeadParams;
use crate::gpu::profile::Profiler;
use crate::gpu::{Gpu, Pipeline};
use crate::model::gpu::GpuMatrix;
use std::sync::Arc;

pub struct GpuHead {
    pub gpu: Arc<Gpu>,
    pub dims: HeadDims,
    pub max_batch: usize,
    norm_eps: f32,
    vocab: usize,
    uniform: wgpu::Buffer,
    pub params: wgpu::Buffer,
    /// AdamW moments (saved with checkpoints).
    pub adam_m: wgpu::Buffer,
    pub adam_v: wgpu::Buffer,
    /// Batch inputs: hidden states [max_batch][d], embeddings [max_batch][d], candidate ids and
    /// target probabilities [max_batch][CANDIDATES].
    pub h: wgpu::Buffer,
    pub e: wgpu::Buffer,
    /// The regression targets (the target's hidden state at t+1) [max_batch][d].
    pub h_next: wgpu::Buffer,
    pub cands: wgpu::Buffer,
    pub target: wgpu::Buffer,
    /// Activations: z | a | s | y | dy | da | loss, laid out per batch size (head.wgsl).
    pub act: wgpu::Buffer,
    /// The last snapshot of parameters and moments known good (see `LossGuard`).
    good: [wgpu::Buffer; 3],
    /// Where a training step leaves its per-row losses for the host.
    loss_staging: wgpu::Buffer,
    pipelines: Vec<(&'static str, Arc<Pipeline>)>,
    bind: wgpu::BindGroup,
}

const ENTRIES: [&str; 8] =
    ["head_in", "head_fc1", "head_fc2", "head_loss", "head_check", "head_bw_s", "head_upd2", "head_upd1"];

impl GpuHead {
    /// A head for a target whose LM head is `output` (one binding) after a final norm with
    /// weight `gamma` (a GPU buffer of d floats) and epsilon `norm_eps`.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        gpu: Arc<Gpu>,
        dims: HeadDims,
        init: &[f32],
        output: &GpuMatrix,
        vocab: usize,
        gamma: &wgpu::Buffer,
        norm_eps: f32,
        max_batch: usize,
    ) -> Result<GpuHead> {
        if init.len() != dims.n_params() {
            return Err(Error::msg(format!("draft head has {} parameters, expected {}", init.len(), dims.n_params())));
        }
        let Some([w, scale, offset]) = output.single_part() else {
            return Err(Error::msg(
                "this model's LM head is too large for one GPU binding; the draft head needs it whole",
            ));
        };
        let g = &*gpu;
        let (d, r, b) = (dims.d as u64, dims.r as u64, max_batch as u64);
        let uniform = g.uniform("head params", &HeadParams::default());
        let params = g.storage("head params", init);
        let adam_m = g.storage_zeroed("head adam m", dims.n_params() as u64 * 4);
        let adam_v = g.storage_zeroed("head adam v", dims.n_params() as u64 * 4);
        let np = dims.n_params() as u64 * 4;
        let good = [
            g.storage("head good params", init),
            g.storage_zeroed("head good m", np),
            g.storage_zeroed("head good v", np),
        ];
        let h = g.storage_zeroed("head h", b * d * 4);
        let e = g.storage_zeroed("head e", b * d * 4);
        let h_next = g.storage_zeroed("head h_next", b * d * 4);
        let cands = g.storage_zeroed("head cands", b * CANDIDATES as u64 * 4);
        let target = g.storage_zeroed("head target", b * CANDIDATES as u64 * 4);
        if !dims.d.is_multiple_of(4) || !dims.r.is_multiple_of(4) {
            return Err(Error::msg(format!("draft head sizes must be multiples of 4 (d {}, r {})", dims.d, dims.r)));
        }
        // z [b][2d+4] | a [b][r] | s [b][r+4] | y, dy [b][d] | da [b][r] | loss [b] (head.wgsl)
        let act = g.storage_zeroed("head act", (b * (4 * d + 3 * r + 8) + (b + 1).next_multiple_of(4)) * 4);
        let kernels = &g.kernels;
        let pipelines: Vec<_> = ENTRIES.iter().map(|&en| (en, kernels.head(g, en, output.format()))).collect();
        let bind = g.bind(
            &pipelines[0].1,
            &[&uniform, &params, &adam_m, &adam_v, &h, &e, &cands, &target, &act, gamma, w, scale, offset, &h_next],
        );
        let loss_staging = g.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("head loss readback"),
            size: b * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(GpuHead {
            gpu,
            dims,
            max_batch,
            norm_eps,
            vocab,
            uniform,
            params,
            adam_m,
            adam_v,
            h,
            e,
            h_next,
            cands,
            target,
            act,
            good,
            loss_staging,
            pipelines,
            bind,
        })
    }

    fn write_uniform(&self, batch: usize, opt: &AdamW, step: u32) {
        let u = HeadParams {
            d: self.dims.d as u32,
            r: self.dims.r as u32,
            batch: batch as u32,
            vocab: self.vocab as u32,
            lr: opt.lr,
            beta1: opt.beta1,
            beta2: opt.beta2,
            adam_eps: opt.eps,
            weight_decay: opt.weight_decay,
            bc1: 1.0 - opt.beta1.powi(step as i32),
            bc2: 1.0 - opt.beta2.powi(step as i32),
            norm_eps: self.norm_eps,
        };
        self.gpu.queue.write_buffer(&self.uniform, 0, bytemuck::bytes_of(&u));
    }

    fn dispatch(&self, cp: &mut wgpu::ComputePass, entry: &str, size: [u32; 3]) {
        let p = &self.pipelines.iter().find(|(e, _)| *e == entry).expect("known entry point").1;
        cp.set_pipeline(&p.pipeline);
        cp.set_bind_group(0, &self.bind, &[]);
        cp.dispatch_workgroups(size[0], size[1], size[2]);
    }

    /// The kernels of a training step and their workgroup counts; the first three are the
    /// forward pass.
    fn plan(&self, batch: usize) -> [(&'static str, [u32; 3]); 8] {
        let (d, r, b) = (self.dims.d as u32, self.dims.r as u32, batch as u32);
        [
            ("head_in", [b, 1, 1]),
            ("head_fc1", [blocks(r), b.div_ceil(4), 1]),
            ("head_fc2", [blocks(d), b.div_ceil(4), 1]),
            ("head_loss", [b, 1, 1]),
            ("head_check", [1, 1, 1]),
            ("head_bw_s", [blocks(r), b.div_ceil(4), 1]),
            ("head_upd2", [blocks(d), (r + 1).div_ceil(4), 1]),
            ("head_upd1", [blocks(r), (2 * d + 1).div_ceil(4), 1]),
        ]
    }

    /// One head operation per submission: each writes the shared uniform.
    /// Records the forward pass for rows 0..batch of `h`/`e` (the prediction lands in `act`'s y).
    pub fn encode_forward(&self, enc: &mut wgpu::CommandEncoder, batch: usize) {
        self.write_uniform(batch, &AdamW::default(), 1);
        let mut cp =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("head"), timestamp_writes: None });
        for (entry, size) in &self.plan(batch)[..3] {
            self.dispatch(&mut cp, entry, *size);
        }
    }

    /// Records one training step (AdamW step number `step`, from 1) on rows 0..batch; with a
    /// profiler, each kernel runs in its own timed pass.
    pub fn encode_train_step(
        &self,
        enc: &mut wgpu::CommandEncoder,
        batch: usize,
        opt: &AdamW,
        step: u32,
        prof: Option<&mut Profiler>,
    ) {
        self.write_uniform(batch, opt, step);
        let plan = self.plan(batch);
        if let Some(p) = prof {
            for (entry, size) in plan {
                let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some(entry),
                    timestamp_writes: p.writes(entry),
                });
                self.dispatch(&mut cp, entry, size);
            }
            p.resolve(enc);
        } else {
            let mut cp = enc
                .begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("head train"), timestamp_writes: None });
            for (entry, size) in plan {
                self.dispatch(&mut cp, entry, size);
            }
        }
        enc.copy_buffer_to_buffer(
            &self.act,
            self.loss_offset(batch) as u64 * 4,
            &self.loss_staging,
            0,
            batch as u64 * 4,
        );
    }

    /// Records copies of the parameters and moments into the known-good snapshot.
    pub fn encode_snapshot(&self, enc: &mut wgpu::CommandEncoder) {
        let n = self.dims.n_params() as u64 * 4;
        for (live, good) in [&self.params, &self.adam_m, &self.adam_v].into_iter().zip(&self.good) {
            enc.copy_buffer_to_buffer(live, 0, good, 0, n);
        }
    }

    /// Records copies of the snapshot back over the parameters and moments.
    pub fn encode_roll_back(&self, enc: &mut wgpu::CommandEncoder) {
        let n = self.dims.n_params() as u64 * 4;
        for (live, good) in [&self.params, &self.adam_m, &self.adam_v].into_iter().zip(&self.good) {
            enc.copy_buffer_to_buffer(good, 0, live, 0, n);
        }
    }

    /// The per-row losses of the last submitted training step (waits for it).
    pub fn read_losses(&self, batch: usize) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&crate::gpu::map_read(&self.gpu, &self.loss_staging, batch as u64 * 4))
    }

    /// Offsets (in floats) of the predicted hidden states y [batch][d] and the per-row losses
    /// [batch] within `act` after a pass over `batch` rows (head.wgsl lays `act` out per batch).
    pub fn y_offset(&self, batch: usize) -> usize {
        batch * (2 * self.dims.d + 2 * self.dims.r + 8)
    }
    pub fn loss_offset(&self, batch: usize) -> usize {
        batch * (4 * self.dims.d + 3 * self.dims.r + 8)
    }
}

/// Workgroups covering `n` columns at 4 per invocation, 64 invocations per workgroup.
fn blocks(n: u32) -> u32 {
    n.div_ceil(4).div_ceil(64)
}

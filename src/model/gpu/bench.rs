//! The kernels alone, timed on random inputs (`augur bench`, examples/matmul_curve.rs,
//! examples/attn_curve.rs): what one dispatch costs apart from the rest of a pass.

use super::{GpuMatrix, SiteCtx};
use crate::gpu::kernels::*;
use crate::gpu::{Gpu, KernelPlan};
use crate::model::config::Config;
use crate::model::weights::Matrix;

/// Milliseconds per dispatch of one matmul over `rows` rows of random input, `reps` dispatches
/// in one submission (so fixed submit costs are amortised): the kernel's own speed.
pub fn bench_matmul(gpu: &Gpu, m: &Matrix, rows: usize, reps: usize) -> f64 {
    bench_matmul_with(gpu, m, rows, reps, false, Epilogue::Store)
}

/// `bench_matmul`, with x RMS-normalised inside the matmul (NORM) when `norm` is true, and
/// epilogue `ep` (Store, or SwiGlu: the columns taken as interleaved gate and up groups).
pub fn bench_matmul_with(gpu: &Gpu, m: &Matrix, rows: usize, reps: usize, norm: bool, ep: Epilogue) -> f64 {
    let pass = PassUniform { m: rows as u32, ..Default::default() };
    let pass_buf = gpu.uniform("pass", &pass);
    let dummy = gpu.storage("dummy", &[0f32; 4]);
    let dummy_rw = gpu.storage("dummy", &[0f32; 4]);
    let ctx = SiteCtx { gpu, pass_buf: &pass_buf, dummy: &dummy, dummy_rw: &dummy_rw, eps: 1e-5, max_rows: rows };
    let gm = GpuMatrix::upload(gpu, m, "bench");
    let x: Vec<f32> = (0..rows * m.k).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let xb = gpu.activations("x", (x.len() * 4) as u64);
    gpu.queue.write_buffer(&xb, 0, bytemuck::cast_slice(&x));
    let yb = gpu.storage_zeroed("y", (rows * m.n * 4) as u64);
    let gamma = gpu.storage("norm weight", &vec![1.5f32; m.k]);
    let site = ctx.matmul(&gm, &xb, norm.then_some(&gamma), &yb, None, ep, None, false, m.n);
    time_dispatches(gpu, reps, |cp| site.record(cp, rows))
}

/// Milliseconds per call of `dispatch`, recorded `reps` times into one compute pass of one
/// submission (so fixed submit costs are amortised), after one call to compile and warm.
fn time_dispatches(gpu: &Gpu, reps: usize, dispatch: impl Fn(&mut wgpu::ComputePass)) -> f64 {
    let record = |n: usize| {
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        {
            let mut cp = enc.begin_compute_pass(&Default::default());
            for _ in 0..n {
                dispatch(&mut cp);
            }
        }
        gpu.queue.submit([enc.finish()]);
        let _ = gpu.wait();
    };
    record(1);
    let t = std::time::Instant::now();
    record(reps);
    t.elapsed().as_secs_f64() * 1e3 / reps as f64
}

/// Milliseconds per call of the attention dispatch alone, for `rows` causal rows after `n_past`
/// slots, over random q, K and V (examples/attn_curve.rs).
pub fn bench_attention(gpu: &Gpu, cfg: &Config, n_past: usize, rows: usize, reps: usize) -> f64 {
    let kernels = &gpu.kernels;
    let c = cfg;
    let slots = n_past + rows;
    let pass = PassUniform { m: rows as u32, n_past: n_past as u32, causal: 1, ..Default::default() };
    let pass_buf = gpu.uniform("pass", &pass);
    let prm = AttnParams {
        n_heads: c.n_heads as u32,
        n_kv_heads: c.n_kv_heads as u32,
        head_dim: c.head_dim as u32,
        scale: 1.0 / (c.head_dim as f32).sqrt(),
    };
    let prm = gpu.uniform("attn params", &prm);
    let random = |n: usize, seed: usize| -> Vec<f32> {
        (0..n).map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0).collect()
    };
    let masks = gpu.storage_zeroed("masks", (rows * 8) as u64);
    let qkv = gpu.storage("qkv", &random(rows * (c.q_dim() + 2 * c.kv_dim()), 1));
    let k = gpu.storage("k", &random(slots * c.kv_dim(), 2));
    let v = gpu.storage("v", &random(slots * c.kv_dim(), 3));
    let out = gpu.storage_zeroed("out", (rows * c.q_dim() * 4) as u64);
    let parts = gpu.storage_zeroed("parts", attention_parts_bytes(rows, c.n_heads, c.head_dim));
    let p = kernels.attention(gpu, c.n_heads / c.n_kv_heads, c.head_dim);
    let binds = [&pass_buf, &prm, &masks, &qkv, &k, &v, &out, &parts];
    let bind = gpu.bind(p.any(), &binds);
    let (pipeline, r) = p.for_rows(rows);
    let [gx, gy, gz] = attention_grid(gpu.plan, c.n_heads, c.n_kv_heads, c.head_dim, rows, r);
    // rows split into parts are merged by a second dispatch (attention_split.wgsl combine)
    let combine = (gpu.plan == KernelPlan::Split && slots > ATTN_PART_SLOTS).then(|| {
        let cp = kernels.attention_combine(gpu, c.head_dim);
        let b = gpu.bind(&cp, &binds);
        (cp, b)
    });
    time_dispatches(gpu, reps, |cp| {
        cp.set_pipeline(&pipeline.pipeline);
        cp.set_bind_group(0, &bind, &[]);
        cp.dispatch_workgroups(gx, gy, gz);
        if let Some((p, b)) = &combine {
            cp.set_pipeline(&p.pipeline);
            cp.set_bind_group(0, b, &[]);
            cp.dispatch_workgroups(c.n_heads as u32, rows as u32, 1);
        }
    })
}

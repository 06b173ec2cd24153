//! The transformer on the GPU: weights uploaded once in the kernels' layouts, every buffer and
//! bind group made at load time, and a forward pass that is only a list of dispatches.
//!
//! Per layer (5 dispatches):
//!   q, k, v = W_qkv · rmsnorm(x) (+ bias);  matmul, NORM, Qkv
//!   rope(q, k); k, v -> KV cache
//!   att = softmax(q · K / sqrt(d)) · V      attention (masked: causal or a token tree)
//!   x += W_o · att                          matmul, Add
//!   h = swiglu(W_gate_up · rmsnorm(x))      matmul, NORM, SwiGlu
//!   x += W_down · h                         matmul, Add
//! then logits = W_out · rmsnorm(x) for the rows asked for, and acceptance (accept.wgsl): the
//! sampled token of a plain pass, or the accepted path of a token tree plus KV compaction.
//! The norms live in the matmuls that read them (matmul_io.wgsl NORM): a dispatch costs 15-40 us
//! of thread wake-ups on lavapipe whatever it does, and they were 61 of a pass's 243. (A first
//! fusion that re-read each row to normalise it made the matmuls 1.5-2x slower; the squares are
//! now summed from the loads the matmul makes anyway.) RoPE and the KV cache writes live in the
//! QKV matmul's epilogue for the same reason (a rope_kv dispatch a layer, 30 of SmolLM2's 182).

use crate::error::{Error, Result};
use crate::gpu::kernels::*;
use crate::gpu::profile::Profiler;
use crate::gpu::{Gpu, KernelPlan, Pipeline};
use crate::model::config::{Config, RopeStyle};
use crate::model::cpu::rope_table;
use crate::model::weights::Weights;
use std::sync::Arc;

mod bench;
mod matrix;
pub use bench::{bench_attention, bench_matmul, bench_matmul_with};
pub use matrix::GpuMatrix;

/// One way to run a matmul call site: pipelines, and bind group and dispatch width per part.
struct SiteVariant {
    /// One pipeline per row block (see matmul.wgsl); a row's arithmetic is the same in all of
    /// them, so the same whatever M is.
    pipelines: Arc<RowBlockPipelines>,
    groups: Vec<(wgpu::BindGroup, u32)>,
}

/// One matmul call site: x bound as storage, and on the serial plan also as uniform
/// (`MatmulKind::uniform_x`); the two do the same arithmetic, so give the same bits.
struct MatmulSite {
    storage: SiteVariant,
    uniform: Option<SiteVariant>,
    /// Inputs per row of x.
    k: usize,
    _params: Vec<wgpu::Buffer>,
}

impl MatmulSite {
    /// The variant for a pass that reads rows of x below `top`: uniform where they fit in
    /// `uniform_bytes` of it (at most UNIFORM_X_BYTES: its array's length in the shader).
    fn variant(&self, top: usize, uniform_bytes: u64) -> &SiteVariant {
        match &self.uniform {
            Some(u) if uniform_x_fits(self.k, top) && (top * self.k * 4) as u64 <= uniform_bytes => u,
            _ => &self.storage,
        }
    }

    /// Records the site's dispatches over rows 0..rows into `cp`, outside a planned pass.
    fn record(&self, cp: &mut wgpu::ComputePass, rows: usize) {
        let v = self.variant(rows, UNIFORM_X_BYTES);
        let (pipeline, r) = v.pipelines.for_rows(rows);
        cp.set_pipeline(&pipeline.pipeline);
        for (b, gx) in &v.groups {
            cp.set_bind_group(0, b, &[]);
            cp.dispatch_workgroups(*gx, ceil(rows, r), 1);
        }
    }
}

struct Dispatch {
    pipeline: Arc<Pipeline>,
    bind: wgpu::BindGroup,
}

/// A dispatch whose invocations take a block of rows (attention): one pipeline per block size.
/// `combine`: the split attention's merge of rows split into parts (KernelPlan::Split).
struct RowBlockDispatch {
    pipelines: Arc<RowBlockPipelines>,
    bind: wgpu::BindGroup,
    combine: Option<Dispatch>,
}

/// One dispatch of a planned pass.
struct Planned<'a> {
    label: &'static str,
    pipeline: &'a Pipeline,
    bind: &'a wgpu::BindGroup,
    size: [u32; 3],
}

struct LayerSites {
    compact: Dispatch,
    qkv: MatmulSite,
    attention: RowBlockDispatch,
    attn_out: MatmulSite,
    gate_up: MatmulSite,
    down: MatmulSite,
}

/// What every matmul site of a model shares.
struct SiteCtx<'a> {
    gpu: &'a Gpu,
    pass_buf: &'a wgpu::Buffer,
    /// Bound where a site reads nothing (read-only bindings), and where it writes nothing.
    dummy: &'a wgpu::Buffer,
    dummy_rw: &'a wgpu::Buffer,
    eps: f32,
    /// The most rows a pass holds.
    max_rows: usize,
}

/// Where the QKV matmul puts its keys and values (`Epilogue::Qkv`): one layer's KV cache, with
/// the RoPE table and the tree rows' positions that rotate q and k.
struct KvTarget<'a> {
    k_cache: &'a wgpu::Buffer,
    v_cache: &'a wgpu::Buffer,
    rope_table: &'a wgpu::Buffer,
    positions: &'a wgpu::Buffer,
    head_dim: usize,
    q_dim: usize,
    kv_dim: usize,
}

impl SiteCtx<'_> {
    /// A matmul call site: y (op)= W x (+ bias), with x's rows RMS-normalised (times `norm`'s
    /// weights) as they are read when `norm` is given. `Epilogue::Qkv` needs `kv`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        m: &GpuMatrix,
        x: &wgpu::Buffer,
        norm: Option<&wgpu::Buffer>,
        y: &wgpu::Buffer,
        bias: Option<&[f32]>,
        ep: Epilogue,
        kv: Option<&KvTarget>,
        lm: bool,
        y_stride: usize,
    ) -> MatmulSite {
        assert_eq!(ep == Epilogue::Qkv, kv.is_some(), "the QKV epilogue and only it writes a KV cache");
        let g = self.gpu;
        let cols_per_out = if ep == Epilogue::SwiGlu { 8 } else { 4 };
        let n: usize = m.parts.iter().map(|p| p.n).sum();
        let (workgroup, split) = match g.plan {
            KernelPlan::Serial => (matmul_workgroup(n / cols_per_out), 1),
            KernelPlan::Split => (64, matmul_split_lanes(m.k)),
        };
        let kind = MatmulKind {
            format: m.matmul_format(),
            bias: bias.is_some(),
            norm: norm.is_some(),
            epilogue: ep,
            head_dim: kv.map_or(0, |t| t.head_dim as u32),
            workgroup,
            split,
            uniform_x: false,
        };
        // the passes of up to `fit` rows read x through a uniform binding where there is one,
        // so each variant builds ahead (Kernels::build_row_blocks) only the row blocks its
        // passes take: the uniform one those up to `fit` rows, the storage one those above, and
        // its largest for passes of more rows than a block (prefill, long trees)
        let fit = if g.uniform_x { (UNIFORM_X_BYTES as usize / (4 * m.k)).min(self.max_rows) } else { 0 };
        let blocks = |rows: &dyn Fn(usize) -> bool| {
            ROW_BLOCKS.iter().enumerate().filter(|&(_, &r)| rows(r)).fold(0, |mask, (i, _)| mask | 1 << i)
        };
        let largest = *ROW_BLOCKS.last().unwrap();
        let storage_ahead = blocks(&|r| r > fit || (r == largest && self.max_rows > fit));
        let storage_pipelines = self.gpu.kernels.matmul(g, kind, storage_ahead);
        let uniform_pipelines =
            (fit > 0).then(|| g.kernels.matmul(g, MatmulKind { uniform_x: true, ..kind }, blocks(&|r| r <= fit)));
        let bias_b = bias.map(|v| g.storage("bias", v));
        let mut storage = SiteVariant { pipelines: storage_pipelines, groups: Vec::new() };
        let mut uniform = uniform_pipelines.map(|pipelines| SiteVariant { pipelines, groups: Vec::new() });
        let mut params = Vec::new();
        for part in &m.parts {
            let prm = MatParams {
                k: m.k as u32,
                n: part.n as u32,
                y_stride: (y_stride / 4) as u32,
                y_col0: (part.n_base / cols_per_out) as u32,
                lm_rows: lm as u32,
                eps: self.eps,
                q_dim: kv.map_or(0, |t| t.q_dim as u32),
                kv_dim: kv.map_or(0, |t| t.kv_dim as u32),
            };
            let pb = g.uniform("matmul params", &prm);
            let buffers = [
                self.pass_buf,
                &pb,
                x,
                &part.w,
                &part.scale,
                &part.offset,
                bias_b.as_ref().unwrap_or(self.dummy),
                y,
                norm.unwrap_or(self.dummy),
                kv.map_or(self.dummy, |t| t.positions),
                kv.map_or(self.dummy, |t| t.rope_table),
                kv.map_or(self.dummy_rw, |t| t.k_cache),
                kv.map_or(self.dummy_rw, |t| t.v_cache),
            ];
            // a workgroup takes workgroup / split column groups
            let width = ceil(part.n / cols_per_out, (workgroup / split) as usize);
            let mut ranges: Vec<_> = buffers.iter().map(|b| b.as_entire_buffer_binding()).collect();
            storage.groups.push((storage.pipelines.bind(g, &ranges), width));
            if let Some(u) = uniform.as_mut() {
                let size = std::num::NonZeroU64::new(UNIFORM_X_BYTES);
                ranges[2] = wgpu::BufferBinding { buffer: x, offset: 0, size };
                u.groups.push((u.pipelines.bind(g, &ranges), width));
            }
            params.push(pb);
        }
        params.extend(bias_b);
        MatmulSite { storage, uniform, k: m.k, _params: params }
    }
}

/// What one forward pass does: `m` token rows starting at KV slot `n_past`.
#[derive(Debug, Clone, Default)]
pub struct PassSpec {
    pub m: usize,
    pub n_past: usize,
    /// None: causal within the pass. Some: a token tree (see `TreeRows`).
    pub tree: Option<TreeRows>,
    /// Rows whose logits the LM head computes (empty: none).
    pub logits_rows: std::ops::Range<usize>,
    /// Pick the pass's tokens on the GPU (accept.wgsl): from the first LM-head row for a plain
    /// pass, or by walking the tree (needs logits for every row). Results land in
    /// `GpuModel::result`.
    pub accept: Option<Sampling>,
    /// Move the accepted path's KV rows into place afterwards (needed only when the tree
    /// branches: a chain's accepted prefix is already where plain decoding would put it).
    pub compact: bool,
    /// A drafter's pass that samples: the sampling (with `draw` the generated-token index its
    /// rows predict) for the coupled draws `encode_candidates` adds. Ignored with `accept`.
    pub coupled: Option<Sampling>,
}

/// The rows of a token-tree pass: row i's visibility over the tree's slots (bit j = KV slot
/// `base + j`; every slot below `base` is visible), its position, and its parent row (u32::MAX
/// for the root). The target verifies a whole tree in one pass (`base` = n_past, so bit j is
/// row j); a draft model grows its tree over several passes above one `base`.
#[derive(Debug, Clone, Default)]
pub struct TreeRows {
    pub base: usize,
    pub masks: Vec<[u32; 2]>,
    pub positions: Vec<u32>,
    pub parents: Vec<u32>,
}

/// Layout of `GpuModel::result` (see accept.wgsl).
pub const RESULT_BONUS: usize = 33;
pub const RESULT_TOKENS: usize = 34;
/// How many rows the last acceptance pass visited whose sampling filters took the bisection
/// over the whole vocabulary rather than the candidates' exact threshold (accept.wgsl
/// filtered_draw): a counter for tests and measurements.
pub const RESULT_SLOW_FILTERS: usize = 66;
pub const RESULT_LEN: usize = 72;
/// Bytes per row of `GpuModel::draws`.
pub const DRAW_BYTES: usize = 16;
/// Deepest path the acceptance kernel walks.
pub const MAX_ACCEPT_DEPTH: usize = 32;

/// How tokens are chosen: greedy when `temperature` <= 0.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Sampling {
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    pub seed: u32,
    /// Index of the generated token the pass's root row samples (0 for the first): with the
    /// seed it keys the sampling noise of that token, and the root's depth-d descendant uses
    /// index draw + d, so a token gets the same noise whichever pass samples it.
    pub draw: u32,
}

impl Sampling {
    /// What a drafter draws its rows with when they predict the generated token `depth` places
    /// after the round's root (accept.wgsl draw_rows): this sampling at index draw + depth. None
    /// when greedy: the drafter's top candidates already lead with its argmax.
    pub fn coupled_at(self, depth: usize) -> Option<Sampling> {
        (self.temperature > 0.0).then_some(Sampling { draw: self.draw.wrapping_add(depth as u32), ..self })
    }
}

pub struct GpuModel {
    pub gpu: Arc<Gpu>,
    pub cfg: Config,
    pub max_ctx: usize,
    pub max_batch: usize,
    pass_buf: wgpu::Buffer,
    pub tokens: wgpu::Buffer,
    positions: wgpu::Buffer,
    masks: wgpu::Buffer,
    pub logits: wgpu::Buffer,
    /// The residual stream [max_batch][dim]: after a pass, each row's final hidden state.
    pub x: wgpu::Buffer,
    /// Acceptance results (RESULT_* layout).
    pub result: wgpu::Buffer,
    parents: wgpu::Buffer,
    /// The top CANDIDATES (id, probability) of each LM-head row, for drafters (topk.wgsl).
    pub candidates: wgpu::Buffer,
    topk: Dispatch,
    row_best: Dispatch,
    accept: Dispatch,
    accept_params: wgpu::Buffer,
    /// Each LM-head row's max logit and argmax (accept.wgsl row_best).
    best: wgpu::Buffer,
    /// accept.wgsl draw_rows on this model's buffers, made when a drafter first samples.
    draw_rows: std::sync::OnceLock<DrawRows>,
    embed: Vec<Dispatch>,
    layers: Vec<LayerSites>,
    lm_head: MatmulSite,
    /// The embedding, LM head and final norm weights, for the draft head that reuses them.
    pub embedding: GpuMatrix,
    pub output: GpuMatrix,
    pub out_gamma: wgpu::Buffer,
    _keep: Vec<wgpu::Buffer>,
    /// Matmuls read x through a uniform binding when the rows they read fit in this many bytes
    /// of it (UNIFORM_X_BYTES; 0 when the device does not, or a test takes the storage path).
    uniform_x_bytes: u64,
    /// Timestamps around a tree pass's acceptance and compaction (`encode_timing_accept`), when
    /// the device has timestamp queries: the accept share of a round's time.
    accept_timer: Option<AcceptTimer>,
    /// Passes encoded so far: every pass writes KV slots, so whoever keeps track of what the
    /// cache holds (the engine, between turns of a chat) can tell whether anyone else ran one.
    passes: std::sync::atomic::AtomicU64,
}

/// A drafter's coupled draws (accept.wgsl draw_rows) and the buffer they land in.
struct DrawRows {
    dispatch: Dispatch,
    draws: wgpu::Buffer,
    /// Buffers of its bindings made for it alone.
    _keep: Vec<wgpu::Buffer>,
}

impl DrawRows {
    /// draw_rows over `rows` rows of `logits`; `spare` fills the acceptance bindings it does not
    /// use (parents, tokens, result, best).
    fn new(
        g: &Gpu,
        pass_buf: &wgpu::Buffer,
        accept_params: &wgpu::Buffer,
        logits: &wgpu::Buffer,
        spare: [&wgpu::Buffer; 4],
        rows: usize,
    ) -> DrawRows {
        let draws = g.storage_zeroed("coupled draws", (rows * DRAW_BYTES) as u64);
        let p = g.kernels.draw_rows(g);
        let binds = [pass_buf, accept_params, logits, spare[0], spare[1], spare[2], spare[3], &draws];
        DrawRows { dispatch: Dispatch { pipeline: p.clone(), bind: g.bind(&p, &binds) }, draws, _keep: Vec::new() }
    }

    fn record(&self, cp: &mut wgpu::ComputePass, rows: usize) {
        cp.set_pipeline(&self.dispatch.pipeline.pipeline);
        cp.set_bind_group(0, &self.dispatch.bind, &[]);
        cp.dispatch_workgroups(rows as u32, 1, 1);
    }
}

/// Two timestamps and the buffer they resolve into.
struct AcceptTimer {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    /// Nanoseconds per tick.
    period_ns: f64,
}

/// Bytes `copy_accept_time` writes: the two timestamps.
pub const ACCEPT_TIME_BYTES: u64 = 16;

/// The order of the QKV matmul's outputs that puts a NEOX model's rotated pairs (i, i + d/2) of
/// each query and key head side by side, at (2i, 2i + 1); values keep their order.
fn neox_pairs_adjacent(c: &Config) -> Vec<usize> {
    let (d, half) = (c.head_dim, c.head_dim / 2);
    let rotated = c.q_dim() + c.kv_dim();
    let mut order: Vec<usize> = (0..rotated)
        .map(|col| {
            let (head, j) = (col / d, col % d);
            head * d + if j % 2 == 0 { j / 2 } else { half + j / 2 }
        })
        .collect();
    order.extend(rotated..rotated + c.kv_dim());
    order
}

fn ceil(a: usize, b: usize) -> u32 {
    a.div_ceil(b) as u32
}

impl GpuModel {
    pub fn new(gpu: Arc<Gpu>, cfg: &Config, w: &Weights, max_ctx: usize, max_batch: usize) -> Result<GpuModel> {
        let c = cfg.clone();
        if max_batch == 0 || max_batch > 64 || max_ctx == 0 {
            return Err(Error::msg(format!(
                "batch size must be 1..=64 and the context positive (got {max_batch}, {max_ctx})"
            )));
        }
        let g = &*gpu;
        let kernels = &g.kernels;
        let f4 = 4u64;
        let (d, qd, kvd) = (c.dim, c.q_dim(), c.kv_dim());
        let qkv_w = qd + 2 * kvd;
        let kv_bytes = (max_ctx * kvd) as u64 * f4;
        if kv_bytes > g.max_binding {
            return Err(Error::msg(format!(
                "a context of {max_ctx} tokens needs KV buffers larger than this device allows; use a smaller --ctx"
            )));
        }
        let pass_buf = g.uniform("pass", &PassUniform::default());
        let tokens = g.storage_zeroed("tokens", (max_batch * 4) as u64);
        let positions = g.storage_zeroed("positions", (max_batch * 4) as u64);
        let masks = g.storage_zeroed("masks", (max_batch * 8) as u64);
        let parents = g.storage_zeroed("parents", (max_batch * 4) as u64);
        let result = g.storage_zeroed("accept result", (RESULT_LEN * 4) as u64);
        let x = g.activations("x", (max_batch * d) as u64 * f4);
        let qkv = g.storage_zeroed("qkv", (max_batch * qkv_w) as u64 * f4);
        let att = g.activations("att", (max_batch * qd) as u64 * f4);
        let hidden = g.activations("hidden", (max_batch * c.ffn_dim) as u64 * f4);
        let logits = g.storage_zeroed("logits", (max_batch * c.vocab) as u64 * f4);
        let rope = g
            .storage("rope table", &rope_table(&c, max_ctx).iter().flat_map(|cs| [cs[0], cs[1]]).collect::<Vec<f32>>());
        let dummy = g.storage("dummy", &[0f32; 4]);
        let dummy_rw = g.storage("dummy", &[0f32; 4]);
        let mut keep = Vec::new();

        let sites = SiteCtx {
            gpu: g,
            pass_buf: &pass_buf,
            dummy: &dummy,
            dummy_rw: &dummy_rw,
            eps: c.rms_eps,
            max_rows: max_batch,
        };

        // embedding (also the tied LM head)
        let embed_m = GpuMatrix::upload_wide(g, &w.embed, "embed");
        let mut embed = Vec::new();
        {
            let p = kernels.embed(g, embed_m.format);
            for part in &embed_m.parts {
                let prm = g.uniform(
                    "embed params",
                    &EmbedParams { k: d as u32, n: part.n as u32, n_base: part.n_base as u32, _p: 0 },
                );
                let bind = g.bind(&p, &[&pass_buf, &prm, &tokens, &part.w, &part.scale, &part.offset, &x]);
                keep.push(prm);
                embed.push(Dispatch { pipeline: p.clone(), bind });
            }
        }
        if !c.head_dim.is_multiple_of(4) {
            return Err(Error::msg(format!(
                "attention heads of {} values are not supported (a multiple of 4 is)",
                c.head_dim
            )));
        }
        // the QKV matmul rotates adjacent pairs of columns (matmul_io.wgsl); a NEOX model's pairs
        // (i, i + d/2) are brought side by side, which leaves every q . k unchanged
        let qkv_order = match c.rope {
            RopeStyle::Interleaved => None,
            RopeStyle::Neox => Some(neox_pairs_adjacent(&c)),
        };
        let attn_prm = g.uniform(
            "attn params",
            &AttnParams {
                n_heads: c.n_heads as u32,
                n_kv_heads: c.n_kv_heads as u32,
                head_dim: c.head_dim as u32,
                scale: 1.0 / (c.head_dim as f32).sqrt(),
            },
        );
        let attn_p = kernels.attention(g, c.n_heads / c.n_kv_heads, c.head_dim);
        let split = g.plan == KernelPlan::Split;
        let combine_p = split.then(|| kernels.attention_combine(g, c.head_dim));
        // each part's softmax state (attention_split.wgsl), for every layer in turn
        let part_states = if split {
            g.storage_zeroed("attention parts", attention_parts_bytes(max_batch, c.n_heads, c.head_dim))
        } else {
            g.storage("attention parts", &[0f32; 4])
        };
        let compact_prm = g.uniform("compact params", &CompactParams { kv_dim: kvd as u32, _p: [0; 3] });
        let mut layers = Vec::new();
        for (li, l) in w.layers.iter().enumerate() {
            let k_cache = g.storage_zeroed(&format!("k cache {li}"), kv_bytes);
            let v_cache = g.storage_zeroed(&format!("v cache {li}"), kv_bytes);
            let (qkv_m, qkv_bias) = match &qkv_order {
                None => (GpuMatrix::upload(g, &l.qkv, "qkv"), l.qkv_bias.clone()),
                Some(order) => (
                    GpuMatrix::upload(g, &l.qkv.select_outputs(order), "qkv"),
                    l.qkv_bias.as_ref().map(|b| order.iter().map(|&o| b[o]).collect()),
                ),
            };
            let kv = KvTarget {
                k_cache: &k_cache,
                v_cache: &v_cache,
                rope_table: &rope,
                positions: &positions,
                head_dim: c.head_dim,
                q_dim: qd,
                kv_dim: kvd,
            };
            let out_m = GpuMatrix::upload(g, &l.attn_out, "attn_out");
            let gu_m = GpuMatrix::upload(g, &l.gate_up, "gate_up");
            let down_m = GpuMatrix::upload(g, &l.down, "down");
            let attn_gamma = g.storage("attention norm weight", &l.attn_norm);
            let ffn_gamma = g.storage("ffn norm weight", &l.ffn_norm);
            let compact_p = kernels.kv_compact(g);
            let sites = LayerSites {
                compact: Dispatch {
                    pipeline: compact_p.clone(),
                    bind: g.bind(&compact_p, &[&pass_buf, &compact_prm, &result, &k_cache, &v_cache]),
                },
                qkv: sites.matmul(
                    &qkv_m,
                    &x,
                    Some(&attn_gamma),
                    &qkv,
                    qkv_bias.as_deref(),
                    Epilogue::Qkv,
                    Some(&kv),
                    false,
                    qkv_w,
                ),
                attention: {
                    let binds = [&pass_buf, &attn_prm, &masks, &qkv, &k_cache, &v_cache, &att, &part_states];
                    RowBlockDispatch {
                        pipelines: attn_p.clone(),
                        bind: g.bind(attn_p.any(), &binds),
                        combine: combine_p.as_ref().map(|p| Dispatch { pipeline: p.clone(), bind: g.bind(p, &binds) }),
                    }
                },
                attn_out: sites.matmul(&out_m, &att, None, &x, None, Epilogue::Add, None, false, d),
                gate_up: sites.matmul(
                    &gu_m,
                    &x,
                    Some(&ffn_gamma),
                    &hidden,
                    None,
                    Epilogue::SwiGlu,
                    None,
                    false,
                    c.ffn_dim,
                ),
                down: sites.matmul(&down_m, &hidden, None, &x, None, Epilogue::Add, None, false, d),
            };
            layers.push(sites);
            keep.extend([k_cache, v_cache, attn_gamma, ffn_gamma]);
            for m in [qkv_m, out_m, gu_m, down_m] {
                for p in m.parts {
                    keep.extend([p.w, p.scale, p.offset]);
                }
            }
        }
        let out_m = match &w.output {
            Some(o) => GpuMatrix::upload_wide(g, o, "output"),
            None => embed_m.clone(),
        };
        let out_gamma = g.storage("final norm weight", &w.out_norm);
        let lm_head = sites.matmul(&out_m, &x, Some(&out_gamma), &logits, None, Epilogue::Store, None, true, c.vocab);
        let accept_prm =
            g.uniform("accept params", &AcceptParams { vocab: c.vocab as u32, row_stride: c.vocab as u32, _p: [0; 2] });
        let best = g.storage_zeroed("row best", (max_batch * 8) as u64);
        let accept_binds = [&pass_buf, &accept_prm, &logits, &parents, &tokens, &result, &best];
        let row_best_p = kernels.row_best(g);
        let row_best = Dispatch { pipeline: row_best_p.clone(), bind: g.bind(&row_best_p, &accept_binds) };
        let accept_p = kernels.accept(g, false);
        let accept = Dispatch { pipeline: accept_p.clone(), bind: g.bind(&accept_p, &accept_binds) };
        let candidates = g.storage_zeroed("candidates", (max_batch * CANDIDATES * 8) as u64);
        let topk_p = kernels.topk(g);
        let topk_prm =
            g.uniform("topk params", &TopkParams { vocab: c.vocab as u32, row_stride: c.vocab as u32, _p: [0; 2] });
        let topk =
            Dispatch { pipeline: topk_p.clone(), bind: g.bind(&topk_p, &[&pass_buf, &topk_prm, &logits, &candidates]) };
        keep.extend([topk_prm, attn_prm, compact_prm, x.clone(), qkv, att, hidden, rope, dummy, dummy_rw, part_states]);
        let gpu_uniform_x = gpu.uniform_x;
        let accept_timer = gpu.timestamps.then(|| AcceptTimer {
            set: gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
                label: Some("accept time"),
                ty: wgpu::QueryType::Timestamp,
                count: 2,
            }),
            resolve: gpu.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("accept time resolve"),
                size: ACCEPT_TIME_BYTES,
                usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
                mapped_at_creation: false,
            }),
            period_ns: gpu.queue.get_timestamp_period() as f64,
        });
        Ok(GpuModel {
            gpu,
            cfg: c,
            max_ctx,
            max_batch,
            pass_buf,
            tokens,
            positions,
            masks,
            logits,
            x,
            result,
            parents,
            candidates,
            topk,
            accept,
            accept_params: accept_prm,
            best,
            draw_rows: std::sync::OnceLock::new(),
            row_best,
            embed,
            layers,
            lm_head,
            embedding: embed_m,
            output: out_m,
            out_gamma,
            _keep: keep,
            uniform_x_bytes: if gpu_uniform_x { UNIFORM_X_BYTES } else { 0 },
            accept_timer,
            passes: Default::default(),
        })
    }

    /// Test-only: swaps in a deliberately wrong acceptance rule (accepts any kept draft), so the
    /// statistical tests can show that they catch a rule that changes the distribution.
    #[doc(hidden)]
    pub fn use_broken_acceptance_rule(&mut self) {
        let p = self.gpu.kernels.accept(&self.gpu, true);
        let bind = self.gpu.bind(
            &p,
            &[&self.pass_buf, &self.accept_params, &self.logits, &self.parents, &self.tokens, &self.result, &self.best],
        );
        self.accept = Dispatch { pipeline: p, bind };
    }

    /// Test-only: matmuls read x through a uniform binding only in passes whose rows of x fit
    /// in `bytes` of it (0: never), so that tests can take both paths and the switch between.
    #[doc(hidden)]
    pub fn limit_uniform_x(&mut self, bytes: u64) {
        self.uniform_x_bytes = bytes.min(if self.gpu.uniform_x { UNIFORM_X_BYTES } else { 0 });
    }

    /// Passes encoded so far (see `passes`).
    pub fn passes(&self) -> u64 {
        self.passes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes the input tokens of the next pass (rows 0..tokens.len()).
    pub fn set_tokens(&self, tokens: &[u32]) {
        self.gpu.queue.write_buffer(&self.tokens, 0, bytemuck::cast_slice(tokens));
    }

    /// Writes the pass uniform (and tree data) for the next submission and records the pass's
    /// dispatches into `enc`. One pass per submission: the uniform is per submission.
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder, spec: &PassSpec, prof: Option<&mut Profiler>) -> Result<()> {
        self.encode_pass(enc, spec, prof, false)
    }

    /// `encode` with the acceptance and compaction dispatches in a compute pass of their own
    /// between two timestamps, when the device has them and the pass accepts. Returns whether it
    /// timed them: then `copy_accept_time` can copy the timestamps out in the same submission.
    pub fn encode_timing_accept(&self, enc: &mut wgpu::CommandEncoder, spec: &PassSpec) -> Result<bool> {
        let timed = self.accept_timer.is_some() && spec.accept.is_some();
        self.encode_pass(enc, spec, None, timed)?;
        Ok(timed)
    }

    /// Copies the timestamps of the last timed acceptance (`encode_timing_accept`) into `dst`
    /// at `offset` (ACCEPT_TIME_BYTES).
    pub fn copy_accept_time(&self, enc: &mut wgpu::CommandEncoder, dst: &wgpu::Buffer, offset: u64) {
        if let Some(t) = &self.accept_timer {
            enc.resolve_query_set(&t.set, 0..2, &t.resolve, 0);
            enc.copy_buffer_to_buffer(&t.resolve, 0, dst, offset, ACCEPT_TIME_BYTES);
        }
    }

    /// Milliseconds between the two timestamps `copy_accept_time` copied out.
    pub fn accept_ms(&self, bytes: &[u8]) -> f64 {
        let (Some(t), Some(b)) = (&self.accept_timer, bytes.get(..ACCEPT_TIME_BYTES as usize)) else { return 0.0 };
        let ts: [u64; 2] = bytemuck::pod_read_unaligned(b);
        ts[1].saturating_sub(ts[0]) as f64 * t.period_ns / 1e6
    }

    fn encode_pass(
        &self,
        enc: &mut wgpu::CommandEncoder,
        spec: &PassSpec,
        prof: Option<&mut Profiler>,
        time_accept: bool,
    ) -> Result<()> {
        let m = spec.m;
        self.passes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if m == 0 || m > self.max_batch {
            return Err(Error::msg(format!("a pass holds 1..={} tokens, got {m}", self.max_batch)));
        }
        if spec.n_past + m > self.max_ctx {
            return Err(Error::msg(format!(
                "context full: {} tokens do not fit in {} (use a larger --ctx)",
                spec.n_past + m,
                self.max_ctx
            )));
        }
        if spec.logits_rows.end > m {
            return Err(Error::msg(format!("logits rows {:?} must lie within the pass's {m} rows", spec.logits_rows)));
        }
        if let Some(t) = &spec.tree {
            if t.masks.len() != m || t.positions.len() != m || t.parents.len() != m || m > 64 {
                return Err(Error::msg("a token tree needs one mask, position and parent per row, at most 64 rows"));
            }
            if t.positions.iter().any(|&p| p as usize >= self.max_ctx) {
                return Err(Error::msg("a tree position lies beyond the context"));
            }
            if t.base > spec.n_past || spec.n_past + m - t.base > 64 {
                return Err(Error::msg("a token tree spans at most 64 KV slots above its base"));
            }
        }
        if spec.accept.is_some() && spec.logits_rows.is_empty() {
            return Err(Error::msg("acceptance needs logits"));
        }
        if (spec.accept.is_some() && spec.tree.is_some() && spec.logits_rows != (0..m))
            || (spec.compact && spec.tree.is_none())
        {
            return Err(Error::msg("tree acceptance needs logits for every row of a tree pass"));
        }
        let lm_rows = spec.logits_rows.len();
        let s = spec.accept.or(spec.coupled).unwrap_or_default();
        let u = PassUniform {
            m: m as u32,
            n_past: spec.n_past as u32,
            causal: spec.tree.is_none() as u32,
            lm_row0: spec.logits_rows.start as u32,
            lm_rows: lm_rows as u32,
            seed: s.seed,
            draw: s.draw,
            top_k: s.top_k,
            temperature: s.temperature,
            top_p: s.top_p,
            tree_base: spec.tree.as_ref().map_or(spec.n_past, |t| t.base) as u32,
            _p: 0,
        };
        let q = &self.gpu.queue;
        q.write_buffer(&self.pass_buf, 0, bytemuck::bytes_of(&u));
        if let Some(t) = &spec.tree {
            q.write_buffer(&self.masks, 0, bytemuck::cast_slice(&t.masks));
            q.write_buffer(&self.positions, 0, bytemuck::cast_slice(&t.positions));
            q.write_buffer(&self.parents, 0, bytemuck::cast_slice(&t.parents));
        }
        let plan = self.plan(spec);
        match prof {
            None => {
                // the forward pass, then (timed) acceptance and compaction: the plan ends with them
                let tail = match (time_accept, &self.accept_timer) {
                    (true, Some(_)) => {
                        plan.iter().rev().take_while(|d| matches!(d.label, "accept" | "kv_compact")).count()
                    }
                    _ => 0,
                };
                let (forward, accept) = plan.split_at(plan.len() - tail);
                let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("forward"),
                    timestamp_writes: None,
                });
                for d in forward {
                    cp.set_pipeline(&d.pipeline.pipeline);
                    cp.set_bind_group(0, d.bind, &[]);
                    cp.dispatch_workgroups(d.size[0], d.size[1], d.size[2]);
                }
                drop(cp);
                if let (false, Some(t)) = (accept.is_empty(), &self.accept_timer) {
                    let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("accept"),
                        timestamp_writes: Some(wgpu::ComputePassTimestampWrites {
                            query_set: &t.set,
                            beginning_of_pass_write_index: Some(0),
                            end_of_pass_write_index: Some(1),
                        }),
                    });
                    for d in accept {
                        cp.set_pipeline(&d.pipeline.pipeline);
                        cp.set_bind_group(0, d.bind, &[]);
                        cp.dispatch_workgroups(d.size[0], d.size[1], d.size[2]);
                    }
                }
            }
            Some(p) => {
                for d in &plan {
                    let mut cp = enc.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some(d.label),
                        timestamp_writes: p.writes(d.label),
                    });
                    cp.set_pipeline(&d.pipeline.pipeline);
                    cp.set_bind_group(0, d.bind, &[]);
                    cp.dispatch_workgroups(d.size[0], d.size[1], d.size[2]);
                }
            }
        }
        Ok(())
    }

    /// The dispatches of one pass, in order.
    fn plan<'a>(&'a self, spec: &PassSpec) -> Vec<Planned<'a>> {
        let c = &self.cfg;
        let m = spec.m;
        let rows = m;
        let mut plan = Vec::with_capacity(8 * c.n_layers + 4);
        let one = |plan: &mut Vec<Planned<'a>>, label: &'static str, d: &'a Dispatch, size: [u32; 3]| {
            plan.push(Planned { label, pipeline: &d.pipeline, bind: &d.bind, size })
        };
        // `top`: the rows of x read lie below it (rows, or for the LM head lm_row0 + lm_rows)
        let mm = |plan: &mut Vec<Planned<'a>>, label: &'static str, s: &'a MatmulSite, rows: usize, top: usize| {
            let v = s.variant(top, self.uniform_x_bytes);
            let (pipeline, r) = v.pipelines.for_rows(rows);
            for (b, gx) in &v.groups {
                plan.push(Planned { label, pipeline, bind: b, size: [*gx, ceil(rows, r), 1] });
            }
        };
        for e in &self.embed {
            one(&mut plan, "embed", e, [ceil(c.dim / 4, 64), m as u32, 1]);
        }
        for l in &self.layers {
            mm(&mut plan, "matmul qkv+rope", &l.qkv, rows, rows);
            let (pipeline, r) = l.attention.pipelines.for_rows(rows);
            let size = attention_grid(self.gpu.plan, c.n_heads, c.n_kv_heads, c.head_dim, rows, r);
            plan.push(Planned { label: "attention", pipeline, bind: &l.attention.bind, size });
            if let Some(d) = &l.attention.combine
                && spec.n_past + m > ATTN_PART_SLOTS
            {
                one(&mut plan, "attention", d, [c.n_heads as u32, rows as u32, 1]);
            }
            mm(&mut plan, "matmul attn_out", &l.attn_out, rows, rows);
            mm(&mut plan, "matmul gate_up+swiglu", &l.gate_up, rows, rows);
            mm(&mut plan, "matmul down", &l.down, rows, rows);
        }
        let lm_rows = spec.logits_rows.len();
        if lm_rows > 0 {
            mm(&mut plan, "matmul lm_head", &self.lm_head, lm_rows, spec.logits_rows.end);
        }
        if spec.accept.is_some() {
            if lm_rows > 1 {
                one(&mut plan, "accept", &self.row_best, [lm_rows as u32, 1, 1]);
            }
            one(&mut plan, "accept", &self.accept, [1, 1, 1]);
        }
        if spec.compact {
            for l in &self.layers {
                one(&mut plan, "kv_compact", &l.compact, [ceil(c.kv_dim(), 64), 1, 1]);
            }
        }
        plan
    }

    /// Records, after `encode`, a pass that writes the top CANDIDATES tokens and probabilities
    /// of each of the `lm_rows` LM-head rows into `candidates`; with `coupled` (the pass's spec
    /// had `coupled` sampling) also each row's coupled draw into `draws()`.
    pub fn encode_candidates(&self, enc: &mut wgpu::CommandEncoder, lm_rows: usize, coupled: bool) {
        let draw_rows = coupled.then(|| self.draw_rows());
        let mut cp =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("topk"), timestamp_writes: None });
        cp.set_pipeline(&self.topk.pipeline.pipeline);
        cp.set_bind_group(0, &self.topk.bind, &[]);
        cp.dispatch_workgroups(lm_rows as u32, 1, 1);
        if let Some(d) = draw_rows {
            d.record(&mut cp, lm_rows);
        }
    }

    fn draw_rows(&self) -> &DrawRows {
        self.draw_rows.get_or_init(|| {
            let spare = [&self.parents, &self.tokens, &self.result, &self.best];
            DrawRows::new(&self.gpu, &self.pass_buf, &self.accept_params, &self.logits, spare, self.max_batch)
        })
    }

    /// After `encode_candidates` with `coupled`: per LM-head row, its coupled draw, the bits of
    /// its score and the runner-up token (DRAW_BYTES each; accept.wgsl draw_rows).
    pub fn draws(&self) -> &wgpu::Buffer {
        &self.draw_rows().draws
    }

    /// Runs one pass and waits for it (tests and prefill; decoding uses `encode` directly).
    pub fn run(&self, spec: &PassSpec) -> Result<()> {
        let mut enc = self.gpu.device.create_command_encoder(&Default::default());
        self.encode(&mut enc, spec, None)?;
        self.gpu.queue.submit([enc.finish()]);
        self.gpu.wait()
    }

    /// Logits of LM-head rows 0..rows of the last pass (tests; not for the hot path).
    pub fn read_logits(&self, rows: usize) -> Vec<f32> {
        self.gpu.read_f32(&self.logits, rows * self.cfg.vocab)
    }
}

/// The target's final norm, LM head and top-k on buffers of their own, for a drafter that
/// predicts hidden states (the draft head): hidden states in `x`, CANDIDATES (id, probability)
/// pairs per row out in `candidates`. Shares the target's weights; made once.
pub struct LmHeadRig {
    gpu: Arc<Gpu>,
    pass_buf: wgpu::Buffer,
    /// Input hidden states [rows][dim] (before the final norm).
    pub x: wgpu::Buffer,
    pub candidates: wgpu::Buffer,
    pub rows: usize,
    pub vocab: usize,
    site: MatmulSite,
    topk: Dispatch,
    logits: wgpu::Buffer,
    /// accept.wgsl draw_rows on the rig's logits, made when the drafter first samples.
    draw_rows: std::sync::OnceLock<DrawRows>,
    _keep: Vec<wgpu::Buffer>,
}

impl GpuModel {
    /// An LM-head rig for up to `rows` rows at a time.
    pub fn lm_head_rig(&self, rows: usize) -> LmHeadRig {
        let g = &*self.gpu;
        let c = &self.cfg;
        let pass_buf = g.uniform("lm rig pass", &PassUniform::default());
        let x = g.activations("lm rig x", (rows * c.dim * 4) as u64);
        let logits = g.storage_zeroed("lm rig logits", (rows * c.vocab * 4) as u64);
        let candidates = g.storage_zeroed("lm rig candidates", (rows * CANDIDATES * 8) as u64);
        let dummy = g.storage("dummy", &[0f32; 4]);
        let dummy_rw = g.storage("dummy", &[0f32; 4]);
        let ctx =
            SiteCtx { gpu: g, pass_buf: &pass_buf, dummy: &dummy, dummy_rw: &dummy_rw, eps: c.rms_eps, max_rows: rows };
        let site =
            ctx.matmul(&self.output, &x, Some(&self.out_gamma), &logits, None, Epilogue::Store, None, true, c.vocab);
        let topk_p = self.gpu.kernels.topk(g);
        let topk_prm =
            g.uniform("lm rig topk", &TopkParams { vocab: c.vocab as u32, row_stride: c.vocab as u32, _p: [0; 2] });
        let topk =
            Dispatch { pipeline: topk_p.clone(), bind: g.bind(&topk_p, &[&pass_buf, &topk_prm, &logits, &candidates]) };
        LmHeadRig {
            gpu: self.gpu.clone(),
            pass_buf,
            x,
            candidates,
            rows,
            vocab: c.vocab,
            site,
            topk,
            logits,
            draw_rows: std::sync::OnceLock::new(),
            _keep: vec![dummy, dummy_rw, topk_prm],
        }
    }
}

impl LmHeadRig {
    /// Records norm, LM head and top-k for rows 0..rows of `x` (one use per submission); with
    /// `coupled` sampling also each row's coupled draw into `draws()` (as
    /// `GpuModel::encode_candidates`).
    pub fn encode(&self, enc: &mut wgpu::CommandEncoder, rows: usize, coupled: Option<Sampling>) {
        assert!(rows >= 1 && rows <= self.rows, "the LM-head rig holds 1..={} rows", self.rows);
        let s = coupled.unwrap_or_default();
        let u = PassUniform {
            m: rows as u32,
            lm_row0: 0,
            lm_rows: rows as u32,
            seed: s.seed,
            draw: s.draw,
            top_k: s.top_k,
            temperature: s.temperature,
            top_p: s.top_p,
            ..Default::default()
        };
        self.gpu.queue.write_buffer(&self.pass_buf, 0, bytemuck::bytes_of(&u));
        let draw_rows = coupled.map(|_| self.draw_rows());
        let mut cp =
            enc.begin_compute_pass(&wgpu::ComputePassDescriptor { label: Some("lm rig"), timestamp_writes: None });
        self.site.record(&mut cp, rows);
        cp.set_pipeline(&self.topk.pipeline.pipeline);
        cp.set_bind_group(0, &self.topk.bind, &[]);
        cp.dispatch_workgroups(rows as u32, 1, 1);
        if let Some(d) = draw_rows {
            d.record(&mut cp, rows);
        }
    }

    fn draw_rows(&self) -> &DrawRows {
        self.draw_rows.get_or_init(|| {
            let g = &*self.gpu;
            let v = self.vocab as u32;
            let params = g.uniform("lm rig draw params", &AcceptParams { vocab: v, row_stride: v, _p: [0; 2] });
            let spare: Vec<wgpu::Buffer> = (0..4).map(|_| g.storage_zeroed("lm rig spare", 16)).collect();
            let mut d = DrawRows::new(
                g,
                &self.pass_buf,
                &params,
                &self.logits,
                [&spare[0], &spare[1], &spare[2], &spare[3]],
                self.rows,
            );
            d._keep = spare;
            d._keep.push(params);
            d
        })
    }

    /// After `encode` with `coupled`: per row, its coupled draw (DRAW_BYTES each).
    pub fn draws(&self) -> &wgpu::Buffer {
        &self.draw_rows().draws
    }
}

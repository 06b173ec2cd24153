//! The WGSL kernels (shaders/*.wgsl) and their pipelines, made on first use and kept with the
//! device (`Gpu::kernels`), so that every model on a device shares them.
//! Every kernel file is prefixed with shaders/common.wgsl (the per-pass uniform).

use super::{Bind, Gpu, KernelPlan, Pipeline, PipelineFamily};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

pub const COMMON: &str = include_str!("../../shaders/common.wgsl");
pub const MATMUL: &str = include_str!("../../shaders/matmul.wgsl");
/// Loads shared across a subgroup, or every lane loading for itself (see lanes_subgroup.wgsl).
pub const LANES_SUBGROUP: &str = include_str!("../../shaders/lanes_subgroup.wgsl");
pub const LANES_PLAIN: &str = include_str!("../../shaders/lanes_plain.wgsl");
/// Rows of a pass one matmul or attention invocation computes (`R` in matmul.wgsl and
/// attention.wgsl), one pipeline each: a pass takes the smallest that holds its rows (blocks of
/// the largest beyond), and every block reads the weights (or the K and V cache) once. Every size
/// up to 9, since on lavapipe a block costs what its R rows cost whether they exist or not, and
/// the controller's trees come in every size; 9 so that a full tree of the default budget (8
/// drafted nodes and the root) is one block: as blocks of 8 and 1 it cost nearly two passes
/// (the down projection alone at M=9, best of 9: 0.613 ms against 0.359 as one block of 9, and
/// 0.338 at M=8). Larger blocks (MAX_R 16) made every rolled-loop variant slower on lavapipe.
pub const ROW_BLOCKS: [usize; 9] = [1, 2, 3, 4, 5, 6, 7, 8, 9];

/// The row block (index into ROW_BLOCKS) for a pass of `rows` rows among those a kernel has
/// (`blocks`, a mask): the smallest that holds them, else the largest.
fn row_block_of(blocks: u32, rows: usize) -> usize {
    let has = |i: usize| blocks & (1 << i) != 0;
    (0..ROW_BLOCKS.len())
        .find(|&i| has(i) && ROW_BLOCKS[i] >= rows)
        .unwrap_or_else(|| (0..ROW_BLOCKS.len()).rev().find(|&i| has(i)).expect("a row block"))
}

/// The row blocks matmul.wgsl has: all but 2, whose passes take the 3-row block. At 2 rows Mesa
/// unrolls the walk through a 32-block and the code spills, so that on lavapipe a 2-row pass
/// cost as much as a 3-row one (`matmul_curve 576 3072 Q4 10 norm,swiglu`, median of 6: M2 0.84
/// ms, M3 0.80; Q8 1.20 and 0.94); in the 3-row block the walk stays a loop, and a row's
/// arithmetic is the same whatever the block (batch invariance). Whole SmolLM2 passes of 2 rows
/// (`augur bench`, context 150): 1.10-1.15x a 1-row pass against 1.21-1.26x (BENCHMARKS.md,
/// session 24).
pub const MATMUL_ROW_BLOCKS: u32 = ALL_ROW_BLOCKS & !(1 << 1);

/// One kernel's pipelines, one per row block, sharing one bind group layout. Each is compiled
/// the first time a pass of its size needs it, or by `build_all` (`Kernels::build_row_blocks`):
/// on lavapipe a matmul's row blocks take ~1 s to compile, and plain decoding needs two of them
/// (one row, and a prompt's), so a model that only decodes plainly starts ~4x sooner. Speculative
/// decoding builds the ones its passes take (`ahead`) before its first round, so that no round
/// compiles one.
pub struct RowBlockPipelines {
    family: Option<PipelineFamily>,
    consts: Vec<Vec<(&'static str, f64)>>,
    by_rows: Vec<OnceLock<Pipeline>>,
    /// The row blocks built ahead of need (bit i: ROW_BLOCKS[i]) by `Kernels::build_row_blocks`
    /// and its background twin, and that `Kernels::ready_rows` waits for; the others are compiled
    /// when a pass first takes them. A matmul's two variants (x as storage or uniform,
    /// `MatmulKind::uniform_x`) each serve only some pass sizes, so neither builds them all.
    ahead: AtomicU32,
    /// The row blocks it has (a mask of ROW_BLOCKS; the others are never built).
    blocks: u32,
}

/// Every row block (an `ahead` mask).
pub const ALL_ROW_BLOCKS: u32 = (1 << ROW_BLOCKS.len()) - 1;

impl RowBlockPipelines {
    /// One pipeline per row block of `source`'s `entry`, with `consts(r)` besides `R`.
    fn new(
        gpu: &Gpu,
        label: &str,
        source: &str,
        entry: &str,
        binds: &[Bind],
        consts: impl Fn(usize) -> Vec<(&'static str, f64)>,
        ahead: u32,
    ) -> Self {
        let consts: Vec<Vec<(&str, f64)>> =
            ROW_BLOCKS.iter().map(|&r| consts(r).into_iter().chain([("R", r as f64)]).collect()).collect();
        RowBlockPipelines {
            family: Some(gpu.family(label, source, entry, binds)),
            by_rows: consts.iter().map(|_| OnceLock::new()).collect(),
            consts,
            ahead: AtomicU32::new(ahead),
            blocks: ALL_ROW_BLOCKS,
        }
    }

    /// The same with only the row blocks in `blocks` (a mask of ROW_BLOCKS): passes take the
    /// smallest of them that holds their rows.
    fn with_blocks(self, blocks: u32) -> Self {
        RowBlockPipelines { blocks, ..self }
    }

    /// One pipeline that takes one row per workgroup, whatever the pass (attention_split.wgsl).
    fn single(gpu: &Gpu, label: &str, source: &str, entry: &str, binds: &[Bind]) -> Self {
        let pipeline = gpu.pipeline(label, source, entry, binds, &[]);
        RowBlockPipelines {
            family: None,
            consts: vec![],
            by_rows: vec![OnceLock::from(pipeline)],
            ahead: AtomicU32::new(ALL_ROW_BLOCKS),
            blocks: ALL_ROW_BLOCKS,
        }
    }

    /// Adds row blocks (an `ahead` mask) to those built ahead of need.
    pub fn build_ahead(&self, blocks: u32) {
        self.ahead.fetch_or(blocks, Ordering::SeqCst);
    }

    /// Whether row block i is one it has, built ahead of need (and not yet built).
    fn awaited(&self, i: usize) -> bool {
        let ahead = self.ahead.load(Ordering::SeqCst) & self.blocks;
        i < self.by_rows.len() && ahead & (1 << i) != 0 && self.by_rows[i].get().is_none()
    }

    /// The pipeline of row block i (an index into ROW_BLOCKS), compiled if it is not yet.
    fn built(&self, i: usize) -> &Pipeline {
        self.by_rows[i]
            .get_or_init(|| self.family.as_ref().expect("single pipelines are built").pipeline(&self.consts[i]))
    }

    /// The pipeline for a pass of `rows` rows and how many rows each of its invocations computes.
    pub fn for_rows(&self, rows: usize) -> (&Pipeline, usize) {
        if self.by_rows.len() == 1 {
            return (self.built(0), 1);
        }
        let i = row_block_of(self.blocks, rows);
        (self.built(i), ROW_BLOCKS[i])
    }

    /// Any of them, to make bind groups with (they share the layout): the one-row block.
    pub fn any(&self) -> &Pipeline {
        self.built(0)
    }

    /// A bind group for all of them, without compiling any.
    pub fn bind(&self, gpu: &Gpu, buffers: &[wgpu::BufferBinding]) -> wgpu::BindGroup {
        let (label, layout) = match &self.family {
            Some(f) => (&f.label, &f.layout),
            None => (&self.any().label, &self.any().layout),
        };
        gpu.bind_ranges(label, layout, buffers)
    }

    /// Compiles every row block built ahead of need that is not yet compiled.
    pub fn build_all(&self) {
        for i in 0..self.by_rows.len() {
            if self.awaited(i) {
                self.built(i);
            }
        }
    }
}
pub const EMBED: &str = include_str!("../../shaders/embed.wgsl");
pub const ATTENTION: &str = include_str!("../../shaders/attention.wgsl");
pub const MATMUL_SPLIT: &str = include_str!("../../shaders/matmul_split.wgsl");
pub const ATTENTION_SPLIT: &str = include_str!("../../shaders/attention_split.wgsl");
/// The parameters and bindings both matmul kernels share (prepended to each).
pub const MATMUL_IO: &str = include_str!("../../shaders/matmul_io.wgsl");
/// The parameters and bindings both attention kernels share (prepended to each).
pub const ATTENTION_IO: &str = include_str!("../../shaders/attention_io.wgsl");
pub const ACCEPT: &str = include_str!("../../shaders/accept.wgsl");
pub const KV_COMPACT: &str = include_str!("../../shaders/kv_compact.wgsl");
pub const TOPK: &str = include_str!("../../shaders/topk.wgsl");
pub const HEAD: &str = include_str!("../../shaders/head.wgsl");
pub const REPLAY: &str = include_str!("../../shaders/replay.wgsl");

/// All kernel sources, for validation tests.
pub const ALL: [(&str, &str); 10] = [
    ("matmul", MATMUL),
    ("matmul_split", MATMUL_SPLIT),
    ("attention_split", ATTENTION_SPLIT),
    ("embed", EMBED),
    ("attention", ATTENTION),
    ("accept", ACCEPT),
    ("kv_compact", KV_COMPACT),
    ("topk", TOPK),
    ("head", HEAD),
    ("replay", REPLAY),
];

pub fn source(body: &str) -> String {
    format!("{COMMON}\n{body}")
}

/// Which kernels these are (a hash of every WGSL source): measurements kept on disk, such as the
/// controller's cost calibration, are redone when the kernels change.
pub fn kernels_fingerprint() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    let parts = [COMMON, LANES_SUBGROUP, LANES_PLAIN, MATMUL_IO, MATMUL_X_STORAGE, MATMUL_X_UNIFORM, ATTENTION_IO];
    for text in ALL.iter().map(|(_, t)| *t).chain(parts) {
        for b in text.bytes() {
            h = (h ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The kernels written for both lanes_*.wgsl.
pub const WITH_LANES: [&str; 2] = ["matmul", "attention"];

/// A kernel that shares values across lanes (matmul, attention), for a device with or
/// without subgroups.
pub fn source_with_lanes(body: &str, subgroups: bool) -> String {
    let lanes = if subgroups { LANES_SUBGROUP } else { LANES_PLAIN };
    format!("{COMMON}\n{lanes}\n{body}")
}

/// Invocations attention.wgsl gives each (row, query head) pair (its P): enough that none holds
/// more than 16 vec4s of the head's dims.
pub fn attention_lanes_per_head(head_dim: usize) -> usize {
    match head_dim / 4 {
        0..=16 => 1,
        17..=32 => 2,
        33..=64 => 4,
        _ => 8,
    }
}

/// Workgroups of 8 invocations attention.wgsl takes per KV head for a block of `rows` rows (its
/// CHUNKS): an invocation per (row, query head, part of the head).
pub fn attention_chunks(rows: usize, group: usize, head_dim: usize) -> usize {
    (rows * group * attention_lanes_per_head(head_dim)).div_ceil(8)
}

/// attention.wgsl for one model's head shape: `group` query heads per KV head and `head_dim`
/// (a multiple of 4) size its arrays, so they are constants rather than pipeline overrides.
pub fn attention_source(subgroups: bool, group: usize, head_dim: usize) -> String {
    let (d4, p) = (head_dim / 4, attention_lanes_per_head(head_dim));
    let shape = format!("const GROUP: u32 = {group}u;\nconst D4: u32 = {d4}u;\nconst P: u32 = {p}u;\n");
    source_with_lanes(&format!("{shape}{ATTENTION_IO}\n{ATTENTION}"), subgroups)
}

/// A matmul's x (binding 2) as a storage buffer: any number of rows.
pub const MATMUL_X_STORAGE: &str = "@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;";
/// x as a uniform buffer of UNIFORM_X_BYTES, for passes whose rows of x all lie within it.
/// lavapipe's gallivm loads a storage buffer at addresses that differ between lanes one lane at
/// a time, each behind two branches (the lane's mask, the bounds check), but gathers from a
/// uniform buffer without a branch (clamping the address); every matmul reads its x per row and
/// per 32-block, so the loads of x are what each row of a pass costs on top of the weights'
/// (576 x 3072 Q4, per extra row: 0.266 -> 0.219 ms; 1536 x 576: 0.111 -> 0.081).
pub const MATMUL_X_UNIFORM: &str = "@group(0) @binding(2) var<uniform> x: array<vec4<f32>, 4096>;";
/// Bytes of x a uniform binding holds: 4096 vec4s, the 64 KiB every wgpu device allows
/// (`Limits::max_uniform_buffer_binding_size`'s default, which `Gpu::new` asks for). naga clamps
/// an index past the array's end, so a pass may take the uniform variant only when the highest
/// row it reads ends within this (`uniform_x_fits`).
pub const UNIFORM_X_BYTES: u64 = 65536;

/// Whether a matmul over inputs of `k` values may read x through a uniform binding for a pass
/// that reads rows of x below `top`.
pub fn uniform_x_fits(k: usize, top: usize) -> bool {
    (top * k * 4) as u64 <= UNIFORM_X_BYTES
}

/// matmul.wgsl for weights in `format` on a device with or without subgroups, x in a storage or
/// uniform buffer.
pub fn matmul_source(format: Format, subgroups: bool, uniform_x: bool) -> String {
    matmul_source_of(MATMUL, format, subgroups, uniform_x)
}

/// The same with `matmul` in place of matmul.wgsl's text (`GpuOptions::matmul_wgsl`).
fn matmul_source_of(matmul: &str, format: Format, subgroups: bool, uniform_x: bool) -> String {
    let x = if uniform_x { MATMUL_X_UNIFORM } else { MATMUL_X_STORAGE };
    let walk = format_block_wgsl(format);
    source_with_lanes(&format!("{MATMUL_IO}\n{x}\n{matmul}\n{walk}"), subgroups)
}

/// matmul.wgsl's `format_block`: the 32-block walk of `format`'s weights, and only that one, so
/// that the driver compiles no other (matmul.wgsl group_dot says why). The walks still branch on
/// the FORMAT constant within them (Q4 on f16 scales or not, Q8 or F16).
fn format_block_wgsl(format: Format) -> String {
    let walk = match format {
        Format::Q4 | Format::Q4Half => "q4_block",
        Format::Q8x16 => "q8x16_block",
        Format::Q8 | Format::F16 | Format::Q8Sym => "wide_block",
    };
    format!(
        "fn format_block(b: u32, g: u32, row0: u32, rows: u32, l: Lane, acc: Rows) -> Rows {{\n    \
         return {walk}(b, g, row0, rows, l, acc);\n}}\n"
    )
}

/// matmul_split.wgsl (x always in a storage buffer).
pub fn matmul_split_source() -> String {
    source(&format!("{MATMUL_IO}\n{MATMUL_X_STORAGE}\n{MATMUL_SPLIT}"))
}

/// attention_split.wgsl for one head size (`head_dim`, a multiple of 4, sizes its arrays).
pub fn attention_split_source(head_dim: usize) -> String {
    let consts = format!("const D4: u32 = {}u;\nconst P_MAX: u32 = {ATTN_PARTS}u;", head_dim / 4);
    source(&format!("{consts}\n{ATTENTION_IO}\n{ATTENTION_SPLIT}"))
}

/// Most workgroups attention_split.wgsl splits a row's slots over (one per 64 slots it sees).
pub const ATTN_PARTS: usize = 8;

/// Slots (n_past + rows) past which a split attention pass can have rows in parts, and needs its
/// `combine` dispatch.
pub const ATTN_PART_SLOTS: usize = 64;

/// Bytes of attention_split.wgsl's `parts` for `rows` rows: a state (max and sum, then head_dim
/// weighted values) per row, query head and part.
pub fn attention_parts_bytes(rows: usize, n_heads: usize, head_dim: usize) -> u64 {
    (rows * n_heads * ATTN_PARTS * (head_dim / 4 + 1) * 16) as u64
}

/// Workgroups of an attention dispatch over `rows` rows whose pipeline takes `r` rows each
/// (`RowBlockPipelines::for_rows`): per KV head, row block and chunk of 8 invocations
/// (attention.wgsl), or per query head and row (attention_split.wgsl).
pub fn attention_grid(
    plan: KernelPlan,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    rows: usize,
    r: usize,
) -> [u32; 3] {
    match plan {
        KernelPlan::Serial => {
            let chunks = attention_chunks(r, n_heads / n_kv_heads, head_dim);
            [(n_kv_heads * chunks) as u32, rows.div_ceil(r) as u32, 1]
        }
        KernelPlan::Split => [n_heads as u32, rows as u32, ATTN_PARTS as u32],
    }
}

/// Weight format of a matrix on the GPU (see matmul.wgsl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Q8 = 0,
    F16 = 1,
    /// Matmul only: the embedding, head and replay kernels read the others.
    Q4 = 2,
    Q8x16 = 3,
    /// Q8 with every offset zero (Q5_0, Q8_0). Matmul only, like Q4.
    Q8Sym = 4,
    /// Q4 whose scales and offsets are all f16 values (Q4_0, Q4_1), each column's pair in one
    /// word of the scale buffer: one load a block fewer. Matmul only, like Q4.
    Q4Half = 5,
}

impl Format {
    pub const ALL: [Format; 6] = [Format::Q8, Format::F16, Format::Q4, Format::Q8x16, Format::Q8Sym, Format::Q4Half];

    /// Formats only the matmul reads (the embedding, head and replay kernels take the others).
    pub fn matmul_only(self) -> bool {
        matches!(self, Format::Q4 | Format::Q4Half | Format::Q8Sym)
    }
}

/// What a matmul does with its result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Epilogue {
    Store = 0,
    Add = 1,
    SwiGlu = 2,
    /// The QKV matmul: q and k rotated (RoPE), q stored, k and v written into the KV cache
    /// (matmul_io.wgsl's `store`).
    Qkv = 3,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MatmulKind {
    pub format: Format,
    pub bias: bool,
    /// x is RMS-normalised as it is read (matmul_io.wgsl NORM).
    pub norm: bool,
    pub epilogue: Epilogue,
    /// Attention head size, for `Epilogue::Qkv` (0 otherwise).
    pub head_dim: u32,
    /// Invocations per workgroup (`matmul_workgroup`; 64 when split).
    pub workgroup: u32,
    /// Lanes per column group: 1 for matmul.wgsl, else matmul_split.wgsl's S
    /// (`matmul_split_lanes`).
    pub split: u32,
    /// x read through a uniform binding (MATMUL_X_UNIFORM; matmul.wgsl only).
    pub uniform_x: bool,
}

/// Lanes matmul_split.wgsl gives each column group, for `k` inputs: 16, 32 from K = 4096 (the
/// steps each lane walks stay few), never fewer than the 9 rows a workgroup can hold.
pub fn matmul_split_lanes(k: usize) -> u32 {
    if k >= 4096 { 32 } else { 16 }
}

/// Invocations per matmul workgroup for `invocations` in all (one per 4 output columns, 8 with
/// SwiGLU): 64, or 8 where 64 would leave fewer than 16 workgroups. lavapipe runs whole
/// workgroups on its threads (one per core), so 3 workgroups on 2 cores took as long as 4; more,
/// smaller workgroups cost a little per workgroup, which only tells where there are many.
pub fn matmul_workgroup(invocations: usize) -> u32 {
    if invocations >= 16 * 64 { 64 } else { 8 }
}

/// matmul_io.wgsl's bindings: pass, params, x, w, scale, offset, bias, y, norm weights, and for
/// `Epilogue::Qkv` positions, RoPE table, K cache, V cache.
pub const MATMUL_BINDS: [Bind; 13] = {
    use Bind::*;
    [Uniform, Uniform, Read, Read, Read, Read, Read, ReadWrite, Read, Read, Read, ReadWrite, ReadWrite]
};
/// The same with x (binding 2) uniform (`MatmulKind::uniform_x`).
pub const MATMUL_BINDS_UNIFORM_X: [Bind; 13] = {
    let mut b = MATMUL_BINDS;
    b[2] = Bind::Uniform;
    b
};
/// accept.wgsl's bindings: pass, params, logits, parents, tokens, result, each row's best logit.
pub const ACCEPT_BINDS: [Bind; 7] =
    [Bind::Uniform, Bind::Uniform, Bind::Read, Bind::Read, Bind::ReadWrite, Bind::ReadWrite, Bind::ReadWrite];
/// accept.wgsl's draw_rows: the acceptance bindings and the draws it writes.
pub const DRAW_BINDS: [Bind; 8] = {
    let mut b = [Bind::ReadWrite; 8];
    let mut i = 0;
    while i < ACCEPT_BINDS.len() {
        b[i] = ACCEPT_BINDS[i];
        i += 1;
    }
    b
};
pub const COMPACT_BINDS: [Bind; 5] = [Bind::Uniform, Bind::Uniform, Bind::Read, Bind::ReadWrite, Bind::ReadWrite];
pub const TOPK_BINDS: [Bind; 4] = [Bind::Uniform, Bind::Uniform, Bind::Read, Bind::ReadWrite];
pub const HEAD_BINDS: [Bind; 14] = [
    Bind::Uniform,
    Bind::ReadWrite,
    Bind::ReadWrite,
    Bind::ReadWrite,
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::ReadWrite,
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::Read,
];
pub const REPLAY_BINDS: [Bind; 17] = [
    Bind::Uniform,
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::ReadWrite,
    Bind::ReadWrite,
    Bind::ReadWrite,
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::Read,
    Bind::ReadWrite,
    Bind::ReadWrite,
    Bind::ReadWrite,
    Bind::ReadWrite,
    Bind::ReadWrite,
];
pub const EMBED_BINDS: [Bind; 7] =
    [Bind::Uniform, Bind::Uniform, Bind::Read, Bind::Read, Bind::Read, Bind::Read, Bind::ReadWrite];
/// attention_io.wgsl's bindings: pass, params, masks, qkv, K cache, V cache, out, part states.
pub const ATTN_BINDS: [Bind; 8] =
    [Bind::Uniform, Bind::Uniform, Bind::Read, Bind::Read, Bind::Read, Bind::Read, Bind::ReadWrite, Bind::ReadWrite];

type RowBlockMap = Arc<Mutex<HashMap<String, Arc<RowBlockPipelines>>>>;

/// The most rows a row block holds.
const MAX_ROWS: usize = ROW_BLOCKS[ROW_BLOCKS.len() - 1];

/// See `Kernels::ready_rows`.
fn ready_rows(row_blocks: &RowBlockMap) -> usize {
    let all = row_blocks.lock().unwrap();
    // the first pass size some kernel would wait for (a kernel's row block for a size is the
    // smallest of those it has: matmul.wgsl's 2-row passes wait for its 3-row block)
    (1..=MAX_ROWS).find(|&m| all.values().any(|p| p.awaited(row_block_of(p.blocks, m)))).map_or(MAX_ROWS, |m| m - 1)
}

/// Pipelines, made on first use and kept for the life of the device (`Gpu::kernels`).
#[derive(Default)]
pub struct Kernels {
    cache: Mutex<HashMap<String, std::sync::Arc<Pipeline>>>,
    row_blocks: RowBlockMap,
    /// A thread is compiling row blocks (`build_row_blocks_in_background`).
    building: Arc<AtomicBool>,
}

impl Kernels {
    fn get(&self, gpu: &Gpu, key: String, make: impl FnOnce() -> Pipeline) -> std::sync::Arc<Pipeline> {
        let mut c = self.cache.lock().unwrap();
        if let Some(p) = c.get(&key) {
            return p.clone();
        }
        let _ = gpu;
        let p = std::sync::Arc::new(make());
        c.insert(key, p.clone());
        p
    }

    /// Compiles every row block of every kernel made so far (see `RowBlockPipelines`).
    pub fn build_row_blocks(&self) {
        for p in self.all_row_blocks() {
            p.build_all();
        }
    }

    /// Compiles them on a thread of their own, smallest blocks first, unless none is missing or
    /// such a thread is already at work (it looks again before it ends, so kernels made
    /// meanwhile, say by another model loaded, are compiled too); passes of sizes not yet
    /// compiled wait for theirs (`ready_rows` says which need not).
    pub fn build_row_blocks_in_background(&self) {
        if ready_rows(&self.row_blocks) == MAX_ROWS || self.building.swap(true, Ordering::SeqCst) {
            return;
        }
        let (row_blocks, building) = (self.row_blocks.clone(), self.building.clone());
        std::thread::spawn(move || {
            loop {
                let all: Vec<_> = row_blocks.lock().unwrap().values().cloned().collect();
                for i in 0..ROW_BLOCKS.len() {
                    for p in all.iter().filter(|p| p.awaited(i)) {
                        p.built(i);
                    }
                }
                building.store(false, Ordering::SeqCst);
                if ready_rows(&row_blocks) == MAX_ROWS || building.swap(true, Ordering::SeqCst) {
                    break;
                }
            }
        });
    }

    /// The largest pass (in rows, up to the largest row block) whose pipelines every kernel
    /// has compiled for every size up to it. Cheap enough for every speculation round.
    pub fn ready_rows(&self) -> usize {
        ready_rows(&self.row_blocks)
    }

    fn all_row_blocks(&self) -> Vec<Arc<RowBlockPipelines>> {
        self.row_blocks.lock().unwrap().values().cloned().collect()
    }

    fn get_row_blocks(
        &self,
        key: String,
        make: impl FnOnce() -> RowBlockPipelines,
    ) -> std::sync::Arc<RowBlockPipelines> {
        let mut c = self.row_blocks.lock().unwrap();
        c.entry(key).or_insert_with(|| std::sync::Arc::new(make())).clone()
    }

    /// The pipelines of a matmul kind, with row blocks `ahead` (a mask of ROW_BLOCKS) added to
    /// those it builds ahead of need.
    pub fn matmul(&self, gpu: &Gpu, k: MatmulKind, ahead: u32) -> std::sync::Arc<RowBlockPipelines> {
        assert!(!(k.uniform_x && k.split > 1), "matmul_split.wgsl reads x from storage");
        let p = self.get_row_blocks(format!("matmul {k:?}"), || {
            // matmul.wgsl takes its workgroup size, matmul_split.wgsl its lanes per column group
            let (source, (name, value)) = match k.split {
                1 => {
                    let text = gpu.matmul_wgsl.as_deref().unwrap_or(MATMUL);
                    (matmul_source_of(text, k.format, gpu.subgroups, k.uniform_x), ("WG", k.workgroup))
                }
                s => (matmul_split_source(), ("S", s)),
            };
            let consts = |_| {
                vec![
                    ("FORMAT", k.format as u32 as f64),
                    ("BIAS", k.bias as u32 as f64),
                    ("NORM", k.norm as u32 as f64),
                    ("EPILOGUE", k.epilogue as u32 as f64),
                    ("HEAD_DIM", k.head_dim.max(4) as f64),
                    (name, value as f64),
                ]
            };
            let binds = if k.uniform_x { &MATMUL_BINDS_UNIFORM_X } else { &MATMUL_BINDS };
            let blocks = if k.split == 1 { MATMUL_ROW_BLOCKS } else { ALL_ROW_BLOCKS };
            RowBlockPipelines::new(gpu, &format!("matmul {k:?}"), &source, "main", binds, consts, 0).with_blocks(blocks)
        });
        p.build_ahead(ahead);
        p
    }

    /// `broken` builds the deliberately wrong rule that the statistical tests must catch.
    pub fn accept(&self, gpu: &Gpu, broken: bool) -> std::sync::Arc<Pipeline> {
        self.get(gpu, format!("accept {broken}"), || {
            gpu.pipeline("accept", &source(ACCEPT), "main", &ACCEPT_BINDS, &[("BROKEN_RULE", broken as u32 as f64)])
        })
    }

    /// Every LM-head row's max and argmax, for `accept` (accept.wgsl's other entry point).
    pub fn row_best(&self, gpu: &Gpu) -> std::sync::Arc<Pipeline> {
        self.get(gpu, "row_best".into(), || gpu.pipeline("row_best", &source(ACCEPT), "row_best", &ACCEPT_BINDS, &[]))
    }

    /// Each LM-head row's token drawn as `accept` draws one, for a drafter (accept.wgsl draw_rows).
    pub fn draw_rows(&self, gpu: &Gpu) -> std::sync::Arc<Pipeline> {
        self.get(gpu, "draw_rows".into(), || gpu.pipeline("draw_rows", &source(ACCEPT), "draw_rows", &DRAW_BINDS, &[]))
    }

    pub fn kv_compact(&self, gpu: &Gpu) -> std::sync::Arc<Pipeline> {
        self.get(gpu, "kv_compact".into(), || {
            gpu.pipeline("kv_compact", &source(KV_COMPACT), "main", &COMPACT_BINDS, &[])
        })
    }

    pub fn topk(&self, gpu: &Gpu) -> std::sync::Arc<Pipeline> {
        self.get(gpu, "topk".into(), || gpu.pipeline("topk", &source(TOPK), "main", &TOPK_BINDS, &[]))
    }

    /// One entry point of head.wgsl (the draft head and its trainer).
    pub fn head(&self, gpu: &Gpu, entry: &str, f: Format) -> std::sync::Arc<Pipeline> {
        assert!(!f.matmul_only(), "the LM head is uploaded wide (GpuMatrix::upload_wide)");
        self.get(gpu, format!("head {entry} {f:?}"), || {
            gpu.pipeline(entry, &source(HEAD), entry, &HEAD_BINDS, &[("FORMAT", f as u32 as f64)])
        })
    }

    /// One entry point of replay.wgsl (the draft head's training data).
    pub fn replay(&self, gpu: &Gpu, entry: &str, f: Format) -> std::sync::Arc<Pipeline> {
        assert!(!f.matmul_only(), "the embedding is uploaded wide (GpuMatrix::upload_wide)");
        self.get(gpu, format!("replay {entry} {f:?}"), || {
            gpu.pipeline(entry, &source(REPLAY), entry, &REPLAY_BINDS, &[("FORMAT", f as u32 as f64)])
        })
    }

    pub fn embed(&self, gpu: &Gpu, f: Format) -> std::sync::Arc<Pipeline> {
        assert!(!f.matmul_only(), "the embedding is uploaded wide (GpuMatrix::upload_wide)");
        self.get(gpu, format!("embed {f:?}"), || {
            gpu.pipeline("embed", &source(EMBED), "main", &EMBED_BINDS, &[("FORMAT", f as u32 as f64)])
        })
    }

    /// attention_split.wgsl's `combine`: rows split into parts, merged.
    pub fn attention_combine(&self, gpu: &Gpu, head_dim: usize) -> std::sync::Arc<Pipeline> {
        self.get(gpu, format!("attention combine {head_dim}"), || {
            gpu.pipeline("attention combine", &attention_split_source(head_dim), "combine", &ATTN_BINDS, &[])
        })
    }

    /// Attention: one invocation per (row, query head, part of a head) of a row block, in
    /// workgroups of 8 (`attention_chunks` per KV head), for `group` query heads per KV head.
    pub fn attention(&self, gpu: &Gpu, group: usize, head_dim: usize) -> std::sync::Arc<RowBlockPipelines> {
        if gpu.plan == KernelPlan::Split {
            return self.get_row_blocks(format!("attention split {head_dim}"), || {
                // (its `combine` entry point: attention_combine)
                let source = attention_split_source(head_dim);
                RowBlockPipelines::single(gpu, "attention split", &source, "main", &ATTN_BINDS)
            });
        }
        self.get_row_blocks(format!("attention {group} {head_dim}"), || {
            let source = attention_source(gpu.subgroups, group, head_dim);
            let chunks = move |r: usize| vec![("CHUNKS", attention_chunks(r, group, head_dim) as f64)];
            RowBlockPipelines::new(gpu, "attention", &source, "main", &ATTN_BINDS, chunks, ALL_ROW_BLOCKS)
        })
    }
}

/// The per-pass uniform (shaders/common.wgsl `Pass`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct PassUniform {
    pub m: u32,
    pub n_past: u32,
    pub causal: u32,
    pub lm_row0: u32,
    pub lm_rows: u32,
    pub seed: u32,
    pub draw: u32,
    pub top_k: u32,
    pub temperature: f32,
    pub top_p: f32,
    pub tree_base: u32,
    pub _p: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct MatParams {
    pub k: u32,
    pub n: u32,
    pub y_stride: u32,
    pub y_col0: u32,
    pub lm_rows: u32,
    pub eps: f32,
    /// `Epilogue::Qkv`: query columns, and key (and value) columns.
    pub q_dim: u32,
    pub kv_dim: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AcceptParams {
    pub vocab: u32,
    pub row_stride: u32,
    pub _p: [u32; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HeadParams {
    pub d: u32,
    pub r: u32,
    pub batch: u32,
    pub vocab: u32,
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub adam_eps: f32,
    pub weight_decay: f32,
    pub bc1: f32,
    pub bc2: f32,
    pub norm_eps: f32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
pub struct ReplayParams {
    pub d: u32,
    pub vocab: u32,
    pub capacity: u32,
    pub base: u32,
    pub batch: u32,
    pub seed: u32,
    pub alpha: f32,
    pub have_prev: u32,
    /// record: the root token (acceptance has already replaced tokens[0] with the bonus);
    /// record_prompt: the prompt token after the pass's rows (u32::MAX: none).
    pub root: u32,
    /// record_prompt: rows in the pass.
    pub rows: u32,
    pub _p: [u32; 2],
    /// record: the head's expansion slot per verified row (u32::MAX: none).
    pub row_slot: [u32; 64],
}

impl Default for ReplayParams {
    fn default() -> Self {
        ReplayParams {
            d: 0,
            vocab: 0,
            capacity: 0,
            base: 0,
            batch: 0,
            seed: 0,
            alpha: 0.0,
            have_prev: 0,
            root: 0,
            rows: 0,
            _p: [0; 2],
            row_slot: [u32::MAX; 64],
        }
    }
}

/// Candidates per row that topk.wgsl returns.
pub const CANDIDATES: usize = 8;

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct TopkParams {
    pub vocab: u32,
    pub row_stride: u32,
    pub _p: [u32; 2],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct CompactParams {
    pub kv_dim: u32,
    pub _p: [u32; 3],
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct EmbedParams {
    pub k: u32,
    pub n: u32,
    pub n_base: u32,
    pub _p: u32,
}

#[repr(C)]
#[derive(Debug, Clone, Copy, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct AttnParams {
    pub n_heads: u32,
    pub n_kv_heads: u32,
    pub head_dim: u32,
    pub scale: f32,
}

#[cfg(test)]
mod tests {
    /// Every kernel parses and validates with naga (no device needed), with only the capability
    /// core WebGPU guarantees (unpack2x16float); those that share loads across lanes both ways.
    #[test]
    fn kernels_validate_with_naga() {
        let core = naga::valid::Capabilities::SHADER_FLOAT16_IN_FLOAT32;
        let mut sources = Vec::new();
        for (name, body) in super::ALL {
            if name == "attention_split" {
                for head_dim in [64, 128, 16] {
                    sources.push((format!("{name} {head_dim}"), super::attention_split_source(head_dim), core));
                }
            } else if name == "attention" {
                for (group, head_dim) in [(3, 64), (7, 128), (1, 16)] {
                    sources.push((
                        format!("attention {group} {head_dim} (subgroups)"),
                        super::attention_source(true, group, head_dim),
                        core | naga::valid::Capabilities::SUBGROUP,
                    ));
                    sources.push((
                        format!("attention {group} {head_dim}"),
                        super::attention_source(false, group, head_dim),
                        core,
                    ));
                }
            } else if name == "matmul_split" {
                sources.push((name.to_string(), super::matmul_split_source(), core));
            } else if name == "matmul" {
                for (uniform_x, format) in [false, true].into_iter().flat_map(|u| super::Format::ALL.map(|f| (u, f))) {
                    sources.push((
                        format!("matmul {format:?} (subgroups, uniform x {uniform_x})"),
                        super::matmul_source(format, true, uniform_x),
                        core | naga::valid::Capabilities::SUBGROUP,
                    ));
                    sources.push((
                        format!("matmul {format:?} (uniform x {uniform_x})"),
                        super::matmul_source(format, false, uniform_x),
                        core,
                    ));
                }
            } else if super::WITH_LANES.contains(&name) {
                sources.push((
                    format!("{name} (subgroups)"),
                    super::source_with_lanes(body, true),
                    core | naga::valid::Capabilities::SUBGROUP,
                ));
                sources.push((name.to_string(), super::source_with_lanes(body, false), core));
            } else {
                sources.push((name.to_string(), super::source(body), core));
            }
        }
        for (name, src, caps) in sources {
            let module =
                naga::front::wgsl::parse_str(&src).unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(&src)));
            naga::valid::Validator::new(naga::valid::ValidationFlags::all(), caps)
                .subgroup_stages(naga::valid::ShaderStages::COMPUTE)
                .subgroup_operations(naga::valid::SubgroupOperationSet::all())
                .validate(&module)
                .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        }
    }

    /// matmul.wgsl's passes of 2 rows take the 3-row block; every other size its own.
    #[test]
    fn matmul_passes_of_two_rows_take_the_three_row_block() {
        let r = |m| super::ROW_BLOCKS[super::row_block_of(super::MATMUL_ROW_BLOCKS, m)];
        assert_eq!((r(1), r(2), r(3), r(4), r(9), r(30)), (1, 3, 3, 4, 9, 9));
        assert_eq!(super::row_block_of(1 << 1, 9), 1, "past the largest block a kernel has, that one");
    }

    /// Every pass size gets the smallest row block that holds it (blocks of the largest beyond),
    /// and the largest is what the shader's arrays hold.
    #[test]
    fn row_blocks_fit_the_shaders() {
        let max = *super::ROW_BLOCKS.last().unwrap();
        for (name, body) in
            [("matmul", super::MATMUL), ("matmul_split", super::MATMUL_SPLIT), ("attention", super::ATTENTION)]
        {
            assert!(body.contains(&format!("const MAX_R: u32 = {max}u;")), "{name}.wgsl's MAX_R must be {max}");
        }
        for m in 1..=40 {
            let r = super::ROW_BLOCKS[super::row_block_of(super::ALL_ROW_BLOCKS, m)];
            let fits: Vec<usize> = super::ROW_BLOCKS.iter().copied().filter(|&b| b >= m.min(max)).collect();
            assert_eq!(r, fits[0], "M={m}");
        }
    }
}

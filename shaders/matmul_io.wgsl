// Prepended (by src/gpu/kernels.rs) to both matmul kernels, matmul.wgsl and matmul_split.wgsl:
// the parameters and buffers a matmul call site binds (MatParams and MATMUL_BINDS on the host;
// matmul.wgsl says what the layouts are), and how a Q4 word unpacks.

override FORMAT: u32 = 0u;
override BIAS: bool = false;
override EPILOGUE: u32 = 0u;
// NORM: x is the residual stream and each row is RMS-normalised (times norm_g) as it is read,
// which is what the rmsnorm dispatch before this matmul used to do (fused: on lavapipe every
// dispatch costs 15-40 us of thread-pool wake-ups, and a model had two norms a layer).
override NORM: bool = false;
// EPILOGUE 3 (the QKV matmul): the row's query, key and value columns are finished here, as a
// separate rope_kv dispatch a layer used to do: q and k rotated by the row's position (RoPE, pairs
// of adjacent columns: GpuModel permutes a NEOX model's q and k columns at upload so that its
// pairs (i, i + d/2) sit side by side too), q stored into y, k and v into the layer's KV cache at
// slot n_past + row. HEAD_DIM is the attention head size (a multiple of 4, so that a lane's 4
// columns are two pairs of one head).
override HEAD_DIM: u32 = 4u;

struct MatParams {
    k: u32,          // inputs
    n: u32,          // columns in this part of W
    y_stride: u32,   // y row length in vec4s
    y_col0: u32,     // first y column (in vec4s) this part writes
    lm_rows: u32,    // 1: rows come from pass.lm_row0 / lm_rows (LM head); 0: rows 0..pass.m
    eps: f32,        // NORM's epsilon
    q_dim: u32,      // EPILOGUE 3: query columns, then kv_dim key and kv_dim value columns
    kv_dim: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: MatParams;
// binding 2, x (the rows multiplied, [row][k/4]), is declared by the host after this file
// (src/gpu/kernels.rs): in a storage buffer, or on the serial plan for passes whose rows fit it,
// in a uniform buffer, which lavapipe reads per lane far more cheaply (MATMUL_X_UNIFORM says why).
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
// scale holds f32 bits, or for FORMAT 5 a packed f16 pair per column (read as integers, so that
// no packed pair passes through a float register: scale_at, q4_scale_offset)
@group(0) @binding(4) var<storage, read> scale: array<vec4<u32>>;
@group(0) @binding(5) var<storage, read> offset: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> norm_g: array<vec4<f32>>;
// EPILOGUE 3: tree rows' positions (when pass_.causal is 0), the RoPE table [pos][HEAD_DIM/4]
// as (cos, sin) of pairs i and i + 1, and the layer's KV cache [slot][kv_dim].
@group(0) @binding(9) var<storage, read> positions: array<u32>;
@group(0) @binding(10) var<storage, read> rope_table: array<vec4<f32>>;
@group(0) @binding(11) var<storage, read_write> k_cache: array<vec4<f32>>;
@group(0) @binding(12) var<storage, read_write> v_cache: array<vec4<f32>>;

// NORM: 1 / RMS of a row of x from its sum of squares, which both kernels add up as 8 partial
// sums (of the row's vec4s j, j + 8, j + 16, ... for j = 0..7) in order, whatever the pass or
// row block: a row is normalised the same way in every pass.
fn inv_rms(total: f32) -> f32 {
    return inverseSqrt(total / f32(p.k) + p.eps);
}

// The rows of x this call multiplies, (first, count): the pass's rows, or the LM head's.
fn call_rows() -> vec2<u32> {
    if (p.lm_rows == 1u) {
        return vec2<u32>(pass_.lm_row0, pass_.lm_rows);
    }
    return vec2<u32>(0u, pass_.m);
}

// Scales i of the 4 columns of a group (f32 formats).
fn scale_at(i: u32) -> vec4<f32> {
    return bitcast<vec4<f32>>(scale[i]);
}

// A Q4 32-block's scales and offsets, number i of the `scale` (and `offset`) arrays. FORMAT 5 is
// Q4 whose scales and offsets are all f16 values (Q4_0, Q4_1 and Q5_0's are; Q4_K's products of
// an f16 and a 6-bit scale are not): each column's pair packed into one word of `scale`, so a
// block costs one load of them instead of two. On lavapipe every per-lane load is a bounds-checked
// scalar load per component: the matmul took 11% less at one row, 5-9% at 2-7 rows and 2-5% at
// 8-9 (examples/matmul_ab format=Q4Half, session 26).
struct ScaleOffset {
    s: vec4<f32>,
    o: vec4<f32>,
};

fn q4_scale_offset(i: u32) -> ScaleOffset {
    if (FORMAT == 5u) {
        let raw = scale[i];
        let c0 = unpack2x16float(raw.x);
        let c1 = unpack2x16float(raw.y);
        let c2 = unpack2x16float(raw.z);
        let c3 = unpack2x16float(raw.w);
        return ScaleOffset(vec4<f32>(c0.x, c1.x, c2.x, c3.x), vec4<f32>(c0.y, c1.y, c2.y, c3.y));
    }
    return ScaleOffset(scale_at(i), offset[i]);
}

// Q4 words: FORMAT 2 and 5 (they differ only in how the scales are kept).
fn is_q4() -> bool {
    return FORMAT == 2u || FORMAT == 5u;
}

// The low four 4-bit values of v, as floats. (Converted from i32: x86 has no unsigned
// int-to-float instruction, and lavapipe runs on x86 in CI.)
fn nibbles(v: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>((v >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)));
}

// Stores vec4 g (of this part's columns) of pass row `row`: as EPILOGUE asks (0 store, 1 add
// into y; SwiGLU stores itself), or for EPILOGUE 3 into q (y) or the KV cache, q and k rotated.
fn store(row: u32, g: u32, v: vec4<f32>) {
    let c = p.y_col0 + g;
    if (EPILOGUE != 3u) {
        let at = row * p.y_stride + c;
        if (EPILOGUE == 1u) {
            y[at] = y[at] + v;
        } else {
            y[at] = v;
        }
        return;
    }
    let q4 = p.q_dim / 4u;
    let kv4 = p.kv_dim / 4u;
    let slot = pass_.n_past + row;
    if (c >= q4 + kv4) {
        v_cache[slot * kv4 + c - q4 - kv4] = v;
        return;
    }
    var pos = slot;
    if (pass_.causal == 0u) {
        pos = positions[row];
    }
    let cs = rope_table[pos * (HEAD_DIM / 4u) + c % (HEAD_DIM / 4u)];
    let r = vec4<f32>(
        v.x * cs.x - v.y * cs.y,
        v.x * cs.y + v.y * cs.x,
        v.z * cs.z - v.w * cs.w,
        v.z * cs.w + v.w * cs.z,
    );
    if (c >= q4) {
        k_cache[slot * kv4 + c - q4] = r;
    } else {
        y[row * p.y_stride + c] = r;
    }
}

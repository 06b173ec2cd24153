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

struct MatParams {
    k: u32,          // inputs
    n: u32,          // columns in this part of W
    y_stride: u32,   // y row length in vec4s
    y_col0: u32,     // first y column (in vec4s) this part writes
    lm_rows: u32,    // 1: rows come from pass.lm_row0 / lm_rows (LM head); 0: rows 0..pass.m
    eps: f32,        // NORM's epsilon
    _p0: u32,
    _p1: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: MatParams;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> w: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> scale: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> offset: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read> bias: array<vec4<f32>>;
@group(0) @binding(7) var<storage, read_write> y: array<vec4<f32>>;
@group(0) @binding(8) var<storage, read> norm_g: array<vec4<f32>>;

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

// The low four 4-bit values of v, as floats. (Converted from i32: x86 has no unsigned
// int-to-float instruction, and lavapipe runs on x86 in CI.)
fn nibbles(v: vec4<u32>) -> vec4<f32> {
    return vec4<f32>(bitcast<vec4<i32>>((v >> vec4<u32>(0u, 4u, 8u, 12u)) & vec4<u32>(15u)));
}

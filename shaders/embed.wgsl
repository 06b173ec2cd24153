// x[row] = embedding of tokens[row], read from the embedding matrix in the Q8, Q8x16 or F16
// column-group-major layout of matmul.wgsl (the same buffers serve as the tied LM head). The
// matrix may be split in column parts; each part's dispatch fills the rows whose token falls in
// its range.

override FORMAT: u32 = 0u;

struct EmbedParams {
    k: u32,      // embedding width
    n: u32,      // tokens in this part
    n_base: u32, // first token id in this part
    _p: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: EmbedParams;
@group(0) @binding(2) var<storage, read> tokens: array<u32>;
@group(0) @binding(3) var<storage, read> w: array<u32>;
@group(0) @binding(4) var<storage, read> scale: array<f32>;
@group(0) @binding(5) var<storage, read> offset: array<f32>;
@group(0) @binding(6) var<storage, read_write> x: array<vec4<f32>>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let kq = gid.x;
    let row = gid.y;
    let k4 = p.k / 4u;
    if (kq >= k4 || row >= pass_.m) {
        return;
    }
    let t = tokens[row];
    if (t < p.n_base || t >= p.n_base + p.n) {
        return;
    }
    let n = t - p.n_base;
    if (FORMAT == 0u) {
        let q = vec4<f32>(unpack4xI8(w[col_major(n, kq, k4)]));
        let b = col_major(n, kq / 8u, p.k / 32u);
        x[row * k4 + kq] = q * scale[b] + vec4<f32>(offset[b]);
    } else if (FORMAT == 3u) {
        let q = vec4<f32>(unpack4xI8(w[col_major(n, kq, k4)]));
        x[row * k4 + kq] = q * scale[col_major(n, kq / 4u, p.k / 16u)];
    } else {
        let lo = unpack2x16float(w[col_major(n, 2u * kq, 2u * k4)]);
        let hi = unpack2x16float(w[col_major(n, 2u * kq + 1u, 2u * k4)]);
        x[row * k4 + kq] = vec4<f32>(lo, hi);
    }
}

// y[row] = x[row] * g / sqrt(mean(x[row]^2) + eps), one workgroup per row. The rows are the pass's
// rows, or the LM head's rows (LM_ROWS). A row's result does not depend on the other rows.

override LM_ROWS: bool = false;

const WG: u32 = 64u;

struct NormParams {
    k: u32,
    eps: f32,
    _p0: u32,
    _p1: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: NormParams;
@group(0) @binding(2) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> g: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<vec4<f32>>;

var<workgroup> partial: array<f32, WG>;

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    var row = wid.x;
    var rows = pass_.m;
    if (LM_ROWS) {
        row += pass_.lm_row0;
        rows = pass_.lm_row0 + pass_.lm_rows;
    }
    // uniform per workgroup, so the early return keeps barriers in uniform control flow
    if (row >= rows) {
        return;
    }
    let k4 = p.k / 4u;
    var ss = 0.0;
    for (var i = tid; i < k4; i += WG) {
        let v = x[row * k4 + i];
        ss += dot(v, v);
    }
    partial[tid] = ss;
    workgroupBarrier();
    var total = 0.0;
    for (var i = 0u; i < WG; i++) {
        total += partial[i];
    }
    let inv = inverseSqrt(total / f32(p.k) + p.eps);
    for (var i = tid; i < k4; i += WG) {
        y[row * k4 + i] = x[row * k4 + i] * inv * g[i];
    }
}

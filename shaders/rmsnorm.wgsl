// y[row] = x[row] * g / sqrt(mean(x[row]^2) + eps), one workgroup of 8 invocations per row. The
// rows are the pass's rows, or the LM head's rows (LM_ROWS). A row's result does not depend on
// the other rows.
//
// Lane i sums the squares of vec4s i, i + 8, ...; the 8 partial sums are then added in lane
// order, by shuffles where the device has subgroups (lanes_subgroup.wgsl) and through workgroup
// memory where it has not: the same sum either way. (A workgroup of 64 with every lane adding
// all 64 partials from workgroup memory cost more than the norm itself on lavapipe: each of
// those reads is a load per lane there.)

override LM_ROWS: bool = false;

const WG: u32 = 8u;

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

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let tid = l.lid;
    var row = wid.x;
    var rows = pass_.m;
    if (LM_ROWS) {
        row += pass_.lm_row0;
        rows = pass_.lm_row0 + pass_.lm_rows;
    }
    // uniform per workgroup, so the early return keeps barriers and shuffles in uniform
    // control flow
    if (row >= rows) {
        return;
    }
    let k4 = p.k / 4u;
    var ss = 0.0;
    for (var i = tid; i < k4; i += WG) {
        let v = x[row * k4 + i];
        ss += dot(v, v);
    }
    var total = 0.0;
    if (SUBGROUPS) {
        for (var j = 0u; j < WG; j++) {
            total += from_lane_f32(ss, j);
        }
    } else {
        partial[tid] = ss;
        workgroupBarrier();
        for (var j = 0u; j < WG; j++) {
            total += partial[j];
        }
    }
    let inv = inverseSqrt(total / f32(p.k) + p.eps);
    for (var i = tid; i < k4; i += WG) {
        y[row * k4 + i] = x[row * k4 + i] * inv * g[i];
    }
}

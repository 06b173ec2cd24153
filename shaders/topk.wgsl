// The K most likely tokens of each LM-head row and their softmax probabilities, so that a
// drafter reads back K (id, p) pairs per row instead of a whole row of logits.
//
// One workgroup per row. Each invocation keeps a sorted top-K of its strided share of the
// vocabulary and an online softmax normaliser (max, sum of exp); the 256 lists and normalisers
// are then merged pairwise in 8 steps. Ties go to the lower token id, so the result is the
// exact top-K of a total order, independent of how the vocabulary was split.

const WG: u32 = 256u;
const K: u32 = 8u;

struct TopkParams {
    vocab: u32,
    row_stride: u32,
    _p0: u32,
    _p1: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: TopkParams;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>; // [row][K][id, bits of p]

var<workgroup> s_id: array<u32, 2048>; // WG * K
var<workgroup> s_val: array<f32, 2048>;
var<workgroup> s_max: array<f32, 256>;
var<workgroup> s_sum: array<f32, 256>;

// a ranks before b
fn before(va: f32, ia: u32, vb: f32, ib: u32) -> bool {
    return va > vb || (va == vb && ia < ib);
}

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_id) lid3: vec3<u32>, @builtin(workgroup_id) wid: vec3<u32>) {
    let lid = lid3.x;
    let row = wid.x;
    if (row >= pass_.lm_rows) {
        return; // uniform per workgroup
    }
    let base = row * p.row_stride;
    var ids: array<u32, 8>;
    var vals: array<f32, 8>;
    for (var i = 0u; i < K; i++) {
        ids[i] = 0xffffffffu;
        vals[i] = MASKED;
    }
    var mx = MASKED;
    var sum = 0.0;
    for (var t = lid; t < p.vocab; t += WG) {
        let v = logits[base + t];
        if (v > mx) {
            sum = sum * exp(mx - v) + 1.0;
            mx = v;
        } else {
            sum += exp(v - mx);
        }
        if (before(v, t, vals[K - 1u], ids[K - 1u])) {
            var j = K - 1u;
            while (j > 0u && before(v, t, vals[j - 1u], ids[j - 1u])) {
                vals[j] = vals[j - 1u];
                ids[j] = ids[j - 1u];
                j--;
            }
            vals[j] = v;
            ids[j] = t;
        }
    }
    for (var i = 0u; i < K; i++) {
        s_id[lid * K + i] = ids[i];
        s_val[lid * K + i] = vals[i];
    }
    s_max[lid] = mx;
    s_sum[lid] = sum;
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if (lid < stride) {
            let a = lid * K;
            let b = (lid + stride) * K;
            var ia = 0u;
            var ib = 0u;
            for (var i = 0u; i < K; i++) {
                if (before(s_val[a + ia], s_id[a + ia], s_val[b + ib], s_id[b + ib])) {
                    vals[i] = s_val[a + ia];
                    ids[i] = s_id[a + ia];
                    ia++;
                } else {
                    vals[i] = s_val[b + ib];
                    ids[i] = s_id[b + ib];
                    ib++;
                }
            }
            for (var i = 0u; i < K; i++) {
                s_val[a + i] = vals[i];
                s_id[a + i] = ids[i];
            }
            let m2 = max(s_max[lid], s_max[lid + stride]);
            s_sum[lid] = s_sum[lid] * exp(s_max[lid] - m2) + s_sum[lid + stride] * exp(s_max[lid + stride] - m2);
            s_max[lid] = m2;
        }
        workgroupBarrier();
    }
    if (lid < K) {
        let o = (row * K + lid) * 2u;
        out[o] = s_id[lid];
        out[o + 1u] = bitcast<u32>(exp(s_val[lid] - s_max[0]) / s_sum[0]);
    }
}

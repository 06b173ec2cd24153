// Attention on a GPU (KernelPlan::Split): the same inputs, masks and output as attention.wgsl
// (attention_io.wgsl; attention.wgsl says what a row sees), with one workgroup of 64 lanes per
// (query head, row) and the row's visible slots dealt round the lanes.
//
// Why: attention.wgsl gives one lane a (row, head) over the whole context, what lavapipe runs
// fastest; on an H200 that was 0.9 ms a layer at 320 slots, a chain of loads per slot. Here lane
// t takes the visible slots of rank t, t + 64, ... (rank: a slot's place among the slots the row
// sees), keeps an online softmax over them, and the 64 lanes' maxima, sums and weighted values
// are merged in a fixed order (halving: lane t takes in lane t + w).
//
// Rank, not slot number, so that speculation stays lossless: a token verified in a tree pass
// sees its accepted ancestors at tree slots with gaps between them, while plain decoding has the
// same tokens in consecutive slots. Dealt by rank, the same keys reach the same lanes in the same
// order in both, so a row's result is the same bits whatever the pass (and whatever M is).
//
// Long rows are split into parts, one workgroup each (wid.z): round r of the row's visible slots
// (ranks 64r .. 64r + 63) goes to part r mod P, P = one part per 64 visible slots, at most
// P_MAX. Each part merges its lanes and leaves its state in `parts`; `combine` then merges the
// P parts in order. (One workgroup per (head, row) left an H200 at 9 busy workgroups a layer:
// at 512 slots attention was 59% of a decode step.) P depends only on how many slots the row
// sees, the same in any pass, so a row's result is still the same bits in any pass.
//
// Set by the host before this file (src/gpu/kernels.rs attention_split_source): D4, head_dim / 4,
// and P_MAX.

const LANES: u32 = 64u;
// Output dims merged per round (workgroup memory: LANES x CHUNK vec4s, 8 KB).
const CHUNK: u32 = 8u;

var<workgroup> q_sh: array<vec4<f32>, D4>;
var<workgroup> max_sh: array<f32, LANES>;
var<workgroup> sum_sh: array<f32, LANES>;
var<workgroup> acc_sh: array<vec4<f32>, 512>;

// One lane's online softmax: running maximum, sum of weights, weighted sum of V.
struct Softmax {
    mx: f32,
    l: f32,
    acc: array<vec4<f32>, D4>,
};

// Slot s folded into the lane's softmax.
fn fold(st_in: Softmax, s: u32, kb0: u32, kv_dim4: u32) -> Softmax {
    var st = st_in;
    let kb = s * kv_dim4 + kb0;
    var d = 0.0;
    for (var j = 0u; j < D4; j++) {
        d += dot(q_sh[j], k_cache[kb + j]);
    }
    let sc = d * p.scale;
    let new_mx = max(st.mx, sc);
    let corr = exp(st.mx - new_mx);
    let e = exp(sc - new_mx);
    st.mx = new_mx;
    st.l = st.l * corr + e;
    for (var j = 0u; j < D4; j++) {
        st.acc[j] = st.acc[j] * corr + e * v_cache[kb + j];
    }
    return st;
}

// Row `row`'s visible slots: (prefix, count). Slots below prefix are all visible (their rank is
// their number); tree slots tree_base + j are visible where bit j of the row's mask is set.
fn visible(row: u32) -> vec2<u32> {
    let own = pass_.n_past + row;
    var prefix = own + 1u;
    if (pass_.causal == 0u) {
        prefix = min(pass_.tree_base, own + 1u);
    }
    var count = prefix;
    if (pass_.causal == 0u && pass_.tree_base <= own) {
        let mk = masks[row];
        let n = min(own - pass_.tree_base + 1u, 64u); // mask bits 0..n-1 can be set
        if (n >= 32u) {
            count += countOneBits(mk.x);
            if (n > 32u) {
                count += countOneBits(mk.y & (0xffffffffu >> (64u - n)));
            }
        } else {
            count += countOneBits(mk.x & ((1u << n) - 1u));
        }
    }
    return vec2<u32>(prefix, count);
}

// Parts a row of `count` visible slots is split into.
fn parts_of(count: u32) -> u32 {
    return clamp((count + LANES - 1u) / LANES, 1u, P_MAX);
}

// Where part `part` of (row, head) keeps its state in `parts`.
fn part_at(row: u32, head: u32, part: u32) -> u32 {
    return ((row * p.n_heads + head) * P_MAX + part) * (D4 + 1u);
}

@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let head = wid.x;
    let row = wid.y;
    let part = wid.z;
    let vis = visible(row);
    let n_parts = parts_of(vis.y);
    // uniform per workgroup: the barriers below stay in uniform control flow
    if (part >= n_parts) {
        return;
    }
    let kvh = head / (p.n_heads / p.n_kv_heads);
    let kv_dim4 = p.n_kv_heads * D4;
    let q_stride = p.n_heads * D4 + 2u * kv_dim4;
    for (var j = t; j < D4; j += LANES) {
        q_sh[j] = qkv[row * q_stride + head * D4 + j];
    }
    workgroupBarrier();

    var st = Softmax();
    st.mx = MASKED;
    let kb0 = kvh * D4;
    // the row's own slot; it sees none after it
    let own = pass_.n_past + row;
    let prefix = vis.x;
    // this part's rounds: part, part + P, ...
    for (var s = part * LANES + t; s < prefix; s += LANES * n_parts) {
        st = fold(st, s, kb0, kv_dim4);
    }
    if (pass_.causal == 0u && pass_.tree_base <= own) {
        // tree slots tree_base + j: visible where bit j of the row's mask is set, ranked after
        // the prefix in slot order
        let mk = masks[row];
        var rank = prefix;
        for (var j = 0u; j <= own - pass_.tree_base && j < 64u; j++) {
            var bit = 0u;
            if (j < 32u) {
                bit = (mk.x >> j) & 1u;
            } else {
                bit = (mk.y >> (j - 32u)) & 1u;
            }
            if (bit == 1u) {
                if (rank % LANES == t && (rank / LANES) % n_parts == part) {
                    st = fold(st, pass_.tree_base + j, kb0, kv_dim4);
                }
                rank++;
            }
        }
    }

    // merge the lanes by halving (lane t takes in lane t + w for w = 32, 16, .., 1): the
    // overall maximum, then the weighted sums and the weighted values. A fixed order, whatever
    // the pass, so still the same bits for a row in any pass. (Lane 0 adding the 64 in turn
    // was a chain of 64 dependent shared-memory loads per merge: most of a layer's attention
    // time on an H200 at short contexts.)
    max_sh[t] = st.mx;
    workgroupBarrier();
    for (var w = LANES / 2u; w > 0u; w = w / 2u) {
        if (t < w) {
            max_sh[t] = max(max_sh[t], max_sh[t + w]);
        }
        workgroupBarrier();
    }
    let mx = max_sh[0];
    let weight = exp(st.mx - mx);
    sum_sh[t] = st.l * weight;
    workgroupBarrier();
    for (var w = LANES / 2u; w > 0u; w = w / 2u) {
        if (t < w) {
            sum_sh[t] = sum_sh[t] + sum_sh[t + w];
        }
        workgroupBarrier();
    }
    let total = sum_sh[0];
    let ob = row * p.n_heads * D4 + head * D4;
    for (var c = 0u; c < D4; c += CHUNK) {
        for (var j = 0u; j < CHUNK; j++) {
            if (c + j < D4) {
                acc_sh[t * CHUNK + j] = st.acc[c + j] * weight;
            }
        }
        workgroupBarrier();
        for (var w = LANES / 2u; w > 0u; w = w / 2u) {
            if (t < w) {
                for (var j = 0u; j < CHUNK; j++) {
                    acc_sh[t * CHUNK + j] = acc_sh[t * CHUNK + j] + acc_sh[(t + w) * CHUNK + j];
                }
            }
            workgroupBarrier();
        }
        if (t < CHUNK && c + t < D4) {
            if (n_parts == 1u) {
                out[ob + c + t] = acc_sh[t] / total;
            } else {
                parts[part_at(row, head, part) + 1u + c + t] = acc_sh[t];
            }
        }
        workgroupBarrier();
    }
    if (n_parts > 1u && t == 0u) {
        parts[part_at(row, head, part)] = vec4<f32>(mx, total, 0.0, 0.0);
    }
}

// Rows split into parts: their parts' states merged in part order, into out. A workgroup per
// (query head, row), dispatched after main.
@compute @workgroup_size(64)
fn combine(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) t: u32) {
    let head = wid.x;
    let row = wid.y;
    let n_parts = parts_of(visible(row).y);
    if (n_parts == 1u) {
        return;
    }
    var mx = MASKED;
    for (var i = 0u; i < n_parts; i++) {
        mx = max(mx, parts[part_at(row, head, i)].x);
    }
    var total = 0.0;
    for (var i = 0u; i < n_parts; i++) {
        let h = parts[part_at(row, head, i)];
        total += h.y * exp(h.x - mx);
    }
    let ob = row * p.n_heads * D4 + head * D4;
    for (var j = t; j < D4; j += LANES) {
        var a = vec4<f32>(0.0);
        for (var i = 0u; i < n_parts; i++) {
            let at = part_at(row, head, i);
            a += parts[at + 1u + j] * exp(parts[at].x - mx);
        }
        out[ob + j] = a / total;
    }
}

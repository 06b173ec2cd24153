// Attention over the KV cache with an arbitrary mask per query row, in two dispatches:
//   scores:    one invocation per (row, KV head, slot): q . k / sqrt(d) for each query head
//              of the group, or MASKED;
//   softmax_v: one workgroup per (row, head), one invocation per 4 output dims: online softmax
//              over the visible slots in slot order, weighted sum of V.
// q (in scores) and the scores (in softmax_v) are the same for every lane of a workgroup; with
// subgroups each 8 lanes load them once between them (lanes_subgroup.wgsl).
// Row i of the pass sits at slot n_past + i and never sees a slot after its own. A causal row
// sees every slot up to its own. A token-tree row sees every slot below tree_base and slot
// tree_base + j when bit j of masks[i] is set (up to 64 tree slots). The target verifies a tree
// in one pass (tree_base = n_past: bit j is row j); a draft model grows its tree over several
// passes, so bits also cover tree slots that earlier passes wrote. Masked slots are skipped, so
// a row's result is the same whatever M is.

struct AttnParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    max_slots: u32, // stride of the scores buffer
    scale: f32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: AttnParams;
@group(0) @binding(2) var<storage, read> masks: array<vec2<u32>>; // per row, when causal == 0
@group(0) @binding(3) var<storage, read> qkv: array<vec4<f32>>;   // [m][q_dim + 2 kv_dim]
@group(0) @binding(4) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> scores: array<f32>; // [m][n_heads][max_slots]
@group(0) @binding(7) var<storage, read_write> out: array<vec4<f32>>; // [m][q_dim]

fn visible(row: u32, slot: u32) -> bool {
    if (slot > pass_.n_past + row) {
        return false;
    }
    if (pass_.causal == 1u || slot < pass_.tree_base) {
        return true;
    }
    let j = slot - pass_.tree_base;
    let mk = masks[row];
    if (j < 32u) {
        return ((mk.x >> j) & 1u) == 1u;
    }
    return ((mk.y >> (j - 32u)) & 1u) == 1u;
}

// Query heads per KV head (grouped-query attention), at most 16: one invocation scores a slot
// for all of them, so each key is loaded once per KV head rather than once per query head (on
// lavapipe every per-lane load is a bounds-checked scalar load per component; the keys' loads
// were most of the scores pass).
override GROUP: u32 = 1u;

@compute @workgroup_size(64)
fn scores_main(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let kvh = wid.y;
    let row = wid.z;
    let n_slots = pass_.n_past + pass_.m;
    if (row >= pass_.m) {
        return;
    }
    // lanes past the last slot score the last one again and store nothing: every lane of a
    // subgroup has to take part in the shuffles that share q
    let live = wid.x * 64u + l.lid < n_slots;
    let slot = min(wid.x * 64u + l.lid, n_slots - 1u);
    let vis = live && visible(row, slot);
    var acc = array<f32, 16>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    let d4 = p.head_dim / 4u;
    let q_dim4 = p.n_heads * d4;
    let kv_dim4 = p.n_kv_heads * d4;
    let qb = row * (q_dim4 + 2u * kv_dim4) + kvh * GROUP * d4;
    let kb = slot * kv_dim4 + kvh * d4;
    if (SUBGROUPS && d4 % 8u == 0u) {
        // q is the same for every lane: each 8 lanes load 8 of its vec4s per query head once
        // between them (lanes_subgroup.wgsl); the sums run in the same order as below
        for (var i0 = 0u; i0 < d4; i0 += 8u) {
            var qs: array<vec4<f32>, 16>;
            for (var g = 0u; g < GROUP; g++) {
                qs[g] = qkv[qb + g * d4 + i0 + lane8(l)];
            }
            for (var j = 0u; j < 8u; j++) {
                let k = k_cache[kb + i0 + j];
                for (var g = 0u; g < GROUP; g++) {
                    acc[g] += dot(from_lane(qs[g], j), k);
                }
            }
        }
    } else if (vis) {
        for (var i = 0u; i < d4; i++) {
            let k = k_cache[kb + i];
            for (var g = 0u; g < GROUP; g++) {
                acc[g] += dot(qkv[qb + g * d4 + i], k);
            }
        }
    }
    if (!live) {
        return;
    }
    for (var g = 0u; g < GROUP; g++) {
        var s = MASKED;
        if (vis) {
            s = acc[g] * p.scale;
        }
        scores[(row * p.n_heads + kvh * GROUP + g) * p.max_slots + slot] = s;
    }
}

// head_dim / 4: the invocations of one (row, head).
override D4: u32 = 16u;

@compute @workgroup_size(D4)
fn softmax_v_main(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let d4 = D4;
    let dq = l.lid;
    let head = wid.x;
    let row = wid.y;
    if (row >= pass_.m) {
        return;
    }
    let t = head * d4 + dq;
    let kvh = head / (p.n_heads / p.n_kv_heads);
    let kv_dim4 = p.n_kv_heads * d4;
    let sb = (row * p.n_heads + head) * p.max_slots;
    let n_slots = pass_.n_past + pass_.m;
    var mx = MASKED;
    var l_sum = 0.0;
    var acc = vec4<f32>(0.0);
    // the scores are the same for every lane: with subgroups (and whole 8-lane groups) each 8
    // lanes load 8 of them once between them (lanes_subgroup.wgsl); every branch below depends
    // only on the scores, so all lanes take it together
    let share = SUBGROUPS && D4 % 8u == 0u;
    var mine = MASKED;
    for (var s = 0u; s < n_slots; s++) {
        var sc: f32;
        if (share) {
            if (s % 8u == 0u) {
                mine = MASKED;
                if (s + lane8(l) < n_slots) {
                    mine = scores[sb + s + lane8(l)];
                }
            }
            sc = from_lane_f32(mine, s % 8u);
        } else {
            sc = scores[sb + s];
        }
        if (sc <= MASKED) {
            continue;
        }
        // rescale only when the running maximum rises (the exp of one correction, where it
        // used to take two per slot; exact: the old corr was exp(0) = 1 otherwise)
        if (sc > mx) {
            let corr = exp(mx - sc);
            l_sum = l_sum * corr;
            acc = acc * corr;
            mx = sc;
        }
        let e = exp(sc - mx);
        l_sum = l_sum + e;
        acc = acc + e * v_cache[s * kv_dim4 + kvh * d4 + dq];
    }
    out[row * p.n_heads * d4 + t] = acc / l_sum;
}

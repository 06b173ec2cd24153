// Attention over the KV cache with an arbitrary mask per query row, in two dispatches:
//   scores:    one invocation per (row, head, slot): q . k / sqrt(d), or MASKED;
//   softmax_v: one invocation per (row, head, 4 output dims): online softmax over the visible
//              slots in slot order, weighted sum of V.
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

@compute @workgroup_size(64)
fn scores_main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let slot = gid.x;
    let head = gid.y;
    let row = gid.z;
    let n_slots = pass_.n_past + pass_.m;
    if (slot >= n_slots || row >= pass_.m) {
        return;
    }
    var s = MASKED;
    if (visible(row, slot)) {
        let d4 = p.head_dim / 4u;
        let q_dim4 = p.n_heads * d4;
        let kv_dim4 = p.n_kv_heads * d4;
        let kvh = head / (p.n_heads / p.n_kv_heads);
        let qb = row * (q_dim4 + 2u * kv_dim4) + head * d4;
        let kb = slot * kv_dim4 + kvh * d4;
        var acc = 0.0;
        for (var i = 0u; i < d4; i++) {
            acc += dot(qkv[qb + i], k_cache[kb + i]);
        }
        s = acc * p.scale;
    }
    scores[(row * p.n_heads + head) * p.max_slots + slot] = s;
}

@compute @workgroup_size(64)
fn softmax_v_main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let d4 = p.head_dim / 4u;
    let t = gid.x;
    let row = gid.y;
    if (t >= p.n_heads * d4 || row >= pass_.m) {
        return;
    }
    let head = t / d4;
    let dq = t % d4;
    let kvh = head / (p.n_heads / p.n_kv_heads);
    let kv_dim4 = p.n_kv_heads * d4;
    let sb = (row * p.n_heads + head) * p.max_slots;
    let n_slots = pass_.n_past + pass_.m;
    var mx = MASKED;
    var l = 0.0;
    var acc = vec4<f32>(0.0);
    for (var s = 0u; s < n_slots; s++) {
        let sc = scores[sb + s];
        if (sc <= MASKED) {
            continue;
        }
        let m_new = max(mx, sc);
        let corr = exp(mx - m_new);
        let e = exp(sc - m_new);
        l = l * corr + e;
        acc = acc * corr + e * v_cache[s * kv_dim4 + kvh * d4 + dq];
        mx = m_new;
    }
    out[row * p.n_heads * d4 + t] = acc / l;
}

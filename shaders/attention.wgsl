// Attention over the KV cache with an arbitrary mask per query row, in one dispatch: one
// invocation per (row, query head) of a block of R rows and a KV head's group, in workgroups of
// 8 of them (one lavapipe subgroup) sharing that KV head. Each invocation keeps its q in
// registers and walks the slots in order, scoring each visible one (q . k / sqrt(d)) and folding
// it into an online softmax and weighted sum of V.
//
// Why this shape: on lavapipe every load whose address differs across lanes is a bounds-checked
// scalar load per lane and component, the bulk of attention's cost, while arithmetic and
// shuffles are cheap. Here each key and value is loaded once per 8 invocations, whatever rows and
// heads they hold: with subgroups lane i loads every 8th vec4 of it and the others read it by
// shuffle (lanes_subgroup.wgsl); without, every lane loads it whole. (The kernel this replaced
// loaded every key once per row of a pass and every value once per row and query head.)
//
// Row i of the pass sits at slot n_past + i and never sees a slot after its own. A causal row
// sees every slot up to its own. A token-tree row sees every slot below tree_base and slot
// tree_base + j when bit j of masks[i] is set (up to 64 tree slots). The target verifies a tree
// in one pass (tree_base = n_past: bit j is row j); a draft model grows its tree over several
// passes, so bits also cover tree slots that earlier passes wrote. Masked slots are skipped, and
// each row's sums run in slot and dimension order whatever R and M are, so a row's result is the
// same whatever M is.
//
// Set by the host before this file (src/gpu/kernels.rs attention_source), since they size
// arrays: GROUP, query heads per KV head; D4, head_dim / 4; and P, lanes per (row,
// head) pair (attention_lanes_per_head: enough that none holds more than 16 vec4s, since Mesa
// unrolls loops of up to 16 such steps and arrays indexed in a rolled loop live in memory, lane
// by lane; head size 128 with all 32 vec4s in one lane ran 6x slower; P divides 8, so a pair's
// lanes sit in one 8-lane group).

// Rows per block, R: 1 to 9, one pipeline each (ROW_BLOCKS on the host, as for the matmul).
override R: u32 = 1u;
const MAX_R: u32 = 9u;
// A block's invocations, R * GROUP * P, come in CHUNKS workgroups of 8 (set by the host), each
// its own workgroup so that lavapipe's threads share them evenly. As one workgroup per (KV
// head, block), SmolLM2's 3 KV heads at 5 rows were 3 workgroups of two 8-lane groups on 2
// threads: one thread ran 4 groups while the other ran 2.
override CHUNKS: u32 = 1u;
// Each of the P lanes of a (row, head) pair holds PART consecutive vec4s of its head's dims.
const PART: u32 = (D4 + P - 1u) / P;
// Sharing a key or value: the 8 / P lanes of each part p of a group of 8 load its PART vec4s
// between them, CPL each: lane x of the part (lane8 = x * P + p) loads vec4 c * (8 / P) + x of
// the part for c < CPL.
const CPL: u32 = (PART * P + 7u) / 8u;

fn visible(row: u32, mk: vec2<u32>, slot: u32) -> bool {
    if (slot > pass_.n_past + row) {
        return false;
    }
    if (pass_.causal == 1u || slot < pass_.tree_base) {
        return true;
    }
    let j = slot - pass_.tree_base;
    if (j < 32u) {
        return ((mk.x >> j) & 1u) == 1u;
    }
    return ((mk.y >> (j - 32u)) & 1u) == 1u;
}

// Vec4 j (< PART) of this lane's part of a key or value, from the vec4s `mine` the lanes of
// the part loaded. Every lane of the subgroup must be running.
fn shared_vec(mine: array<vec4<f32>, CPL>, part: u32, j: u32) -> vec4<f32> {
    return from_lane(mine[j / (8u / P)], (j % (8u / P)) * P + part);
}

@compute @workgroup_size(8)
fn main(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let kvh = wid.x / CHUNKS;
    let row0 = wid.y * R;
    // this workgroup's first place among the block's R * GROUP * P invocations, and this one's
    let first = (wid.x % CHUNKS) * 8u;
    let lane = first + l.lid;
    // lanes past the block's last pair, or on rows past the pass, redo the last pair and store
    // nothing: every lane of a subgroup has to take part in the shuffles
    let pair = min(lane / P, R * GROUP - 1u);
    let part = lane % P;
    let live = lane < R * GROUP * P && row0 + pair / GROUP < pass_.m;
    let row = min(row0 + pair / GROUP, pass_.m - 1u);
    let head = kvh * GROUP + pair % GROUP;
    let kv_dim4 = p.n_kv_heads * D4;
    let q_stride = p.n_heads * D4 + 2u * kv_dim4;
    let qb = row * q_stride + head * D4;
    // this lane's dims are part * PART + j for j < PART (and < D4)
    let d0 = part * PART;
    var q: array<vec4<f32>, PART>;
    for (var j = 0u; j < PART; j++) {
        q[j] = qkv[qb + min(d0 + j, D4 - 1u)];
    }
    var mk = vec2<u32>(0u);
    if (pass_.causal == 0u) {
        mk = masks[row];
    }
    var mx = MASKED;
    var l_sum = 0.0;
    var acc: array<vec4<f32>, PART>;
    // no row of this workgroup sees a slot past its last row's own (skipping the slots no lane
    // sees changes nothing: for them corr = 1 and e = 0)
    let last_pair = min((first + 7u) / P, R * GROUP - 1u);
    let n_slots = min(pass_.n_past + pass_.m, pass_.n_past + row0 + last_pair / GROUP + 1u);
    for (var s = 0u; s < n_slots; s++) {
        let kb = s * kv_dim4 + kvh * D4;
        var dot_qk = 0.0;
        var k_mine: array<vec4<f32>, CPL>;
        var v_mine: array<vec4<f32>, CPL>;
        if (SUBGROUPS) {
            for (var c = 0u; c < CPL; c++) {
                // lanes past the part's last vec4 load the last one again; nobody reads it
                let j = min(c * (8u / P) + lane8(l) / P, PART - 1u);
                let d = min(d0 + j, D4 - 1u);
                k_mine[c] = k_cache[kb + d];
                v_mine[c] = v_cache[kb + d];
            }
            // q . k over this lane's dims, then the pair's parts added in part order
            var partial = 0.0;
            for (var j = 0u; j < PART; j++) {
                let k = shared_vec(k_mine, part, j);
                if (d0 + j < D4) {
                    partial += dot(q[j], k);
                }
            }
            for (var pp = 0u; pp < P; pp++) {
                dot_qk += from_lane_f32(partial, subgroup_lane(l) - part + pp);
            }
        } else {
            // the same sums in the same order, every lane loading q and k itself
            for (var pp = 0u; pp < P; pp++) {
                var partial = 0.0;
                for (var j = 0u; j < PART; j++) {
                    let d = pp * PART + j;
                    if (d < D4) {
                        partial += dot(qkv[qb + d], k_cache[kb + d]);
                    }
                }
                dot_qk += partial;
            }
        }
        // Online softmax without branches around the arithmetic on V (every lane takes part in
        // its shuffles, and on lavapipe a masked update cost more than an unmasked one): a slot
        // the row does not see leaves everything as it was (corr = 1, e = 0).
        var corr = 1.0;
        var e = 0.0;
        if (live && visible(row, mk, s)) {
            let sc = dot_qk * p.scale;
            let new_mx = max(mx, sc);
            corr = exp(mx - new_mx);
            e = exp(sc - new_mx);
            mx = new_mx;
        }
        l_sum = l_sum * corr + e;
        for (var j = 0u; j < PART; j++) {
            var v: vec4<f32>;
            if (SUBGROUPS) {
                v = shared_vec(v_mine, part, j);
            } else {
                v = v_cache[kb + min(d0 + j, D4 - 1u)];
            }
            acc[j] = acc[j] * corr + e * v;
        }
    }
    if (live) {
        for (var j = 0u; j < PART; j++) {
            if (d0 + j < D4) {
                out[row * p.n_heads * D4 + head * D4 + d0 + j] = acc[j] / l_sum;
            }
        }
    }
}

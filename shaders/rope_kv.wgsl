// Rotary position embedding on the Q and K parts of the fused QKV output, and the new K and V
// rows written into the layer's KV cache at slots n_past + row.
// One invocation per rotated pair (Q, then K) or per pair of V values.

override NEOX: bool = false; // pairs (i, i + d/2) instead of (2i, 2i + 1)

struct RopeParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    _p: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: RopeParams;
@group(0) @binding(2) var<storage, read> positions: array<u32>;  // used when pass_.causal == 0
@group(0) @binding(3) var<storage, read> table: array<vec2<f32>>; // [pos][head_dim/2] (cos, sin)
@group(0) @binding(4) var<storage, read_write> qkv: array<f32>;   // [m][q_dim + 2 kv_dim]
@group(0) @binding(5) var<storage, read_write> k_cache: array<f32>; // [slot][kv_dim]
@group(0) @binding(6) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let half = p.head_dim / 2u;
    let q_pairs = p.n_heads * half;
    let kv_pairs = p.n_kv_heads * half;
    let per_row = q_pairs + 2u * kv_pairs;
    let row = gid.y;
    let j = gid.x;
    if (row >= pass_.m || j >= per_row) {
        return;
    }
    let q_dim = p.n_heads * p.head_dim;
    let kv_dim = p.n_kv_heads * p.head_dim;
    let base = row * (q_dim + 2u * kv_dim);
    let slot = pass_.n_past + row;
    if (j >= q_pairs + kv_pairs) {
        // V: copy two values
        let i = 2u * (j - q_pairs - kv_pairs);
        v_cache[slot * kv_dim + i] = qkv[base + q_dim + kv_dim + i];
        v_cache[slot * kv_dim + i + 1u] = qkv[base + q_dim + kv_dim + i + 1u];
        return;
    }
    var pos = pass_.n_past + row;
    if (pass_.causal == 0u) {
        pos = positions[row];
    }
    let is_k = j >= q_pairs;
    let jj = select(j, j - q_pairs, is_k);
    let head = jj / half;
    let i = jj % half;
    var a = head * p.head_dim + 2u * i;
    var b = a + 1u;
    if (NEOX) {
        a = head * p.head_dim + i;
        b = a + half;
    }
    let cs = table[pos * half + i];
    let off = select(base, base + q_dim, is_k);
    let x0 = qkv[off + a];
    let x1 = qkv[off + b];
    let r0 = x0 * cs.x - x1 * cs.y;
    let r1 = x0 * cs.y + x1 * cs.x;
    if (is_k) {
        k_cache[slot * kv_dim + a] = r0;
        k_cache[slot * kv_dim + b] = r1;
    } else {
        qkv[off + a] = r0;
        qkv[off + b] = r1;
    }
}

// After acceptance, moves the KV rows of the accepted path (result[1..=k], rows of the verified
// pass stored at slots n_past + row) to the slots right after the root (n_past + 1 + i), where
// plain decoding would have put them; the rest of the tree is left behind as garbage past the
// committed length. One invocation per cached value; it walks the path in order, so a slot is
// read before any later copy overwrites it. One dispatch per layer.

struct CompactParams {
    kv_dim: u32,
    _p0: u32,
    _p1: u32,
    _p2: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: CompactParams;
@group(0) @binding(2) var<storage, read> result: array<u32>;
@group(0) @binding(3) var<storage, read_write> k_cache: array<f32>;
@group(0) @binding(4) var<storage, read_write> v_cache: array<f32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
    let e = gid.x;
    if (e >= p.kv_dim) {
        return;
    }
    let k = result[0];
    for (var i = 0u; i < k; i++) {
        let src = pass_.n_past + result[1u + i];
        let dst = pass_.n_past + 1u + i;
        if (src != dst) {
            k_cache[dst * p.kv_dim + e] = k_cache[src * p.kv_dim + e];
            v_cache[dst * p.kv_dim + e] = v_cache[src * p.kv_dim + e];
        }
    }
}

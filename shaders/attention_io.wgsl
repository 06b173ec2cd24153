// Prepended (by src/gpu/kernels.rs) to both attention kernels, attention.wgsl and
// attention_split.wgsl: the parameters and buffers an attention dispatch binds (AttnParams and
// ATTN_BINDS on the host).

struct AttnParams {
    n_heads: u32,
    n_kv_heads: u32,
    head_dim: u32,
    scale: f32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: AttnParams;
@group(0) @binding(2) var<storage, read> masks: array<vec2<u32>>; // per row, when causal == 0
@group(0) @binding(3) var<storage, read> qkv: array<vec4<f32>>;   // [m][q_dim + 2 kv_dim]
@group(0) @binding(4) var<storage, read> k_cache: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> v_cache: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> out: array<vec4<f32>>; // [m][q_dim]
// attention_split.wgsl: each part's softmax state, [m][n_heads][P_MAX] x (max, sum; D4 weighted
// values) (attention.wgsl does not use it)
@group(0) @binding(7) var<storage, read_write> parts: array<vec4<f32>>;

// Shared by every kernel (prepended by src/gpu/kernels.rs): the per-pass uniform that the host
// writes once per submission. Everything else a kernel needs is fixed when the model loads.

struct Pass {
    m: u32,            // token rows in this pass
    n_past: u32,       // KV slots already filled before this pass (the new rows go after them)
    causal: u32,       // 1: row i sees rows j <= i of this pass; 0: row i sees rows in masks[i]
    lm_row0: u32,      // first row whose logits the LM head computes
    lm_rows: u32,      // how many rows the LM head computes
    seed: u32,         // sampling seed
    draw: u32,         // round counter: with the seed, keys every random decision
    top_k: u32,        // 0 = off
    temperature: f32,  // <= 0: greedy
    top_p: f32,        // >= 1: off
    tree_base: u32,    // token trees: slots below it are all visible, mask bit j is slot tree_base + j
    _p1: u32,
};

// Index of word kw (of `words` along K) of column c in the column-group-major layout of every
// weight matrix (matmul.wgsl; GpuMatrix::upload): groups of 4 columns one after the other, each
// running down K, the 4 columns' words side by side. The same for per-block scales and offsets.
fn col_major(c: u32, kw: u32, words: u32) -> u32 {
    return ((c / 4u) * words + kw) * 4u + c % 4u;
}

// Scores below this are masked out.
const MASKED: f32 = -3.0e38;

// PCG-style integer hash (src/sampler.rs `hash` is its CPU twin): every random decision on the
// GPU is a hash of a seed and counters, so runs are reproducible.
fn hash(x: u32) -> u32 {
    let s = x * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
}

// The draft head's replay buffer: free training data from verification (src/train/replay.rs is
// the reference).
//
//   record       after acceptance, in the verify submission: for the accepted path
//                c_0 = root, c_1..c_k, sample j holds the target's hidden state before c_j
//                (prev_h for j = 0, else row c_{j-1}) and at c_j, the token c_j, the target's top tokens
//                after c_j (the teacher), the token that came next (c_{j+1}, or the bonus), and
//                the head's own top tokens after c_j when it drafted there (its mistakes are the
//                negatives that matter). Then prev_h = hidden of c_k: what the head drafts from
//                next round.
//   record_prompt after a prefill pass over prompt rows 0..rows-1: sample s = 0..batch-1 is
//                row r = s + 1: the hidden states of rows r-1 and r, the token of row r, and the
//                prompt token after it (row r+1's, or `root` after the last row); no teacher
//                distribution (prefill computes logits for the last row only), so these
//                train the regression onto the target's next hidden state alone.
//   gather       a training batch from ring slots idx[b]: h, the embedding of the next token,
//                and the candidate set with its target distribution (teacher top tokens x
//                alpha, the realised token x (1 - alpha); the fed token, the head's own drafts
//                and hashed negatives x 0).
//   embed_tokens e[b] = embedding of token idx[b] (inputs for drafting).
// The embedding is read in the engine's column-group-major layout (matmul.wgsl): FORMAT 0 Q8, 1
// F16 or 3 Q8x16.

override FORMAT: u32 = 0u;

struct ReplayParams {
    d: u32,
    vocab: u32,
    capacity: u32,    // ring slots
    base: u32,        // record: ring slot of sample 0
    batch: u32,       // gather / embed_tokens rows
    seed: u32,        // gather: negatives
    alpha: f32,       // gather: weight of the teacher's distribution
    have_prev: u32,   // record: prev_h holds the hidden state before the root
    root: u32,        // record: the root token (acceptance has already put the bonus in tokens[0]);
                      // record_prompt: the prompt token after the pass's rows (NO_TOKEN: none)
    rows: u32,        // record_prompt: rows in the pass
    _p1: u32,
    _p2: u32,
    // record: the head's expansion slot of each verified row (NO_TOKEN: not expanded), 4 per vec
    row_slot: array<vec4<u32>, 16>,
};

// per slot: next, realised, teacher ids [8], teacher probs [8], 2 spare, head's own top ids [8]
const META: u32 = 28u;
const NEG: u32 = 20u;
const TEACH: u32 = 8u;
const CANDS: u32 = 32u;
const NO_TOKEN: u32 = 0xffffffffu;

@group(0) @binding(0) var<uniform> rp: ReplayParams;
@group(0) @binding(1) var<storage, read> result: array<u32>;     // acceptance (accept.wgsl layout)
@group(0) @binding(2) var<storage, read> x: array<f32>;          // target hidden states [rows][d]
@group(0) @binding(3) var<storage, read> tokens: array<u32>;     // verify pass inputs
@group(0) @binding(4) var<storage, read> topk: array<u32>;       // [rows][TEACH][id, bits of p]
@group(0) @binding(5) var<storage, read_write> prev_h: array<f32>;
@group(0) @binding(6) var<storage, read_write> ring_h: array<f32>;   // [capacity][2d]: h, h_next
@group(0) @binding(7) var<storage, read_write> ring_meta: array<u32>; // [capacity][META]
// gather / embed_tokens: slots or tokens; record: the head's top-k pairs per expansion slot
@group(0) @binding(8) var<storage, read> idx: array<u32>;
@group(0) @binding(9) var<storage, read> emb_w: array<u32>;
@group(0) @binding(10) var<storage, read> emb_scale: array<f32>;
@group(0) @binding(11) var<storage, read> emb_offset: array<f32>;
@group(0) @binding(12) var<storage, read_write> out_h: array<f32>;    // [batch][d]
@group(0) @binding(13) var<storage, read_write> out_e: array<f32>;    // [batch][d]
@group(0) @binding(14) var<storage, read_write> out_c: array<u32>;    // [batch][CANDS]
@group(0) @binding(15) var<storage, read_write> out_t: array<f32>;    // [batch][CANDS]
@group(0) @binding(16) var<storage, read_write> out_hn: array<f32>;   // [batch][d]

const RESULT_BONUS: u32 = 33u;

// Embedding value k of token c.
fn emb(k: u32, c: u32) -> f32 {
    let kk = rp.d; // K: the hidden size
    if (FORMAT == 0u) {
        let q = unpack4xI8(emb_w[col_major(c, k / 4u, kk / 4u)])[k % 4u];
        let b = col_major(c, k / 32u, kk / 32u);
        return f32(q) * emb_scale[b] + emb_offset[b];
    }
    if (FORMAT == 3u) {
        let q = unpack4xI8(emb_w[col_major(c, k / 4u, kk / 4u)])[k % 4u];
        return f32(q) * emb_scale[col_major(c, k / 16u, kk / 16u)];
    }
    return unpack2x16float(emb_w[col_major(c, k / 2u, kk / 2u)])[k % 2u];
}

// One workgroup; invocations stride the hidden dimension.
@compute @workgroup_size(64)
fn record(@builtin(local_invocation_index) lid: u32) {
    let d = rp.d;
    let k = result[0];
    let first = 1u - min(rp.have_prev, 1u);
    for (var j = first; j <= k; j++) {
        let slot = (rp.base + j - first) % rp.capacity;
        let row = select(0u, result[j], j > 0u);
        for (var i = lid; i < d; i += 64u) {
            var v: f32;
            if (j == 0u) {
                v = prev_h[i];
            } else {
                let prow = select(0u, result[j - 1u], j > 1u);
                v = x[prow * d + i];
            }
            ring_h[slot * 2u * d + i] = v;
            ring_h[slot * 2u * d + d + i] = x[row * d + i];
        }
        if (lid == 0u) {
            let m = slot * META;
            ring_meta[m] = select(tokens[row], rp.root, row == 0u);
            var realised = result[RESULT_BONUS];
            if (j < k) {
                realised = tokens[result[j + 1u]];
            }
            ring_meta[m + 1u] = realised;
            let hs = rp.row_slot[row / 4u][row % 4u];
            for (var t = 0u; t < TEACH; t++) {
                ring_meta[m + 2u + t] = topk[(row * TEACH + t) * 2u];
                ring_meta[m + 2u + TEACH + t] = topk[(row * TEACH + t) * 2u + 1u];
                var own = NO_TOKEN;
                if (hs != NO_TOKEN) {
                    own = idx[(hs * TEACH + t) * 2u];
                }
                ring_meta[m + NEG + t] = own;
            }
        }
    }
    // each invocation rewrites only the prev_h entries it read above
    let last = select(0u, result[k], k > 0u);
    for (var i = lid; i < d; i += 64u) {
        prev_h[i] = x[last * d + i];
    }
}

// Workgroup per sample.
@compute @workgroup_size(64)
fn record_prompt(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let d = rp.d;
    let row = wid.x + 1u;
    let slot = (rp.base + wid.x) % rp.capacity;
    for (var i = lid; i < d; i += 64u) {
        ring_h[slot * 2u * d + i] = x[(row - 1u) * d + i];
        ring_h[slot * 2u * d + d + i] = x[row * d + i];
    }
    if (lid == 0u) {
        let m = slot * META;
        ring_meta[m] = tokens[row];
        ring_meta[m + 1u] = select(rp.root, tokens[row + 1u], row + 1u < rp.rows);
        for (var t = 0u; t < TEACH; t++) {
            ring_meta[m + 2u + t] = NO_TOKEN;
            ring_meta[m + 2u + TEACH + t] = 0u;
            ring_meta[m + NEG + t] = NO_TOKEN;
        }
    }
}

// Workgroup per batch row.
@compute @workgroup_size(64)
fn gather(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.x;
    let d = rp.d;
    let slot = idx[b];
    let m = slot * META;
    let next = ring_meta[m];
    for (var i = lid; i < d; i += 64u) {
        out_h[b * d + i] = ring_h[slot * 2u * d + i];
        out_hn[b * d + i] = ring_h[slot * 2u * d + d + i];
        out_e[b * d + i] = emb(i, next);
    }
    if (lid == 0u) {
        let realised = ring_meta[m + 1u];
        var total = 0.0;
        for (var t = 0u; t < TEACH; t++) {
            total += bitcast<f32>(ring_meta[m + 2u + TEACH + t]);
        }
        // samples without a teacher (prompt rows) learn by regression alone: the user's next
        // token is not what the target would have said
        let alpha = rp.alpha;
        let realised_w = select(0.0, 1.0 - alpha, total > 0.0);
        var n = 0u;
        var realised_in = false;
        for (var t = 0u; t < TEACH; t++) {
            let id = ring_meta[m + 2u + t];
            var p = alpha * bitcast<f32>(ring_meta[m + 2u + TEACH + t]) / max(total, 1e-30);
            if (id == realised) {
                p += realised_w;
                realised_in = true;
            }
            out_c[b * CANDS + n] = id;
            out_t[b * CANDS + n] = p;
            n++;
        }
        if (!realised_in) {
            out_c[b * CANDS + n] = realised;
            out_t[b * CANDS + n] = realised_w;
            n++;
        }
        // the fed token itself: what a head that has not learned the step yet predicts
        var own_next = next;
        for (var u = 0u; u < n; u++) {
            if (out_c[b * CANDS + u] == own_next) {
                own_next = NO_TOKEN;
            }
        }
        if (own_next != NO_TOKEN) {
            out_c[b * CANDS + n] = own_next;
            out_t[b * CANDS + n] = 0.0;
            n++;
        }
        for (var t = 0u; t < TEACH; t++) {
            var neg = ring_meta[m + NEG + t];
            for (var u = 0u; u < n; u++) {
                if (out_c[b * CANDS + u] == neg) {
                    neg = NO_TOKEN;
                }
            }
            if (neg != NO_TOKEN) {
                out_c[b * CANDS + n] = neg;
                out_t[b * CANDS + n] = 0.0;
                n++;
            }
        }
        for (var i = n; i < CANDS; i++) {
            var neg = hash(rp.seed ^ hash(b * CANDS + i)) % rp.vocab;
            for (var t = 0u; t < i; t++) {
                if (out_c[b * CANDS + t] == neg) {
                    neg = NO_TOKEN;
                }
            }
            out_c[b * CANDS + i] = neg;
            out_t[b * CANDS + i] = 0.0;
        }
    }
}

// Workgroup per row.
@compute @workgroup_size(64)
fn embed_tokens(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let b = wid.x;
    for (var i = lid; i < rp.d; i += 64u) {
        out_e[b * rp.d + i] = emb(i, idx[b]);
    }
}

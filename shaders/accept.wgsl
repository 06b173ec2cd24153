// Greedy acceptance of a verified token tree, on the GPU, so that the host reads back only the
// accepted ids. Row 0 of the pass is the root (the last committed token, not yet in the KV
// cache); rows 1.. are drafted nodes, parents[r] giving each node's parent row. Starting at the
// root: take the argmax of the current row's logits (lowest index on ties, as the sampler does);
// if a child of the current row carries that token, accept it and continue from it; otherwise the
// argmax is the bonus token and the round ends. Output in `result`:
//   [0] accepted count k, [1..=k] accepted rows in path order, [RESULT_BONUS] bonus token,
//   [RESULT_TOKENS + i] accepted tokens.
// tokens[0] receives the bonus: it is the next round's root, already on the GPU.

const WG: u32 = 64u;
const MAX_DEPTH: u32 = 32u;
const RESULT_BONUS: u32 = 33u;
const RESULT_TOKENS: u32 = 34u;

struct AcceptParams {
    vocab: u32,
    row_stride: u32,
    _p0: u32,
    _p1: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: AcceptParams;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read> parents: array<u32>;
@group(0) @binding(4) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(5) var<storage, read_write> result: array<u32>;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> next_row: u32;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) tid: u32) {
    var cur = 0u;
    var k = 0u;
    for (var depth = 0u; depth < MAX_DEPTH; depth++) {
        // argmax of row `cur`
        let base = cur * p.row_stride;
        var best = MASKED;
        var best_i = 0u;
        for (var i = tid; i < p.vocab; i += WG) {
            let l = logits[base + i];
            if (l > best) {
                best = l;
                best_i = i;
            }
        }
        red_f[tid] = best;
        red_u[tid] = best_i;
        workgroupBarrier();
        if (tid == 0u) {
            var b = red_f[0];
            var bi = red_u[0];
            for (var i = 1u; i < WG; i++) {
                if (red_f[i] > b || (red_f[i] == b && red_u[i] < bi)) {
                    b = red_f[i];
                    bi = red_u[i];
                }
            }
            // the child of `cur` (first in row order) that carries the argmax
            var child = 0xffffffffu;
            for (var r = 1u; r < pass_.m; r++) {
                if (parents[r] == cur && tokens[r] == bi) {
                    child = r;
                    break;
                }
            }
            if (child == 0xffffffffu) {
                result[RESULT_BONUS] = bi;
            } else {
                result[1u + k] = child;
                result[RESULT_TOKENS + k] = bi;
            }
            next_row = child;
        }
        let nxt = workgroupUniformLoad(&next_row);
        if (nxt == 0xffffffffu) {
            break;
        }
        cur = nxt;
        k += 1u;
    }
    if (tid == 0u) {
        result[0] = k;
        tokens[0] = result[RESULT_BONUS];
    }
}

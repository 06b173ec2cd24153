// The one acceptance path: picks the tokens a pass produces, for plain decoding (a pass of one
// row, no drafts) and for verified token trees alike, so that the host reads back only ids.
//
// Row 0 of the pass is the root (the last committed token); rows 1.. are drafted nodes, with
// parents[r] their parent row. From the root, at each visited row the walk takes the token plain
// decoding would produce at that position, y, and accepts the first child carrying it (going on
// from there), or ends with y as the bonus token:
//   greedy (temperature <= 0): y is the row's argmax (lowest index on ties);
//   sampling: p = softmax(logits / T) restricted to the top_k largest and to the smallest top
//     set holding top_p of the mass, and y is drawn from p by inverse CDF with the uniform of
//     the generated token's index (the pass's draw plus the depth), the one a plain pass at that
//     position uses.
// Since the rows' logits are the ones plain decoding computes there, the output is plain
// decoding's for the same seed, token for token, whatever was drafted. Every draft is a fixed
// proposal (q one-hot), and this is recursive rejection sampling with its decisions coupled
// through one uniform per position: child x1 is accepted with probability p(x1); given that y is
// not x1, y follows norm(p - q1), which accepts x2 with probability p(x2) / (1 - p(x1)); and so
// on, with the bonus drawn from what is left. So acceptance rates are those of that rule.
// Output in `result`: [0] accepted count k, [1..=k] accepted rows in path order,
// [RESULT_BONUS] bonus token, [RESULT_TOKENS + i] accepted tokens. tokens[0] receives the bonus:
// the next pass's root, already on the GPU. The CPU twin is src/sampler.rs.
//
// Two entry points, dispatched one after the other for passes of several LM-head rows: `row_best`
// finds every row's max and argmax at once, a workgroup a row, and `main` walks the tree with
// them (a pass of one row, plain decoding, finds its own in `main`). (One workgroup scanning
// the vocabulary again at each depth of the walk was 15% of a 5-row verification on an H200.)

const WG: u32 = 64u;
const MAX_DEPTH: u32 = 32u;
const RESULT_BONUS: u32 = 33u;
const RESULT_TOKENS: u32 = 34u;
const NONE: u32 = 0xffffffffu;
const ITERS: u32 = 28u;

// Test-only: accept every drafted child whose token is in the kept set, ignoring p. Exists so
// that the statistical test can show it detects a wrong rule.
override BROKEN_RULE: bool = false;

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
// Per LM-head row: its max logit (as bits) and argmax, lowest index on ties (row_best).
@group(0) @binding(6) var<storage, read_write> best: array<vec2<u32>>;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> shared_f: f32;
var<workgroup> shared_u: u32;
var<workgroup> next_row: u32;
var<workgroup> pick: u32;

// Uniform in [0, 1) for the generated token with this index (the pass's draw is its root's),
// the same whichever pass and depth sample it (sampler.rs: uniform(seed, index, 0)).
fn uniform_at(index: u32) -> f32 {
    return f32(hash(pass_.seed ^ hash(index ^ hash(0u))) >> 8u) * (1.0 / 16777216.0);
}

fn total_f(v: f32, tid: u32) -> f32 {
    red_f[tid] = v;
    workgroupBarrier();
    if (tid == 0u) {
        var s = 0.0;
        for (var i = 0u; i < WG; i++) {
            s += red_f[i];
        }
        shared_f = s;
    }
    return workgroupUniformLoad(&shared_f);
}

fn total_u(v: u32, tid: u32) -> u32 {
    red_u[tid] = v;
    workgroupBarrier();
    if (tid == 0u) {
        var s = 0u;
        for (var i = 0u; i < WG; i++) {
            s += red_u[i];
        }
        shared_u = s;
    }
    return workgroupUniformLoad(&shared_u);
}

// A token drawn from the row at `base`, kept set {z >= thr}, by inverse CDF in index order with
// uniform `u0`: each invocation sums a contiguous chunk, a prefix over chunks finds the one
// holding the draw, and it walks its chunk. The same for every lane.
fn draw_token(base: u32, mx: f32, inv_t: f32, thr: f32, u0: f32, tid: u32) -> u32 {
    let v = p.vocab;
    let chunk = (v + WG - 1u) / WG;
    let c0 = min(tid * chunk, v);
    let c1 = min(c0 + chunk, v);
    var s = 0.0;
    for (var i = c0; i < c1; i++) {
        let z = (logits[base + i] - mx) * inv_t;
        s += select(0.0, exp(z), z >= thr);
    }
    // total_f leaves the chunk sums in red_f
    let total = total_f(s, tid);
    if (tid == 0u) {
        let u = u0 * total;
        var acc = 0.0;
        var owner = WG;
        var last_kept = 0u;
        for (var i = 0u; i < WG; i++) {
            let here = red_f[i];
            red_f[i] = acc;
            if (owner == WG && u < acc + here && here > 0.0) {
                owner = i;
            }
            if (here > 0.0) {
                last_kept = i;
            }
            acc += here;
        }
        // rounding can put u at the total: the last kept token then
        shared_u = select(owner, last_kept, owner == WG);
        shared_f = u;
        pick = NONE;
    }
    let owner = workgroupUniformLoad(&shared_u);
    let u = workgroupUniformLoad(&shared_f);
    if (tid == owner) {
        var acc = red_f[tid];
        var last = NONE;
        for (var i = c0; i < c1; i++) {
            let z = (logits[base + i] - mx) * inv_t;
            if (z >= thr) {
                last = i;
                acc += exp(z);
                if (u < acc) {
                    break;
                }
            }
        }
        pick = last;
    }
    return workgroupUniformLoad(&pick);
}

// The max (as bits) and argmax (lowest index on ties) of LM-head row `row`, for every lane.
fn row_max(row: u32, tid: u32) -> vec2<u32> {
    let base = row * p.row_stride;
    var b = MASKED;
    var bi = 0u;
    for (var i = tid; i < p.vocab; i += WG) {
        let l = logits[base + i];
        if (l > b) {
            b = l;
            bi = i;
        }
    }
    red_f[tid] = b;
    red_u[tid] = bi;
    workgroupBarrier();
    if (tid == 0u) {
        for (var i = 1u; i < WG; i++) {
            if (red_f[i] > b || (red_f[i] == b && red_u[i] < bi)) {
                b = red_f[i];
                bi = red_u[i];
            }
        }
        shared_f = b;
        shared_u = bi;
    }
    let mx = workgroupUniformLoad(&shared_f);
    return vec2<u32>(bitcast<u32>(mx), workgroupUniformLoad(&shared_u));
}

// Every LM-head row's max and argmax into best, a workgroup a row (for passes of several rows:
// a pass of one row finds its own in `main`, one dispatch fewer a token).
@compute @workgroup_size(64)
fn row_best(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    if (wid.x >= pass_.lm_rows) {
        return;
    }
    let b = row_max(wid.x, tid);
    if (tid == 0u) {
        best[wid.x] = b;
    }
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) tid: u32) {
    let v = p.vocab;
    let sampling = pass_.temperature > 0.0;
    let inv_t = select(1.0, 1.0 / pass_.temperature, sampling);
    var cur = 0u;
    var k = 0u;
    for (var depth = 0u; depth < MAX_DEPTH; depth++) {
        let base = cur * p.row_stride;
        // max and argmax of the row (lowest index on ties), from row_best
        var b = vec2<u32>(0u);
        if (pass_.lm_rows == 1u) {
            b = row_max(0u, tid);
        } else {
            b = best[cur];
        }
        let mx = bitcast<f32>(b.x);
        let amax = b.y;

        // the kept set {z >= thr}, z = (l - mx) / T <= 0
        var thr = -1.0e30;
        if (sampling) {
            if (pass_.top_k > 0u && pass_.top_k < v) {
                // largest thr with count(z >= thr) >= top_k
                var lo = -1.0e4;
                var hi = 0.0;
                for (var it = 0u; it < ITERS; it++) {
                    let mid = 0.5 * (lo + hi);
                    var c = 0u;
                    for (var i = tid; i < v; i += WG) {
                        c += select(0u, 1u, (logits[base + i] - mx) * inv_t >= mid);
                    }
                    if (total_u(c, tid) >= pass_.top_k) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                thr = lo;
            }
            if (pass_.top_p < 1.0) {
                var s = 0.0;
                for (var i = tid; i < v; i += WG) {
                    let z = (logits[base + i] - mx) * inv_t;
                    s += select(0.0, exp(z), z >= thr);
                }
                let mass = total_f(s, tid);
                // largest thr2 >= thr with mass(z >= thr2) >= top_p * mass
                var lo = max(thr, -1.0e4);
                var hi = 0.0;
                let want = pass_.top_p * mass;
                for (var it = 0u; it < ITERS; it++) {
                    let mid = 0.5 * (lo + hi);
                    var s2 = 0.0;
                    for (var i = tid; i < v; i += WG) {
                        let z = (logits[base + i] - mx) * inv_t;
                        s2 += select(0.0, exp(z), z >= mid);
                    }
                    if (total_f(s2, tid) >= want) {
                        lo = mid;
                    } else {
                        hi = mid;
                    }
                }
                thr = max(thr, lo);
            }
        }

        // The token plain decoding samples at this position: the argmax, or a draw from the
        // kept set by the position's own uniform. A child carrying it is accepted, so the output
        // is plain decoding's for the seed whatever was drafted (see the header).
        var y = amax;
        if (sampling) {
            y = draw_token(base, mx, inv_t, thr, uniform_at(pass_.draw + depth), tid);
        }
        if (tid == 0u) {
            var child = NONE;
            // the tree's rows are the LM head's rows (a pass of one row has no drafts)
            for (var r = 1u; r < pass_.lm_rows; r++) {
                if (parents[r] != cur) {
                    continue;
                }
                let x = tokens[r];
                var take = x == y;
                if (BROKEN_RULE && sampling) {
                    take = (logits[base + x] - mx) * inv_t >= thr;
                }
                if (take) {
                    child = r;
                    break;
                }
            }
            next_row = child;
            if (child != NONE) {
                result[1u + k] = child;
                result[RESULT_TOKENS + k] = tokens[child];
            }
        }
        let nxt = workgroupUniformLoad(&next_row);
        if (nxt != NONE) {
            cur = nxt;
            k += 1u;
            continue;
        }
        // no child accepted: the bonus token
        if (tid == 0u) {
            result[RESULT_BONUS] = y;
        }
        break;
    }
    if (tid == 0u) {
        result[0] = k;
        tokens[0] = result[RESULT_BONUS];
    }
}

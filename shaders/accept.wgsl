// The one acceptance path: picks the tokens a pass produces, for plain decoding (a pass of one
// row, no drafts) and for verified token trees alike, so that the host reads back only ids.
//
// Row 0 of the pass is the root (the last committed token); rows 1.. are drafted nodes, with
// parents[r] their parent row. From the root, at each visited row the walk takes the token plain
// decoding would produce at that position, y, and accepts the first child carrying it (going on
// from there), or ends with y as the bonus token:
//   greedy (temperature <= 0): y is the row's argmax (lowest index on ties);
//   sampling: p = softmax(logits / T) restricted to the top_k largest and to the smallest top
//     set holding top_p of the mass, and y is drawn from p by the Gumbel-max rule with the
//     noise of the generated token's index (the pass's draw plus the depth), the noise a plain
//     pass at that position uses.
// Since the rows' logits are the ones plain decoding computes there, the output is plain
// decoding's for the same seed, token for token, whatever was drafted: a draft decides only
// which rows are computed, never which token a row gives. For drafts fixed before the noise
// (q one-hot: the suffix index, a greedy drafter) this is recursive rejection sampling with its
// decisions coupled through the position's noise: child x1 is accepted with probability p(x1);
// given that y is not x1, y follows norm(p - q1), which accepts x2 with probability
// p(x2) / (1 - p(x1)); and so on, with the bonus drawn from what is left. A drafter that draws
// its drafts with the same noise from its own logits (draw_rows) is accepted wherever its
// logits rank the perturbed tokens as the target's do, which is more often.
// Output in `result`: [0] accepted count k, [1..=k] accepted rows in path order,
// [RESULT_BONUS] bonus token, [RESULT_TOKENS + i] accepted tokens, [RESULT_SLOW_FILTERS] how
// many visited rows found their kept set by bisection (filtered_draw). tokens[0] receives the bonus:
// the next pass's root, already on the GPU. The CPU twin is src/sampler.rs.
//
// Two entry points, dispatched one after the other for passes of several LM-head rows: `row_best`
// finds every row's max and argmax at once, a workgroup a row, and `main` walks the tree with
// them (a pass of one row, plain decoding, finds its own in `main`). A third, `draw_rows`, is for
// drafters: it draws each row's token as `main` would, so that sampled drafts can agree with the
// target's draw (see there). (One workgroup scanning
// the vocabulary again at each depth of the walk was 15% of a 5-row verification on an H200.)

const WG: u32 = 64u;
const MAX_DEPTH: u32 = 32u;
const RESULT_BONUS: u32 = 33u;
const RESULT_TOKENS: u32 = 34u;
const NONE: u32 = 0xffffffffu;
const ITERS: u32 = 28u;
// result[RESULT_SLOW_FILTERS]: visited rows whose kept set took the bisection (see filtered_draw).
const RESULT_SLOW_FILTERS: u32 = 66u;
// Candidates each lane keeps for a sampled row's filters (filtered_draw), and all of them.
const CAND: u32 = 8u;
const NCAND: u32 = 512u;

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
// Per LM-head row of a drafter's pass: its coupled draw (draw_rows only).
@group(0) @binding(7) var<storage, read_write> draws: array<vec4<u32>>;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> shared_f: f32;
var<workgroup> shared_u: u32;
var<workgroup> next_row: u32;
var<workgroup> pick: u32;
// The last draw's best and runner-up perturbed scores and the runner-up's id (as bits).
var<workgroup> pick_gap: vec4<f32>;
var<workgroup> red_g: array<f32, WG>;
var<workgroup> red_v: array<u32, WG>;
// filtered_draw: every lane's candidates (z, id), and the valid ones' z and e^z by rank.
var<workgroup> cand_z: array<f32, NCAND>;
var<workgroup> cand_id: array<u32, NCAND>;
var<workgroup> sorted_z: array<f32, NCAND>;
var<workgroup> sorted_e: array<f32, NCAND>;
// filtered_draw's threshold and whether the candidates held the kept set (1.0) or not (0.0).
var<workgroup> filter_out: vec2<f32>;

// The noise key of the generated token with this index (the pass's draw is its root's), the
// same whichever pass and depth sample it (sampler.rs: token_key).
fn token_key(index: u32) -> u32 {
    return hash(pass_.seed ^ hash(index ^ hash(0u)));
}

// Gumbel noise -ln(-ln u) of vocabulary id `i` under `key`, u uniform in (0, 1) from 24 bits of a
// hash (sampler.rs: gumbel). Its largest value, ~17.3, caps how far below the best a token can
// still win: a token 17 nats down (p < 4e-8 of the best's) never does.
fn gumbel(key: u32, i: u32) -> f32 {
    let u = (f32(hash(key ^ hash(i)) >> 8u) + 0.5) * (1.0 / 16777216.0);
    return -log(-log(u));
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

// The token drawn from the row at `base`, kept set {z >= thr}, by the Gumbel-max rule: the
// kept token with the largest z + g, g the Gumbel noise of (token index, vocabulary id) under
// key `key` (ties to the lowest id). That is a draw from softmax(z) over the kept set, and the
// noise does not depend on the logits, so a drafter drawing from its own logits with the same
// noise picks the same token wherever its logits agree with the target's to within the gap
// between the two best perturbed scores. The draw's best and runner-up scores and the runner-up
// id land in `pick_gap`. The same for every lane.
fn draw_token(base: u32, mx: f32, inv_t: f32, thr: f32, key: u32, tid: u32) -> u32 {
    var b1 = MASKED;
    var i1 = NONE;
    var b2 = MASKED;
    var i2 = NONE;
    for (var i = tid; i < p.vocab; i += WG) {
        draw_candidate(&b1, &i1, &b2, &i2, (logits[base + i] - mx) * inv_t, i, thr, key);
    }
    return merge_draws(b1, i1, b2, i2, tid);
}

// The workgroup's best and runner-up perturbed scores from every lane's own two (a tie to the
// lower id): the best's id for every lane, both scores and the runner-up's id in `pick_gap`.
fn merge_draws(b1: f32, i1: u32, b2: f32, i2: u32, tid: u32) -> u32 {
    red_f[tid] = b1;
    red_u[tid] = i1;
    red_g[tid] = b2;
    red_v[tid] = i2;
    workgroupBarrier();
    if (tid == 0u) {
        var w1 = MASKED;
        var j1 = NONE;
        var w2 = MASKED;
        var j2 = NONE;
        for (var l = 0u; l < WG; l++) {
            // each lane's best, then its runner-up, merged into the overall top two
            for (var c = 0u; c < 2u; c++) {
                let g = select(red_f[l], red_g[l], c == 1u);
                let i = select(red_u[l], red_v[l], c == 1u);
                if (i == NONE) {
                    continue;
                }
                if (g > w1 || (g == w1 && i < j1)) {
                    w2 = w1;
                    j2 = j1;
                    w1 = g;
                    j1 = i;
                } else if (g > w2 || (g == w2 && i < j2)) {
                    w2 = g;
                    j2 = i;
                }
            }
        }
        pick = j1;
        pick_gap = vec4<f32>(w1, w2, bitcast<f32>(j2), 0.0);
    }
    return workgroupUniformLoad(&pick);
}

// Four of a lane's candidates into filtered_draw's shared lists at `o`.
fn put_candidates(o: u32, z: vec4<f32>, id: vec4<u32>) {
    for (var c = 0u; c < 4u; c++) {
        cand_z[o + c] = z[c];
        cand_id[o + c] = id[c];
    }
}

// A valid candidate (z, id) at its rank in filtered_draw's sorted copy.
fn sort_in(rank: u32, z: f32, id: u32) {
    if (id != NONE) {
        sorted_z[rank] = z;
        sorted_e[rank] = exp(z);
    }
}

// Token i with z = (l - mx) / T into a lane's best and runner-up perturbed scores (ties to the
// lower id) if it is kept (z >= thr).
fn draw_candidate(b1: ptr<function, f32>, i1: ptr<function, u32>, b2: ptr<function, f32>, i2: ptr<function, u32>,
                  z: f32, i: u32, thr: f32, key: u32) {
    if (i == NONE || z < thr) {
        return;
    }
    let g = z + gumbel(key, i);
    if (g > *b1 || (g == *b1 && i < *i1)) {
        *b2 = *b1;
        *i2 = *i1;
        *b1 = g;
        *i1 = i;
    } else if (g > *b2 || (g == *b2 && i < *i2)) {
        *b2 = g;
        *i2 = i;
    }
}

// The token plain sampling draws from the row at `base` (max logit mx): the kept set's threshold
// thr (tokens with z = (l - mx) / T >= thr are kept, see kept_threshold) into `thr_out`, then
// draw_token's Gumbel-max draw. Returns the token, and 1 where the threshold took the bisection.
//
// The filters' threshold is found from candidates, in one pass over the vocabulary instead of a
// bisection's 28 or 56: each lane keeps its CAND largest z, so every token above t, the largest
// of the lanes' CAND-th values, is a candidate; ranked, they give top-k's k-th value and top-p's
// smallest top set exactly (as src/sampler.rs defines them) wherever those lie above t, and then
// the kept set lies among the candidates too, so the draw looks only at them. A kept set that
// reaches down to t (top-p over a flat row, more than ~300 tokens) takes the bisection and a
// draw over the whole vocabulary. Without filters the draw is one pass as it is.
fn filtered_draw(base: u32, mx: f32, inv_t: f32, key: u32, tid: u32, thr_out: ptr<function, f32>) -> vec2<u32> {
    let v = p.vocab;
    let top_k_on = pass_.top_k > 0u && pass_.top_k < v;
    let top_p_on = pass_.top_p < 1.0;
    if (!top_k_on && !top_p_on) {
        *thr_out = -1.0e30;
        return vec2<u32>(draw_token(base, mx, inv_t, -1.0e30, key, tid), 0u);
    }
    // this lane's CAND = 8 largest z, best first, as two vec4s (za then zb, ids ia and ib; lanes
    // walk their ids in increasing order, so a tie keeps the lower id first), and the mass of the
    // whole row where top-p needs it
    var za = vec4<f32>(MASKED);
    var zb = vec4<f32>(MASKED);
    var ia = vec4<u32>(NONE);
    var ib = vec4<u32>(NONE);
    let need_mass = top_p_on && !top_k_on;
    var s = 0.0;
    for (var i = tid; i < v; i += WG) {
        let z = (logits[base + i] - mx) * inv_t;
        if (need_mass) {
            s += exp(z);
        }
        if (z > zb.w) {
            // z goes to the first slot it beats, the slots after it move down one
            let ga = vec4<f32>(z) > za;
            let gb = vec4<f32>(z) > zb;
            let pga = vec4<bool>(true, ga.xyz);
            let pgb = vec4<bool>(ga.w, gb.xyz);
            let nza = select(za, select(vec4<f32>(z), vec4<f32>(z, za.xyz), pga), ga);
            let nzb = select(zb, select(vec4<f32>(z), vec4<f32>(za.w, zb.xyz), pgb), gb);
            let nia = select(ia, select(vec4<u32>(i), vec4<u32>(i, ia.xyz), pga), ga);
            ib = select(ib, select(vec4<u32>(i), vec4<u32>(ia.w, ib.xyz), pgb), gb);
            ia = nia;
            za = nza;
            zb = nzb;
        }
    }
    put_candidates(tid * CAND, za, ia);
    put_candidates(tid * CAND + 4u, zb, ib);
    let none = vec4<u32>(NONE);
    let valid_a = select(vec4<u32>(1u), vec4<u32>(0u), ia == none);
    let valid_b = select(vec4<u32>(1u), vec4<u32>(0u), ib == none);
    // every token of this lane above its last candidate is a candidate
    red_f[tid] = select(zb.w, MASKED, ib.w == NONE);
    red_g[tid] = s;
    red_v[tid] = dot(valid_a + valid_b, vec4<u32>(1u));
    workgroupBarrier();
    // each candidate's rank (z descending, then id; unfilled slots rank last), and the sorted copy
    var ra = vec4<u32>(0u);
    var rb = vec4<u32>(0u);
    for (var j = 0u; j < NCAND; j++) {
        let zj = vec4<f32>(cand_z[j]);
        let ij = vec4<u32>(cand_id[j]);
        ra += select(vec4<u32>(0u), vec4<u32>(1u), (zj > za) | ((zj == za) & (ij < ia)));
        rb += select(vec4<u32>(0u), vec4<u32>(1u), (zj > zb) | ((zj == zb) & (ij < ib)));
    }
    sort_in(ra.x, za.x, ia.x);
    sort_in(ra.y, za.y, ia.y);
    sort_in(ra.z, za.z, ia.z);
    sort_in(ra.w, za.w, ia.w);
    sort_in(rb.x, zb.x, ib.x);
    sort_in(rb.y, zb.y, ib.y);
    sort_in(rb.z, zb.z, ib.z);
    sort_in(rb.w, zb.w, ib.w);
    workgroupBarrier();
    if (tid == 0u) {
        var t = MASKED;
        var mass = 0.0;
        var n_valid = 0u;
        for (var l = 0u; l < WG; l++) {
            t = max(t, red_f[l]);
            mass += red_g[l];
            n_valid += red_v[l];
        }
        // sorted[0..n] are every token with z > t, in order
        var n = 0u;
        while (n < n_valid && sorted_z[n] > t) {
            n++;
        }
        var thr = -1.0e30;
        var ok = true;
        if (top_k_on) {
            if (pass_.top_k <= n) {
                thr = sorted_z[pass_.top_k - 1u];
                // the kept set's mass (ties at the k-th value are kept)
                mass = 0.0;
                for (var i = 0u; i < n && sorted_z[i] >= thr; i++) {
                    mass += sorted_e[i];
                }
            } else {
                ok = false;
            }
        }
        if (ok && top_p_on) {
            // the smallest top set holding top_p of the kept mass, ties at its last value kept
            let want = pass_.top_p * mass;
            var acc = 0.0;
            var found = false;
            for (var i = 0u; i < n && sorted_z[i] >= thr; i++) {
                acc += sorted_e[i];
                if (acc >= want) {
                    thr = sorted_z[i];
                    found = true;
                    break;
                }
            }
            ok = found;
        }
        filter_out = vec2<f32>(thr, select(0.0, 1.0, ok));
    }
    let out = workgroupUniformLoad(&filter_out);
    if (out.y > 0.5) {
        // the kept set {z >= thr} is among the candidates: draw from them alone
        var b1 = MASKED;
        var i1 = NONE;
        var b2 = MASKED;
        var i2 = NONE;
        draw_candidate(&b1, &i1, &b2, &i2, za.x, ia.x, out.x, key);
        draw_candidate(&b1, &i1, &b2, &i2, za.y, ia.y, out.x, key);
        draw_candidate(&b1, &i1, &b2, &i2, za.z, ia.z, out.x, key);
        draw_candidate(&b1, &i1, &b2, &i2, za.w, ia.w, out.x, key);
        draw_candidate(&b1, &i1, &b2, &i2, zb.x, ib.x, out.x, key);
        draw_candidate(&b1, &i1, &b2, &i2, zb.y, ib.y, out.x, key);
        draw_candidate(&b1, &i1, &b2, &i2, zb.z, ib.z, out.x, key);
        draw_candidate(&b1, &i1, &b2, &i2, zb.w, ib.w, out.x, key);
        *thr_out = out.x;
        return vec2<u32>(merge_draws(b1, i1, b2, i2, tid), 0u);
    }
    let thr = kept_threshold(base, mx, inv_t, tid);
    *thr_out = thr;
    return vec2<u32>(draw_token(base, mx, inv_t, thr, key, tid), 1u);
}

// The kept set's threshold on z = (l - mx) / T <= 0 for the row at `base` (every token with
// z >= thr is kept): the largest thr keeping top_k tokens, raised to the largest keeping top_p of
// their mass. The same for every lane.
fn kept_threshold(base: u32, mx: f32, inv_t: f32, tid: u32) -> f32 {
    let v = p.vocab;
    var thr = -1.0e30;
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
    return thr;
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
    let sampling = pass_.temperature > 0.0;
    let inv_t = select(1.0, 1.0 / pass_.temperature, sampling);
    var cur = 0u;
    var k = 0u;
    var slow = 0u;
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

        // The token plain decoding samples at this position: the argmax, or a draw from the
        // kept set {z >= thr}, z = (l - mx) / T <= 0, with the position's own noise. A child
        // carrying it is accepted, so the output is plain decoding's for the seed whatever was
        // drafted (see the header).
        var y = amax;
        var thr = -1.0e30;
        if (sampling) {
            let d = filtered_draw(base, mx, inv_t, token_key(pass_.draw + depth), tid, &thr);
            y = d.x;
            slow += d.y;
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
        result[RESULT_SLOW_FILTERS] = slow;
        tokens[0] = result[RESULT_BONUS];
    }
}

// The scale, in units of z (logit / T), of the gap between a coupled draw's best and runner-up
// perturbed scores: at a gap of 0 the target's draw is taken to be either of the two, and the
// chance that it is the runner-up falls as e^(-gap / COUPLING_SPREAD) / 2.
const COUPLING_SPREAD: f32 = 1.0;

// A drafter's coupled draw, for sampled decoding: each LM-head row's token drawn exactly as
// `main` draws one, with the noise of generated-token index pass_.draw (a drafting level's rows
// all sit at one depth), from the drafter's own logits. Where the target's logits there differ
// from the drafter's by less than the gap between the two best perturbed scores, the target's
// draw is the same token, so the child carrying it is accepted: sampled drafts agree about as
// often as greedy ones, instead of at the rate p(x) of a fixed guess x. Acceptance is unchanged
// (`main` never looks at how a draft was made), so this changes only what is proposed.
// draws[row] = (token, bits of its score 1 - e^(-gap / COUPLING_SPREAD) / 2, runner-up token,
// 1 where the filters took the bisection): the score is a prior that the controller's calibration maps to realised acceptance, and
// the runner-up is the likeliest token where the draw misses.
@compute @workgroup_size(64)
fn draw_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) tid: u32) {
    if (wid.x >= pass_.lm_rows || pass_.temperature <= 0.0) {
        return;
    }
    let row = wid.x;
    let base = row * p.row_stride;
    let b = row_max(row, tid);
    let mx = bitcast<f32>(b.x);
    let inv_t = 1.0 / pass_.temperature;
    var thr = -1.0e30;
    let d = filtered_draw(base, mx, inv_t, token_key(pass_.draw), tid, &thr);
    let y = d.x;
    if (tid == 0u) {
        let gap = pick_gap;
        let runner_up = bitcast<u32>(gap.z);
        // a lone kept token cannot be missed
        var score = 1.0;
        if (runner_up != NONE) {
            score = 1.0 - 0.5 * exp(-(gap.x - gap.y) / COUPLING_SPREAD);
        }
        draws[row] = vec4<u32>(y, bitcast<u32>(clamp(score, 0.0, 1.0)), runner_up, d.y);
    }
}

// The fused sampler: one workgroup reads one row of logits and writes one token id.
// Greedy (temperature <= 0): argmax, lowest index on ties. Otherwise: softmax at temperature,
// keep the top_k largest (threshold found by bisection), then the smallest top set whose mass
// reaches top_p (bisection again), then draw u from a counter-based hash of (seed, draw) and
// walk the kept tokens in index order. The CPU twin is `sampler::sample_cpu` (src/sampler.rs).
// The token goes to tokens[0] (next pass input) and sampled[out_index] (read back by the host).

const WG: u32 = 64u;
const ITERS: u32 = 28u;

struct SampleParams {
    vocab: u32,
    row_stride: u32, // logits row length (>= vocab)
    _p0: u32,
    _p1: u32,
};

@group(0) @binding(0) var<uniform> pass_: Pass;
@group(0) @binding(1) var<uniform> p: SampleParams;
@group(0) @binding(2) var<storage, read> logits: array<f32>;
@group(0) @binding(3) var<storage, read_write> tokens: array<u32>;
@group(0) @binding(4) var<storage, read_write> sampled: array<u32>;

var<workgroup> red_f: array<f32, WG>;
var<workgroup> red_u: array<u32, WG>;
var<workgroup> shared_f: f32;
var<workgroup> shared_u: u32;
var<workgroup> shared_pick: u32;

fn hash(x: u32) -> u32 {
    let s = x * 747796405u + 2891336453u;
    let w = ((s >> ((s >> 28u) + 4u)) ^ s) * 277803737u;
    return (w >> 22u) ^ w;
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
    workgroupBarrier();
    return shared_f;
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
    workgroupBarrier();
    return shared_u;
}

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) tid: u32) {
    let base = pass_.sample_row * p.row_stride;
    let v = p.vocab;
    // 1. max and argmax (lowest index on ties)
    var best = MASKED;
    var best_i = 0u;
    for (var i = tid; i < v; i += WG) {
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
        shared_f = b;
        shared_u = bi;
    }
    workgroupBarrier();
    let mx = shared_f;
    let amax = shared_u;
    var chosen = amax;
    workgroupBarrier();
    if (pass_.temperature > 0.0) {
        let inv_t = 1.0 / pass_.temperature;
        // z = (l - mx) / T <= 0; tokens with z >= thr are kept.
        var thr = -1.0e30;
        if (pass_.top_k > 0u && pass_.top_k < v) {
            // largest thr with count(z >= thr) >= top_k
            var lo = -1.0e4; // z below this has probability < e^-10000: never kept anyway
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
        var mass = 0.0;
        for (var i = tid; i < v; i += WG) {
            let z = (logits[base + i] - mx) * inv_t;
            mass += select(0.0, exp(z), z >= thr);
        }
        mass = total_f(mass, tid);
        if (pass_.top_p < 1.0) {
            // largest thr2 >= thr with mass(z >= thr2) >= top_p * mass
            var lo = max(thr, -1.0e4);
            var hi = 0.0;
            let want = pass_.top_p * mass;
            for (var it = 0u; it < ITERS; it++) {
                let mid = 0.5 * (lo + hi);
                var s = 0.0;
                for (var i = tid; i < v; i += WG) {
                    let z = (logits[base + i] - mx) * inv_t;
                    s += select(0.0, exp(z), z >= mid);
                }
                if (total_f(s, tid) >= want) {
                    lo = mid;
                } else {
                    hi = mid;
                }
            }
            thr = max(thr, lo);
            var m2 = 0.0;
            for (var i = tid; i < v; i += WG) {
                let z = (logits[base + i] - mx) * inv_t;
                m2 += select(0.0, exp(z), z >= thr);
            }
            mass = total_f(m2, tid);
        }
        // 2. draw: each invocation owns a contiguous chunk; a prefix over chunks finds the owner
        let u = f32(hash(pass_.seed ^ hash(pass_.draw)) >> 8u) * (1.0 / 16777216.0) * mass;
        let chunk = (v + WG - 1u) / WG;
        let c0 = min(tid * chunk, v);
        let c1 = min(c0 + chunk, v);
        var s = 0.0;
        for (var i = c0; i < c1; i++) {
            let z = (logits[base + i] - mx) * inv_t;
            s += select(0.0, exp(z), z >= thr);
        }
        red_f[tid] = s;
        workgroupBarrier();
        if (tid == 0u) {
            // exclusive prefix sums, and the chunk holding u
            var acc = 0.0;
            var owner = WG;
            for (var i = 0u; i < WG; i++) {
                let here = red_f[i];
                red_f[i] = acc;
                if (owner == WG && u < acc + here && here > 0.0) {
                    owner = i;
                }
                acc += here;
            }
            shared_u = owner;
        }
        workgroupBarrier();
        let owner = shared_u;
        if (tid == owner) {
            var acc = red_f[tid];
            var pick = c0;
            for (var i = c0; i < c1; i++) {
                let z = (logits[base + i] - mx) * inv_t;
                if (z >= thr) {
                    pick = i;
                    acc += exp(z);
                    if (u < acc) {
                        break;
                    }
                }
            }
            shared_pick = pick;
        }
        workgroupBarrier();
        chosen = shared_pick;
        if (owner == WG) {
            chosen = amax; // rounding put u past the kept mass: take the most likely token
        }
    }
    if (tid == 0u) {
        tokens[0] = chosen;
        sampled[pass_.out_index] = chosen;
    }
}

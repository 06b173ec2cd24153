// y = W x for M rows of x on a GPU (KernelPlan::Split): the same weights, layouts, options and
// bindings as matmul.wgsl (matmul_io.wgsl; matmul.wgsl says what they mean), with
// each column group's K split across S lanes of a workgroup.
//
// Why: matmul.wgsl gives one lane 4 columns down all of K, which is what lavapipe runs fastest
// but leaves a GPU a few hundred lanes each waiting on a chain of loads (on an H200 a 2048 x 2048
// matmul took 0.64 ms, ~1% of its memory bandwidth). Here lane t of a group's S takes the steps
// t, t + S, t + 2S, ... down K (a step: the 8 values of one Q4 word, the 4 of one Q8 word, the 4
// of two F16 words), so that the S lanes read S consecutive 16-byte words at a time, and the S
// partial sums of each row are then added in lane order.
//
// Batch invariance: a row's sum is the same sequence of operations whatever R and M are (each
// lane's steps in order, then the S partials in lane order), so verifying a token tree gives the
// logits plain decoding would, bit for bit.

// Rows per workgroup, 1 to 9, one pipeline each (ROW_BLOCKS on the host): the weights are read
// once for all of them.
override R: u32 = 4u;
const MAX_R: u32 = 9u;
// Lanes per workgroup, and lanes per column group (a power of two from MAX_R to WG, set by the
// host, which sizes the dispatch from both: WG / S column groups per workgroup).
const WG: u32 = 64u;
override S: u32 = 16u;

alias Rows = array<vec4<f32>, MAX_R>;

// Every lane's partial sums of every row (MAX_R x WG, 9 KB); SwiGLU's gate and up halves take
// turns in it.
var<workgroup> partial: array<vec4<f32>, 576>;

// NORM: the 8 partial sums of squares of each row (matmul_io.wgsl's inv_rms), and 1 / RMS of
// each of the workgroup's rows.
var<workgroup> squares: array<f32, 72>;
var<private> row_inv: array<f32, MAX_R>;

// NORM: the partial sum of squares j of x's row `row` (matmul_io.wgsl's inv_rms).
fn squares_from(row: u32, j: u32) -> f32 {
    let k4 = p.k / 4u;
    var ss = 0.0;
    for (var i = j; i < k4; i += 8u) {
        let v = x[row * k4 + i];
        ss += dot(v, v);
    }
    return ss;
}

// NORM: lane l sums partial l % 8 of row l / 8 (rows past the 8th on a second turn), then every
// lane adds each row's 8 in order. (On a GPU the second read of x comes from cache; matmul.wgsl
// gathers the squares from its own loads instead. The first version had lanes 0..7 walk the
// rows one after the other: on an H200 that made the QKV matmul at 5 rows 2x slower.)
fn norm_rows(row0: u32, rows: u32, lid: u32) {
    for (var pair = lid; pair < rows * 8u; pair += WG) {
        squares[pair] = squares_from(row0 + pair / 8u, pair % 8u);
    }
    workgroupBarrier();
    for (var r = 0u; r < rows; r++) {
        var total = 0.0;
        for (var j = 0u; j < 8u; j++) {
            total += squares[r * 8u + j];
        }
        row_inv[r] = inv_rms(total);
    }
}

// x's vec4 kq of row row0 + r as the matmul multiplies it: normalised under NORM.
fn x_in(row0: u32, r: u32, kq: u32) -> vec4<f32> {
    let v = x[(row0 + r) * (p.k / 4u) + kq];
    if (NORM) {
        return v * row_inv[r] * norm_g[kq];
    }
    return v;
}

// Columns c0..c3 (4 values along k each) dotted with xv.
fn cols_dot(c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>, xv: vec4<f32>) -> vec4<f32> {
    return vec4<f32>(dot(c0, xv), dot(c1, xv), dot(c2, xv), dot(c3, xv));
}

fn hsum(v: vec4<f32>) -> f32 {
    return (v.x + v.y) + (v.z + v.w);
}

// Steps down K for this format.
fn steps() -> u32 {
    if (is_q4()) {
        return p.k / 8u;
    }
    return p.k / 4u;
}

// Step st of 4-column group g, for rows row0..row0+rows-1, added into acc.
fn step(st: u32, g: u32, row0: u32, rows: u32, acc_in: Rows) -> Rows {
    var acc = acc_in;
    let k4 = p.k / 4u;
    if (is_q4()) {
        // Q4: word st holds values 8st..8st+7 of each column (value i in bits 4i..4i+3)
        let q = w[g * (p.k / 8u) + st];
        let lo = q;
        let hi = q >> vec4<u32>(16u);
        let a0 = nibbles(vec4<u32>(lo.x));
        let a1 = nibbles(vec4<u32>(lo.y));
        let a2 = nibbles(vec4<u32>(lo.z));
        let a3 = nibbles(vec4<u32>(lo.w));
        let b0 = nibbles(vec4<u32>(hi.x));
        let b1 = nibbles(vec4<u32>(hi.y));
        let b2 = nibbles(vec4<u32>(hi.z));
        let b3 = nibbles(vec4<u32>(hi.w));
        let so = q4_scale_offset(g * (p.k / 32u) + st / 4u);
        for (var r = 0u; r < R; r++) {
            if (r < rows) {
                let xa = x_in(row0, r, 2u * st);
                let xb = x_in(row0, r, 2u * st + 1u);
                let d = cols_dot(a0, a1, a2, a3, xa) + cols_dot(b0, b1, b2, b3, xb);
                acc[r] += so.s * d + so.o * (hsum(xa) + hsum(xb));
            }
        }
        return acc;
    }
    var c0: vec4<f32>;
    var c1: vec4<f32>;
    var c2: vec4<f32>;
    var c3: vec4<f32>;
    if (FORMAT == 1u) {
        // F16: words 2st and 2st+1 hold values 4st..4st+1 and 4st+2..4st+3 of each column
        let lo = w[g * (2u * k4) + 2u * st];
        let hi = w[g * (2u * k4) + 2u * st + 1u];
        c0 = vec4<f32>(unpack2x16float(lo.x), unpack2x16float(hi.x));
        c1 = vec4<f32>(unpack2x16float(lo.y), unpack2x16float(hi.y));
        c2 = vec4<f32>(unpack2x16float(lo.z), unpack2x16float(hi.z));
        c3 = vec4<f32>(unpack2x16float(lo.w), unpack2x16float(hi.w));
    } else {
        // Q8, Q8x16, Q8 without offsets: word st holds 4 signed bytes of each column
        let q = w[g * k4 + st];
        c0 = vec4<f32>(unpack4xI8(q.x));
        c1 = vec4<f32>(unpack4xI8(q.y));
        c2 = vec4<f32>(unpack4xI8(q.z));
        c3 = vec4<f32>(unpack4xI8(q.w));
    }
    var sc = vec4<f32>(1.0);
    var o = vec4<f32>(0.0);
    if (FORMAT == 0u) {
        sc = scale_at(g * (p.k / 32u) + st / 8u);
        o = offset[g * (p.k / 32u) + st / 8u];
    } else if (FORMAT == 4u) {
        sc = scale_at(g * (p.k / 32u) + st / 8u);
    } else if (FORMAT == 3u) {
        sc = scale_at(g * (p.k / 16u) + st / 4u);
    }
    for (var r = 0u; r < R; r++) {
        if (r < rows) {
            let xv = x_in(row0, r, st);
            let d = cols_dot(c0, c1, c2, c3, xv);
            if (FORMAT == 0u) {
                acc[r] += sc * d + o * hsum(xv);
            } else if (FORMAT == 1u) {
                acc[r] += d;
            } else {
                acc[r] += sc * d;
            }
        }
    }
    return acc;
}

// This lane's share of 4-column group g: steps t, t + S, ... in order.
fn lane_dot(g: u32, t: u32, row0: u32, rows: u32) -> Rows {
    var acc = Rows();
    let n = steps();
    for (var st = t; st < n; st += S) {
        acc = step(st, g, row0, rows, acc);
    }
    return acc;
}

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let call = call_rows();
    let rblock = wid.y * R;
    // uniform per workgroup: the barrier below stays in uniform control flow
    if (rblock >= call.y) {
        return;
    }
    let rows = min(R, call.y - rblock);
    let row0 = call.x + rblock;
    if (NORM) {
        norm_rows(row0, rows, lid);
    }
    let groups = select(p.n / 4u, p.n / 8u, EPILOGUE == 2u);
    let slot = lid / S;   // this lane's column group within the workgroup
    let t = lid % S;      // and its share of that group's K
    let g_raw = wid.x * (WG / S) + slot;
    let live = g_raw < groups;
    let g = min(g_raw, groups - 1u);
    var gate = Rows();
    var up = Rows();
    if (live) {
        if (EPILOGUE == 2u) {
            gate = lane_dot(2u * g, t, row0, rows);
            up = lane_dot(2u * g + 1u, t, row0, rows);
        } else {
            gate = lane_dot(g, t, row0, rows);
        }
    }
    // lane t < rows of each group adds row t's S partials in lane order
    let r = t;
    let mine = live && t < rows;
    let base = r * WG + slot * S;
    for (var i = 0u; i < R; i++) {
        partial[i * WG + lid] = gate[i];
    }
    workgroupBarrier();
    var a = vec4<f32>(0.0);
    if (mine) {
        for (var i = 0u; i < S; i++) {
            a += partial[base + i];
        }
    }
    if (EPILOGUE == 2u) {
        workgroupBarrier();
        for (var i = 0u; i < R; i++) {
            partial[i * WG + lid] = up[i];
        }
        workgroupBarrier();
        if (mine) {
            var u = vec4<f32>(0.0);
            for (var i = 0u; i < S; i++) {
                u += partial[base + i];
            }
            y[(rblock + r) * p.y_stride + p.y_col0 + g] = a / (vec4<f32>(1.0) + exp(-a)) * u;
        }
        return;
    }
    if (!mine) {
        return;
    }
    if (BIAS) {
        a += bias[g];
    }
    store(rblock + r, g, a);
}

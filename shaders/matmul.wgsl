// y = W x for M rows of x, with W in one of augur's layouts (GpuMatrix::upload in src/model/gpu/matrix.rs):
// groups of 4 columns (g = n/4) one after the other, each running down K, so that every
// invocation streams its weights from consecutive addresses (on lavapipe each lane loads on its
// own; weights too big for the cache came 8-14% faster per token this way than K-major):
//   FORMAT 0 (Q8):  w[g * K/4 + k/4] holds columns n..n+3, each as 4 i8 along k..k+3;
//                   scale/offset[g * K/32 + k/32] hold the 32-block's scale and offset per column.
//   FORMAT 1 (F16): w[g * K/2 + k/2] holds columns n..n+3, each as 2 f16 (k, k+1).
//   FORMAT 2 (Q4):  w[g * K/8 + k/8] holds columns n..n+3, each as 8 4-bit values along
//                   k..k+7 (value i in bits 4i..4i+3), scale and offset as for Q8. Q4_0, Q4_1
//                   and Q4_K weights, half the bytes of Q8: on lavapipe every per-lane load costs
//                   a bounds-checked scalar load per component, so fewer loads per weight win.
//   FORMAT 3 (Q8x16): w as Q8; scale[g * K/16 + k/16] per 16 values, no offset (Q6_K exactly).
//   FORMAT 4 (Q8, no offset): Q8 whose offsets are all zero (Q5_0, Q8_0): one load fewer per
//                   32-block, and no running sum of x.
//   FORMAT 5 (Q4, f16 scales): Q4 whose scales and offsets are all f16 values, each column's
//                   pair packed into one word of scale (matmul_io.wgsl q4_scale_offset).
// Each invocation computes 4 adjacent columns for up to R rows, reading each weight once for all
// of them. No barriers and no shared memory: on lavapipe simple kernels win (DESIGN.md).
// Every lane needs the same x values: where the device has subgroups, each 8 lanes load a block's
// 8 vec4s of x once between them and share them (x_at; lanes_subgroup.wgsl says why).
//
// Batch invariance: a row's result never depends on M or on which rows share its invocation:
// every row runs the same sequence of operations, and a row's loop never looks at other rows.
//
// Options (override constants, with the bindings in matmul_io.wgsl): BIAS adds `bias`; EPILOGUE
// 0 stores, 1 adds into y (residual), 2 applies SwiGLU to pairs of column groups (gate, up) and
// writes one group, 3 finishes q, k and v (RoPE, KV cache; matmul_io.wgsl); R (below).

// Rows per invocation, R: 1 to 9, one pipeline each (ROW_BLOCKS on the host); a pass
// takes the smallest that holds its rows (blocks of 9 beyond). Lavapipe runs the code for all R
// rows whether or not a row exists, so a pass should pay for no row it does not have, and a tree
// of up to 8 drafted tokens and its root reads the weights once. A row's arithmetic is the same
// whatever R is (batch invariance). (Measured on lavapipe, the matmul alone at 1536 x 8960: R=1 at M=1 1.3x faster
// than R=4, R=8 at M=8 1.25x faster than two blocks of 4, best of 12; Q4 at M=5, best of 3:
// 4.28 ms at R=5, 4.89 at R=8, 6.47 as two blocks of 4. Putting rows across invocations so that
// lanes share weight loads was 1.5-2x slower.)
override R: u32 = 4u;
const MAX_R: u32 = 9u;

// One vec4 per row of an invocation's rows (the first R used).
alias Rows = array<vec4<f32>, MAX_R>;

// NORM: rows are normalised as W (g x) / rms(x): x is multiplied by the norm's weights g as
// it is read, and the sums of squares are gathered from the same loads, lane j of each 8
// summing x's vec4s j, j + 8, ... of a row (one per 32-block) as the matmul walks K; the 8
// partials are added in order at the end (inv_rms). Reading x a second time to normalise it
// first doubled the loads of x, which at 8 rows cost more than the weights' in lavapipe.
var<private> first_row: u32;
var<private> row_squares: array<f32, MAX_R>;
// Whether this walk down K sums the squares (SwiGLU walks it twice, for gate and up).
var<private> gather_squares: bool;
// NORM without subgroups: lanes 0..7 read a block's 8 vec4s of each row (times g) and hand them
// round through workgroup memory, as the shuffles do with subgroups, and their partial sums of
// squares likewise at the end. (Every lane reading x itself, Mesa reassociated the products,
// and the logits differed in the last bits from the subgroup path's.)
var<workgroup> x_shared: array<vec4<f32>, 72>;
var<workgroup> squares_shared: array<f32, 72>;

// x's vec4 kq of the invocation's row r.
fn x_raw(r: u32, kq: u32) -> vec4<f32> {
    return x[(first_row + r) * (p.k / 4u) + kq];
}

// This lane's slice kq of row r as the matmul multiplies it: times g (the norm's weights gv =
// norm_g[kq]) under NORM, its squares added into the row's partial sum.
fn x_slice(r: u32, kq: u32, gv: vec4<f32>) -> vec4<f32> {
    let v = x_raw(r, kq);
    if (NORM) {
        if (gather_squares) {
            row_squares[r] += dot(v, v);
        }
        return v * gv;
    }
    return v;
}

// NORM: the norm's weights for x's vec4 kq.
fn norm_weights(kq: u32) -> vec4<f32> {
    if (NORM) {
        return norm_g[kq];
    }
    return vec4<f32>(1.0);
}

// NORM: 1 / RMS of the invocation's row r, from the lanes' partial sums (after the last block).
fn row_inv(r: u32, l: Lane) -> f32 {
    var total = 0.0;
    if (SUBGROUPS) {
        for (var j = 0u; j < 8u; j++) {
            total += from_lane_f32(row_squares[r], j);
        }
    } else {
        for (var j = 0u; j < 8u; j++) {
            total += squares_shared[r * 8u + j];
        }
    }
    return inv_rms(total);
}

// Columns c0..c3 (4 values along k each) times x's vec4 kq (number j of its block) of every
// row, added into the rows' running sums over the 32-block.
fn add_products(part_in: Rows, c0: vec4<f32>, c1: vec4<f32>, c2: vec4<f32>, c3: vec4<f32>, xl: Rows, j: u32,
                row0: u32, rows: u32, kq: u32) -> Rows {
    var part = part_in;
    for (var r = 0u; r < R; r++) {
        if (r < rows) {
            let xv = x_at(xl[r], j, r, kq);
            part[r] += vec4<f32>(dot(c0, xv), dot(c1, xv), dot(c2, xv), dot(c3, xv));
        }
    }
    return part;
}

// Q4 values k8*8 .. k8*8+7 of 4-column group g (x's vec4s 2j and 2j+1 of block b) added into the
// sums of rows row0..row0+rows-1. For one-row blocks q4_block calls it with j = 0..3 written out;
// from 3 rows on, in a loop over j (there is no 2-row block: Mesa unrolled the loop at 2 rows
// and spilled, so 2-row passes take the 3-row block; MATMUL_ROW_BLOCKS in src/gpu/kernels.rs).
// Written out up to 3 rows was faster on the Intel host of the sessions before 20 (the matmul
// alone at 576 x 3072, best of 4: 2 rows 0.307 -> 0.266 ms, 3 rows 0.366 -> 0.315); on the AMD
// EPYC (Zen 3, AVX2) of sessions 20-23 the written-out 3-row walk spilled, and whole SmolLM2
// passes of 3 rows took 1.32-1.41x a 1-row pass in the loop against 1.65-1.73x written out
// (BENCHMARKS.md, sessions 23-24).
fn q4_quad(j: u32, b: u32, g: u32, row0: u32, rows: u32, xl: Rows, s_in: Rows) -> Rows {
    var s = s_in;
    let k8 = b * 4u + j;
    let q = w[g * (p.k / 8u) + k8];
    // values k..k+3 of each column, then k+4..k+7: the same 4 live vectors as Q8's loop
    for (var h = 0u; h < 2u; h++) {
        let qh = q >> vec4<u32>(16u * h);
        let c0 = nibbles(vec4<u32>(qh.x));
        let c1 = nibbles(vec4<u32>(qh.y));
        let c2 = nibbles(vec4<u32>(qh.z));
        let c3 = nibbles(vec4<u32>(qh.w));
        s = add_products(s, c0, c1, c2, c3, xl, 2u * j + h, row0, rows, 2u * k8 + h);
    }
    return s;
}

// Q4: one 32-block of 4-column group g added into acc for rows row0..row0+rows-1.
fn q4_block(b: u32, g: u32, row0: u32, rows: u32, l: Lane, acc_in: Rows) -> Rows {
    var acc = acc_in;
    let xl = x_slices(b, row0, rows, l);
    var s = Rows();
    if (R <= 1u) {
        s = q4_quad(0u, b, g, row0, rows, xl, s);
        s = q4_quad(1u, b, g, row0, rows, xl, s);
        s = q4_quad(2u, b, g, row0, rows, xl, s);
        s = q4_quad(3u, b, g, row0, rows, xl, s);
    } else {
        for (var j = 0u; j < 4u; j++) {
            s = q4_quad(j, b, g, row0, rows, xl, s);
        }
    }
    let xs = block_x_sums(xl, b, rows);
    let so = q4_scale_offset(g * (p.k / 32u) + b);
    for (var r = 0u; r < R; r++) {
        acc[r] += so.s * s[r] + so.o * xs[r];
    }
    return acc;
}

// Q8x16: values kq*4 .. kq*4+3 (kq = b*8 + h*4 + j) of 4-column group g added into part.
fn q8x16_step(h: u32, j: u32, b: u32, g: u32, row0: u32, rows: u32, xl: Rows, part_in: Rows) -> Rows {
    var part = part_in;
    let kq = b * 8u + h * 4u + j;
    let q = w[g * (p.k / 4u) + kq];
    let c0 = vec4<f32>(unpack4xI8(q.x));
    let c1 = vec4<f32>(unpack4xI8(q.y));
    let c2 = vec4<f32>(unpack4xI8(q.z));
    let c3 = vec4<f32>(unpack4xI8(q.w));
    for (var r = 0u; r < R; r++) {
        if (r < rows) {
            let xv = x_at(xl[r], h * 4u + j, r, kq);
            part[r] += vec4<f32>(dot(c0, xv), dot(c1, xv), dot(c2, xv), dot(c3, xv));
        }
    }
    return part;
}

// Q8x16: 16-block h (0 or 1) of 32-block b, scaled and added into acc (written out for one-row
// blocks as q4_quad is).
fn q8x16_half(h: u32, b: u32, g: u32, row0: u32, rows: u32, xl: Rows, acc_in: Rows) -> Rows {
    var acc = acc_in;
    var part = Rows();
    if (R <= 1u) {
        part = q8x16_step(h, 0u, b, g, row0, rows, xl, part);
        part = q8x16_step(h, 1u, b, g, row0, rows, xl, part);
        part = q8x16_step(h, 2u, b, g, row0, rows, xl, part);
        part = q8x16_step(h, 3u, b, g, row0, rows, xl, part);
    } else {
        for (var j = 0u; j < 4u; j++) {
            part = q8x16_step(h, j, b, g, row0, rows, xl, part);
        }
    }
    let s = scale_at(g * (p.k / 16u) + 2u * b + h);
    for (var r = 0u; r < R; r++) {
        acc[r] += s * part[r];
    }
    return acc;
}

// Q8x16: one 32-block of 4-column group g, as two 16-blocks with their own scales.
fn q8x16_block(b: u32, g: u32, row0: u32, rows: u32, l: Lane, acc: Rows) -> Rows {
    let xl = x_slices(b, row0, rows, l);
    return q8x16_half(1u, b, g, row0, rows, xl, q8x16_half(0u, b, g, row0, rows, xl, acc));
}

// With subgroups: this lane's share of x for 32-value block b of each row, the block's vec4
// number lane8 (x_at hands them round).
fn x_slices(b: u32, row0: u32, rows: u32, l: Lane) -> Rows {
    var xl = Rows();
    if (SUBGROUPS) {
        let kq = b * 8u + lane8(l);
        let gv = norm_weights(kq);
        for (var r = 0u; r < R; r++) {
            if (r < rows) {
                xl[r] = x_slice(r, kq, gv);
            }
        }
    } else if (NORM) {
        workgroupBarrier();
        if (l.lid < 8u) {
            let kq = b * 8u + l.lid;
            let gv = norm_weights(kq);
            for (var r = 0u; r < R; r++) {
                if (r < rows) {
                    x_shared[r * 8u + l.lid] = x_slice(r, kq, gv);
                }
            }
        }
        workgroupBarrier();
    }
    return xl;
}

// x's vec4 kq (number j of its block) of the invocation's row r: from the lane that loaded it,
// or loaded here.
fn x_at(slice: vec4<f32>, j: u32, r: u32, kq: u32) -> vec4<f32> {
    if (SUBGROUPS) {
        return from_lane(slice, j);
    }
    if (NORM) {
        return x_shared[r * 8u + j];
    }
    return x_raw(r, kq);
}

// Per row, the sum of x over 32-block b (what Q4's and Q8's offsets multiply): the block's 8
// vec4s in order, each summed in pairs, added to 0 one after the other. Once per block and row:
// summed in every column step as well, it took 7 of the ~55 instructions a row and step takes
// on lavapipe (4 adds, and the load, blend and store of a loop-carried sum), for a value every
// column group shares. With subgroups each lane sums its own vec4 and the 8 sums are handed round.
fn block_x_sums(xl: Rows, b: u32, rows: u32) -> array<f32, MAX_R> {
    var xs = array<f32, MAX_R>();
    for (var r = 0u; r < R; r++) {
        if (r < rows) {
            var t = 0.0;
            if (SUBGROUPS) {
                let v = xl[r];
                let h = (v.x + v.y) + (v.z + v.w);
                for (var j = 0u; j < 8u; j++) {
                    t += from_lane_f32(h, j);
                }
            } else {
                for (var j = 0u; j < 8u; j++) {
                    let v = x_at(xl[r], j, r, b * 8u + j);
                    t += (v.x + v.y) + (v.z + v.w);
                }
            }
            xs[r] = t;
        }
    }
    return xs;
}

// Q8 and F16: values kq*4 .. kq*4+3 of 4-column group g (x's vec4 j of block b) added into the
// sums of rows row0..row0+rows-1 (written out for one-row blocks as q4_quad is; a block's 8
// steps hold more live values than Q4's 4: at 3 rows the written-out steps spilled on every
// host (the LM head at 576 x 49152, best of 9, 3 rows 6.21 -> 5.54 ms rolled, Q8 2048 x 2048 0.98
// -> 0.85)).
fn wide_step(j: u32, b: u32, g: u32, row0: u32, rows: u32, xl: Rows, s_in: Rows) -> Rows {
    var s = s_in;
    let k4 = p.k / 4u;
    let kq = b * 8u + j;
    var c0: vec4<f32>;
    var c1: vec4<f32>;
    var c2: vec4<f32>;
    var c3: vec4<f32>;
    if (FORMAT == 0u || FORMAT == 4u) {
        let q = w[g * k4 + kq];
        c0 = vec4<f32>(unpack4xI8(q.x));
        c1 = vec4<f32>(unpack4xI8(q.y));
        c2 = vec4<f32>(unpack4xI8(q.z));
        c3 = vec4<f32>(unpack4xI8(q.w));
    } else {
        let lo = w[g * (2u * k4) + 2u * kq];
        let hi = w[g * (2u * k4) + 2u * kq + 1u];
        c0 = vec4<f32>(unpack2x16float(lo.x), unpack2x16float(hi.x));
        c1 = vec4<f32>(unpack2x16float(lo.y), unpack2x16float(hi.y));
        c2 = vec4<f32>(unpack2x16float(lo.z), unpack2x16float(hi.z));
        c3 = vec4<f32>(unpack2x16float(lo.w), unpack2x16float(hi.w));
    }
    return add_products(s, c0, c1, c2, c3, xl, j, row0, rows, kq);
}

// Q8 and F16: one 32-block of 4-column group g added into acc for rows row0..row0+rows-1.
fn wide_block(b: u32, g: u32, row0: u32, rows: u32, l: Lane, acc_in: Rows) -> Rows {
    var acc = acc_in;
    let xl = x_slices(b, row0, rows, l);
    var s = Rows();
    if (R <= 1u) {
        s = wide_step(0u, b, g, row0, rows, xl, s);
        s = wide_step(1u, b, g, row0, rows, xl, s);
        s = wide_step(2u, b, g, row0, rows, xl, s);
        s = wide_step(3u, b, g, row0, rows, xl, s);
        s = wide_step(4u, b, g, row0, rows, xl, s);
        s = wide_step(5u, b, g, row0, rows, xl, s);
        s = wide_step(6u, b, g, row0, rows, xl, s);
        s = wide_step(7u, b, g, row0, rows, xl, s);
    } else {
        for (var j = 0u; j < 8u; j++) {
            s = wide_step(j, b, g, row0, rows, xl, s);
        }
    }
    if (FORMAT == 0u) {
        let xs = block_x_sums(xl, b, rows);
        let sc = scale_at(g * (p.k / 32u) + b);
        let o = offset[g * (p.k / 32u) + b];
        for (var r = 0u; r < R; r++) {
            acc[r] += sc * s[r] + o * xs[r];
        }
    } else if (FORMAT == 4u) {
        let sc = scale_at(g * (p.k / 32u) + b);
        for (var r = 0u; r < R; r++) {
            acc[r] += sc * s[r];
        }
    } else {
        for (var r = 0u; r < R; r++) {
            acc[r] += s[r];
        }
    }
    return acc;
}

// One 4-column group g (columns 4g..4g+3 of this part) for rows row0..row0+rows-1, a 32-block
// at a time by the walk of the kernel's weight format: `format_block`, which the host writes
// after this file to call q4_block, q8x16_block or wide_block (src/gpu/kernels.rs
// format_block_wgsl). With the three behind branches on FORMAT, lavapipe took ~130 ms to compile
// each of a model's ~50 matmul pipelines, two thirds of it on the two walks it then dropped.
fn group_dot(g: u32, row0: u32, rows: u32, l: Lane) -> Rows {
    var acc = Rows();
    for (var b = 0u; b < p.k / 32u; b++) {
        acc = format_block(b, g, row0, rows, l, acc);
    }
    return acc;
}

// NORM: 1 / RMS of each of the invocation's rows, after a walk down K that gathered the squares.
fn rows_inv(rows: u32, l: Lane) -> array<f32, MAX_R> {
    var inv = array<f32, MAX_R>();
    if (!SUBGROUPS) {
        if (l.lid < 8u) {
            for (var r = 0u; r < R; r++) {
                squares_shared[r * 8u + l.lid] = row_squares[r];
            }
        }
        workgroupBarrier();
    }
    for (var r = 0u; r < R; r++) {
        if (r < rows) {
            inv[r] = row_inv(r, l);
        }
    }
    return inv;
}

// acc scaled by NORM's 1 / RMS per row (unchanged without NORM).
fn normed(acc_in: Rows, inv: array<f32, MAX_R>, rows: u32) -> Rows {
    var acc = acc_in;
    if (NORM) {
        for (var r = 0u; r < R; r++) {
            if (r < rows) {
                acc[r] *= inv[r];
            }
        }
    }
    return acc;
}

// Invocations per workgroup (set by the host per call site, src/gpu/kernels.rs
// matmul_workgroup): 64, or 8 where that leaves too few workgroups to keep every CPU thread of
// lavapipe busy (SmolLM2's 576-column matrices made 3 workgroups of 64 for 2 threads).
override WG: u32 = 64u;

@compute @workgroup_size(WG)
fn main(@builtin(workgroup_id) wid: vec3<u32>, l: Lane) {
    let lid = l.lid;
    // rows come from the workgroup id: every lane of a workgroup works on the same rows of x
    let gid = vec3<u32>(wid.x * WG + lid, wid.y, 0u);
    let call = call_rows();
    let rblock = gid.y * R;
    if (rblock >= call.y) {
        return;
    }
    let rows = min(R, call.y - rblock);
    let row0 = call.x + rblock;
    first_row = row0;
    let groups = select(p.n / 4u, p.n / 8u, EPILOGUE == 2u);
    // lanes past the last group compute the last one again and store nothing: every lane of a
    // subgroup has to take part in the shuffles that share x
    let live = gid.x < groups;
    let g = min(gid.x, groups - 1u);
    gather_squares = NORM;
    if (EPILOGUE == 2u) {
        var gate = group_dot(2u * g, row0, rows, l);
        var inv = array<f32, MAX_R>();
        if (NORM) {
            inv = rows_inv(rows, l);
            gather_squares = false;
        }
        gate = normed(gate, inv, rows);
        let up = normed(group_dot(2u * g + 1u, row0, rows, l), inv, rows);
        for (var r = 0u; r < R; r++) {
            if (live && r < rows) {
                let a = gate[r];
                y[(rblock + r) * p.y_stride + p.y_col0 + g] = a / (vec4<f32>(1.0) + exp(-a)) * up[r];
            }
        }
        return;
    }
    var acc = group_dot(g, row0, rows, l);
    if (NORM) {
        acc = normed(acc, rows_inv(rows, l), rows);
    }
    for (var r = 0u; r < R; r++) {
        if (live && r < rows) {
            var v = acc[r];
            if (BIAS) {
                v += bias[g];
            }
            store(rblock + r, g, v);
        }
    }
}

// The draft head (src/train/head.rs is the reference and says what it is) and its training
// step, for a batch of `batch` rows:
//   head_in    z = [h / rms(h), e / rms(e), 1]                    workgroup per row
//   head_fc1   a = z W1', s = [silu(a), 1]                        4 rows x 4 columns per invocation
//   head_fc2   y = h / rms(h) + s W2'                             4 rows x 4 columns per invocation
// where W1' = [W1; b1] and W2' = [W2; b2]: the parameters are laid out so that each bias is one
// more row of its matrix, and the activations carry a 1 in the matching extra column, so biases
// and their gradients come out of the same products. Training (regression onto the target's
// next hidden state plus a sampled softmax over 32 candidates per row, then AdamW):
//   head_loss  logits over the candidates through the frozen final norm and LM head, loss,
//              dy = d loss / d y                                  workgroup per row
//   head_check ok = every row's loss is finite (else the updates below change nothing: a
//              step with NaN or Inf is skipped, and the host counts it)
//   head_bw_s  da = (dy W2^T) * silu'(a)    (before W2 changes)  4 rows x 4 columns
//   head_upd2  grad W2' = s^T dy, AdamW                           4 x 4 parameters
//   head_upd1  grad W1' = z^T da, AdamW                           4 x 4 parameters
// The products are register-blocked (each invocation keeps a 4x4 block of sums, so each value
// loaded feeds four multiply-adds) with the 4 rows taken from the workgroup id, which makes the
// row operand uniform across the workgroup: the shape that runs well on lavapipe (matmul.wgsl).
// Parameters live in one buffer: w1 [2d][r], b1 [r], w2 [r][d], b2 [d]; d and r are multiples of 4,
// so the parameter, moment and activation buffers are read and written as vec4s where lanes
// vary (every row of every block starts on a multiple of 4).
// The LM head is read in the engine's column-group-major layout (matmul.wgsl): FORMAT 0 Q8, 1 F16
// or 3 Q8x16.

override FORMAT: u32 = 0u;

struct HeadParams {
    d: u32,
    r: u32,
    batch: u32,
    vocab: u32,       // LM-head columns
    lr: f32,
    beta1: f32,
    beta2: f32,
    adam_eps: f32,
    weight_decay: f32,
    bc1: f32,         // 1 - beta1^step
    bc2: f32,         // 1 - beta2^step
    norm_eps: f32,    // the target's final-norm epsilon
};

const CANDS: u32 = 32u;
const REG_WEIGHT: f32 = 1.0;
const TOKEN_WEIGHT: f32 = 1.0;
const NO_TOKEN: u32 = 0xffffffffu;
const IN_EPS: f32 = 1e-6;

@group(0) @binding(0) var<uniform> hp: HeadParams;
@group(0) @binding(1) var<storage, read_write> params: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read_write> adam_m: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> adam_v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> h: array<f32>;       // [batch][d]
@group(0) @binding(5) var<storage, read> e: array<f32>;       // [batch][d]
@group(0) @binding(6) var<storage, read> cands: array<u32>;   // [batch][CANDS]
@group(0) @binding(7) var<storage, read> target_p: array<f32>; // [batch][CANDS]
@group(0) @binding(8) var<storage, read_write> act: array<vec4<f32>>; // z | a | s | y | dy | da | loss
@group(0) @binding(9) var<storage, read> gamma: array<f32>;    // final norm weight [d]
@group(0) @binding(10) var<storage, read> wout: array<u32>;
@group(0) @binding(11) var<storage, read> wscale: array<f32>;
@group(0) @binding(12) var<storage, read> woffset: array<f32>;
@group(0) @binding(13) var<storage, read> h_next: array<f32>;  // [batch][d] regression target

// offsets into params
fn o_b1() -> u32 { return 2u * hp.d * hp.r; }
fn o_w2() -> u32 { return o_b1() + hp.r; }
fn o_b2() -> u32 { return o_w2() + hp.r * hp.d; }
// offsets into act (in floats): z [batch][2d+4] | a [batch][r] | s [batch][r+4] | y | dy [batch][d] |
// da [batch][r] | loss [batch] | ok; z and s rows hold their 1 at 2d and r, then zero padding
fn zw() -> u32 { return 2u * hp.d + 4u; }
fn sw() -> u32 { return hp.r + 4u; }
fn aget(i: u32) -> f32 { return act[i >> 2u][i & 3u]; }
fn aset(i: u32, v: f32) { act[i >> 2u][i & 3u] = v; }
fn act4(i: u32) -> vec4<f32> { return act[i >> 2u]; }
fn param4(i: u32) -> vec4<f32> { return params[i >> 2u]; }
fn o_z() -> u32 { return 0u; }
fn o_a() -> u32 { return hp.batch * zw(); }
fn o_s() -> u32 { return o_a() + hp.batch * hp.r; }
fn o_y() -> u32 { return o_s() + hp.batch * sw(); }
fn o_dy() -> u32 { return o_y() + hp.batch * hp.d; }
fn o_da() -> u32 { return o_dy() + hp.batch * hp.d; }
fn o_loss() -> u32 { return o_da() + hp.batch * hp.r; }
fn o_ok() -> u32 { return o_loss() + hp.batch; }

// LM-head weight of hidden index k for token c.
fn w_out(k: u32, c: u32) -> f32 {
    let kk = hp.d; // K: the hidden size
    if (FORMAT == 0u) {
        let q = unpack4xI8(wout[col_major(c, k / 4u, kk / 4u)])[k % 4u];
        let b = col_major(c, k / 32u, kk / 32u);
        return f32(q) * wscale[b] + woffset[b];
    }
    if (FORMAT == 3u) {
        let q = unpack4xI8(wout[col_major(c, k / 4u, kk / 4u)])[k % 4u];
        return f32(q) * wscale[col_major(c, k / 16u, kk / 16u)];
    }
    return unpack2x16float(wout[col_major(c, k / 2u, kk / 2u)])[k % 2u];
}

var<workgroup> red: array<f32, 64>;

// Sum of v over the workgroup's 64 invocations (all must call it).
fn wg_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s /= 2u) {
        if (lid < s) {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    let out = red[0];
    workgroupBarrier();
    return out;
}

@compute @workgroup_size(64)
fn head_in(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x;
    let d = hp.d;
    var sh = 0.0;
    var se = 0.0;
    for (var k = lid; k < d; k += 64u) {
        sh += h[row * d + k] * h[row * d + k];
        se += e[row * d + k] * e[row * d + k];
    }
    let ih = 1.0 / sqrt(wg_sum(lid, sh) / f32(d) + IN_EPS);
    let ie = 1.0 / sqrt(wg_sum(lid, se) / f32(d) + IN_EPS);
    for (var k = lid; k < d; k += 64u) {
        aset(o_z() + row * zw() + k, h[row * d + k] * ih);
        aset(o_z() + row * zw() + d + k, e[row * d + k] * ie);
    }
    if (lid == 0u) {
        act[(o_z() + row * zw() + 2u * d) >> 2u] = vec4<f32>(1.0, 0.0, 0.0, 0.0);
    }
}

// A block of 4 rows x 4 columns: invocation `lane` of workgroup `wid` covers columns
// 4 * (wid.x * 64 + lane) .. +3 and rows 4 * wid.y .. +3 (some may lie past the end).
struct Block {
    row0: u32,
    col0: u32,
    rows: u32,
    ok: bool,
};

fn block(wid: vec3<u32>, lane: u32, m: u32, n: u32) -> Block {
    let row0 = wid.y * 4u;
    let col0 = (wid.x * 64u + lane) * 4u;
    return Block(row0, col0, min(4u, m - min(m, row0)), row0 < m && col0 < n);
}

fn zero4() -> array<vec4<f32>, 4> {
    return array<vec4<f32>, 4>(vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0), vec4<f32>(0.0));
}

@compute @workgroup_size(64)
fn head_fc1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let bl = block(wid, lane, hp.batch, hp.r);
    if (!bl.ok) {
        return;
    }
    var acc = zero4();
    for (var i = 0u; i <= 2u * hp.d; i++) {
        let w = param4(i * hp.r + bl.col0);
        for (var q = 0u; q < 4u; q++) {
            if (q < bl.rows) {
                acc[q] += aget(o_z() + (bl.row0 + q) * zw() + i) * w;
            }
        }
    }
    for (var q = 0u; q < bl.rows; q++) {
        let row = bl.row0 + q;
        act[(o_a() + row * hp.r + bl.col0) >> 2u] = acc[q];
        act[(o_s() + row * sw() + bl.col0) >> 2u] = acc[q] / (vec4<f32>(1.0) + exp(-acc[q]));
        if (bl.col0 == 0u) {
            act[(o_s() + row * sw() + hp.r) >> 2u] = vec4<f32>(1.0, 0.0, 0.0, 0.0);
        }
    }
}

@compute @workgroup_size(64)
fn head_fc2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let bl = block(wid, lane, hp.batch, hp.d);
    if (!bl.ok) {
        return;
    }
    var acc = zero4();
    for (var j = 0u; j <= hp.r; j++) {
        let w = param4(o_w2() + j * hp.d + bl.col0);
        for (var q = 0u; q < 4u; q++) {
            if (q < bl.rows) {
                acc[q] += aget(o_s() + (bl.row0 + q) * sw() + j) * w;
            }
        }
    }
    for (var q = 0u; q < bl.rows; q++) {
        let row = bl.row0 + q;
        act[(o_y() + row * hp.d + bl.col0) >> 2u] = acc[q] + act4(o_z() + row * zw() + bl.col0);
    }
}

var<workgroup> grad_l: array<f32, 32>;

@compute @workgroup_size(64)
fn head_loss(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x;
    let d = hp.d;
    let yb = o_y() + row * d;
    var ss = 0.0;
    for (var k = lid; k < d; k += 64u) {
        ss += aget(yb + k) * aget(yb + k);
    }
    let iy = 1.0 / sqrt(wg_sum(lid, ss) / f32(d) + hp.norm_eps);
    var st = 0.0;
    for (var k = lid; k < d; k += 64u) {
        st += h_next[row * d + k] * h_next[row * d + k];
    }
    let it = 1.0 / sqrt(wg_sum(lid, st) / f32(d) + IN_EPS);
    // candidate logits, one invocation each
    var logit = 0.0;
    var tok = NO_TOKEN;
    if (lid < CANDS) {
        tok = cands[row * CANDS + lid];
    }
    if (tok != NO_TOKEN) {
        for (var k = 0u; k < d; k++) {
            logit += gamma[k] * aget(yb + k) * iy * w_out(k, tok);
        }
    }
    red[lid] = select(MASKED, logit, tok != NO_TOKEN);
    workgroupBarrier();
    if (lid == 0u) {
        var mx = MASKED;
        for (var i = 0u; i < CANDS; i++) {
            mx = max(mx, red[i]);
        }
        var z = 0.0;
        for (var i = 0u; i < CANDS; i++) {
            if (red[i] > MASKED) {
                z += exp(red[i] - mx);
            }
        }
        var loss = 0.0;
        let scale = 1.0 / f32(hp.batch);
        // the target's mass (1, or 0 for samples that learn by regression alone)
        var mass = 0.0;
        for (var i = 0u; i < CANDS; i++) {
            if (red[i] > MASKED) {
                mass += target_p[row * CANDS + i];
            }
        }
        for (var i = 0u; i < CANDS; i++) {
            if (red[i] > MASKED) {
                let logp = red[i] - mx - log(z);
                let t = target_p[row * CANDS + i];
                loss -= TOKEN_WEIGHT * t * logp;
                grad_l[i] = TOKEN_WEIGHT * (exp(logp) * mass - t) * scale;
            } else {
                grad_l[i] = 0.0;
            }
        }
        aset(o_loss() + row, loss);
    }
    workgroupBarrier();
    // the regression term: (u - h_next / rms(h_next))^2 / d with u = y * iy
    // gy = d loss / d u = gamma * (sum over candidates of g * W[k][c]) + 2 (u - t) / d;
    // dy = iy gy - y (gy . y) iy^3 / d
    let scale = 1.0 / f32(hp.batch);
    var dot_part = 0.0;
    var reg_part = 0.0;
    for (var k = lid; k < d; k += 64u) {
        var dx = 0.0;
        for (var i = 0u; i < CANDS; i++) {
            let t = cands[row * CANDS + i];
            if (t != NO_TOKEN) {
                dx += grad_l[i] * w_out(k, t);
            }
        }
        let diff = aget(yb + k) * iy - h_next[row * d + k] * it;
        reg_part += diff * diff;
        let gy = dx * gamma[k] + REG_WEIGHT * 2.0 * diff / f32(d) * scale;
        aset(o_dy() + row * d + k, gy);
        dot_part += gy * aget(yb + k);
    }
    let dot_all = wg_sum(lid, dot_part);
    let reg_all = wg_sum(lid, reg_part);
    if (lid == 0u) {
        aset(o_loss() + row, aget(o_loss() + row) + REG_WEIGHT * reg_all / f32(d));
    }
    for (var k = lid; k < d; k += 64u) {
        let gy = aget(o_dy() + row * d + k);
        aset(o_dy() + row * d + k, iy * gy - aget(yb + k) * dot_all * iy * iy * iy / f32(d));
    }
}

fn finite(x: f32) -> bool {
    return (bitcast<u32>(x) & 0x7f800000u) != 0x7f800000u && abs(x) < 1e30;
}

@compute @workgroup_size(64)
fn head_check(@builtin(local_invocation_index) lid: u32) {
    var bad = 0.0;
    for (var b = lid; b < hp.batch; b += 64u) {
        bad += select(1.0, 0.0, finite(aget(o_loss() + b)));
    }
    let all_bad = wg_sum(lid, bad);
    if (lid == 0u) {
        aset(o_ok(), select(0.0, 1.0, all_bad == 0.0));
    }
}

// da = (dy W2^T) * silu'(a): both operands run along d, so the 4 columns are 4 rows of W2.
@compute @workgroup_size(64)
fn head_bw_s(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let bl = block(wid, lane, hp.batch, hp.r);
    if (!bl.ok) {
        return;
    }
    let d = hp.d;
    let w0 = o_w2() + bl.col0 * d;
    var acc = zero4();
    for (var c = 0u; c < d; c += 4u) {
        let w = mat4x4<f32>(param4(w0 + c), param4(w0 + d + c), param4(w0 + 2u * d + c), param4(w0 + 3u * d + c));
        for (var q = 0u; q < 4u; q++) {
            if (q < bl.rows) {
                acc[q] += act4(o_dy() + (bl.row0 + q) * d + c) * w;
            }
        }
    }
    for (var q = 0u; q < bl.rows; q++) {
        let at = o_a() + (bl.row0 + q) * hp.r + bl.col0;
        let a = act4(at);
        let sg = vec4<f32>(1.0) / (vec4<f32>(1.0) + exp(-a));
        act[(o_da() + (bl.row0 + q) * hp.r + bl.col0) >> 2u] = acc[q] * sg * (vec4<f32>(1.0) + a * (vec4<f32>(1.0) - sg));
    }
}

// AdamW on parameters i..i+3 (i a multiple of 4) with gradients g.
fn adam4(i: u32, g: vec4<f32>) {
    let j = i >> 2u;
    let m = hp.beta1 * adam_m[j] + (1.0 - hp.beta1) * g;
    let v = hp.beta2 * adam_v[j] + (1.0 - hp.beta2) * g * g;
    adam_m[j] = m;
    adam_v[j] = v;
    let upd = (m / hp.bc1) / (sqrt(v / hp.bc2) + hp.adam_eps);
    params[j] -= hp.lr * (upd + hp.weight_decay * params[j]);
}

// A weight gradient block, x^T g summed over the batch, then AdamW on it: rows of the weight
// matrix (starting at parameter `w0`, `n` columns) run along the input activations x (at
// `x0`, row stride `xs`), columns along the output gradients g (at `g0`, row stride n).
fn update_block(bl: Block, w0: u32, n: u32, x0: u32, xs: u32, g0: u32) {
    var acc = zero4();
    for (var b = 0u; b < hp.batch; b++) {
        let g = act4(g0 + b * n + bl.col0);
        let x = act4(x0 + b * xs + bl.row0);
        for (var q = 0u; q < 4u; q++) {
            acc[q] += x[q] * g;
        }
    }
    for (var q = 0u; q < bl.rows; q++) {
        adam4(w0 + (bl.row0 + q) * n + bl.col0, acc[q]);
    }
}

// grad W2' [r+1][d] = s^T dy.
@compute @workgroup_size(64)
fn head_upd2(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let bl = block(wid, lane, hp.r + 1u, hp.d);
    if (bl.ok && aget(o_ok()) != 0.0) {
        update_block(bl, o_w2(), hp.d, o_s(), sw(), o_dy());
    }
}

// grad W1' [2d+1][r] = z^T da.
@compute @workgroup_size(64)
fn head_upd1(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lane: u32) {
    let bl = block(wid, lane, 2u * hp.d + 1u, hp.r);
    if (bl.ok && aget(o_ok()) != 0.0) {
        update_block(bl, 0u, hp.r, o_z(), zw(), o_da());
    }
}

// The draft head (src/train/head.rs is the reference and says what it is) and its training
// step, for a batch of `batch` rows:
//   head_in    z = [h / rms(h), e / rms(e)]                       workgroup per row
//   head_fc1   a = z W1 + b1, s = silu(a)                         invocation per (j, row)
//   head_fc2   y = h / rms(h) + s W2 + b2                         invocation per (c, row)
// and training (regression onto the target's next hidden state plus a sampled softmax over 32
// candidates per row, then AdamW):
//   head_loss  logits over the candidates through the frozen final norm and LM head, loss,
//              dy = d loss / d y                                  workgroup per row
//   head_bw_s  da = (W2 dy) * silu'(a)     (before W2 changes)    invocation per (j, row)
//   head_upd2  grad and AdamW for W2, b2                          invocations stride the params
//   head_upd1  grad and AdamW for W1, b1
// Parameters live in one buffer: w1 [2d][r], b1 [r], w2 [r][d], b2 [d].
// The LM head is read in the engine's K-major layout (matmul.wgsl), FORMAT 0 Q8 or 1 F16.

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
@group(0) @binding(1) var<storage, read_write> params: array<f32>;
@group(0) @binding(2) var<storage, read_write> adam_m: array<f32>;
@group(0) @binding(3) var<storage, read_write> adam_v: array<f32>;
@group(0) @binding(4) var<storage, read> h: array<f32>;       // [batch][d]
@group(0) @binding(5) var<storage, read> e: array<f32>;       // [batch][d]
@group(0) @binding(6) var<storage, read> cands: array<u32>;   // [batch][CANDS]
@group(0) @binding(7) var<storage, read> target_p: array<f32>; // [batch][CANDS]
@group(0) @binding(8) var<storage, read_write> act: array<f32>; // z | a | s | y | dy | da | loss
@group(0) @binding(9) var<storage, read> gamma: array<f32>;    // final norm weight [d]
@group(0) @binding(10) var<storage, read> wout: array<u32>;
@group(0) @binding(11) var<storage, read> wscale: array<f32>;
@group(0) @binding(12) var<storage, read> woffset: array<f32>;
@group(0) @binding(13) var<storage, read> h_next: array<f32>;  // [batch][d] regression target

// offsets into params
fn o_b1() -> u32 { return 2u * hp.d * hp.r; }
fn o_w2() -> u32 { return o_b1() + hp.r; }
fn o_b2() -> u32 { return o_w2() + hp.r * hp.d; }
// offsets into act
fn o_z() -> u32 { return 0u; }
fn o_a() -> u32 { return hp.batch * 2u * hp.d; }
fn o_s() -> u32 { return o_a() + hp.batch * hp.r; }
fn o_y() -> u32 { return o_s() + hp.batch * hp.r; }
fn o_dy() -> u32 { return o_y() + hp.batch * hp.d; }
fn o_da() -> u32 { return o_dy() + hp.batch * hp.d; }
fn o_loss() -> u32 { return o_da() + hp.batch * hp.r; }

// LM-head weight of hidden index k for token c.
fn w_out(k: u32, c: u32) -> f32 {
    let n = hp.vocab;
    if (FORMAT == 0u) {
        let q = unpack4xI8(wout[(k / 4u) * n + c])[k % 4u];
        let b = (k / 32u) * n + c;
        return f32(q) * wscale[b] + woffset[b];
    }
    return unpack2x16float(wout[(k / 2u) * n + c])[k % 2u];
}

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
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
        act[o_z() + row * 2u * d + k] = h[row * d + k] * ih;
        act[o_z() + row * 2u * d + d + k] = e[row * d + k] * ie;
    }
}

@compute @workgroup_size(64)
fn head_fc1(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let row = gid.y;
    if (j >= hp.r) {
        return;
    }
    var acc = params[o_b1() + j];
    let zb = o_z() + row * 2u * hp.d;
    for (var i = 0u; i < 2u * hp.d; i++) {
        acc += act[zb + i] * params[i * hp.r + j];
    }
    act[o_a() + row * hp.r + j] = acc;
    act[o_s() + row * hp.r + j] = silu(acc);
}

@compute @workgroup_size(64)
fn head_fc2(@builtin(global_invocation_id) gid: vec3<u32>) {
    let c = gid.x;
    let row = gid.y;
    if (c >= hp.d) {
        return;
    }
    var acc = act[o_z() + row * 2u * hp.d + c] + params[o_b2() + c];
    let sb = o_s() + row * hp.r;
    for (var j = 0u; j < hp.r; j++) {
        acc += act[sb + j] * params[o_w2() + j * hp.d + c];
    }
    act[o_y() + row * hp.d + c] = acc;
}

var<workgroup> grad_l: array<f32, 32>;

@compute @workgroup_size(64)
fn head_loss(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wid: vec3<u32>) {
    let row = wid.x;
    let d = hp.d;
    let yb = o_y() + row * d;
    var ss = 0.0;
    for (var k = lid; k < d; k += 64u) {
        ss += act[yb + k] * act[yb + k];
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
            logit += gamma[k] * act[yb + k] * iy * w_out(k, tok);
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
        for (var i = 0u; i < CANDS; i++) {
            if (red[i] > MASKED) {
                let logp = red[i] - mx - log(z);
                let t = target_p[row * CANDS + i];
                loss -= TOKEN_WEIGHT * t * logp;
                grad_l[i] = TOKEN_WEIGHT * (exp(logp) - t) * scale;
            } else {
                grad_l[i] = 0.0;
            }
        }
        act[o_loss() + row] = loss;
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
        let diff = act[yb + k] * iy - h_next[row * d + k] * it;
        reg_part += diff * diff;
        let gy = dx * gamma[k] + REG_WEIGHT * 2.0 * diff / f32(d) * scale;
        act[o_dy() + row * d + k] = gy;
        dot_part += gy * act[yb + k];
    }
    let dot_all = wg_sum(lid, dot_part);
    let reg_all = wg_sum(lid, reg_part);
    if (lid == 0u) {
        act[o_loss() + row] += REG_WEIGHT * reg_all / f32(d);
    }
    for (var k = lid; k < d; k += 64u) {
        let gy = act[o_dy() + row * d + k];
        act[o_dy() + row * d + k] = iy * gy - act[yb + k] * dot_all * iy * iy * iy / f32(d);
    }
}

@compute @workgroup_size(64)
fn head_bw_s(@builtin(global_invocation_id) gid: vec3<u32>) {
    let j = gid.x;
    let row = gid.y;
    if (j >= hp.r) {
        return;
    }
    var ds = 0.0;
    for (var c = 0u; c < hp.d; c++) {
        ds += params[o_w2() + j * hp.d + c] * act[o_dy() + row * hp.d + c];
    }
    let a = act[o_a() + row * hp.r + j];
    let sg = 1.0 / (1.0 + exp(-a));
    act[o_da() + row * hp.r + j] = ds * sg * (1.0 + a * (1.0 - sg));
}

fn adam(i: u32, g: f32) {
    let m = hp.beta1 * adam_m[i] + (1.0 - hp.beta1) * g;
    let v = hp.beta2 * adam_v[i] + (1.0 - hp.beta2) * g * g;
    adam_m[i] = m;
    adam_v[i] = v;
    let upd = (m / hp.bc1) / (sqrt(v / hp.bc2) + hp.adam_eps);
    params[i] -= hp.lr * (upd + hp.weight_decay * params[i]);
}

@compute @workgroup_size(64)
fn head_upd2(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let d = hp.d;
    let n = hp.r * d + d;
    for (var i = gid.x; i < n; i += nw.x * 64u) {
        var g = 0.0;
        if (i < hp.r * d) {
            let j = i / d;
            let c = i % d;
            for (var b = 0u; b < hp.batch; b++) {
                g += act[o_s() + b * hp.r + j] * act[o_dy() + b * d + c];
            }
        } else {
            let c = i - hp.r * d;
            for (var b = 0u; b < hp.batch; b++) {
                g += act[o_dy() + b * d + c];
            }
        }
        adam(o_w2() + i, g);
    }
}

@compute @workgroup_size(64)
fn head_upd1(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let r = hp.r;
    let n = 2u * hp.d * r + r;
    for (var i = gid.x; i < n; i += nw.x * 64u) {
        var g = 0.0;
        if (i < 2u * hp.d * r) {
            let k = i / r;
            let j = i % r;
            for (var b = 0u; b < hp.batch; b++) {
                g += act[o_z() + b * 2u * hp.d + k] * act[o_da() + b * r + j];
            }
        } else {
            let j = i - 2u * hp.d * r;
            for (var b = 0u; b < hp.batch; b++) {
                g += act[o_da() + b * r + j];
            }
        }
        adam(i, g);
    }
}

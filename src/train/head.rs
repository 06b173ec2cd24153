//! The draft head and its training step in plain Rust: the reference that the WGSL passes
//! (shaders/head.wgsl) are tested against, and the definition of what they compute.
//!
//! The head (EAGLE-style, MLP only): from the target's final hidden state `h` at position t
//! (before the final norm) and the embedding `e` of token t+1 it predicts the hidden state at
//! t+1, which the target's own final norm and frozen LM head turn into logits for token t+2:
//!
//!   z = [h / rms(h), e / rms(e)]            (2d)
//!   a = z W1 + b1,  s = silu(a)             (r)
//!   y = h / rms(h) + s W2 + b2              (d)  the predicted hidden state
//!   logits = LM_head(gamma * y / rms(y))
//!
//! Drafting deeper feeds `y` back as the next `h` with the drafted token's embedding.
//!
//! Training (EAGLE's two terms): regression of the normalised prediction onto the target's own
//! normalised hidden state at t+1 (`h_next`; it carries the target's whole next-token
//! distribution in d numbers, since the LM head is frozen), plus a token term: cross-entropy
//! between a target distribution `t` and the head's softmax over a candidate set S per sample
//! (the target's top tokens, the realised token, the head's own mistakes and sampled negatives),
//! a sampled softmax: the full vocabulary would cost one LM-head pass forward and one backward
//! per sample, most of a decode step on a small GPU. With `t` = a mix of the target's top-k
//! distribution and the realised token, the token term is forward KL to the target plus
//! cross-entropy on what was generated. Gradients are averaged over the batch and applied with
//! AdamW.

/// Candidate tokens per training sample.
pub const CANDIDATES: usize = 32;
/// Weights of the loss terms: hidden-state regression (mean squared error over d) and tokens.
pub const REG_WEIGHT: f32 = 1.0;
pub const TOKEN_WEIGHT: f32 = 1.0;
/// A candidate slot left empty.
pub const NO_TOKEN: u32 = u32::MAX;
const NORM_EPS: f32 = 1e-6;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HeadDims {
    /// The target's hidden size.
    pub d: usize,
    /// The head's inner width.
    pub r: usize,
}

impl HeadDims {
    pub fn w1(&self) -> std::ops::Range<usize> {
        0..2 * self.d * self.r
    }
    pub fn b1(&self) -> std::ops::Range<usize> {
        let s = self.w1().end;
        s..s + self.r
    }
    pub fn w2(&self) -> std::ops::Range<usize> {
        let s = self.b1().end;
        s..s + self.r * self.d
    }
    pub fn b2(&self) -> std::ops::Range<usize> {
        let s = self.w2().end;
        s..s + self.d
    }
    /// Parameters in all: w1 [2d][r], b1 [r], w2 [r][d], b2 [d], in that order in one vector.
    pub fn n_params(&self) -> usize {
        self.b2().end
    }
}

/// The frozen part of the target that the head's logits go through.
pub struct OutputHead<'a> {
    /// The final norm's weight (d).
    pub gamma: &'a [f32],
    pub eps: f32,
    /// LM-head weight of hidden index k for token c.
    pub weight: &'a dyn Fn(usize, usize) -> f32,
}

/// The intermediate values of one forward pass (kept for the backward pass).
#[derive(Debug, Clone)]
pub struct Forward {
    pub z: Vec<f32>,
    pub a: Vec<f32>,
    pub s: Vec<f32>,
    pub y: Vec<f32>,
}

/// One training example: hidden state at t, embedding of token t+1, and what token t+2 should be.
#[derive(Debug, Clone)]
pub struct Sample {
    pub h: Vec<f32>,
    pub e: Vec<f32>,
    /// The target's hidden state at t+1 (the regression target).
    pub h_next: Vec<f32>,
    /// Candidate token ids (NO_TOKEN: unused slot).
    pub cands: [u32; CANDIDATES],
    /// Target probability of each candidate (sums to 1 over used slots).
    pub target: [f32; CANDIDATES],
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

fn silu_grad(x: f32) -> f32 {
    let sg = 1.0 / (1.0 + (-x).exp());
    sg * (1.0 + x * (1.0 - sg))
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    1.0 / (ss + eps).sqrt()
}

pub fn forward(dims: HeadDims, p: &[f32], h: &[f32], e: &[f32]) -> Forward {
    let (d, r) = (dims.d, dims.r);
    let (ih, ie) = (inv_rms(h, NORM_EPS), inv_rms(e, NORM_EPS));
    let z: Vec<f32> = h.iter().map(|v| v * ih).chain(e.iter().map(|v| v * ie)).collect();
    let (w1, b1, w2, b2) = (&p[dims.w1()], &p[dims.b1()], &p[dims.w2()], &p[dims.b2()]);
    let a: Vec<f32> = (0..r).map(|j| b1[j] + (0..2 * d).map(|i| z[i] * w1[i * r + j]).sum::<f32>()).collect();
    let s: Vec<f32> = a.iter().map(|&v| silu(v)).collect();
    // the residual path carries the normalised hidden state (the final norm ignores scale, and
    // a unit-scale base lets the learned part matter from the first steps)
    let y: Vec<f32> = (0..d).map(|c| z[c] + b2[c] + (0..r).map(|j| s[j] * w2[j * d + c]).sum::<f32>()).collect();
    Forward { z, a, s, y }
}

/// Mean loss over the batch and its gradient with respect to every parameter.
pub fn loss_and_grad(dims: HeadDims, p: &[f32], batch: &[Sample], out: &OutputHead) -> (f32, Vec<f32>) {
    let (d, r) = (dims.d, dims.r);
    let mut grad = vec![0f32; dims.n_params()];
    let mut loss = 0.0;
    let scale = 1.0 / batch.len() as f32;
    for smp in batch {
        let f = forward(dims, p, &smp.h, &smp.e);
        // normed hidden and candidate logits
        let iy = inv_rms(&f.y, out.eps);
        let xn: Vec<f32> = (0..d).map(|k| out.gamma[k] * f.y[k] * iy).collect();
        let used: Vec<usize> = (0..CANDIDATES).filter(|&i| smp.cands[i] != NO_TOKEN).collect();
        let logits: Vec<f32> =
            used.iter().map(|&i| (0..d).map(|k| xn[k] * (out.weight)(k, smp.cands[i] as usize)).sum()).collect();
        let mx = logits.iter().cloned().fold(f32::MIN, f32::max);
        let z: f32 = logits.iter().map(|l| (l - mx).exp()).sum();
        let mut dxn = vec![0f32; d];
        // the target's mass (1, or 0 for samples that learn by regression alone)
        let mass: f32 = used.iter().map(|&i| smp.target[i]).sum();
        for (u, &i) in used.iter().enumerate() {
            let logp = logits[u] - mx - z.ln();
            loss -= TOKEN_WEIGHT * smp.target[i] * logp * scale;
            let g = TOKEN_WEIGHT * (logp.exp() * mass - smp.target[i]) * scale;
            for (k, dx) in dxn.iter_mut().enumerate() {
                *dx += g * (out.weight)(k, smp.cands[i] as usize);
            }
        }
        // gy = d loss / d u for u = y * iy: the token term through xn = gamma * u, and the
        // regression of u onto the normalised h_next
        let it = inv_rms(&smp.h_next, NORM_EPS);
        let mut gy = vec![0f32; d];
        for k in 0..d {
            let diff = f.y[k] * iy - smp.h_next[k] * it;
            loss += REG_WEIGHT * diff * diff / d as f32 * scale;
            gy[k] = dxn[k] * out.gamma[k] + REG_WEIGHT * 2.0 * diff / d as f32 * scale;
        }
        let dot: f32 = (0..d).map(|k| gy[k] * f.y[k]).sum();
        let dy: Vec<f32> = (0..d).map(|k| iy * gy[k] - f.y[k] * dot * iy * iy * iy / d as f32).collect();
        // back through the MLP
        let w2 = &p[dims.w2()];
        for c in 0..d {
            grad[dims.b2().start + c] += dy[c];
        }
        let mut da = vec![0f32; r];
        for j in 0..r {
            let mut ds = 0.0;
            for c in 0..d {
                grad[dims.w2().start + j * d + c] += f.s[j] * dy[c];
                ds += w2[j * d + c] * dy[c];
            }
            da[j] = ds * silu_grad(f.a[j]);
            grad[dims.b1().start + j] += da[j];
        }
        for i in 0..2 * d {
            for j in 0..r {
                grad[dims.w1().start + i * r + j] += f.z[i] * da[j];
            }
        }
    }
    (loss, grad)
}

/// AdamW settings.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct AdamW {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
}

impl Default for AdamW {
    fn default() -> Self {
        AdamW { lr: 2e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }
    }
}

/// One AdamW update; `step` counts from 1.
pub fn adamw(opt: &AdamW, p: &mut [f32], grad: &[f32], m: &mut [f32], v: &mut [f32], step: u32) {
    let bc1 = 1.0 - opt.beta1.powi(step as i32);
    let bc2 = 1.0 - opt.beta2.powi(step as i32);
    for i in 0..p.len() {
        m[i] = opt.beta1 * m[i] + (1.0 - opt.beta1) * grad[i];
        v[i] = opt.beta2 * v[i] + (1.0 - opt.beta2) * grad[i] * grad[i];
        let upd = (m[i] / bc1) / ((v[i] / bc2).sqrt() + opt.eps);
        p[i] -= opt.lr * (upd + opt.weight_decay * p[i]);
    }
}

/// A fresh head: a random first layer and a zero second one, so it starts as the identity on
/// the hidden state (the residual path) and learns the step to the next position. It drafts
/// nothing until its measured agreement with the target says it can (spec/head.rs).
pub fn init(dims: HeadDims, seed: u64) -> Vec<f32> {
    let mut p = vec![0f32; dims.n_params()];
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let s1 = (3.0 / (2 * dims.d) as f32).sqrt();
    for w in &mut p[dims.w1()] {
        *w = next() * s1;
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rig {
        dims: HeadDims,
        p: Vec<f32>,
        batch: Vec<Sample>,
        gamma: Vec<f32>,
        wout: Vec<f32>,
        vocab: usize,
    }

    fn rig() -> Rig {
        let dims = HeadDims { d: 8, r: 12 };
        let vocab = 40;
        let mut x = 12345u64;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let mut p = init(dims, 3);
        for v in p.iter_mut() {
            *v += 0.3 * rnd(); // away from the near-zero start, so every path carries gradient
        }
        let gamma: Vec<f32> = (0..dims.d).map(|_| 1.0 + 0.5 * rnd()).collect();
        let wout: Vec<f32> = (0..dims.d * vocab).map(|_| rnd()).collect();
        let batch = (0..4)
            .map(|b| {
                let mut cands = [NO_TOKEN; CANDIDATES];
                let mut target = [0f32; CANDIDATES];
                for i in 0..10 {
                    cands[i] = ((b * 7 + i * 3) % vocab) as u32;
                    // the teacher's top 4 and the realised token share the mass; the last
                    // sample learns by regression alone (a prompt row)
                    target[i] = if i <= 4 && b < 3 { 0.2 } else { 0.0 };
                }
                Sample {
                    h: (0..dims.d).map(|_| 2.0 * rnd()).collect(),
                    e: (0..dims.d).map(|_| 0.1 * rnd()).collect(),
                    h_next: (0..dims.d).map(|_| 3.0 * rnd()).collect(),
                    cands,
                    target,
                }
            })
            .collect();
        Rig { dims, p, batch, gamma, wout, vocab }
    }

    /// The loss of `loss_and_grad`, recomputed in f64 (for finite differences that are exact
    /// enough to hold the f32 analytic gradient to 1e-3).
    fn loss_f64(dims: HeadDims, p: &[f64], batch: &[Sample], gamma: &[f32], wout: &[f32], vocab: usize) -> f64 {
        let (d, r) = (dims.d, dims.r);
        let inv_rms = |x: &[f64], eps: f64| 1.0 / (x.iter().map(|v| v * v).sum::<f64>() / x.len() as f64 + eps).sqrt();
        let mut loss = 0.0;
        for smp in batch {
            let h: Vec<f64> = smp.h.iter().map(|&v| v as f64).collect();
            let e: Vec<f64> = smp.e.iter().map(|&v| v as f64).collect();
            let (ih, ie) = (inv_rms(&h, NORM_EPS as f64), inv_rms(&e, NORM_EPS as f64));
            let z: Vec<f64> = h.iter().map(|v| v * ih).chain(e.iter().map(|v| v * ie)).collect();
            let (w1, b1, w2, b2) = (&p[dims.w1()], &p[dims.b1()], &p[dims.w2()], &p[dims.b2()]);
            let s: Vec<f64> = (0..r)
                .map(|j| b1[j] + (0..2 * d).map(|i| z[i] * w1[i * r + j]).sum::<f64>())
                .map(|a| a / (1.0 + (-a).exp()))
                .collect();
            let y: Vec<f64> =
                (0..d).map(|c| z[c] + b2[c] + (0..r).map(|j| s[j] * w2[j * d + c]).sum::<f64>()).collect();
            let iy = inv_rms(&y, 1e-6);
            let used: Vec<usize> = (0..CANDIDATES).filter(|&i| smp.cands[i] != NO_TOKEN).collect();
            let logits: Vec<f64> = used
                .iter()
                .map(|&i| {
                    (0..d).map(|k| gamma[k] as f64 * y[k] * iy * wout[k * vocab + smp.cands[i] as usize] as f64).sum()
                })
                .collect();
            let lz = logits.iter().map(|l| l.exp()).sum::<f64>().ln();
            for (u, &i) in used.iter().enumerate() {
                loss -= TOKEN_WEIGHT as f64 * smp.target[i] as f64 * (logits[u] - lz);
            }
            let hn: Vec<f64> = smp.h_next.iter().map(|&v| v as f64).collect();
            let it = inv_rms(&hn, NORM_EPS as f64);
            loss += REG_WEIGHT as f64 * (0..d).map(|k| (y[k] * iy - hn[k] * it).powi(2)).sum::<f64>() / d as f64;
        }
        loss / batch.len() as f64
    }

    /// Every parameter block's analytic gradient (f32) agrees with central finite differences
    /// of the loss in f64 to a relative error of 1e-3.
    #[test]
    fn gradient_matches_finite_differences() {
        let r = rig();
        let weight = |k: usize, c: usize| r.wout[k * r.vocab + c];
        let out = OutputHead { gamma: &r.gamma, eps: 1e-6, weight: &weight };
        let (loss, grad) = loss_and_grad(r.dims, &r.p, &r.batch, &out);
        let d = r.dims;
        let p64: Vec<f64> = r.p.iter().map(|&v| v as f64).collect();
        let l64 = loss_f64(d, &p64, &r.batch, &r.gamma, &r.wout, r.vocab);
        assert!((l64 - loss as f64).abs() < 1e-5 * l64.abs(), "f64 loss {l64} vs f32 {loss}");
        let mut worst = 0f64;
        for i in 0..d.n_params() {
            let h = 1e-6;
            let mut pp = p64.clone();
            pp[i] += h;
            let lp = loss_f64(d, &pp, &r.batch, &r.gamma, &r.wout, r.vocab);
            pp[i] -= 2.0 * h;
            let lm = loss_f64(d, &pp, &r.batch, &r.gamma, &r.wout, r.vocab);
            let fd = (lp - lm) / (2.0 * h);
            let g = grad[i] as f64;
            let err = (fd - g).abs() / fd.abs().max(g.abs()).max(1e-4);
            worst = worst.max(err);
            assert!(err < 1e-3, "param {i}: analytic {g} vs finite difference {fd} (relative error {err:e})");
        }
        eprintln!("worst relative error over {} parameters: {worst:e}", d.n_params());
    }

    /// Training on a fixed batch drives the loss down (the update goes downhill).
    #[test]
    fn adamw_steps_reduce_the_loss() {
        let mut r = rig();
        let weight = |k: usize, c: usize| r.wout[k * r.vocab + c];
        let out = OutputHead { gamma: &r.gamma, eps: 1e-6, weight: &weight };
        let opt = AdamW { lr: 1e-2, ..Default::default() };
        let (mut m, mut v) = (vec![0f32; r.dims.n_params()], vec![0f32; r.dims.n_params()]);
        let (first, _) = loss_and_grad(r.dims, &r.p, &r.batch, &out);
        let mut last = first;
        for step in 1..=100 {
            let (l, g) = loss_and_grad(r.dims, &r.p, &r.batch, &out);
            last = l;
            adamw(&opt, &mut r.p, &g, &mut m, &mut v, step);
        }
        assert!(last < 0.8 * first, "loss {first} -> {last}");
    }
}

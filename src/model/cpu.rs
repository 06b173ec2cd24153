//! The CPU reference forward pass: plain f32 Rust, one token at a time, read top to bottom.
//! It uses exactly the weights the GPU uses (`Weights`), and is the ground truth that the GPU
//! kernels and the whole GPU forward are tested against.

use crate::model::config::{Config, RopeStyle};
use crate::model::weights::{Matrix, Weights};

/// A matrix expanded to f32 rows for fast reference matvecs.
struct Dense {
    k: usize,
    n: usize,
    w: Vec<f32>,
}

impl Dense {
    fn new(m: &Matrix) -> Dense {
        let mut w = vec![0f32; m.k * m.n];
        for (r, row) in w.chunks_exact_mut(m.k).enumerate() {
            m.row(r, row);
        }
        Dense { k: m.k, n: m.n, w }
    }

    /// y = W x, rows split over the available cores.
    fn matvec(&self, x: &[f32], y: &mut [f32]) {
        assert_eq!(x.len(), self.k);
        let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(8);
        let chunk = self.n.div_ceil(threads);
        std::thread::scope(|s| {
            for (ci, ys) in y[..self.n].chunks_mut(chunk).enumerate() {
                s.spawn(move || {
                    for (i, yv) in ys.iter_mut().enumerate() {
                        let r = ci * chunk + i;
                        *yv = dot(&self.w[r * self.k..(r + 1) * self.k], x);
                    }
                });
            }
        });
    }
}

pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

pub fn rmsnorm(x: &[f32], g: &[f32], eps: f32, out: &mut [f32]) {
    let ss = x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32;
    let inv = 1.0 / (ss + eps).sqrt();
    for i in 0..x.len() {
        out[i] = x[i] * inv * g[i];
    }
}

/// Rotates one head vector in place by the table entry for its position.
pub fn rope(x: &mut [f32], cos_sin: &[[f32; 2]], style: RopeStyle) {
    let half = x.len() / 2;
    for (i, [c, s]) in cos_sin.iter().enumerate().take(half) {
        let (a, b) = match style {
            RopeStyle::Interleaved => (2 * i, 2 * i + 1),
            RopeStyle::Neox => (i, i + half),
        };
        let (x0, x1) = (x[a], x[b]);
        x[a] = x0 * c - x1 * s;
        x[b] = x0 * s + x1 * c;
    }
}

pub fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// cos and sin of position * inv_freq for every position below `max_pos` ([pos][pair]).
pub fn rope_table(cfg: &Config, max_pos: usize) -> Vec<[f32; 2]> {
    let inv = cfg.rope_inv_freq();
    let mut t = Vec::with_capacity(max_pos * inv.len());
    for p in 0..max_pos {
        for &f in &inv {
            let a = p as f64 * f as f64;
            t.push([a.cos() as f32, a.sin() as f32]);
        }
    }
    t
}

struct DenseLayer {
    qkv: Dense,
    attn_out: Dense,
    gate_up: Dense,
    down: Dense,
}

pub struct CpuModel<'w> {
    pub cfg: Config,
    w: &'w Weights,
    layers: Vec<DenseLayer>,
    output: Dense,
    rope: Vec<[f32; 2]>,
    max_ctx: usize,
    /// Per layer: [pos][kv_dim] keys and values.
    k_cache: Vec<Vec<f32>>,
    v_cache: Vec<Vec<f32>>,
    pub n_past: usize,
}

impl<'w> CpuModel<'w> {
    pub fn new(cfg: &Config, w: &'w Weights, max_ctx: usize) -> CpuModel<'w> {
        let layers = w
            .layers
            .iter()
            .map(|l| DenseLayer {
                qkv: Dense::new(&l.qkv),
                attn_out: Dense::new(&l.attn_out),
                gate_up: Dense::new(&l.gate_up),
                down: Dense::new(&l.down),
            })
            .collect();
        CpuModel {
            cfg: cfg.clone(),
            w,
            layers,
            output: Dense::new(w.output()),
            rope: rope_table(cfg, max_ctx),
            max_ctx,
            k_cache: vec![Vec::new(); cfg.n_layers],
            v_cache: vec![Vec::new(); cfg.n_layers],
            n_past: 0,
        }
    }

    /// Runs one token at position `n_past` and returns the logits for the next token.
    pub fn step(&mut self, token: u32) -> Vec<f32> {
        let c = &self.cfg;
        let (d, hd, qd, kvd) = (c.dim, c.head_dim, c.q_dim(), c.kv_dim());
        let pos = self.n_past;
        assert!(pos < self.max_ctx, "context full");
        let mut x = vec![0f32; d];
        self.w.embed.row(token as usize, &mut x);
        let mut xn = vec![0f32; d];
        let mut qkv = vec![0f32; qd + 2 * kvd];
        let mut att = vec![0f32; qd];
        let mut tmp = vec![0f32; d];
        let mut gu = vec![0f32; 2 * c.ffn_dim];
        let mut hidden = vec![0f32; c.ffn_dim];
        let cs = &self.rope[pos * hd / 2..(pos + 1) * hd / 2];
        let group = c.n_heads / c.n_kv_heads;
        for (li, (l, dl)) in self.w.layers.iter().zip(&self.layers).enumerate() {
            // attention
            rmsnorm(&x, &l.attn_norm, c.rms_eps, &mut xn);
            dl.qkv.matvec(&xn, &mut qkv);
            if let Some(b) = &l.qkv_bias {
                qkv.iter_mut().zip(b).for_each(|(v, b)| *v += b);
            }
            for h in 0..c.n_heads + c.n_kv_heads {
                rope(&mut qkv[h * hd..(h + 1) * hd], cs, c.rope);
            }
            self.k_cache[li].extend_from_slice(&qkv[qd..qd + kvd]);
            self.v_cache[li].extend_from_slice(&qkv[qd + kvd..]);
            let (kc, vc) = (&self.k_cache[li], &self.v_cache[li]);
            let scale = 1.0 / (hd as f32).sqrt();
            for h in 0..c.n_heads {
                let q = &qkv[h * hd..(h + 1) * hd];
                let kvh = h / group;
                let scores: Vec<f32> =
                    (0..=pos).map(|t| dot(q, &kc[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd]) * scale).collect();
                let mx = scores.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = scores.iter().map(|s| (s - mx).exp()).collect();
                let sum: f32 = e.iter().sum();
                let o = &mut att[h * hd..(h + 1) * hd];
                o.fill(0.0);
                for (t, p) in e.iter().enumerate() {
                    let v = &vc[t * kvd + kvh * hd..t * kvd + (kvh + 1) * hd];
                    for i in 0..hd {
                        o[i] += p / sum * v[i];
                    }
                }
            }
            dl.attn_out.matvec(&att, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
            // feed-forward (SwiGLU); gate_up is interleaved in groups of 4
            rmsnorm(&x, &l.ffn_norm, c.rms_eps, &mut xn);
            dl.gate_up.matvec(&xn, &mut gu);
            for (i, h) in hidden.iter_mut().enumerate() {
                let (g, u) = (gu[(i / 4) * 8 + i % 4], gu[(i / 4) * 8 + 4 + i % 4]);
                *h = silu(g) * u;
            }
            dl.down.matvec(&hidden, &mut tmp);
            x.iter_mut().zip(&tmp).for_each(|(a, b)| *a += b);
        }
        rmsnorm(&x, &self.w.out_norm, c.rms_eps, &mut xn);
        let mut logits = vec![0f32; c.vocab];
        self.output.matvec(&xn, &mut logits);
        self.n_past += 1;
        logits
    }

    /// Greedy continuation: feeds `prompt`, then generates `n` tokens by argmax. Returns the
    /// generated tokens and the logits that chose each of them.
    pub fn greedy(&mut self, prompt: &[u32], n: usize) -> (Vec<u32>, Vec<Vec<f32>>) {
        let mut logits = Vec::new();
        for &t in prompt {
            logits = self.step(t);
        }
        let (mut out, mut all) = (Vec::new(), Vec::new());
        for i in 0..n {
            let t = argmax(&logits);
            out.push(t);
            all.push(std::mem::take(&mut logits));
            if i + 1 < n {
                logits = self.step(t);
            }
        }
        (out, all)
    }
}

/// Index of the largest value; the lowest index wins ties.
pub fn argmax(x: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in x.iter().enumerate() {
        if v > x[best] {
            best = i;
        }
    }
    best as u32
}

//! Model weights as augur keeps them: every projection matrix in one of two formats that the GPU
//! kernels read directly, and everything else (norms, biases) as f32.
//!
//! * `Q8`: 8-bit values in blocks of 32 along K, each block with an f32 scale and offset
//!   (x = scale * q + offset). Q4_0, Q4_1, Q5_0, Q8_0 and Q4_K convert to it exactly.
//! * `F16`: everything else (F32, F16, BF16, Q6_K), and fused matrices whose parts differ.
//!
//! Matrices are held here output-row-major ([N][K], like the file); `gpu::upload` lays them out
//! K-major for the kernels. The CPU reference reads exactly these values, so GPU and CPU compute
//! with identical weights.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::gguf::{Gguf, TensorInfo};
use crate::model::quant::{GgmlType, block_as_q8, dequantize};
use half::f16;

#[derive(Debug, Clone)]
pub enum MatData {
    /// q: [N][K] i8; scale, offset: [N][K/32].
    Q8 { q: Vec<i8>, scale: Vec<f32>, offset: Vec<f32> },
    /// [N][K] f16.
    F16(Vec<f16>),
}

/// A weight matrix y = W x with `k` inputs and `n` outputs.
#[derive(Debug, Clone)]
pub struct Matrix {
    pub k: usize,
    pub n: usize,
    pub data: MatData,
}

impl Matrix {
    pub fn from_tensor(g: &Gguf, t: &TensorInfo) -> Result<Matrix> {
        if t.dims.len() != 2 {
            return Err(Error::msg(format!("{}: tensor {} should be a matrix", g.path, t.name)));
        }
        let (k, n) = (t.dims[0] as usize, t.dims[1] as usize);
        let bytes = g.tensor_bytes(t);
        if k % 32 != 0 {
            return Err(Error::msg(format!("{}: tensor {} has {k} columns, not a multiple of 32", g.path, t.name)));
        }
        let q8able = matches!(t.ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 | GgmlType::Q4_K);
        if q8able {
            let bb = t.ty.block_bytes();
            let subs = t.ty.block_len() / 32;
            let mut q = vec![0i8; k * n];
            let mut scale = vec![0f32; k / 32 * n];
            let mut offset = vec![0f32; k / 32 * n];
            for (bi, block) in bytes.chunks_exact(bb).enumerate() {
                for s in 0..subs {
                    let (vals, sc, off) = block_as_q8(t.ty, block, s).expect("q8able");
                    let b32 = bi * subs + s; // index of the 32-block in [N][K/32]
                    q[b32 * 32..b32 * 32 + 32].copy_from_slice(&vals);
                    scale[b32] = sc;
                    offset[b32] = off;
                }
            }
            Ok(Matrix { k, n, data: MatData::Q8 { q, scale, offset } })
        } else {
            let mut f = vec![0f32; k * n];
            dequantize(t.ty, bytes, &mut f);
            Ok(Matrix { k, n, data: MatData::F16(f.iter().map(|&v| f16::from_f32(v)).collect()) })
        }
    }

    pub fn is_q8(&self) -> bool {
        matches!(self.data, MatData::Q8 { .. })
    }

    /// Output row `r` (all K weights of output r) as f32.
    pub fn row(&self, r: usize, out: &mut [f32]) {
        let k = self.k;
        match &self.data {
            MatData::Q8 { q, scale, offset } => {
                for b in 0..k / 32 {
                    let (s, o) = (scale[r * k / 32 + b], offset[r * k / 32 + b]);
                    for j in 0..32 {
                        out[b * 32 + j] = s * q[r * k + b * 32 + j] as f32 + o;
                    }
                }
            }
            MatData::F16(w) => {
                for (o, v) in out.iter_mut().zip(&w[r * k..(r + 1) * k]) {
                    *o = v.to_f32();
                }
            }
        }
    }

    fn to_f16(&self) -> Vec<f16> {
        match &self.data {
            MatData::F16(w) => w.clone(),
            MatData::Q8 { .. } => {
                let mut w = Vec::with_capacity(self.k * self.n);
                let mut row = vec![0f32; self.k];
                for r in 0..self.n {
                    self.row(r, &mut row);
                    w.extend(row.iter().map(|&v| f16::from_f32(v)));
                }
                w
            }
        }
    }

    /// Output rows `rows` of this matrix, in that order, as a new matrix.
    fn select_rows(&self, rows: &[usize]) -> Matrix {
        let k = self.k;
        let data = match &self.data {
            MatData::Q8 { q, scale, offset } => {
                let mut nq = Vec::with_capacity(rows.len() * k);
                let mut ns = Vec::with_capacity(rows.len() * k / 32);
                let mut no = Vec::with_capacity(rows.len() * k / 32);
                for &r in rows {
                    nq.extend_from_slice(&q[r * k..(r + 1) * k]);
                    ns.extend_from_slice(&scale[r * k / 32..(r + 1) * k / 32]);
                    no.extend_from_slice(&offset[r * k / 32..(r + 1) * k / 32]);
                }
                MatData::Q8 { q: nq, scale: ns, offset: no }
            }
            MatData::F16(w) => MatData::F16(rows.iter().flat_map(|&r| w[r * k..(r + 1) * k].iter().copied()).collect()),
        };
        Matrix { k, n: rows.len(), data }
    }

    /// Stacks the outputs of several matrices with the same K into one (fused projections).
    /// Stays Q8 when every part is Q8, else becomes F16.
    pub fn concat(parts: &[&Matrix]) -> Matrix {
        let k = parts[0].k;
        assert!(parts.iter().all(|p| p.k == k));
        let n = parts.iter().map(|p| p.n).sum();
        let data = if parts.iter().all(|p| p.is_q8()) {
            let (mut q, mut s, mut o) = (Vec::new(), Vec::new(), Vec::new());
            for p in parts {
                if let MatData::Q8 { q: pq, scale, offset } = &p.data {
                    q.extend_from_slice(pq);
                    s.extend_from_slice(scale);
                    o.extend_from_slice(offset);
                }
            }
            MatData::Q8 { q, scale: s, offset: o }
        } else {
            MatData::F16(parts.iter().flat_map(|p| p.to_f16()).collect())
        };
        Matrix { k, n, data }
    }

    /// Gate and up projections fused for the SwiGLU kernel: output groups of 4 alternate
    /// gate[4g..4g+4], up[4g..4g+4], so that one invocation holds both halves of its outputs.
    pub fn gate_up(gate: &Matrix, up: &Matrix) -> Matrix {
        let both = Matrix::concat(&[gate, up]);
        let f = gate.n;
        let order: Vec<usize> = (0..f / 4).flat_map(|g| (4 * g..4 * g + 4).chain(f + 4 * g..f + 4 * g + 4)).collect();
        both.select_rows(&order)
    }
}

/// One transformer block's weights.
pub struct Layer {
    pub attn_norm: Vec<f32>,
    /// Q, K and V projections stacked: outputs [q_dim | kv_dim | kv_dim].
    pub qkv: Matrix,
    pub qkv_bias: Option<Vec<f32>>,
    pub attn_out: Matrix,
    pub ffn_norm: Vec<f32>,
    /// Gate and up, interleaved in groups of 4 (see `Matrix::gate_up`).
    pub gate_up: Matrix,
    pub down: Matrix,
}

pub struct Weights {
    /// Token embedding as a [vocab][dim] matrix (row t is token t's embedding).
    pub embed: Matrix,
    pub layers: Vec<Layer>,
    pub out_norm: Vec<f32>,
    /// Output projection; None when tied to `embed`.
    pub output: Option<Matrix>,
}

fn vector(g: &Gguf, name: &str, len: usize) -> Result<Vec<f32>> {
    let t = g.tensor(name).ok_or_else(|| Error::msg(format!("{}: tensor {name} is missing", g.path)))?;
    if t.n_elements() != len as u64 {
        return Err(Error::msg(format!("{}: tensor {name} has {} values, expected {len}", g.path, t.n_elements())));
    }
    let mut v = vec![0f32; len];
    dequantize(t.ty, g.tensor_bytes(t), &mut v);
    Ok(v)
}

fn matrix(g: &Gguf, name: &str, k: usize, n: usize) -> Result<Matrix> {
    let t = g.tensor(name).ok_or_else(|| Error::msg(format!("{}: tensor {name} is missing", g.path)))?;
    if t.dims.len() != 2 || t.dims[0] != k as u64 || t.dims[1] != n as u64 {
        return Err(Error::msg(format!("{}: tensor {name} has shape {:?}, expected [{k}, {n}]", g.path, t.dims)));
    }
    Matrix::from_tensor(g, t)
}

impl Weights {
    pub fn from_gguf(g: &Gguf, c: &Config) -> Result<Weights> {
        let embed = matrix(g, "token_embd.weight", c.dim, c.vocab)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let p = |s: &str| format!("blk.{i}.{s}");
            let q = matrix(g, &p("attn_q.weight"), c.dim, c.q_dim())?;
            let k = matrix(g, &p("attn_k.weight"), c.dim, c.kv_dim())?;
            let v = matrix(g, &p("attn_v.weight"), c.dim, c.kv_dim())?;
            let qkv_bias = if c.qkv_bias {
                let mut b = vector(g, &p("attn_q.bias"), c.q_dim())?;
                b.extend(vector(g, &p("attn_k.bias"), c.kv_dim())?);
                b.extend(vector(g, &p("attn_v.bias"), c.kv_dim())?);
                Some(b)
            } else {
                None
            };
            let gate = matrix(g, &p("ffn_gate.weight"), c.dim, c.ffn_dim)?;
            let up = matrix(g, &p("ffn_up.weight"), c.dim, c.ffn_dim)?;
            layers.push(Layer {
                attn_norm: vector(g, &p("attn_norm.weight"), c.dim)?,
                qkv: Matrix::concat(&[&q, &k, &v]),
                qkv_bias,
                attn_out: matrix(g, &p("attn_output.weight"), c.q_dim(), c.dim)?,
                ffn_norm: vector(g, &p("ffn_norm.weight"), c.dim)?,
                gate_up: Matrix::gate_up(&gate, &up),
                down: matrix(g, &p("ffn_down.weight"), c.ffn_dim, c.dim)?,
            });
        }
        let output = if c.tied_output { None } else { Some(matrix(g, "output.weight", c.dim, c.vocab)?) };
        Ok(Weights { embed, layers, out_norm: vector(g, "output_norm.weight", c.dim)?, output })
    }

    pub fn output(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }
}

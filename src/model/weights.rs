//! Model weights as augur keeps them: every projection matrix in one of three formats that the GPU
//! kernels read directly, and everything else (norms, biases) as f32.
//!
//! * `Q8`: 8-bit values in blocks of 32 along K, each block with an f32 scale and offset
//!   (x = scale * q + offset). Q4_0, Q4_1, Q5_0, Q8_0 and Q4_K convert to it exactly; the 4-bit
//!   types keep their values in 0..15, and the GPU stores such matrices in 4 bits (`Q4`).
//! * `Q8x16`: 8-bit values with an f32 scale per block of 16 along K and no offset: Q6_K exactly.
//! * `F16`: everything else (F32, F16, BF16), and fused matrices whose parts differ.
//!
//! Matrices are held here output-row-major ([N][K], like the file); `GpuMatrix::upload` lays
//! them out column-group-major for the kernels. The CPU reference reads exactly these values, so
//! GPU and CPU compute with identical weights.

use crate::error::{Error, Result};
use crate::model::config::Config;
use crate::model::gguf::{Gguf, TensorInfo};
use crate::model::quant::{GgmlType, block_as_q8, dequantize, q6k_as_q8x16};
use half::f16;

#[derive(Debug, Clone)]
pub enum MatData {
    /// q: [N][K] i8; scale, offset: [N][K/32].
    Q8 { q: Vec<i8>, scale: Vec<f32>, offset: Vec<f32> },
    /// q: [N][K] i8; scale: [N][K/16].
    Q8x16 { q: Vec<i8>, scale: Vec<f32> },
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
        } else if t.ty == GgmlType::Q6_K {
            let mut q = vec![0i8; k * n];
            let mut scale = vec![0f32; k / 16 * n];
            for (bi, block) in bytes.chunks_exact(t.ty.block_bytes()).enumerate() {
                let (vals, sc) = q6k_as_q8x16(block);
                q[bi * 256..bi * 256 + 256].copy_from_slice(&vals);
                scale[bi * 16..bi * 16 + 16].copy_from_slice(&sc);
            }
            Ok(Matrix { k, n, data: MatData::Q8x16 { q, scale } })
        } else {
            let mut f = vec![0f32; k * n];
            dequantize(t.ty, bytes, &mut f);
            Ok(Matrix { k, n, data: MatData::F16(f.iter().map(|&v| f16::from_f32(v)).collect()) })
        }
    }

    /// The same matrix with its outputs reordered: output i of the result is output `order[i]`
    /// of this one.
    pub fn select_outputs(&self, order: &[usize]) -> Matrix {
        assert_eq!(order.len(), self.n, "a reordering names every output once");
        fn pick<T: Copy>(v: &[T], per: usize, order: &[usize]) -> Vec<T> {
            order.iter().flat_map(|&o| v[o * per..(o + 1) * per].iter().copied()).collect()
        }
        let k = self.k;
        let data = match &self.data {
            MatData::Q8 { q, scale, offset } => MatData::Q8 {
                q: pick(q, k, order),
                scale: pick(scale, k / 32, order),
                offset: pick(offset, k / 32, order),
            },
            MatData::Q8x16 { q, scale } => MatData::Q8x16 { q: pick(q, k, order), scale: pick(scale, k / 16, order) },
            MatData::F16(w) => MatData::F16(pick(w, k, order)),
        };
        Matrix { k, n: self.n, data }
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
            MatData::Q8x16 { q, scale } => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = scale[(r * k + i) / 16] * q[r * k + i] as f32;
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
            MatData::Q8 { .. } | MatData::Q8x16 { .. } => {
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
            MatData::Q8x16 { q, scale } => MatData::Q8x16 {
                q: rows.iter().flat_map(|&r| q[r * k..(r + 1) * k].iter().copied()).collect(),
                scale: rows.iter().flat_map(|&r| scale[r * k / 16..(r + 1) * k / 16].iter().copied()).collect(),
            },
            MatData::F16(w) => MatData::F16(rows.iter().flat_map(|&r| w[r * k..(r + 1) * k].iter().copied()).collect()),
        };
        Matrix { k, n: rows.len(), data }
    }

    /// Stacks the outputs of several matrices with the same K into one (fused projections).
    /// Stays Q8 (or Q8x16) when every part is, else becomes F16.
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
        } else if parts.iter().all(|p| matches!(p.data, MatData::Q8x16 { .. })) {
            let (mut q, mut s) = (Vec::new(), Vec::new());
            for p in parts {
                if let MatData::Q8x16 { q: pq, scale } = &p.data {
                    q.extend_from_slice(pq);
                    s.extend_from_slice(scale);
                }
            }
            MatData::Q8x16 { q, scale: s }
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

/// Where weights come from: a GGUF file or a safetensors folder. Names are the file's own;
/// `TensorNames` maps the roles to them.
pub trait TensorSource {
    /// Where the tensors come from (for messages).
    fn origin(&self) -> &str;
    /// A matrix with `k` inputs and `n` outputs.
    fn matrix(&self, name: &str, k: usize, n: usize) -> Result<Matrix>;
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>>;
    fn has(&self, name: &str) -> bool;
}

/// Tensor names for one file convention.
pub struct TensorNames {
    pub embed: &'static str,
    pub output: &'static str,
    pub out_norm: &'static str,
    /// Per layer, with `{}` for the layer index: q, k, v, o, q bias, k bias, v bias, attn norm,
    /// ffn norm, gate, up, down.
    pub layer: [&'static str; 12],
}

pub const GGUF_NAMES: TensorNames = TensorNames {
    embed: "token_embd.weight",
    output: "output.weight",
    out_norm: "output_norm.weight",
    layer: [
        "blk.{}.attn_q.weight",
        "blk.{}.attn_k.weight",
        "blk.{}.attn_v.weight",
        "blk.{}.attn_output.weight",
        "blk.{}.attn_q.bias",
        "blk.{}.attn_k.bias",
        "blk.{}.attn_v.bias",
        "blk.{}.attn_norm.weight",
        "blk.{}.ffn_norm.weight",
        "blk.{}.ffn_gate.weight",
        "blk.{}.ffn_up.weight",
        "blk.{}.ffn_down.weight",
    ],
};

/// Hugging Face transformers names (llama, qwen2).
pub const HF_NAMES: TensorNames = TensorNames {
    embed: "model.embed_tokens.weight",
    output: "lm_head.weight",
    out_norm: "model.norm.weight",
    layer: [
        "model.layers.{}.self_attn.q_proj.weight",
        "model.layers.{}.self_attn.k_proj.weight",
        "model.layers.{}.self_attn.v_proj.weight",
        "model.layers.{}.self_attn.o_proj.weight",
        "model.layers.{}.self_attn.q_proj.bias",
        "model.layers.{}.self_attn.k_proj.bias",
        "model.layers.{}.self_attn.v_proj.bias",
        "model.layers.{}.input_layernorm.weight",
        "model.layers.{}.post_attention_layernorm.weight",
        "model.layers.{}.mlp.gate_proj.weight",
        "model.layers.{}.mlp.up_proj.weight",
        "model.layers.{}.mlp.down_proj.weight",
    ],
};

impl TensorSource for Gguf {
    fn origin(&self) -> &str {
        &self.path
    }
    fn matrix(&self, name: &str, k: usize, n: usize) -> Result<Matrix> {
        let t = self.tensor(name).ok_or_else(|| Error::msg(format!("{}: tensor {name} is missing", self.path)))?;
        if t.dims.len() != 2 || t.dims[0] != k as u64 || t.dims[1] != n as u64 {
            return Err(Error::msg(format!(
                "{}: tensor {name} has shape {:?}, expected [{k}, {n}]",
                self.path, t.dims
            )));
        }
        Matrix::from_tensor(self, t)
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let t = self.tensor(name).ok_or_else(|| Error::msg(format!("{}: tensor {name} is missing", self.path)))?;
        if t.n_elements() != len as u64 {
            return Err(Error::msg(format!(
                "{}: tensor {name} has {} values, expected {len}",
                self.path,
                t.n_elements()
            )));
        }
        let mut v = vec![0f32; len];
        dequantize(t.ty, self.tensor_bytes(t), &mut v);
        Ok(v)
    }
    fn has(&self, name: &str) -> bool {
        self.tensor(name).is_some()
    }
}

impl Weights {
    /// Reads every tensor the transformer needs from `src` and fuses QKV and gate/up.
    pub fn load(src: &dyn TensorSource, names: &TensorNames, c: &Config) -> Result<Weights> {
        let embed = src.matrix(names.embed, c.dim, c.vocab)?;
        let mut layers = Vec::with_capacity(c.n_layers);
        for i in 0..c.n_layers {
            let n: Vec<String> = names.layer.iter().map(|t| t.replace("{}", &i.to_string())).collect();
            let q = src.matrix(&n[0], c.dim, c.q_dim())?;
            let k = src.matrix(&n[1], c.dim, c.kv_dim())?;
            let v = src.matrix(&n[2], c.dim, c.kv_dim())?;
            let qkv_bias = if c.qkv_bias {
                let mut b = src.vector(&n[4], c.q_dim())?;
                b.extend(src.vector(&n[5], c.kv_dim())?);
                b.extend(src.vector(&n[6], c.kv_dim())?);
                Some(b)
            } else {
                None
            };
            let gate = src.matrix(&n[9], c.dim, c.ffn_dim)?;
            let up = src.matrix(&n[10], c.dim, c.ffn_dim)?;
            layers.push(Layer {
                attn_norm: src.vector(&n[7], c.dim)?,
                qkv: Matrix::concat(&[&q, &k, &v]),
                qkv_bias,
                attn_out: src.matrix(&n[3], c.q_dim(), c.dim)?,
                ffn_norm: src.vector(&n[8], c.dim)?,
                gate_up: Matrix::gate_up(&gate, &up),
                down: src.matrix(&n[11], c.ffn_dim, c.dim)?,
            });
        }
        let output = if c.tied_output { None } else { Some(src.matrix(names.output, c.dim, c.vocab)?) };
        Ok(Weights { embed, layers, out_norm: src.vector(names.out_norm, c.dim)?, output })
    }

    pub fn output(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }
}

//! A weight matrix on the GPU in matmul.wgsl's layouts: column groups of 4 running down K, split
//! by columns where one storage binding cannot hold it.

use crate::gpu::Gpu;
use crate::gpu::kernels::*;
use crate::model::weights::{MatData, Matrix};

/// Uploads columns `cols` of a matrix in the column-group-major layout of matmul.wgsl: groups of
/// 4 columns one after the other, each running down K, the 4 columns' words side by side, with
/// `words` words a column; `word(c, w)` is word w of column c. (`cols` holds a multiple of 4.)
fn upload_col_major(
    gpu: &Gpu,
    label: &str,
    cols: std::ops::Range<usize>,
    words: usize,
    word: impl Fn(usize, usize) -> u32,
) -> wgpu::Buffer {
    let c0 = cols.start;
    gpu.storage_from_chunks(label, words * cols.len(), 4 * words, |g, out| {
        for (w, four) in out.chunks_exact_mut(4).enumerate() {
            for (i, o) in four.iter_mut().enumerate() {
                *o = word(c0 + 4 * g + i, w);
            }
        }
    })
}

/// Word `kw` of column `c` of an [N][K] matrix of small integers: `per` values along K, `bits`
/// bits each.
fn packed_word(q: &[i8], k: usize, c: usize, kw: usize, per: usize, bits: usize) -> u32 {
    let mask = (1u32 << bits) - 1;
    let vals = &q[c * k + per * kw..c * k + per * kw + per];
    vals.iter().enumerate().fold(0, |acc, (i, &v)| acc | ((v as u8 as u32 & mask) << (bits * i)))
}

/// One column range of a matrix, small enough for one storage binding.
#[derive(Clone)]
pub(super) struct MatPart {
    pub(super) w: wgpu::Buffer,
    pub(super) scale: wgpu::Buffer,
    pub(super) offset: wgpu::Buffer,
    pub(super) n: usize,
    pub(super) n_base: usize,
}

#[derive(Clone)]
pub struct GpuMatrix {
    pub(super) k: usize,
    /// How the buffers hold the weights.
    pub(super) format: Format,
    /// A Q8 matrix whose offsets are all zero: the matmul may skip them (`Format::Q8Sym`).
    pub(super) zero_offsets: bool,
    pub(super) parts: Vec<MatPart>,
}

impl GpuMatrix {
    /// Lays a matrix out column-group-major (see matmul.wgsl) and uploads it, split by columns so that no
    /// binding exceeds the device limit. 8-bit matrices whose values all fit in 4 bits (those
    /// from Q4_0, Q4_1 and Q4_K) go up as Q4, with their scales and offsets as f16 pairs where
    /// every one is an f16 value (Q4_0 and Q4_1's are; `Format::Q4Half`).
    pub fn upload(gpu: &Gpu, m: &Matrix, label: &str) -> GpuMatrix {
        Self::upload_as(gpu, m, label, Self::best_format(m))
    }

    /// Uploads in Q8, Q8x16 or F16: for the matrices that the embedding, draft-head and replay
    /// kernels read as well as the matmul (the embedding and the LM head).
    pub fn upload_wide(gpu: &Gpu, m: &Matrix, label: &str) -> GpuMatrix {
        let f = match Self::best_format(m) {
            f if f.matmul_only() => Format::Q8,
            f => f,
        };
        Self::upload_as(gpu, m, label, f)
    }

    /// The format with the fewest loads per weight that holds `m` exactly.
    pub fn best_format(m: &Matrix) -> Format {
        match &m.data {
            MatData::Q8 { q, scale, offset } if q.iter().all(|&v| (0..16).contains(&v)) => {
                let half = |v: &f32| v.is_finite() && half::f16::from_f32(*v).to_f32() == *v;
                if scale.iter().all(half) && offset.iter().all(half) { Format::Q4Half } else { Format::Q4 }
            }
            MatData::Q8 { offset, .. } if offset.iter().all(|&o| o == 0.0) => Format::Q8Sym,
            MatData::Q8 { .. } => Format::Q8,
            MatData::Q8x16 { .. } => Format::Q8x16,
            MatData::F16(_) => Format::F16,
        }
    }

    fn upload_as(gpu: &Gpu, m: &Matrix, label: &str, format: Format) -> GpuMatrix {
        let (k, n) = (m.k, m.n);
        let bytes_per_col = match format {
            Format::Q4 | Format::Q4Half => k as u64 / 2,
            Format::Q8 | Format::Q8x16 | Format::Q8Sym => k as u64,
            Format::F16 => 2 * k as u64,
        };
        let max_cols = ((gpu.max_binding / bytes_per_col) as usize / 64 * 64).max(8);
        let mut parts = Vec::new();
        let mut n_base = 0;
        while n_base < n {
            let pn = (n - n_base).min(max_cols);
            let cols = n_base..n_base + pn;
            // laid out straight into the buffers
            let words = |q: &[i8], per: usize, bits: usize| {
                upload_col_major(gpu, label, cols.clone(), k / per, |c, kw| packed_word(q, k, c, kw, per, bits))
            };
            let blocks = |v: &[f32], block: usize| {
                let per_col = k / block;
                upload_col_major(gpu, label, cols.clone(), per_col, |c, b| v[c * per_col + b].to_bits())
            };
            let none = || gpu.storage(label, &[0u32; 4]);
            let (w, scale, offset) = match &m.data {
                MatData::Q8 { q, scale, offset } if format == Format::Q4Half => {
                    // each column's (scale, offset) as an f16 pair in one word (matmul_io.wgsl)
                    let per_col = k / 32;
                    let pairs = upload_col_major(gpu, label, cols.clone(), per_col, |c, b| {
                        let h = |v: f32| half::f16::from_f32(v).to_bits() as u32;
                        h(scale[c * per_col + b]) | h(offset[c * per_col + b]) << 16
                    });
                    (words(q, 8, 4), pairs, none())
                }
                MatData::Q8 { q, scale, offset } => {
                    let (per, bits) = if format == Format::Q4 { (8, 4) } else { (4, 8) };
                    let o = if format == Format::Q8Sym { none() } else { blocks(offset, 32) };
                    (words(q, per, bits), blocks(scale, 32), o)
                }
                MatData::Q8x16 { q, scale } => (words(q, 4, 8), blocks(scale, 16), none()),
                MatData::F16(h) => {
                    let w = upload_col_major(gpu, label, cols.clone(), k / 2, |c, kp| {
                        h[c * k + 2 * kp].to_bits() as u32 | (h[c * k + 2 * kp + 1].to_bits() as u32) << 16
                    });
                    (w, none(), none())
                }
            };
            parts.push(MatPart { w, scale, offset, n: pn, n_base });
            n_base += pn;
        }
        let zero_offsets = matches!(&m.data, MatData::Q8 { offset, .. } if offset.iter().all(|&o| o == 0.0));
        GpuMatrix { k, format, zero_offsets, parts }
    }

    /// How the buffers hold the weights (what the embedding, head and replay kernels read).
    pub fn format(&self) -> Format {
        self.format
    }

    /// The matmul kernel for this matrix: a wide Q8 matrix without offsets (Qwen's Q8_0 LM head)
    /// skips them too.
    pub(super) fn matmul_format(&self) -> Format {
        if self.format == Format::Q8 && self.zero_offsets { Format::Q8Sym } else { self.format }
    }

    /// The weights, scales and offsets when the matrix fits one binding (None when split).
    pub fn single_part(&self) -> Option<[&wgpu::Buffer; 3]> {
        match self.parts.as_slice() {
            [p] => Some([&p.w, &p.scale, &p.offset]),
            _ => None,
        }
    }
}

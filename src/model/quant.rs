//! ggml tensor types and their dequantisation to f32, following the block layouts that
//! llama.cpp defines (ggml-common.h / ggml-quants.c). This is the CPU ground truth; the GPU keeps
//! weights in its own layouts (see `weights.rs`) built from these values.

use half::{bf16, f16};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    Q4_K,
    Q6_K,
}

impl GgmlType {
    pub fn from_id(id: u32) -> Option<GgmlType> {
        Some(match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            6 => GgmlType::Q5_0,
            8 => GgmlType::Q8_0,
            12 => GgmlType::Q4_K,
            14 => GgmlType::Q6_K,
            30 => GgmlType::BF16,
            _ => return None,
        })
    }

    /// Elements per block.
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q8_0 => 32,
            GgmlType::Q4_K | GgmlType::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q8_0 => 34,
            GgmlType::Q4_K => 144,
            GgmlType::Q6_K => 210,
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Dequantises `bytes` (a whole number of blocks of `ty`) into `out` (block_len floats per block).
pub fn dequantize(ty: GgmlType, bytes: &[u8], out: &mut [f32]) {
    let bl = ty.block_len();
    let bb = ty.block_bytes();
    assert_eq!(bytes.len() / bb * bl, out.len(), "dequantize: size mismatch");
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        match ty {
            GgmlType::F32 => y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            GgmlType::F16 => y[0] = f16_at(b, 0),
            GgmlType::BF16 => y[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
            GgmlType::Q4_0 => {
                let d = f16_at(b, 0);
                for j in 0..16 {
                    y[j] = ((b[2 + j] & 0xF) as i32 - 8) as f32 * d;
                    y[j + 16] = ((b[2 + j] >> 4) as i32 - 8) as f32 * d;
                }
            }
            GgmlType::Q4_1 => {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                for j in 0..16 {
                    y[j] = (b[4 + j] & 0xF) as f32 * d + m;
                    y[j + 16] = (b[4 + j] >> 4) as f32 * d + m;
                }
            }
            GgmlType::Q5_0 => {
                let d = f16_at(b, 0);
                let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
                for j in 0..16 {
                    let h0 = ((qh >> j) << 4) & 0x10;
                    let h1 = (qh >> (j + 12)) & 0x10;
                    y[j] = (((b[6 + j] & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
                    y[j + 16] = (((b[6 + j] >> 4) as u32 | h1) as i32 - 16) as f32 * d;
                }
            }
            GgmlType::Q8_0 => {
                let d = f16_at(b, 0);
                for j in 0..32 {
                    y[j] = (b[2 + j] as i8) as f32 * d;
                }
            }
            GgmlType::Q4_K => {
                let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                let scales = &b[4..16];
                let qs = &b[16..144];
                for (g, chunk) in (0..4).zip(y.chunks_exact_mut(64)) {
                    let (sc1, m1) = q4k_scale_min(2 * g, scales);
                    let (sc2, m2) = q4k_scale_min(2 * g + 1, scales);
                    let (d1, m1) = (d * sc1 as f32, dmin * m1 as f32);
                    let (d2, m2) = (d * sc2 as f32, dmin * m2 as f32);
                    let q = &qs[32 * g..32 * g + 32];
                    for l in 0..32 {
                        chunk[l] = d1 * (q[l] & 0xF) as f32 - m1;
                        chunk[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
                    }
                }
            }
            GgmlType::Q6_K => {
                // the same products the GPU's Q8x16 form holds: (d * sc) * (q - 32)
                let (q, scale) = q6k_as_q8x16(b);
                for (i, v) in y.iter_mut().enumerate() {
                    *v = scale[i / 16] * q[i] as f32;
                }
            }
        }
    }
}

/// The 6-bit scale and min of sub-block `j` (0..8) of a Q4_K block.
fn q4k_scale_min(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4))
    }
}

/// The GPU's 8-bit block format: for a block of 32 consecutive values along K,
/// x = scale * q + offset with q an i8. Returns None when the block is not exactly representable
/// (then the tensor is kept as f16 instead).
///
/// Types whose blocks are 32 long with one scale and one offset per block (Q4_0, Q4_1, Q5_0,
/// Q8_0, Q4_K sub-blocks) convert exactly: each value is scale*q+offset with small integer q.
pub fn block_as_q8(ty: GgmlType, block: &[u8], sub: usize) -> Option<([i8; 32], f32, f32)> {
    let mut q = [0i8; 32];
    match ty {
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            // values stay 0..15 (so the GPU can keep them as 4 bits); Q4_0's -8 moves into the
            // offset: d * q - 8d is exactly d * (q - 8) in f32
            let d = f16_at(block, 0);
            let (m, base) = if ty == GgmlType::Q4_1 { (f16_at(block, 2), 4) } else { (-8.0 * d, 2) };
            for j in 0..16 {
                q[j] = (block[base + j] & 0xF) as i8;
                q[j + 16] = (block[base + j] >> 4) as i8;
            }
            Some((q, d, m))
        }
        GgmlType::Q5_0 => {
            let d = f16_at(block, 0);
            let qh = u32::from_le_bytes([block[2], block[3], block[4], block[5]]);
            for j in 0..16 {
                let h0 = ((qh >> j) << 4) & 0x10;
                let h1 = (qh >> (j + 12)) & 0x10;
                q[j] = (((block[6 + j] & 0xF) as u32 | h0) as i32 - 16) as i8;
                q[j + 16] = (((block[6 + j] >> 4) as u32 | h1) as i32 - 16) as i8;
            }
            Some((q, d, 0.0))
        }
        GgmlType::Q8_0 => {
            for j in 0..32 {
                q[j] = block[2 + j] as i8;
            }
            Some((q, f16_at(block, 0), 0.0))
        }
        GgmlType::Q4_K => {
            // `sub` (0..8) selects the 32-value sub-block of the 256-value super-block.
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let (sc, m) = q4k_scale_min(sub, &block[4..16]);
            let qs = &block[16 + 32 * (sub / 2)..16 + 32 * (sub / 2) + 32];
            for l in 0..32 {
                q[l] = if sub.is_multiple_of(2) { qs[l] & 0xF } else { qs[l] >> 4 } as i8;
            }
            Some((q, d * sc as f32, -(dmin * m as f32)))
        }
        _ => None,
    }
}

/// A Q6_K block (256 values) as 8-bit values with one f32 scale per 16: x = scale[i / 16] * q[i].
/// Exact: each scale is d * sc (an f16 times an i8, exact in f32) and q - 32 fits in an i8, and
/// `dequantize` computes the same product.
pub fn q6k_as_q8x16(block: &[u8]) -> ([i8; 256], [f32; 16]) {
    let (ql, qh, sc) = (&block[0..128], &block[128..192], &block[192..208]);
    let d = f16_at(block, 208);
    let mut q = [0i8; 256];
    let mut scale = [0f32; 16];
    for (s, &c) in scale.iter_mut().zip(sc) {
        *s = d * (c as i8) as f32;
    }
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let q = &mut q[128 * half..];
        for l in 0..32 {
            q[l] = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i8 - 32;
            q[l + 32] = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i8 - 32;
            q[l + 64] = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i8 - 32;
            q[l + 96] = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i8 - 32;
        }
    }
    (q, scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Q6_K as 8-bit values with a scale per 16 gives back exactly the dequantised values.
    #[test]
    fn q6k_blocks_match_dequantize() {
        let mut seed = 0x9876_5432_u64;
        for _ in 0..20 {
            let mut block: Vec<u8> = (0..210)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    seed as u8
                })
                .collect();
            let h = f16::from_f32(((seed % 1000) as f32 - 500.0) / 3000.0).to_le_bytes();
            block[208] = h[0];
            block[209] = h[1];
            let mut y = vec![0f32; 256];
            dequantize(GgmlType::Q6_K, &block, &mut y);
            let (q, s) = q6k_as_q8x16(&block);
            for i in 0..256 {
                assert_eq!((s[i / 16] * q[i] as f32).to_bits(), y[i].to_bits(), "value {i}");
            }
        }
    }

    /// Q8 conversion of every supported block type gives back exactly the dequantised values.
    #[test]
    fn q8_blocks_match_dequantize() {
        let mut seed = 0x1234_5678_u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q5_0, GgmlType::Q8_0, GgmlType::Q4_K] {
            let mut block: Vec<u8> = (0..ty.block_bytes()).map(|_| rnd() as u8).collect();
            // keep the f16 scales finite and modest
            for i in [0usize, 2] {
                let h = f16::from_f32(((rnd() % 1000) as f32 - 500.0) / 3000.0).to_le_bytes();
                block[i] = h[0];
                block[i + 1] = h[1];
            }
            let mut y = vec![0f32; ty.block_len()];
            dequantize(ty, &block, &mut y);
            for sub in 0..ty.block_len() / 32 {
                let (q, s, o) = block_as_q8(ty, &block, sub).unwrap();
                for j in 0..32 {
                    let v = s * q[j] as f32 + o;
                    let want = y[sub * 32 + j];
                    assert!((v - want).abs() <= 1e-6 * want.abs().max(1e-3), "{ty:?} sub {sub} j {j}: {v} vs {want}");
                }
            }
        }
    }
}

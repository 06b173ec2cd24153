//! Helpers shared by the integration tests: one GPU device per test process, a tiny random model,
//! the real models (pulled on first use), and comparisons.
#![allow(dead_code)]

use augur::gpu::{Gpu, GpuOptions};
use augur::model::config::{Config, RopeStyle};
use augur::model::weights::{Layer, MatData, Matrix, Weights};
use half::f16;
use std::sync::Arc;

pub fn setup_env() {
    // Mesa compiles shaders at first use; its cache makes later test runs fast.
    if std::env::var_os("MESA_SHADER_CACHE_DIR").is_none() {
        unsafe { std::env::set_var("MESA_SHADER_CACHE_DIR", std::env::temp_dir().join("augur-mesa-cache")) };
    }
    unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
}

pub fn gpu() -> Arc<Gpu> {
    setup_env();
    Gpu::shared(&GpuOptions::default()).expect("a GPU adapter (run scripts/setup-gpu.sh)")
}

pub fn gpu_without_features() -> Arc<Gpu> {
    setup_env();
    Gpu::shared(&GpuOptions { no_optional_features: true, ..Default::default() }).expect("a GPU adapter")
}

/// The device with the kernels real GPUs get (matmul_split.wgsl, attention_split.wgsl), whatever
/// it is (lavapipe in CI).
pub fn gpu_split() -> Arc<Gpu> {
    setup_env();
    Gpu::shared(&GpuOptions { plan: Some(augur::gpu::KernelPlan::Split), ..Default::default() }).expect("a GPU adapter")
}

/// Both kernel plans: the device's own and the split one.
pub fn gpus_both_plans() -> Vec<Arc<Gpu>> {
    vec![gpu(), gpu_split()]
}

/// Path of a catalog model, pulled on first use.
pub fn model_path(id: &str) -> std::path::PathBuf {
    static PULL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = PULL.lock().unwrap_or_else(|p| p.into_inner());
    augur::pull::resolve_model(id, true).unwrap_or_else(|e| panic!("{e}"))
}

/// xorshift: deterministic random numbers without a dependency.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [-1, 1).
    pub fn f(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f() * scale).collect()
    }
}

pub fn random_matrix(rng: &mut Rng, k: usize, n: usize, q8: bool) -> Matrix {
    random_matrix_of(rng, k, n, if q8 { Kind::Q8 } else { Kind::F16 })
}

/// The GPU formats a matrix can take (Q4: 8-bit values that all fit in 4 bits).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Kind {
    Q4,
    /// Q4 whose scales and offsets are f16 values (uploaded as `Format::Q4Half`).
    Q4Half,
    Q8,
    /// Q8 with zero offsets.
    Q8Sym,
    Q8x16,
    F16,
}

pub fn random_matrix_of(rng: &mut Rng, k: usize, n: usize, kind: Kind) -> Matrix {
    let data = match kind {
        Kind::Q4 | Kind::Q4Half | Kind::Q8 | Kind::Q8Sym => {
            let q4 = matches!(kind, Kind::Q4 | Kind::Q4Half);
            // Q4Half: rounded to f16 (the f32 values of the others almost never are f16 values)
            let round = |v: f32| if kind == Kind::Q4Half { f16::from_f32(v).to_f32() } else { v };
            MatData::Q8 {
                q: (0..k * n)
                    .map(|_| if q4 { (rng.next() % 16) as i8 } else { (rng.next() % 31) as i8 - 15 })
                    .collect(),
                scale: (0..k * n / 32).map(|_| round(0.02 + 0.01 * rng.f())).collect(),
                offset: (0..k * n / 32)
                    .map(|_| if kind == Kind::Q8Sym { 0.0 } else { round(0.02 * rng.f()) })
                    .collect(),
            }
        }
        Kind::Q8x16 => MatData::Q8x16 {
            q: (0..k * n).map(|_| (rng.next() % 64) as i8 - 32).collect(),
            scale: (0..k * n / 16).map(|_| 0.01 * rng.f()).collect(),
        },
        Kind::F16 => MatData::F16((0..k * n).map(|_| f16::from_f32(0.3 * rng.f())).collect()),
    };
    Matrix { k, n, data }
}

/// A small random transformer (2 layers, GQA) in either set of weight formats and RoPE style.
/// With `q8`: QKV Q8, attention output Q4, gate/up Q4 with f16 scales (odd seeds) or f32 (even),
/// down Q8x16, the LM head F16 and the embedding Q8 (odd seeds) or Q8x16 (even). Without: F16 but for down and the LM head (Q8 for
/// odd seeds, Q8 with zero offsets for even).
pub fn tiny_model(seed: u64, q8: bool, rope: RopeStyle, bias: bool) -> (Config, Weights) {
    tiny_model_with_heads(seed, q8, rope, bias, 16)
}

/// The same with another head size: 32 and up (whole 8-lane groups of vec4s) take the attention
/// kernels' subgroup paths.
pub fn tiny_model_with_heads(seed: u64, q8: bool, rope: RopeStyle, bias: bool, head_dim: usize) -> (Config, Weights) {
    tiny_model_shaped(seed, q8, rope, bias, (4, 2, head_dim))
}

/// The same with `heads` = (query heads, KV heads, head size).
pub fn tiny_model_shaped(
    seed: u64,
    q8: bool,
    rope: RopeStyle,
    bias: bool,
    heads: (usize, usize, usize),
) -> (Config, Weights) {
    tiny_model_wide(seed, q8, rope, bias, heads, 96)
}

/// The same with `ffn_dim` hidden values in the feed-forward layer (the down projection's K).
pub fn tiny_model_wide(
    seed: u64,
    q8: bool,
    rope: RopeStyle,
    bias: bool,
    (n_heads, n_kv_heads, head_dim): (usize, usize, usize),
    ffn_dim: usize,
) -> (Config, Weights) {
    let cfg = Config {
        arch: "tiny".into(),
        dim: 64,
        n_layers: 2,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn_dim,
        vocab: 320,
        rms_eps: 1e-5,
        rope_base: 10000.0,
        rope,
        qkv_bias: bias,
        tied_output: false,
        train_ctx: 512,
    };
    let mut rng = Rng(seed);
    let (d, qkv) = (cfg.dim, cfg.q_dim() + 2 * cfg.kv_dim());
    let layers = (0..cfg.n_layers)
        .map(|_| Layer {
            attn_norm: (0..d).map(|_| 1.0 + 0.2 * rng.f()).collect(),
            qkv: random_matrix(&mut rng, d, qkv, q8),
            qkv_bias: bias.then(|| rng.vec(qkv, 0.1)),
            attn_out: random_matrix_of(&mut rng, cfg.q_dim(), d, if q8 { Kind::Q4 } else { Kind::F16 }),
            ffn_norm: (0..d).map(|_| 1.0 + 0.2 * rng.f()).collect(),
            gate_up: random_matrix_of(
                &mut rng,
                d,
                2 * cfg.ffn_dim,
                match (q8, seed % 2) {
                    (true, 1) => Kind::Q4Half,
                    (true, _) => Kind::Q4,
                    (false, _) => Kind::F16,
                },
            ),
            down: random_matrix_of(
                &mut rng,
                cfg.ffn_dim,
                d,
                match (q8, seed % 2) {
                    (true, _) => Kind::Q8x16,
                    (false, 1) => Kind::Q8,
                    (false, _) => Kind::Q8Sym,
                },
            ),
        })
        .collect();
    let w = Weights {
        embed: random_matrix_of(
            &mut rng,
            d,
            cfg.vocab,
            match (q8, seed % 2) {
                (false, _) => Kind::F16,
                (true, 1) => Kind::Q8,
                (true, _) => Kind::Q8x16,
            },
        ),
        layers,
        out_norm: (0..d).map(|_| 1.0 + 0.2 * rng.f()).collect(),
        output: Some(random_matrix_of(
            &mut rng,
            d,
            cfg.vocab,
            match (q8, seed % 2) {
                (true, _) => Kind::F16,
                (false, 1) => Kind::Q8,
                (false, _) => Kind::Q8Sym,
            },
        )),
    };
    (cfg, w)
}

/// Relative L2 distance |a - b| / |b|.
pub fn rel_l2(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let num: f32 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f32>().sqrt();
    let den: f32 = b.iter().map(|y| y * y).sum::<f32>().sqrt();
    num / den.max(1e-30)
}

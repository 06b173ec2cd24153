//! Model hyper-parameters. The llama and qwen2 architectures share one transformer; what differs
//! between them is data here (RoPE pairing, biases, tied output).

use crate::error::{Error, Result};
use crate::model::gguf::Gguf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeStyle {
    /// Rotate pairs (2i, 2i+1): llama as llama.cpp lays out Q/K in GGUF.
    Interleaved,
    /// Rotate pairs (i, i + d/2): qwen2 ("NEOX" in llama.cpp).
    Neox,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub arch: String,
    pub dim: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub ffn_dim: usize,
    pub vocab: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub rope: RopeStyle,
    /// Q/K/V projections carry biases (qwen2).
    pub qkv_bias: bool,
    /// The output projection is the token embedding (no `output.weight` tensor).
    pub tied_output: bool,
    /// The context length the model was trained for.
    pub train_ctx: usize,
}

impl Config {
    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }
    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    pub fn from_gguf(g: &Gguf) -> Result<Config> {
        let arch = g.get_str("general.architecture")?.to_string();
        let (rope, qkv_bias) = match arch.as_str() {
            "llama" => (RopeStyle::Interleaved, false),
            "qwen2" => (RopeStyle::Neox, true),
            other => {
                return Err(Error::msg(format!(
                    "{}: architecture '{other}' is not supported (augur runs llama and qwen2 models)",
                    g.path
                )));
            }
        };
        let key = |k: &str| format!("{arch}.{k}");
        let dim = g.get_u64(&key("embedding_length"))? as usize;
        let n_heads = g.get_u64(&key("attention.head_count"))? as usize;
        let n_kv_heads =
            g.get(&key("attention.head_count_kv")).and_then(|v| v.as_u64()).unwrap_or(n_heads as u64) as usize;
        let vocab = match g.get(&key("vocab_size")).and_then(|v| v.as_u64()) {
            Some(v) => v as usize,
            None => g.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map(|a| a.len()).unwrap_or(0),
        };
        if n_heads == 0 || n_kv_heads == 0 || !dim.is_multiple_of(n_heads) || !n_heads.is_multiple_of(n_kv_heads) {
            return Err(Error::msg(format!(
                "{}: inconsistent head counts ({n_heads} heads, {n_kv_heads} kv heads, dim {dim})",
                g.path
            )));
        }
        let cfg = Config {
            dim,
            n_layers: g.get_u64(&key("block_count"))? as usize,
            n_heads,
            n_kv_heads,
            head_dim: dim / n_heads,
            ffn_dim: g.get_u64(&key("feed_forward_length"))? as usize,
            vocab,
            rms_eps: g.get_f64(&key("attention.layer_norm_rms_epsilon"))? as f32,
            rope_base: g.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10000.0) as f32,
            rope,
            qkv_bias,
            tied_output: g.tensor("output.weight").is_none(),
            train_ctx: g.get(&key("context_length")).and_then(|v| v.as_u64()).unwrap_or(2048) as usize,
            arch,
        };
        cfg.check(&g.path)?;
        Ok(cfg)
    }

    /// Refuses shapes the kernels cannot run (they work on groups of 4 and 32 values).
    pub fn check(&self, path: &str) -> Result<()> {
        let ok = self.dim.is_multiple_of(32)
            && self.ffn_dim.is_multiple_of(32)
            && self.head_dim.is_multiple_of(8)
            && self.head_dim <= 256
            && self.kv_dim().is_multiple_of(4)
            && self.vocab.is_multiple_of(4)
            && self.vocab > 0
            && self.n_layers > 0
            && self.n_layers <= 256;
        if !ok {
            return Err(Error::msg(format!("{path}: model shape {self:?} is not supported by augur's kernels")));
        }
        Ok(())
    }

    /// RoPE inverse frequencies, one per rotated pair. Computed once on the host so that the GPU
    /// and the CPU reference use the same table.
    pub fn rope_inv_freq(&self) -> Vec<f32> {
        let half = self.head_dim / 2;
        (0..half).map(|i| (self.rope_base as f64).powf(-(2.0 * i as f64) / self.head_dim as f64) as f32).collect()
    }
}

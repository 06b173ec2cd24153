//! Models: file formats, configuration, weights, tokenizer, and the forward pass (CPU reference
//! in `cpu.rs`, GPU in `gpu/`).

pub mod config;
pub mod cpu;
pub mod gguf;
pub mod gpu;
pub mod hf;
pub mod quant;
pub mod tokenizer;
pub mod weights;

use crate::error::{Error, Result};
use config::Config;
use std::path::Path;
use tokenizer::Tokenizer;
use weights::Weights;

/// Everything read from a model file, before anything goes to the GPU.
pub struct LoadedModel {
    pub config: Config,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
    /// Where it came from (for messages and for keying learned state).
    pub source: String,
}

impl LoadedModel {
    /// Loads a .gguf file, or a folder with config.json + *.safetensors + tokenizer.json.
    pub fn load(path: &Path) -> Result<LoadedModel> {
        if !path.exists() {
            return Err(Error::msg(format!(
                "{}: no such model file (run `augur pull smollm2-135m`, or pass a path to a .gguf file)",
                path.display()
            )));
        }
        if path.is_dir() {
            return hf::load(path);
        }
        let g = gguf::Gguf::open(path)?;
        let config = Config::from_gguf(&g)?;
        let weights = Weights::load(&g, &weights::GGUF_NAMES, &config)?;
        let tokenizer = Tokenizer::from_gguf(&g)?;
        Ok(LoadedModel { config, weights, tokenizer, source: path.display().to_string() })
    }

    /// A short id of these weights (architecture, sizes and a sample of the embedding and LM
    /// head), so that learned state made for one model is not applied to another.
    pub fn fingerprint(&self) -> String {
        let c = &self.config;
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |x: u64| {
            for b in x.to_le_bytes() {
                h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
            }
        };
        for b in c.arch.bytes() {
            eat(b as u64);
        }
        for v in [c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.ffn_dim, c.vocab] {
            eat(v as u64);
        }
        let mut row = vec![0f32; self.weights.embed.k];
        for m in [&self.weights.embed, self.weights.output()] {
            for r in [0, 1, m.n / 2, m.n - 1] {
                m.row(r, &mut row);
                for v in &row {
                    eat(v.to_bits() as u64);
                }
            }
        }
        format!("{}-{}x{}-{h:016x}", c.arch, c.n_layers, c.dim)
    }
}

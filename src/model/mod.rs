//! Models: file formats, configuration, weights, tokenizer, and the forward pass (CPU reference
//! in `cpu.rs`, GPU in `gpu.rs`).

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
}

//! Hugging Face model folders: config.json + *.safetensors (f32, f16 or bf16) + tokenizer.json.
//! Projection weights become F16 matrices. HF checkpoints keep Q/K in the order that
//! `rotate_half` expects, so RoPE pairs are (i, i + d/2) for llama and qwen2 alike.

use crate::error::{Error, Result};
use crate::model::config::{Config, RopeStyle};
use crate::model::weights::{HF_NAMES, MatData, Matrix, TensorSource, Weights};
use crate::model::{LoadedModel, tokenizer::Tokenizer};
use half::{bf16, f16};
use safetensors::{Dtype, SafeTensors};
use serde::Deserialize;
use std::collections::HashMap;
use std::path::Path;

#[derive(Deserialize)]
struct HfConfig {
    model_type: String,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    intermediate_size: usize,
    vocab_size: usize,
    rms_norm_eps: f32,
    rope_theta: Option<f32>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    max_position_embeddings: Option<usize>,
    head_dim: Option<usize>,
}

struct Folder {
    origin: String,
    files: Vec<Vec<u8>>,
    /// tensor name -> file index
    index: HashMap<String, usize>,
}

impl Folder {
    fn values(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let fi =
            *self.index.get(name).ok_or_else(|| Error::msg(format!("{}: tensor {name} is missing", self.origin)))?;
        let st = SafeTensors::deserialize(&self.files[fi]).map_err(|e| Error::msg(format!("{}: {e}", self.origin)))?;
        let t = st.tensor(name).map_err(|e| Error::msg(format!("{}: {name}: {e}", self.origin)))?;
        let d = t.data();
        let v: Vec<f32> = match t.dtype() {
            Dtype::F32 => d.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::F16 => d.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            Dtype::BF16 => d.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()).collect(),
            other => {
                return Err(Error::msg(format!(
                    "{}: tensor {name} is {other:?}; augur reads f32, f16 and bf16 safetensors",
                    self.origin
                )));
            }
        };
        Ok((t.shape().to_vec(), v))
    }
}

impl TensorSource for Folder {
    fn origin(&self) -> &str {
        &self.origin
    }
    fn matrix(&self, name: &str, k: usize, n: usize) -> Result<Matrix> {
        let (shape, v) = self.values(name)?;
        // HF stores [out, in] row-major: exactly augur's [N][K]
        if shape != [n, k] {
            return Err(Error::msg(format!("{}: tensor {name} has shape {shape:?}, expected [{n}, {k}]", self.origin)));
        }
        Ok(Matrix { k, n, data: MatData::F16(v.iter().map(|&x| f16::from_f32(x)).collect()) })
    }
    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        let (shape, v) = self.values(name)?;
        if v.len() != len {
            return Err(Error::msg(format!(
                "{}: tensor {name} has shape {shape:?}, expected {len} values",
                self.origin
            )));
        }
        Ok(v)
    }
    fn has(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}

pub fn load(dir: &Path) -> Result<LoadedModel> {
    let origin = dir.display().to_string();
    let read = |f: &str| std::fs::read(dir.join(f)).map_err(|e| Error::io(dir.join(f), e));
    let cfg_text = read("config.json").map_err(|_| {
        Error::msg(format!("{origin}: a model folder needs config.json, *.safetensors and tokenizer.json"))
    })?;
    let hc: HfConfig =
        serde_json::from_slice(&cfg_text).map_err(|e| Error::msg(format!("{origin}/config.json: {e}")))?;
    let (rope, bias_default) = match hc.model_type.as_str() {
        "llama" => (RopeStyle::Neox, false),
        "qwen2" => (RopeStyle::Neox, true),
        other => {
            return Err(Error::msg(format!(
                "{origin}: model_type '{other}' is not supported (augur runs llama and qwen2 models)"
            )));
        }
    };
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().to_string()))
        .filter(|n| n.ends_with(".safetensors"))
        .collect();
    names.sort();
    if names.is_empty() {
        return Err(Error::msg(format!("{origin}: no .safetensors files")));
    }
    let mut folder = Folder { origin: origin.clone(), files: Vec::new(), index: HashMap::new() };
    for (i, n) in names.iter().enumerate() {
        let bytes = read(n)?;
        let st = SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::msg(format!("{origin}/{n}: not a valid safetensors file ({e})")))?;
        for t in st.names() {
            folder.index.insert(t.to_string(), i);
        }
        folder.files.push(bytes);
    }
    let n_heads = hc.num_attention_heads;
    let config = Config {
        arch: hc.model_type.clone(),
        dim: hc.hidden_size,
        n_layers: hc.num_hidden_layers,
        n_heads,
        n_kv_heads: hc.num_key_value_heads.unwrap_or(n_heads),
        head_dim: hc.head_dim.unwrap_or(hc.hidden_size / n_heads.max(1)),
        ffn_dim: hc.intermediate_size,
        vocab: hc.vocab_size,
        rms_eps: hc.rms_norm_eps,
        rope_base: hc.rope_theta.unwrap_or(10000.0),
        rope,
        qkv_bias: hc.attention_bias.unwrap_or(bias_default),
        tied_output: hc.tie_word_embeddings.unwrap_or(false) || !folder.has(HF_NAMES.output),
        train_ctx: hc.max_position_embeddings.unwrap_or(2048),
    };
    if config.head_dim * n_heads != config.dim {
        return Err(Error::msg(format!("{origin}: head_dim x heads != hidden_size is not supported")));
    }
    config.check(&origin)?;
    let weights = Weights::load(&folder, &HF_NAMES, &config)?;
    let mut tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    if let Ok(tc) = read("tokenizer_config.json")
        && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&tc)
    {
        tokenizer.chat_template = v.get("chat_template").and_then(|t| t.as_str()).map(String::from);
    }
    Ok(LoadedModel { config, weights, tokenizer, source: origin })
}

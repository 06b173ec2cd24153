//! The engine: a loaded model on a GPU, the decode loop, streaming, cancellation and statistics.
//! This is the library API an app embeds:
//!
//! ```no_run
//! use augur::engine::{Engine, EngineOptions, GenerateParams};
//! let mut engine = Engine::load("model.gguf".as_ref(), &EngineOptions::default())?;
//! let out = engine.generate("Once upon a time,", &GenerateParams::default(), |text| {
//!     print!("{text}");
//!     true // keep going; return false to stop
//! })?;
//! println!("\n{:.1} tok/s", out.stats.decode_tok_s());
//! # Ok::<(), augur::Error>(())
//! ```

use crate::error::{Error, Result};
use crate::gpu::{Gpu, GpuOptions, map_read};
use crate::model::LoadedModel;
use crate::model::gpu::{GpuModel, PassSpec, SampleSpec};
use crate::model::tokenizer::{StreamDecoder, Tokenizer};
use serde::Serialize;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// KV cache length in tokens (prompt + generated).
    pub max_ctx: usize,
    /// Rows per forward pass during prefill (1..=64).
    pub max_batch: usize,
    pub gpu: GpuOptions,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions { max_ctx: 2048, max_batch: 64, gpu: GpuOptions::default() }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GenerateParams {
    pub max_tokens: usize,
    /// 0 = greedy.
    pub temperature: f32,
    /// 0 = off.
    pub top_k: u32,
    /// 1 = off.
    pub top_p: f32,
    pub seed: u64,
    /// Wrap the prompt in the model's chat template.
    pub chat: bool,
    /// Stop at the model's end-of-text / end-of-turn tokens.
    pub stop_at_eos: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 128,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            chat: false,
            stop_at_eos: true,
        }
    }
}

impl GenerateParams {
    fn check(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::msg("--temperature must be a finite number >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::msg("--top-p must be in (0, 1]"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt processing, up to and including the first generated token.
    pub prefill_ms: f64,
    /// The rest of the generation.
    pub decode_ms: f64,
    /// "stop" (end token), "length" (max_tokens or context), "cancelled".
    pub finish_reason: String,
}

impl Stats {
    pub fn prefill_tok_s(&self) -> f64 {
        self.prompt_tokens as f64 / (self.prefill_ms / 1e3).max(1e-9)
    }
    /// Tokens per second after the first one.
    pub fn decode_tok_s(&self) -> f64 {
        self.generated_tokens.saturating_sub(1) as f64 / (self.decode_ms / 1e3).max(1e-9)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Output {
    pub text: String,
    pub tokens: Vec<u32>,
    pub stats: Stats,
}

/// Stops a generation from another thread.
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed)
    }
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

pub struct Engine {
    pub tokenizer: Arc<Tokenizer>,
    pub model: GpuModel,
    pub source: String,
    staging: wgpu::Buffer,
}

impl Engine {
    /// Loads a model file and uploads it to the GPU.
    pub fn load(path: &Path, opts: &EngineOptions) -> Result<Engine> {
        let loaded = LoadedModel::load(path)?;
        Engine::from_loaded(loaded, opts)
    }

    pub fn from_loaded(loaded: LoadedModel, opts: &EngineOptions) -> Result<Engine> {
        let gpu = Gpu::shared(&opts.gpu)?;
        Engine::with_gpu(gpu, loaded, opts)
    }

    pub fn with_gpu(gpu: Arc<Gpu>, loaded: LoadedModel, opts: &EngineOptions) -> Result<Engine> {
        let model = GpuModel::new(gpu.clone(), &loaded.config, &loaded.weights, opts.max_ctx, opts.max_batch)?;
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token readback"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Engine { tokenizer: Arc::new(loaded.tokenizer), model, source: loaded.source, staging })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.model.gpu
    }

    /// Tokenises a prompt (applying the chat template when asked).
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        let text = if chat { self.tokenizer.chat_prompt(prompt) } else { prompt.to_string() };
        self.tokenizer.encode(&text)
    }

    /// Generates text, calling `on_text` with each new piece; it returns false to stop.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Output> {
        let ids = self.encode_prompt(prompt, params.chat)?;
        let mut dec = StreamDecoder::new();
        let tokenizer = self.tokenizer.clone();
        let out = self.generate_tokens(&ids, params, &CancelToken::default(), |id| {
            let piece = dec.push(&tokenizer, id);
            piece.is_empty() || on_text(&piece)
        })?;
        Ok(out)
    }

    /// Generates from token ids. `on_token` sees every generated token (stop tokens excluded) and
    /// returns false to stop.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &CancelToken,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Output> {
        params.check()?;
        let max_ctx = self.model.max_ctx;
        if prompt.is_empty() {
            return Err(Error::msg("the prompt is empty; give at least one token of text"));
        }
        if prompt.len() >= max_ctx {
            return Err(Error::msg(format!(
                "the prompt has {} tokens but the context holds {max_ctx}; shorten it or raise --ctx",
                prompt.len()
            )));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= self.model.cfg.vocab) {
            return Err(Error::msg(format!("token id {bad} is outside the vocabulary ({})", self.model.cfg.vocab)));
        }
        let t0 = Instant::now();
        let mut sample = SampleSpec {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            seed: (params.seed ^ (params.seed >> 32)) as u32,
            draw: 0,
            row: 0,
            out_index: 0,
        };
        // prefill in chunks; the last chunk samples the first token
        let mb = self.model.max_batch;
        let mut n_past = 0;
        let mut next = 0;
        for (ci, chunk) in prompt.chunks(mb).enumerate() {
            let last = (ci + 1) * mb >= prompt.len();
            self.model.set_tokens(chunk);
            let spec = PassSpec {
                m: chunk.len(),
                n_past,
                tree: None,
                logits_rows: if last { chunk.len() - 1..chunk.len() } else { 0..0 },
                sample: last.then_some(sample),
            };
            if last {
                next = self.step(&spec)?;
            } else {
                self.model.run(&spec)?;
            }
            n_past += chunk.len();
        }
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut tokens = Vec::new();
        let mut finish = "length";
        loop {
            if params.stop_at_eos && self.tokenizer.stop_tokens.contains(&next) {
                finish = "stop";
                break;
            }
            tokens.push(next);
            if !on_token(next) || cancel.is_cancelled() {
                finish = "cancelled";
                break;
            }
            if tokens.len() >= params.max_tokens || n_past >= max_ctx {
                break;
            }
            sample.draw += 1;
            // the sampler left `next` in tokens[0]: no host write needed
            let spec = PassSpec { m: 1, n_past, tree: None, logits_rows: 0..1, sample: Some(sample) };
            next = self.step(&spec)?;
            n_past += 1;
        }
        let stats = Stats {
            prompt_tokens: prompt.len(),
            generated_tokens: tokens.len(),
            prefill_ms,
            decode_ms: t1.elapsed().as_secs_f64() * 1e3,
            finish_reason: finish.to_string(),
        };
        let text = self.tokenizer.decode(&tokens);
        Ok(Output { text, tokens, stats })
    }

    /// One pass in one submission; reads back only the sampled token id.
    fn step(&self, spec: &PassSpec) -> Result<u32> {
        let gpu = &self.model.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.model.encode(&mut enc, spec, None)?;
        let slot = spec.sample.map(|s| s.out_index).unwrap_or(0) as u64;
        enc.copy_buffer_to_buffer(&self.model.sampled, slot * 4, &self.staging, 0, 4);
        gpu.queue.submit([enc.finish()]);
        let b = map_read(gpu, &self.staging, 4);
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

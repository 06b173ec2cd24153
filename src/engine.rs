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
use crate::model::gpu::{
    GpuModel, MAX_ACCEPT_DEPTH, PassSpec, RESULT_BONUS, RESULT_LEN, RESULT_SLOW_FILTERS, RESULT_TOKENS, Sampling,
};
use crate::model::tokenizer::{ChatMessage, StreamDecoder, Tokenizer};
use crate::spec::controller::{Controller, Drafting, Plan};
use crate::spec::cost::SimulatedDevice;
use crate::spec::draft::DraftModelSpeculator;
use crate::spec::head::{HeadOptions, HeadSpeculator};
use crate::spec::stats::SpecStats;
use crate::spec::suffix::SuffixSpeculator;
use crate::spec::{Drafter, SpecMode, Speculator};
use crate::train::checkpoint::HeadFile;
use crate::train::head::HeadDims;
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
    /// Where the suffix speculator keeps what it learned from past requests (None: in memory
    /// only). The CLI uses `$AUGUR_HOME/suffix/<model>.bin`.
    pub suffix_store: Option<std::path::PathBuf>,
    /// Where the controller keeps its cost calibration for this model and device (None: it
    /// calibrates on first use in each process). The CLI uses `$AUGUR_HOME/cost/<model>.json`.
    pub cost_cache: Option<std::path::PathBuf>,
    /// Experiments only: passes take longer, as on another device (the controller must notice
    /// by itself).
    pub simulate: SimulatedDevice,
    /// Saves the learning draft head here after a request when the last save is older than
    /// `head_autosave_every` (long-lived engines; the CLI saves after each run itself).
    pub head_autosave: Option<std::path::PathBuf>,
    pub head_autosave_every: std::time::Duration,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            max_ctx: 2048,
            max_batch: 64,
            gpu: GpuOptions::default(),
            suffix_store: None,
            cost_cache: None,
            simulate: SimulatedDevice::default(),
            head_autosave: None,
            head_autosave_every: std::time::Duration::from_secs(120),
        }
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
    /// Stop strings: generation ends where the text first contains one, and `Output::text`
    /// (and what `generate` streams) ends just before it. Tokens a speculative round accepted
    /// past it are dropped, so the KV cache keeps only what was given out.
    pub stop: Vec<String>,
    /// Speculative decoding (lossless: greedy output is unchanged, sampled output keeps its
    /// distribution).
    pub speculate: SpecMode,
    /// Most drafted tokens verified per round.
    pub tree_budget: usize,
    /// Deepest draft.
    pub max_depth: usize,
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
            stop: Vec::new(),
            speculate: SpecMode::Auto,
            tree_budget: 8,
            max_depth: 8,
        }
    }
}

impl GenerateParams {
    /// Refuses values no generation can use, with the flag to fix.
    pub fn check(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::msg("--temperature must be a finite number >= 0"));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(Error::msg("--top-p must be in (0, 1]"));
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return Err(Error::msg("a --stop string is empty; give at least one character"));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Stats {
    pub prompt_tokens: usize,
    /// Leading prompt tokens whose KV entries were still in the cache from the previous
    /// generation (a chat's earlier turns): not computed again.
    pub cached_prompt_tokens: usize,
    pub generated_tokens: usize,
    /// Prompt processing, up to and including the first generated token.
    pub prefill_ms: f64,
    /// The rest of the generation.
    pub decode_ms: f64,
    /// "stop" (end token or stop string), "length" (max_tokens or context), "cancelled".
    pub finish_reason: String,
}

impl Stats {
    pub fn prefill_tok_s(&self) -> f64 {
        (self.prompt_tokens - self.cached_prompt_tokens) as f64 / (self.prefill_ms / 1e3).max(1e-9)
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
    /// What speculation did (None when generation decoded plainly).
    pub spec: Option<SpecStats>,
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
    /// Makes the token usable for the next generation.
    pub fn reset(&self) {
        self.0.store(false, Ordering::Relaxed)
    }
}

pub struct Engine {
    pub tokenizer: Arc<Tokenizer>,
    pub model: GpuModel,
    pub source: String,
    staging: wgpu::Buffer,
    result_staging: wgpu::Buffer,
    /// The model-free suffix speculator (learns from every request).
    pub suffix: Option<Box<dyn Speculator + Send>>,
    /// A smaller model of the target's family (`attach_draft`).
    pub draft: Option<Box<dyn Speculator + Send>>,
    /// The adaptive draft head (`attach_head`).
    pub head: Option<HeadSpeculator>,
    /// `LoadedModel::fingerprint` of the target (keys learned state).
    pub fingerprint: String,
    /// The controller of `--speculate auto`, made (and its costs calibrated) on first use.
    pub controller: Option<Controller>,
    cost_cache: Option<std::path::PathBuf>,
    simulate: SimulatedDevice,
    head_autosave: Option<(std::path::PathBuf, std::time::Duration)>,
    last_head_save: Instant,
    /// The tokens whose KV entries the cache holds after the last generation (slots 0..len), and
    /// the model's pass count then (any pass since, by anyone, may have overwritten them).
    kv_prefix: Option<(Vec<u32>, u64)>,
    /// `AUGUR_TRACE` set: one line per speculative round on stderr (what was drafted, by whom,
    /// what was accepted, what it cost), for seeing where a round's time goes.
    trace: bool,
    /// `AUGUR_COUPLED_DRAFTS=0`: drafters propose their top tokens when sampling too, rather
    /// than drawing with the target's noise (for measuring what the coupling gains).
    uncoupled: bool,
    /// The draft model sits this request out: the controller would not let it draft in the
    /// first round, so it fed no prompt (feeding it later would cost what drafting saves).
    draft_sits_out: bool,
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
        let fingerprint = loaded.fingerprint();
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("token readback"),
            size: 16,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let result_staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("accept readback"),
            size: (RESULT_LEN * 4) as u64 + crate::model::gpu::ACCEPT_TIME_BYTES,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let suffix = match &opts.suffix_store {
            Some(p) => SuffixSpeculator::persistent(p.clone()),
            None => SuffixSpeculator::in_memory(),
        };
        Ok(Engine {
            tokenizer: Arc::new(loaded.tokenizer),
            model,
            source: loaded.source,
            staging,
            result_staging,
            suffix: Some(Box::new(suffix)),
            draft: None,
            head: None,
            fingerprint,
            controller: None,
            cost_cache: opts.cost_cache.clone(),
            simulate: opts.simulate,
            head_autosave: opts.head_autosave.clone().map(|p| (p, opts.head_autosave_every)),
            last_head_save: Instant::now(),
            kv_prefix: None,
            trace: std::env::var_os("AUGUR_TRACE").is_some(),
            uncoupled: std::env::var_os("AUGUR_COUPLED_DRAFTS").is_some_and(|v| v == "0"),
            draft_sits_out: false,
        })
    }

    /// Adds the adaptive draft head for `--speculate head`: from a saved head (made for this
    /// model: see `train::checkpoint::load`) or a fresh one.
    pub fn attach_head(&mut self, saved: Option<HeadFile>, opts: HeadOptions) -> Result<()> {
        let c = &self.model.cfg;
        let (dims, params) = match &saved {
            Some(f) => (f.meta.dims, f.params.clone()),
            None => {
                let dims = HeadDims { d: c.dim, r: c.dim };
                (dims, crate::train::head::init(dims, 1))
            }
        };
        if dims.d != c.dim {
            return Err(Error::msg("the draft head's hidden size differs from the model's"));
        }
        let mut head = HeadSpeculator::new(&self.model, dims, &params, opts)?;
        if let Some(f) = saved {
            head.restore(&f);
        }
        self.head = Some(head);
        Ok(())
    }

    /// Saves a learning head to `path` every `every` (checked after each generation), as
    /// `EngineOptions::head_autosave` does; None stops it.
    pub fn set_head_autosave(&mut self, path: Option<std::path::PathBuf>, every: std::time::Duration) {
        self.head_autosave = path.map(|p| (p, every));
        self.last_head_save = Instant::now();
    }

    /// Saves a learning head when `EngineOptions::head_autosave` says it is time. A failed save
    /// is reported on stderr and serving goes on (the previous file stays whole).
    fn autosave_head(&mut self) {
        let Some((path, every)) = &self.head_autosave else { return };
        if self.last_head_save.elapsed() < *every || !self.head.as_ref().is_some_and(|h| h.opts.learn) {
            return;
        }
        self.last_head_save = Instant::now();
        if let Some(f) = self.head_file()
            && let Err(e) = crate::train::checkpoint::save(path, &f)
        {
            eprintln!("augur: warning: could not autosave the draft head ({e}); serving goes on");
        }
    }

    /// The draft head's current state, ready to save (None without a head).
    pub fn head_file(&self) -> Option<HeadFile> {
        let h = self.head.as_ref()?;
        Some(h.to_file(&self.fingerprint, &self.source))
    }

    /// Adds a draft model for `--speculate draft`; it must share the target's vocabulary.
    pub fn attach_draft(&mut self, draft: LoadedModel) -> Result<()> {
        let d = DraftModelSpeculator::new(&self.model, &self.tokenizer, draft)?;
        self.draft = Some(Box::new(d));
        Ok(())
    }

    /// Which speculator a mode uses on this device (None: decode plainly).
    fn drafter_for(&self, mode: SpecMode) -> Result<Option<Drafter>> {
        Ok(match mode {
            SpecMode::Off => None,
            SpecMode::Suffix => self.suffix.is_some().then_some(Drafter::Suffix),
            SpecMode::Draft if self.draft.is_none() => {
                return Err(Error::msg("--speculate draft needs a draft model: add --draft <model>"));
            }
            SpecMode::Draft => Some(Drafter::Draft),
            SpecMode::Head if self.head.is_none() => {
                return Err(Error::msg(
                    "--speculate head needs a draft head (Engine::attach_head; the CLI attaches one)",
                ));
            }
            SpecMode::Head => Some(Drafter::Head),
            // the controller drafts with every speculator there is (the value only says "speculate")
            SpecMode::Auto => {
                (self.suffix.is_some() || self.draft.is_some() || self.head.is_some()).then_some(Drafter::Suffix)
            }
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.model.gpu
    }

    /// The next generation computes its whole prompt, whatever the KV cache still holds from
    /// the last one (`augur bench` times prefill this way: the same prompt run after run would
    /// otherwise prefill only its last token).
    pub fn forget_cached_prompt(&mut self) {
        self.kv_prefix = None;
    }

    /// Tokenises a prompt (applying the chat template when asked).
    pub fn encode_prompt(&self, prompt: &str, chat: bool) -> Result<Vec<u32>> {
        let text = if chat { self.tokenizer.chat_prompt(prompt) } else { prompt.to_string() };
        self.tokenizer.encode(&text)
    }

    /// Tokenises a conversation in the model's chat template, ready for the assistant's reply.
    pub fn encode_conversation(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        self.tokenizer.encode(&self.tokenizer.chat_conversation(messages))
    }

    /// Generates text, calling `on_text` with each new piece; it returns false to stop.
    pub fn generate(
        &mut self,
        prompt: &str,
        params: &GenerateParams,
        on_text: impl FnMut(&str) -> bool,
    ) -> Result<Output> {
        let ids = self.encode_prompt(prompt, params.chat)?;
        self.generate_text(&ids, params, &CancelToken::default(), on_text)
    }

    /// Generates from token ids, calling `on_text` with each new piece of text (never a piece of
    /// a stop string); it returns false to stop, as does `cancel` from another thread.
    pub fn generate_text(
        &mut self,
        ids: &[u32],
        params: &GenerateParams,
        cancel: &CancelToken,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<Output> {
        let mut dec = StreamDecoder::new();
        let mut stop = crate::stop::StopFilter::new(&params.stop);
        let tokenizer = self.tokenizer.clone();
        let mut going = true;
        let out = self.generate_tokens(ids, params, cancel, |id| {
            let piece = stop.push(&dec.push(&tokenizer, id)).to_string();
            going = piece.is_empty() || on_text(&piece);
            going
        })?;
        // text held back as the possible start of a stop string that never came
        let rest = stop.finish();
        if going && !rest.is_empty() {
            on_text(rest);
        }
        Ok(out)
    }

    /// Generates from token ids. `on_token` sees every generated token (end tokens excluded; the
    /// token that completes a stop string included) and returns false to stop.
    pub fn generate_tokens(
        &mut self,
        prompt: &[u32],
        params: &GenerateParams,
        cancel: &CancelToken,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Output> {
        params.check()?;
        let drafter = self.drafter_for(params.speculate)?;
        let speculate = drafter.is_some();
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
        let auto = speculate && params.speculate == SpecMode::Auto;
        let kernels = &self.model.gpu.kernels;
        if auto && self.controller.is_none() {
            let cache = self.cost_cache.as_deref();
            let cost = match crate::spec::cost::cached(&self.model, &self.fingerprint, cache, self.simulate) {
                Some(cost) => cost,
                None => {
                    // before prefill: calibration passes write the first KV slots; every size is
                    // compiled first so that no compilation is timed
                    kernels.build_row_blocks();
                    crate::spec::cost::calibrated(&self.model, &self.fingerprint, cache, self.simulate)?
                }
            };
            self.controller = Some(Controller::new(cost));
        }
        // Plain decoding compiles only the row blocks it uses (RowBlockPipelines). The
        // controller plans only trees whose passes are compiled, so with it decoding starts at
        // once while a thread compiles the rest; a fixed tree budget, or a draft model (whose
        // own passes grow), has them all compiled first, so that no round compiles one.
        if auto && self.draft.is_none() {
            kernels.build_row_blocks_in_background();
        } else if speculate {
            kernels.build_row_blocks();
        }
        if let (true, Some(c)) = (auto, self.controller.as_mut()) {
            c.begin_request();
        }
        let controller_before = self.controller.as_ref().map(|c| c.stats.clone());
        let t0 = Instant::now();
        let mut sampling = Sampling {
            temperature: params.temperature,
            top_k: params.top_k,
            top_p: params.top_p,
            seed: (params.seed ^ (params.seed >> 32)) as u32,
            draw: 0,
        };
        // The KV entries of the previous generation's tokens are still in the cache unless a
        // pass ran since (calibration, a benchmark): a prompt that begins with them (the next
        // turn of a chat) prefills only the rest. Its last token always runs: its pass gives
        // the first token. A row's result does not depend on the rows beside it in a pass, so
        // the reused entries are the ones a full prefill would compute.
        let cached = match self.kv_prefix.take() {
            Some((tokens, passes)) if passes == self.model.passes() => {
                tokens.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1)
            }
            _ => 0,
        };
        // prefill in chunks; the last chunk samples the first token
        let mb = self.model.max_batch;
        let mut n_past = cached;
        let mut next = 0;
        let rest = &prompt[cached..];
        for (ci, chunk) in rest.chunks(mb).enumerate() {
            let last = (ci + 1) * mb >= rest.len();
            self.model.set_tokens(chunk);
            let spec = PassSpec {
                m: chunk.len(),
                n_past,
                tree: None,
                logits_rows: if last { chunk.len() - 1..chunk.len() } else { 0..0 },
                accept: last.then_some(sampling),
                ..Default::default()
            };
            if last {
                next = self.step(&spec)?;
            } else {
                self.model.run(&spec)?;
            }
            if let (Some(h), true) = (self.head.as_mut(), speculate) {
                // the prompt's hidden states are training data too (before the next chunk
                // overwrites them)
                h.record_prompt(&self.model, chunk.len(), rest.get((ci + 1) * mb).copied());
            }
            n_past += chunk.len();
        }
        let mut spec_stats = SpecStats { mode: format!("{:?}", params.speculate).to_lowercase(), ..Default::default() };
        // the suffix index always learns; a draft model prefills only when it will draft
        if let Some(s) = self.suffix.as_mut() {
            s.begin(prompt);
        }
        let may_draft = self.controller.as_ref().is_some_and(|c| c.may_draft(Drafter::Draft));
        self.draft_sits_out = auto && !may_draft;
        if let (Some(s), true) = (self.draft.as_mut(), drafter == Some(Drafter::Draft) || auto && may_draft) {
            s.begin(prompt);
        }
        if let Some(h) = self.head.as_mut() {
            h.begin(prompt);
            if speculate {
                // every speculative round records for the head; it drafts from this hidden state
                let last_rows = rest.len() - (rest.len() - 1) / mb * mb;
                h.after_prefill(&self.model, last_rows - 1);
            }
        }
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut context = prompt.to_vec();
        let mut tokens = Vec::new();
        // with stop strings: the text so far, to look for them after every committed token
        let mut stop_text = (!params.stop.is_empty()).then(|| (StreamDecoder::new(), String::new()));
        let mut pending = vec![next];
        let finish = 'generation: loop {
            for t in pending.drain(..) {
                // (max_tokens 0: prefill only, the token it sampled is not given out)
                if tokens.len() >= params.max_tokens {
                    break 'generation "length";
                }
                if params.stop_at_eos && self.tokenizer.stop_tokens.contains(&t) {
                    break 'generation "stop";
                }
                tokens.push(t);
                context.push(t);
                if !on_token(t) || cancel.is_cancelled() {
                    break 'generation "cancelled";
                }
                if let Some((dec, text)) = stop_text.as_mut() {
                    let from = text.len();
                    text.push_str(&dec.push(&self.tokenizer, t));
                    if crate::stop::find(&params.stop, text, from).is_some() {
                        // the rest of this round's tokens are dropped: n_past counts their
                        // slots, but the KV prefix below keeps only committed tokens
                        break 'generation "stop";
                    }
                }
                if tokens.len() >= params.max_tokens {
                    break 'generation "length";
                }
            }
            // the last token (the root of the next pass) needs a KV slot
            if n_past >= max_ctx {
                break 'generation "length";
            }
            // the sampling noise of each generated token is keyed by its index (accept.wgsl)
            sampling.draw = tokens.len() as u32;
            if let Some(d) = drafter {
                let wanted = params.max_tokens - tokens.len();
                let (new, accepted) =
                    self.speculative_round(d, &context, n_past, wanted, sampling, params, &mut spec_stats)?;
                pending = new;
                n_past += 1 + accepted;
            } else {
                // acceptance left the last token in tokens[0]: no host write needed
                let spec = PassSpec {
                    m: 1,
                    n_past,
                    tree: None,
                    logits_rows: 0..1,
                    accept: Some(sampling),
                    ..Default::default()
                };
                pending = vec![self.step(&spec)?];
                n_past += 1;
            }
        };
        for s in self.suffix.iter_mut().chain(self.draft.iter_mut()) {
            s.finish(&context, prompt.len());
        }
        // slots 0..n_past hold the committed tokens in order; a round's accepted drafts have
        // their slots even when the request ended before all of them were taken
        self.kv_prefix = Some((context[..n_past.min(context.len())].to_vec(), self.model.passes()));
        let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        spec_stats.other_ms =
            (decode_ms - spec_stats.draft_ms - spec_stats.verify_ms - spec_stats.accept_ms - spec_stats.train_ms)
                .max(0.0);
        let stats = Stats {
            prompt_tokens: prompt.len(),
            cached_prompt_tokens: cached,
            generated_tokens: tokens.len(),
            prefill_ms,
            decode_ms,
            finish_reason: finish.to_string(),
        };
        if let (true, Some(c), Some(before)) = (auto, &self.controller, &controller_before) {
            spec_stats.controller = Some(c.stats.since(before));
        }
        self.autosave_head();
        let mut text = self.tokenizer.decode(&tokens);
        if let Some(at) = crate::stop::find(&params.stop, &text, 0) {
            text.truncate(at);
        }
        Ok(Output { text, tokens, stats, spec: speculate.then_some(spec_stats) })
    }

    /// One speculation round: draft a tree after `context`, verify it with the target in one
    /// tree-masked pass, accept greedily and compact the KV cache on the GPU, all in one
    /// submission; read back only the accepted ids. Returns the new tokens (accepted drafts and
    /// the bonus token) and how many drafts were accepted. The tree holds no more than the
    /// `wanted - 1` drafts that, with the bonus token, finish the request: rows past them would be
    /// verified only to be thrown away.
    #[allow(clippy::too_many_arguments)]
    fn speculative_round(
        &mut self,
        drafter: Drafter,
        context: &[u32],
        n_past: usize,
        wanted: usize,
        sampling: Sampling,
        params: &GenerateParams,
        stats: &mut SpecStats,
    ) -> Result<(Vec<u32>, usize)> {
        let spec_t = Instant::now();
        if let Some(c) = self.controller.as_mut() {
            c.cost.at_context(n_past); // a row's attention spans the context: dearer when it is long
        }
        let room = self.model.max_ctx - n_past - 1; // slots left after the root's
        let useful = wanted.saturating_sub(1);
        let budget = params.tree_budget.min(self.model.max_batch - 1).min(63).min(room).min(useful);
        let depth = params.max_depth.min(MAX_ACCEPT_DEPTH - 1).min(useful);
        // what drafters that draw with the target's noise draw with (AUGUR_COUPLED_DRAFTS=0: nothing)
        let drafting = if self.uncoupled { Sampling::default() } else { sampling };
        let (tree, plan) = if params.speculate == SpecMode::Auto {
            // only trees whose pass is compiled (see generate)
            let budget = budget.min(self.model.gpu.kernels.ready_rows().saturating_sub(1));
            let (plan, drafted) = self.plan_round(context, budget, depth, drafting);
            (plan.tree.clone(), Some((plan, drafted)))
        } else {
            if let Some(h) = self.head.as_mut() {
                h.in_use = drafter == Drafter::Head;
            }
            let speculator: &mut dyn Speculator = match drafter {
                Drafter::Draft => self.draft.as_deref_mut().map(|s| s as &mut dyn Speculator),
                Drafter::Head => self.head.as_mut().map(|h| h as &mut dyn Speculator),
                Drafter::Suffix => self.suffix.as_deref_mut().map(|s| s as &mut dyn Speculator),
            }
            .expect("drafter_for picks a speculator that exists");
            speculator.set_min_confidence(0.1);
            speculator.set_sampling(drafting);
            let mut tree = speculator.propose(context, budget, depth);
            tree.truncate(budget);
            (tree, None)
        };
        stats.draft_ms += spec_t.elapsed().as_secs_f64() * 1e3;
        let verify_t = Instant::now();
        let root = *context.last().expect("context holds at least the prompt");
        let m = 1 + tree.len();
        // with nothing drafted this is a plain step: the last acceptance left the root in the
        // pass's first token slot, and a causal pass of one row needs no tree rows (the writes
        // they take cost 4% of a SmolLM2 step on lavapipe)
        if !tree.is_empty() {
            let mut input = vec![root];
            input.extend(tree.nodes.iter().map(|n| n.token));
            self.model.set_tokens(&input);
        }
        // a chain's accepted prefix is already in place; only branching trees need compaction
        let branches = tree.nodes.iter().enumerate().any(|(i, n)| n.parent != i.checked_sub(1));
        let spec = PassSpec {
            m,
            n_past,
            tree: (!tree.is_empty()).then(|| tree.rows(n_past)),
            logits_rows: 0..m,
            accept: Some(sampling),
            compact: branches,
            coupled: None,
        };
        let gpu = &self.model.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        let timed = self.model.encode_timing_accept(&mut enc, &spec)?;
        if let Some(h) = &self.head {
            h.encode_after_verify(&mut enc, &self.model, m, root);
        }
        let result_bytes = (RESULT_LEN * 4) as u64;
        enc.copy_buffer_to_buffer(&self.model.result, 0, &self.result_staging, 0, result_bytes);
        if timed {
            self.model.copy_accept_time(&mut enc, &self.result_staging, result_bytes);
        }
        gpu.queue.submit([enc.finish()]);
        let read = result_bytes + if timed { crate::model::gpu::ACCEPT_TIME_BYTES } else { 0 };
        let bytes = map_read(gpu, &self.result_staging, read);
        let r: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[..result_bytes as usize]);
        self.simulate.delay(m);
        let verify_ms = verify_t.elapsed().as_secs_f64() * 1e3;
        // the acceptance's own GPU time, when timed, out of the verification's
        let accept_ms = if timed { self.model.accept_ms(&bytes[result_bytes as usize..]).min(verify_ms) } else { 0.0 };
        stats.accept_ms += accept_ms;
        stats.verify_ms += verify_ms - accept_ms;
        let k = r[0] as usize;
        if k > tree.len() {
            return Err(Error::Gpu(format!("acceptance returned {k} tokens for a tree of {}", tree.len())));
        }
        // depths at which the accepted path had a child to try
        let path: Vec<Option<usize>> =
            std::iter::once(None).chain(r[1..=k].iter().map(|&row| Some(row as usize - 1))).collect();
        let attempted = path.iter().take_while(|&&p| tree.nodes.iter().any(|n| n.parent == p)).count();
        stats.record(attempted, k, tree.len());
        for n in &tree.nodes {
            stats.count_drafted(n.drafter);
        }
        for &row in &r[1..=k] {
            stats.count_accepted(tree.nodes[row as usize - 1].drafter);
        }
        // what the cost model expected this pass to take (before observing it), for the trace
        let predicted_ms = match (&self.controller, self.trace) {
            (Some(c), true) => c.cost.verify_ms(m),
            _ => 0.0,
        };
        if let (Some((plan, drafted)), Some(c)) = (&plan, self.controller.as_mut()) {
            let mut accepted = vec![false; tree.len()];
            for &row in &r[1..=k] {
                accepted[row as usize - 1] = true;
            }
            c.observe(plan, &accepted, m, verify_ms, drafted);
            c.observe_declined(plan, &accepted, r[RESULT_BONUS], params.temperature == 0.0);
        }
        if self.trace {
            let by = |d: Drafter| tree.nodes.iter().filter(|n| n.drafter == d).count();
            // each expensive speculator that drafted: its drafting + catch-up, and what the
            // controller now believes it nets per round
            let drafted_ms = plan.as_ref().map_or(String::new(), |(_, d)| {
                let net = |x: Drafter| self.controller.as_ref().and_then(|c| c.net_ms(x)).unwrap_or(f64::NAN);
                d.iter()
                    .map(|d| {
                        format!(" {}={:.0}+{:.0}ms (nets {:.0}ms)", d.drafter.name(), d.ms, d.idle_ms, net(d.drafter))
                    })
                    .collect::<String>()
            });
            // the controller's estimate of each node's acceptance (its score for a fixed mode)
            let p: Vec<String> = tree.nodes.iter().map(|n| format!("{:.2}", n.score)).collect();
            let declined = plan.as_ref().map_or(String::new(), |(p, _)| {
                format!(" declined {} (best {:.2})", p.proposed - tree.len(), p.best_declined)
            });
            // what was drafted (first chain) and what the round committed, as text
            let chain: Vec<u32> = tree
                .nodes
                .iter()
                .enumerate()
                .take_while(|(i, n)| n.parent == i.checked_sub(1))
                .map(|(_, n)| n.token)
                .collect();
            let mut committed: Vec<u32> = r[RESULT_TOKENS..RESULT_TOKENS + k].to_vec();
            committed.push(r[RESULT_BONUS]);
            eprintln!(
                "round: nodes {} (suffix {} draft {} head {}) accepted {k} (filters bisected {}) draft {:.2}ms{drafted_ms} verify {verify_ms:.0}ms (expected {predicted_ms:.0}) p [{}]{declined} drafted {:?} committed {:?}",
                tree.len(),
                by(Drafter::Suffix),
                by(Drafter::Draft),
                by(Drafter::Head),
                r[RESULT_SLOW_FILTERS],
                (verify_t - spec_t).as_secs_f64() * 1e3,
                p.join(" "),
                self.tokenizer.decode(&chain),
                self.tokenizer.decode(&committed),
            );
        }
        if let Some(h) = self.head.as_mut() {
            let before = h.stats.train_ms;
            let next = if k > 0 { r[RESULT_TOKENS] } else { r[RESULT_BONUS] };
            h.after_round(k, next, spec_t.elapsed().as_secs_f64() * 1e3)?;
            stats.train_ms += h.stats.train_ms - before;
        }
        let mut new: Vec<u32> = r[RESULT_TOKENS..RESULT_TOKENS + k].to_vec();
        new.push(r[RESULT_BONUS]);
        Ok((new, k))
    }

    /// The controller's round: every speculator it wants drafts (the suffix index always: it
    /// costs microseconds), it picks the tree, and the draft head learns which verified rows
    /// are its own. Returns the plan and how long each expensive speculator drafted. `sampling`
    /// is what drafters that draw with the target's noise draw with (`Speculator::set_sampling`).
    fn plan_round(
        &mut self,
        context: &[u32],
        budget: usize,
        depth: usize,
        sampling: Sampling,
    ) -> (Plan, Vec<Drafting>) {
        let c = self.controller.as_mut().expect("made before the first auto round");
        let mut proposals = Vec::new();
        let mut drafted = Vec::new();
        if let Some(s) = self.suffix.as_deref_mut() {
            s.set_min_confidence(0.0);
            proposals.push((Drafter::Suffix, s.propose(context, budget, depth)));
        }
        let draft = self.draft.as_deref_mut().filter(|_| !self.draft_sits_out);
        let expensive: [(Drafter, Option<&mut dyn Speculator>); 2] = [
            (Drafter::Draft, draft.map(|s| s as &mut dyn Speculator)),
            (Drafter::Head, self.head.as_mut().map(|h| h as &mut dyn Speculator)),
        ];
        for (d, s) in expensive {
            let covered = |s: &dyn Speculator| {
                proposals.first().is_some_and(|(by, t)| *by == Drafter::Suffix && c.sits_out(d, t, depth, s.level_ms()))
            };
            if let Some(s) = s
                && !covered(&*s)
                && let Some(lookahead) = c.wants(d, s.feed_ms_per_token())
            {
                let t = Instant::now();
                s.set_sampling(sampling);
                s.set_min_confidence(c.min_score(d));
                s.set_expand_confidence(c.min_expand_score(d, s.level_ms()));
                let tree = s.propose(context, budget, depth.min(lookahead));
                // feeding tokens committed while it sat out is the price of the look, not of
                // drafting with it
                let idle_ms = s.idle_catch_up_ms();
                let ms = (t.elapsed().as_secs_f64() * 1e3 - idle_ms).max(0.0);
                drafted.push(Drafting { drafter: d, ms, idle_ms, deepest: s.deepest_level() });
                proposals.push((d, tree));
            }
        }
        let plan = c.choose(&proposals, budget);
        if let Some(h) = self.head.as_mut() {
            h.in_use = c.pays(Drafter::Head);
            let own: Vec<Option<usize>> = plan
                .sources
                .iter()
                .map(|src| src.iter().find(|s| s.drafter == Drafter::Head).map(|s| s.index))
                .collect();
            h.verify_rows_from(&own);
        }
        (plan, drafted)
    }

    /// One pass in one submission; reads back only the chosen token id.
    fn step(&self, spec: &PassSpec) -> Result<u32> {
        let gpu = &self.model.gpu;
        let mut enc = gpu.device.create_command_encoder(&Default::default());
        self.model.encode(&mut enc, spec, None)?;
        enc.copy_buffer_to_buffer(&self.model.result, (RESULT_BONUS * 4) as u64, &self.staging, 0, 4);
        gpu.queue.submit([enc.finish()]);
        let b = map_read(gpu, &self.staging, 4);
        self.simulate.delay(spec.m);
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
}

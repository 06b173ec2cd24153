//! The `augur` command line.

use augur::engine::{Engine, EngineOptions, GenerateParams};
use augur::gpu::GpuOptions;
use augur::{Error, Result, bench, pull};
use clap::{Args, Parser, Subcommand};
use std::io::Write;

#[derive(Parser)]
#[command(name = "augur", version, about = "Fast local LLM inference on any GPU wgpu reaches")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Download, assemble and verify a model from the catalog (models/catalog.json)
    Pull {
        /// Model id: smollm2-135m, qwen2.5-coder-0.5b, qwen2.5-coder-1.5b
        id: String,
        /// Download again even if cached
        #[arg(long)]
        force: bool,
    },
    /// Generate text, streaming it as it is produced
    Run(GenArgs),
    /// Generate text and print it at the end (or as JSON with --json)
    Generate {
        #[command(flatten)]
        gen_args: GenArgs,
        /// Print one JSON object with the text, tokens and timings
        #[arg(long)]
        json: bool,
    },
    /// Measure prefill and decode speed, per-kernel times and the cost of M-token passes
    Bench {
        #[command(flatten)]
        model: ModelArgs,
        /// Timed runs (after one warm-up)
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Prompt length for the prefill measurement
        #[arg(long, default_value_t = 64)]
        prompt_tokens: usize,
        /// Tokens generated per decode run
        #[arg(long, default_value_t = 32)]
        gen_tokens: usize,
    },
    /// Speculation benchmark: each prompt plain and speculated, side by side
    BenchSpec {
        #[command(flatten)]
        model: ModelArgs,
        /// spec-bench (questions jsonl, see --questions) or rewrite (code from --sources)
        #[arg(long, default_value = "spec-bench")]
        workload: String,
        /// Spec-Bench questions file
        #[arg(long, default_value = "../shared/data/spec_bench/question.jsonl")]
        questions: std::path::PathBuf,
        /// Folder of source files for the rewrite workload
        #[arg(long, default_value = "src")]
        sources: std::path::PathBuf,
        /// Prompts per category (spec-bench) or files (rewrite)
        #[arg(long, default_value_t = 3)]
        per_category: usize,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// List the GPU adapters wgpu can see
    Devices,
    /// List the catalog and what is cached
    Models,
}

#[derive(Args)]
struct ModelArgs {
    /// A catalog id (pulled on first use) or a path to a .gguf file
    model: String,
    /// Context length (KV cache size) in tokens
    #[arg(long, default_value_t = 2048)]
    ctx: usize,
    /// Do not use optional GPU features (timestamp queries)
    #[arg(long)]
    no_gpu_features: bool,
    /// Use the first adapter whose name contains this
    #[arg(long)]
    adapter: Option<String>,
}

#[derive(Args)]
struct GenArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt
    prompt: String,
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 = off
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// 1 = off
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Wrap the prompt in the model's chat template
    #[arg(long)]
    chat: bool,
    #[command(flatten)]
    spec: SpecArgs,
}

#[derive(Args)]
struct SpecArgs {
    /// Speculative decoding: off, suffix, draft (needs --draft), head (the adaptive draft
    /// head), or auto (the best available for the device, trees sized for it)
    #[arg(long, default_value = "auto")]
    speculate: augur::spec::SpecMode,
    /// A smaller model of the target's family to draft with (catalog id or path)
    #[arg(long)]
    draft: Option<String>,
    /// Draft-head file for --speculate head (default: $AUGUR_HOME/heads/<model>.safetensors,
    /// created on first use and saved after each run)
    #[arg(long)]
    head: Option<std::path::PathBuf>,
    /// Use the draft head as it is: no online training, nothing saved
    #[arg(long)]
    no_learn: bool,
    /// Most drafted tokens verified per round (clamped to what the context and a pass hold)
    #[arg(long, default_value_t = 8)]
    tree_budget: usize,
    /// Deepest draft
    #[arg(long, default_value_t = 8)]
    max_depth: usize,
}

impl ModelArgs {
    fn engine(&self) -> Result<Engine> {
        let path = pull::resolve_model(&self.model, true)?;
        let stem = path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| "model".into());
        let opts = EngineOptions {
            max_ctx: self.ctx,
            suffix_store: Some(pull::augur_home().join("suffix").join(format!("{stem}.bin"))),
            gpu: GpuOptions { no_optional_features: self.no_gpu_features, adapter: self.adapter.clone() },
            ..Default::default()
        };
        Engine::load(&path, &opts)
    }

    /// The engine with the draft model and draft head that `spec` asks for attached. Returns
    /// where to save the head afterwards (None: not learning, or its file was refused).
    fn engine_with(&self, spec: &SpecArgs) -> Result<(Engine, Option<std::path::PathBuf>)> {
        let mut engine = self.engine()?;
        if let Some(d) = &spec.draft {
            let path = pull::resolve_model(d, true)?;
            engine.attach_draft(augur::model::LoadedModel::load(&path)?)?;
        }
        let mut save_to = None;
        if spec.speculate == augur::spec::SpecMode::Head || spec.head.is_some() {
            let path = spec.head.clone().unwrap_or_else(|| {
                let stem = std::path::Path::new(&engine.source).file_stem().map(|s| s.to_string_lossy().to_string());
                pull::augur_home().join("heads").join(format!("{}.safetensors", stem.unwrap_or_else(|| "model".into())))
            });
            let saved = match path.exists() {
                false => {
                    save_to = Some(path);
                    None
                }
                true => match augur::train::checkpoint::load(&path, &engine.fingerprint) {
                    Ok(f) => {
                        save_to = Some(path);
                        Some(f)
                    }
                    Err(e) => {
                        eprintln!("augur: {e}; starting a fresh draft head (the file is left as it is)");
                        None
                    }
                },
            };
            let opts = augur::spec::head::HeadOptions { learn: !spec.no_learn, ..Default::default() };
            engine.attach_head(saved, opts)?;
            if spec.no_learn {
                save_to = None;
            }
        }
        Ok((engine, save_to))
    }
}

/// Saves the draft head after a run that trained it.
fn save_head(engine: &Engine, path: Option<std::path::PathBuf>) -> Result<()> {
    if let (Some(p), Some(f)) = (path, engine.head_file()) {
        augur::train::checkpoint::save(&p, &f)?;
    }
    Ok(())
}

impl GenArgs {
    fn params(&self) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_tokens,
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            seed: self.seed,
            chat: self.chat,
            stop_at_eos: true,
            speculate: self.spec.speculate,
            tree_budget: self.spec.tree_budget,
            max_depth: self.spec.max_depth,
        }
    }
}

fn main() {
    if std::env::var_os("NODEVICE_SELECT").is_none() {
        // quiets a Mesa layer warning on stderr
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("augur: error: {e}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Pull { id, force } => {
            let e = pull::find(&id).ok_or_else(|| {
                let ids: Vec<String> = pull::catalog().into_iter().map(|e| e.id).collect();
                Error::msg(format!("unknown model id '{id}' (known: {})", ids.join(", ")))
            })?;
            let path = pull::pull(&e, force, true)?;
            println!("{}", path.display());
        }
        Cmd::Run(a) => {
            let (mut engine, head_path) = a.model.engine_with(&a.spec)?;
            let mut stdout = std::io::stdout();
            let out = engine.generate(&a.prompt, &a.params(), |t| {
                let _ = stdout.write_all(t.as_bytes());
                let _ = stdout.flush();
                true
            })?;
            println!();
            let s = &out.stats;
            eprintln!(
                "augur: {} prompt tokens ({:.1} tok/s), {} generated ({:.1} tok/s), stop: {}",
                s.prompt_tokens,
                s.prefill_tok_s(),
                s.generated_tokens,
                s.decode_tok_s(),
                s.finish_reason
            );
            save_head(&engine, head_path)?;
        }
        Cmd::Generate { gen_args: a, json } => {
            let (mut engine, head_path) = a.model.engine_with(&a.spec)?;
            let out = engine.generate(&a.prompt, &a.params(), |_| true)?;
            if json {
                let s = &out.stats;
                let v = serde_json::json!({
                    "text": out.text,
                    "tokens": out.tokens,
                    "prompt_tokens": s.prompt_tokens,
                    "generated_tokens": s.generated_tokens,
                    "prefill_ms": s.prefill_ms,
                    "decode_ms": s.decode_ms,
                    "prefill_tok_s": s.prefill_tok_s(),
                    "decode_tok_s": s.decode_tok_s(),
                    "finish_reason": s.finish_reason,
                    "spec": out.spec.as_ref().map(|s| s.to_json()),
                    "head": engine.head.as_ref().map(|h| serde_json::json!({
                        "train_steps": h.stats.train_steps,
                        "train_ms": h.stats.train_ms,
                        "loss": h.stats.loss,
                        "samples": h.stats.samples_recorded,
                        "step": h.step,
                        "agreement": h.stats.agreement,
                        "probes": h.stats.probes,
                    })),
                    "model": engine.source,
                    "device": engine.gpu().describe(),
                });
                println!("{v}");
            } else {
                println!("{}", out.text);
            }
            save_head(&engine, head_path)?;
        }
        Cmd::Bench { model, runs, prompt_tokens, gen_tokens } => {
            let mut engine = model.engine()?;
            bench::run(&mut engine, runs.max(1), prompt_tokens.max(1), gen_tokens.max(2))?;
        }
        Cmd::BenchSpec { model, workload, questions, sources, per_category, max_tokens, spec } => {
            if spec.speculate == augur::spec::SpecMode::Off {
                return Err(Error::msg(
                    "bench-spec compares against --speculate off already; pick suffix, draft or auto",
                ));
            }
            let items = match workload.as_str() {
                "spec-bench" => bench::spec_bench_workload(&questions, per_category.max(1))?,
                "rewrite" => bench::rewrite_workload(&sources, per_category.max(1))?,
                other => return Err(Error::msg(format!("unknown --workload '{other}' (spec-bench, rewrite)"))),
            };
            let (mut engine, _) = model.engine_with(&spec)?;
            bench::spec_run(&mut engine, &items, max_tokens.max(2), spec.speculate, spec.tree_budget, spec.max_depth)?;
        }
        Cmd::Devices => {
            let list = augur::gpu::list_adapters();
            if list.is_empty() {
                return Err(Error::NoAdapter("wgpu found no adapter".into()));
            }
            for a in list {
                println!("{} | {:?} | {:?} | {} {}", a.name, a.backend, a.device_type, a.driver, a.driver_info);
            }
        }
        Cmd::Models => {
            for e in pull::catalog() {
                let p = pull::cached_path(&e);
                let state = if p.exists() { p.display().to_string() } else { "not downloaded".into() };
                println!("{:<20} {:<45} {}", e.id, e.name, state);
            }
        }
    }
    Ok(())
}

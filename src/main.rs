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
    /// Chat: each line of stdin is a message, answered with the conversation so far in the
    /// model's chat template (earlier turns are not computed again); /reset forgets it
    Chat(ChatArgs),
    /// Generate text and print it at the end (or as JSON with --json)
    Generate {
        #[command(flatten)]
        gen_args: GenArgs,
        /// Print one JSON object with the text, tokens and timings
        #[arg(long)]
        json: bool,
    },
    /// Serve an OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models,
    /// /health); requests are answered one at a time, streamed with "stream": true
    Serve(ServeArgs),
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
    /// Speculation benchmark: each prompt plain and speculated, in lockstep round by round
    /// (`--speculate off`: both arms plain, which shows the harness's own tilt)
    BenchSpec {
        #[command(flatten)]
        model: ModelArgs,
        /// spec-bench (Spec-Bench questions) or rewrite ("rewrite this code with a small
        /// change", code from this repository)
        #[arg(long, default_value = "spec-bench")]
        workload: String,
        /// Prompts file, jsonl with `category` and `turns` or `prompt` [default: spec-bench:
        /// ../shared/data/spec_bench/question.jsonl, rewrite: tests/data/rewrite.jsonl, built in]
        #[arg(long)]
        questions: Option<std::path::PathBuf>,
        /// Rewrite workload: make the prompts from the source files in this folder instead
        #[arg(long)]
        sources: Option<std::path::PathBuf>,
        /// Prompts per category (spec-bench) or files (rewrite)
        #[arg(long, default_value_t = 3)]
        per_category: usize,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// Turns of each conversation run (Spec-Bench's MT-bench questions have two; each turn
        /// follows the model's answers to the ones before) [default: all]
        #[arg(long)]
        turns: Option<usize>,
        /// Spec-Bench: first answer this many further questions of each category (after the
        /// measured ones), unmeasured, so that the suffix store holds a history as a user's does
        #[arg(long, default_value_t = 0)]
        history: usize,
        /// Sampling (both arms with the same seed)
        #[command(flatten)]
        sampling: SamplingArgs,
        #[command(flatten)]
        spec: SpecArgs,
    },
    /// Adaptive speculation over a stream with a domain shift: each request decoded plainly and
    /// by each speculator arm (suffix, static head, learning head, the controller), side by side
    BenchAdapt {
        #[command(flatten)]
        model: ModelArgs,
        /// Questions file (jsonl with `category` and `turns` or `prompt`)
        #[arg(long, default_value = augur::bench::SPEC_BENCH_QUESTIONS)]
        questions: std::path::PathBuf,
        /// A phase of the stream: comma-separated categories (repeat the flag for each phase)
        #[arg(long = "phase", default_values_t = ["qa".to_string(), "math_reasoning".to_string()])]
        phases: Vec<String>,
        /// Requests per phase
        #[arg(long, default_value_t = 30)]
        requests: usize,
        /// Requests per reported window
        #[arg(long, default_value_t = 5)]
        window: usize,
        #[arg(long, default_value_t = 64)]
        max_tokens: usize,
        /// A trained draft head used as the static arm and as the learning heads' start
        #[arg(long)]
        head: Option<std::path::PathBuf>,
        /// Arms compared, comma-separated: off, suffix, static, head, auto; each may carry its
        /// own tree budget as name:budget (the first must be off)
        #[arg(long, default_value = "off,suffix,head,auto")]
        arms: String,
        /// Tree budget of arms that name none
        #[arg(long, default_value_t = 4)]
        tree_budget: usize,
        #[arg(long, default_value_t = 3)]
        max_depth: usize,
        /// Where to write the SVG plot of tau and tokens/s over the stream
        #[arg(long, default_value = "bench-adapt.svg")]
        svg: std::path::PathBuf,
    },
    /// Train a draft head offline on a corpus: the static speculator, and the start of the
    /// adaptive head when it has no file of its own yet
    TrainHead {
        #[command(flatten)]
        model: ModelArgs,
        /// Corpus files: .jsonl (prompt / turns / text fields) or plain text
        #[arg(long, required = true, num_args = 1..)]
        corpus: Vec<std::path::PathBuf>,
        /// Output file (default: $AUGUR_HOME/heads/<model>.static.safetensors)
        #[arg(long)]
        out: Option<std::path::PathBuf>,
        /// Average passes over each training sample
        #[arg(long, default_value_t = 2.0)]
        epochs: f64,
        /// Tokens of the model's own answer to learn per prompt (0: prompts only)
        #[arg(long, default_value_t = 64)]
        generate: usize,
        /// Continue from this head file instead of a fresh head
        #[arg(long)]
        from: Option<std::path::PathBuf>,
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
    /// Do not use optional GPU features (timestamp queries, subgroups)
    #[arg(long)]
    no_gpu_features: bool,
    /// Use the first adapter whose name contains this
    #[arg(long)]
    adapter: Option<String>,
    /// Experiments: make every pass take this many ms longer per row (a device on which wide
    /// trees cost more; `auto` has to notice by measuring)
    #[arg(long, default_value_t = 0.0, hide = true)]
    simulate_ms_per_row: f64,
    /// Experiments: make every pass take this many ms longer (a device where a pass's fixed
    /// cost dominates, so wide trees are nearly free)
    #[arg(long, default_value_t = 0.0, hide = true)]
    simulate_ms_per_pass: f64,
}

#[derive(Args)]
struct GenArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt
    prompt: String,
    #[command(flatten)]
    sample: SampleArgs,
    /// Wrap the prompt in the model's chat template
    #[arg(long)]
    chat: bool,
    /// End the answer where its text first contains this string (not printed; repeatable)
    #[arg(long, value_name = "STRING")]
    stop: Vec<String>,
    #[command(flatten)]
    spec: SpecArgs,
}

#[derive(Args)]
struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A system message in place of the model's default one
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sample: SampleArgs,
    #[command(flatten)]
    spec: SpecArgs,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Address to listen on (0.0.0.0 opens it to the network; see --api-key)
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on every endpoint but /health (AUGUR_API_KEY in the
    /// environment does the same, without the key in the process list)
    #[arg(long)]
    api_key: Option<String>,
    /// Defaults for what a request does not set
    #[command(flatten)]
    sample: SampleArgs,
    #[command(flatten)]
    spec: SpecArgs,
}

#[derive(Args)]
struct SampleArgs {
    /// Most tokens generated (per answer)
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

/// How tokens are drawn (generation commands and bench-spec).
#[derive(Args)]
struct SamplingArgs {
    /// 0 = greedy
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// 0 = off
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// 1 = off
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Seed for sampling [default: 0; serve: a fresh one for each request that gives none]
    #[arg(long)]
    seed: Option<u64>,
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
        let (path, opts) = self.engine_options()?;
        Engine::load(&path, &opts)
    }

    /// The model again on `engine`'s GPU, with no suffix store: another arm of a benchmark
    /// whose arms run in lockstep.
    fn plain_twin(&self, engine: &Engine) -> Result<Engine> {
        let (path, opts) = self.engine_options()?;
        let opts = EngineOptions { suffix_store: None, ..opts };
        Engine::with_gpu(engine.gpu().clone(), augur::model::LoadedModel::load(&path)?, &opts)
    }

    fn engine_options(&self) -> Result<(std::path::PathBuf, EngineOptions)> {
        if self.ctx == 0 {
            return Err(Error::msg("--ctx must be at least 1 (the KV cache's size in tokens)"));
        }
        let path = pull::resolve_model(&self.model, true)?;
        let opts = EngineOptions {
            max_ctx: self.ctx,
            suffix_store: Some(pull::state_path(&path, "suffix", "bin")),
            cost_cache: Some(pull::state_path(&path, "cost", "json")),
            simulate: augur::spec::cost::SimulatedDevice {
                ms_per_pass: self.simulate_ms_per_pass.max(0.0),
                ms_per_row: self.simulate_ms_per_row.max(0.0),
            },
            gpu: GpuOptions {
                no_optional_features: self.no_gpu_features,
                adapter: self.adapter.clone(),
                ..Default::default()
            },
            ..Default::default()
        };
        Ok((path, opts))
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
            let stem = model_stem(&engine);
            let path = spec
                .head
                .clone()
                .unwrap_or_else(|| pull::augur_home().join("heads").join(format!("{stem}.safetensors")));
            // the offline-trained head, if any: where a head that has not learned yet starts,
            // and the guard rail (below its agreement the adaptive head stops drafting,
            // HeadOptions::min_agreement)
            let static_path = augur::train::offline::static_head_path(&pull::augur_home(), &stem);
            let static_head = match static_path.exists() {
                true => match augur::train::checkpoint::load(&static_path, &engine.fingerprint) {
                    Ok(f) => Some(f),
                    Err(e) => {
                        eprintln!("augur: {e}; no offline-trained draft head is used");
                        None
                    }
                },
                false => None,
            };
            let min_agreement = static_head.as_ref().map_or(0.0, |f| f.meta.acceptance);
            let saved = match path.exists() {
                false => {
                    save_to = Some(path);
                    static_head.filter(|_| spec.head.is_none())
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
            let opts = augur::spec::head::HeadOptions { learn: !spec.no_learn, min_agreement, ..Default::default() };
            engine.attach_head(saved, opts)?;
            if spec.no_learn {
                save_to = None;
            }
        }
        Ok((engine, save_to))
    }
}

/// The model file's name without extension (names the files learned for it).
fn model_stem(engine: &Engine) -> String {
    std::path::Path::new(&engine.source).file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().to_string())
}

/// Up to `n` items taking the categories in turn (each in file order).
fn round_robin(all: &[bench::WorkItem], cats: &[&str], n: usize) -> Vec<bench::WorkItem> {
    let mut per: Vec<std::collections::VecDeque<&bench::WorkItem>> =
        cats.iter().map(|c| all.iter().filter(|i| i.category == *c).collect()).collect();
    let mut out = Vec::new();
    while out.len() < n && per.iter().any(|q| !q.is_empty()) {
        for q in per.iter_mut() {
            if let (Some(it), true) = (q.pop_front(), out.len() < n) {
                out.push(it.clone());
            }
        }
    }
    out
}

/// Saves the draft head after a run that trained it. A failed save (disk full, no permission)
/// is reported and the run still succeeds: its output was delivered, the old file is intact, and
/// only this run's learning is lost.
fn save_head(engine: &Engine, path: Option<std::path::PathBuf>) -> Result<()> {
    if let (Some(p), Some(f)) = (path, engine.head_file())
        && let Err(e) = augur::train::checkpoint::save(&p, &f)
    {
        eprintln!("augur: warning: could not save the draft head ({e}); what it learned in this run is lost");
    }
    Ok(())
}

impl SampleArgs {
    fn params(&self, chat: bool, spec: &SpecArgs) -> GenerateParams {
        GenerateParams {
            max_tokens: self.max_tokens,
            temperature: self.sampling.temperature,
            top_k: self.sampling.top_k,
            top_p: self.sampling.top_p,
            seed: self.sampling.seed.unwrap_or(0),
            chat,
            stop_at_eos: true,
            stop: Vec::new(),
            speculate: spec.speculate,
            tree_budget: spec.tree_budget,
            max_depth: spec.max_depth,
        }
    }
}

impl GenArgs {
    /// The generation's parameters, checked before any model is loaded.
    fn params(&self) -> Result<GenerateParams> {
        let p = GenerateParams { stop: self.stop.clone(), ..self.sample.params(self.chat, &self.spec) };
        p.check()?;
        Ok(p)
    }
}

/// One line on stderr about a generation: prompt (and how much of it was cached), output, speed.
fn report(s: &augur::engine::Stats) {
    let cached = match s.cached_prompt_tokens {
        0 => String::new(),
        n => format!(", {n} cached"),
    };
    eprintln!(
        "augur: {} prompt tokens ({:.1} tok/s{cached}), {} generated ({:.1} tok/s), stop: {}",
        s.prompt_tokens,
        s.prefill_tok_s(),
        s.generated_tokens,
        s.decode_tok_s(),
        s.finish_reason
    );
}

/// `augur chat`: each line of stdin is a user turn, answered with the conversation so far.
fn chat(a: ChatArgs) -> Result<()> {
    use std::io::{BufRead, IsTerminal};
    let (mut engine, head_path) = a.model.engine_with(&a.spec)?;
    // a chat can run for long and end with Ctrl-C: a learning draft head is saved as it goes
    engine.set_head_autosave(head_path.clone(), std::time::Duration::from_secs(120));
    let params = a.sample.params(true, &a.spec);
    let mut chat = augur::chat::Chat::new(a.system.clone());
    let interactive = std::io::stdin().is_terminal();
    if interactive {
        eprintln!(
            "augur: chatting with {}; /reset forgets the conversation, Ctrl-C stops an answer, Ctrl-D quits",
            model_stem(&engine)
        );
    }
    // Ctrl-C while an answer streams stops it (the conversation keeps what was said); at the
    // prompt it quits, as it would without a handler
    let cancel = augur::engine::CancelToken::default();
    let answering = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (cancel, answering) = (cancel.clone(), answering.clone());
        let _ = ctrlc::set_handler(move || {
            if answering.load(std::sync::atomic::Ordering::Relaxed) {
                cancel.cancel();
            } else {
                eprintln!();
                std::process::exit(130);
            }
        });
    }
    let mut stdout = std::io::stdout();
    let prompt_mark = |out: &mut std::io::Stdout| {
        if interactive {
            let _ = write!(out, "> ");
            let _ = out.flush();
        }
    };
    prompt_mark(&mut stdout);
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| Error::msg(format!("could not read stdin: {e}")))?;
        let user = line.trim();
        if user.is_empty() {
            prompt_mark(&mut stdout);
            continue;
        }
        if user == "/reset" {
            chat.reset();
            eprintln!("augur: conversation forgotten");
            prompt_mark(&mut stdout);
            continue;
        }
        let ids = match chat.prompt(&engine, user, params.max_tokens) {
            Ok((ids, 0)) => ids,
            Ok((ids, dropped)) => {
                eprintln!("augur: the {dropped} oldest exchange(s) no longer fit the context and were forgotten");
                ids
            }
            Err(e) => {
                eprintln!("augur: error: {e}");
                prompt_mark(&mut stdout);
                continue;
            }
        };
        let tokenizer = engine.tokenizer.clone();
        let mut dec = augur::model::tokenizer::StreamDecoder::new();
        cancel.reset();
        answering.store(true, std::sync::atomic::Ordering::Relaxed);
        let res = engine.generate_tokens(&ids, &params, &cancel, |id| {
            let _ = stdout.write_all(dec.push(&tokenizer, id).as_bytes());
            let _ = stdout.flush();
            true
        });
        answering.store(false, std::sync::atomic::Ordering::Relaxed);
        println!();
        match res {
            Ok(out) => {
                chat.record(user, &out.text);
                if !interactive {
                    report(&out.stats);
                }
            }
            Err(e) => eprintln!("augur: error: {e}"),
        }
        prompt_mark(&mut stdout);
    }
    save_head(&engine, head_path)
}

/// `augur serve`: the OpenAI-compatible HTTP API until the process is stopped.
fn serve(a: ServeArgs) -> Result<()> {
    let defaults = a.sample.params(false, &a.spec);
    defaults.check()?;
    let api_key = a.api_key.clone().or_else(|| std::env::var("AUGUR_API_KEY").ok());
    if api_key.as_deref().is_some_and(str::is_empty) {
        return Err(Error::msg("the API key is empty; give one (--api-key or AUGUR_API_KEY) or leave it out"));
    }
    // bound before the model loads: a port in use is reported at once
    let addr = format!("{}:{}", a.host, a.port);
    let listener = std::net::TcpListener::bind(&addr)
        .map_err(|e| Error::msg(format!("could not listen on {addr} ({e}); pick another --port or --host")))?;
    // the address bound (--port 0 takes a free port)
    let addr = listener.local_addr().map_or(addr, |a| a.to_string());
    if api_key.is_none() && listener.local_addr().is_ok_and(|l| !l.ip().is_loopback()) {
        eprintln!("augur: warning: {addr} is reachable from other machines and no API key is set (--api-key)");
    }
    let (mut engine, head_path) = a.model.engine_with(&a.spec)?;
    // a server runs for long: a learning draft head is saved as it goes, and when it stops
    engine.set_head_autosave(head_path.clone(), std::time::Duration::from_secs(120));
    // a catalog id names the model as the user does; a file, by its name
    let name = match std::path::Path::new(&a.model.model).extension() {
        Some(_) => model_stem(&engine),
        None => a.model.model.clone(),
    };
    eprintln!(
        "augur: serving {name} on http://{addr}/v1 (completions, chat/completions, models; /health); Ctrl-C stops"
    );
    let opts = augur::serve::ServeOptions {
        defaults,
        log: true,
        api_key,
        seed: a.sample.sampling.seed,
        ..augur::serve::ServeOptions::new(name)
    };
    let server = augur::serve::spawn(listener, engine, opts)?;
    // Ctrl-C: end the answer in progress, save what the draft head learned, quit; a second
    // Ctrl-C quits at once
    let (stop, stopped) = std::sync::mpsc::channel();
    let pressed = std::sync::atomic::AtomicBool::new(false);
    let _ = ctrlc::set_handler(move || {
        if pressed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            std::process::exit(130);
        }
        let _ = stop.send(());
    });
    let _ = stopped.recv();
    eprintln!("augur: stopping (Ctrl-C again quits at once)");
    let engine = server.shutdown();
    save_head(&engine, head_path)
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
            let params = a.params()?;
            let (mut engine, head_path) = a.model.engine_with(&a.spec)?;
            let mut stdout = std::io::stdout();
            let out = engine.generate(&a.prompt, &params, |t| {
                let _ = stdout.write_all(t.as_bytes());
                let _ = stdout.flush();
                true
            })?;
            println!();
            report(&out.stats);
            save_head(&engine, head_path)?;
        }
        Cmd::Chat(a) => chat(a)?,
        Cmd::Serve(a) => serve(a)?,
        Cmd::Generate { gen_args: a, json } => {
            let params = a.params()?;
            let (mut engine, head_path) = a.model.engine_with(&a.spec)?;
            let out = engine.generate(&a.prompt, &params, |_| true)?;
            if json {
                let s = &out.stats;
                let v = serde_json::json!({
                    "text": out.text,
                    "tokens": out.tokens,
                    "prompt_tokens": s.prompt_tokens,
                    "cached_prompt_tokens": s.cached_prompt_tokens,
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
        Cmd::BenchSpec {
            model,
            workload,
            questions,
            sources,
            per_category,
            max_tokens,
            turns,
            history,
            sampling,
            spec,
        } => {
            let SamplingArgs { temperature, top_k, top_p, seed } = sampling;
            let seed = seed.unwrap_or(0);
            GenerateParams { temperature, top_p, ..Default::default() }.check()?;
            if turns == Some(0) {
                return Err(Error::msg("--turns must be at least 1 (or left out for all turns)"));
            }
            if per_category == 0 {
                return Err(Error::msg("--per-category must be at least 1"));
            }
            let n = per_category;
            let spec_bench_file = questions.as_deref().unwrap_or(augur::bench::SPEC_BENCH_QUESTIONS.as_ref());
            let items = match (workload.as_str(), sources) {
                ("rewrite", Some(dir)) => bench::rewrite_workload(&dir, n)?,
                ("rewrite", None) => match &questions {
                    Some(path) => bench::spec_bench_workload(path, n)?,
                    None => bench::fixed_rewrite_workload(n)?,
                },
                ("spec-bench", _) => bench::spec_bench_workload(spec_bench_file, n)?,
                (other, _) => return Err(Error::msg(format!("unknown --workload '{other}' (spec-bench, rewrite)"))),
            };
            let history = match (workload.as_str(), history) {
                (_, 0) => Vec::new(),
                ("spec-bench", h) => bench::spec_bench_slice(spec_bench_file, n, h)?,
                _ => return Err(Error::msg("--history works with --workload spec-bench only")),
            };
            let (mut engine, _) = model.engine_with(&spec)?;
            let mut plain = model.plain_twin(&engine)?;
            // with a draft model, auto is also run without it: what the draft model adds
            let mut without = match (&spec.draft, spec.speculate) {
                (Some(_), augur::spec::SpecMode::Auto) => Some(model.plain_twin(&engine)?),
                _ => None,
            };
            let run = bench::SpecRun {
                max_tokens: max_tokens.max(2),
                mode: spec.speculate,
                budget: spec.tree_budget,
                depth: spec.max_depth,
                max_turns: turns.unwrap_or(usize::MAX),
                temperature,
                top_k,
                top_p,
                seed,
            };
            bench::spec_run(&mut engine, &mut plain, without.as_mut(), &items, &history, &run)?;
        }
        Cmd::BenchAdapt {
            model,
            questions,
            phases,
            requests,
            window,
            max_tokens,
            head,
            arms,
            tree_budget,
            max_depth,
            svg,
        } => {
            let all = bench::spec_bench_workload(&questions, usize::MAX)?;
            let phases = phases
                .iter()
                .map(|p| {
                    let cats: Vec<&str> = p.split(',').map(str::trim).collect();
                    let items = round_robin(&all, &cats, requests.max(1));
                    if items.is_empty() {
                        let known: std::collections::BTreeSet<&str> = all.iter().map(|i| i.category.as_str()).collect();
                        return Err(Error::msg(format!(
                            "no questions in categories '{p}' of {} (known: {})",
                            questions.display(),
                            known.into_iter().collect::<Vec<_>>().join(", ")
                        )));
                    }
                    Ok(bench::adapt::Phase { name: p.clone(), items })
                })
                .collect::<Result<Vec<_>>>()?;
            let engine = model.engine()?;
            let static_head = match &head {
                Some(p) => Some(augur::train::checkpoint::load(p, &engine.fingerprint)?),
                None => None,
            };
            let arms = arms.split(',').map(|a| bench::adapt::Arm::parse(a, tree_budget)).collect::<Result<Vec<_>>>()?;
            // one engine per arm, on one GPU: the arms run in lockstep
            let mut engines = Vec::new();
            for _ in 1..arms.len() {
                engines.push(model.plain_twin(&engine)?);
            }
            engines.insert(0, engine);
            let b = bench::adapt::AdaptBench {
                phases,
                arms,
                window: window.max(1),
                max_tokens: max_tokens.max(2),
                max_depth,
                static_head,
                svg: Some(svg),
            };
            bench::adapt::run(engines, &b)?;
        }
        Cmd::TrainHead { model, corpus, out, epochs, generate, from } => {
            if !(epochs > 0.0 && epochs.is_finite()) {
                return Err(Error::msg("--epochs must be a positive number"));
            }
            let docs = augur::train::offline::read_corpus(&corpus)?;
            let mut engine = model.engine()?;
            let out = out
                .unwrap_or_else(|| augur::train::offline::static_head_path(&pull::augur_home(), &model_stem(&engine)));
            let start = match &from {
                Some(p) => Some(augur::train::checkpoint::load(p, &engine.fingerprint)?),
                None => None,
            };
            engine.attach_head(start, augur::spec::head::HeadOptions::default())?;
            let bar = indicatif::ProgressBar::new(docs.len() as u64);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} documents, {msg} [{elapsed}<{eta}]")
                    .expect("valid template"),
            );
            let o = augur::train::offline::OfflineOptions { generate, epochs };
            augur::train::offline::train(&mut engine, &docs, &o, |_, _, st| {
                bar.inc(1);
                bar.set_message(format!(
                    "{} steps, loss {:.3}, agreement {:.2}",
                    st.train_steps, st.loss, st.agreement
                ));
            })?;
            bar.finish();
            save_head(&engine, Some(out.clone()))?;
            let st = &engine.head.as_ref().expect("attached").stats;
            println!(
                "{}: {} steps over {} samples, loss {:.3}, agreement {:.2} ({} probes)",
                out.display(),
                st.train_steps,
                st.samples_recorded,
                st.loss,
                st.agreement,
                st.probes
            );
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

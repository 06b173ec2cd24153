//! `augur bench-adapt`: a stream of requests from one domain, then a shift to another, with every
//! request decoded once per arm, the arms in lockstep round by round (`lockstep.rs`: these
//! machines are noisy, so only ratios measured together mean anything). Each arm has an engine
//! of its own (the model loaded once per arm on one GPU), so no arm learns from another's runs.
//! Arms (`--arms`, each with its own tree budget):
//!   off       plain decoding (always first: the reference for identity and speedups)
//!   suffix    the suffix speculator alone (its store learns only from its own runs)
//!   static    a draft head loaded from a file and never trained (needs --head)
//!   head      the draft head learning online (from the static head when given, else fresh)
//!   auto      the controller, with a suffix store and a learning head of its own
//! Per window of requests it prints tau and tokens/s of each arm, the learning head's agreement
//! and training share; then how fast it recovered after the shift, and an SVG plot of tau and
//! tokens/s over the stream. Greedy, so every arm must produce the plain output: the count of
//! identical outputs is printed too.

use super::WorkItem;
use super::plot::{Plot, Series};
use crate::engine::{Engine, GenerateParams};
use crate::error::{Error, Result};
use crate::spec::SpecMode;
use crate::spec::head::HeadOptions;
use crate::spec::suffix::SuffixSpeculator;
use crate::train::checkpoint::HeadFile;

pub struct Phase {
    pub name: String,
    pub items: Vec<WorkItem>,
}

pub struct AdaptBench {
    pub phases: Vec<Phase>,
    /// The first must be `off`.
    pub arms: Vec<Arm>,
    pub window: usize,
    pub max_tokens: usize,
    pub max_depth: usize,
    pub static_head: Option<HeadFile>,
    pub svg: Option<std::path::PathBuf>,
}

/// One arm's totals over a set of requests.
#[derive(Debug, Clone, Default)]
struct Totals {
    tokens: usize,
    decode_ms: f64,
    rounds: usize,
    accepted: usize,
    train_ms: f64,
    identical: usize,
    requests: usize,
}

impl Totals {
    fn tok_s(&self) -> f64 {
        self.tokens as f64 / (self.decode_ms / 1e3).max(1e-9)
    }
    fn tau(&self) -> f64 {
        if self.rounds == 0 { 1.0 } else { (self.accepted + self.rounds) as f64 / self.rounds as f64 }
    }
    fn add(&mut self, o: &Totals) {
        self.tokens += o.tokens;
        self.decode_ms += o.decode_ms;
        self.rounds += o.rounds;
        self.accepted += o.accepted;
        self.train_ms += o.train_ms;
        self.identical += o.identical;
        self.requests += o.requests;
    }
}

/// What an arm decodes with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ArmKind {
    Off,
    Suffix,
    /// The static head, never trained (needs --head).
    Static,
    /// The draft head learning online.
    Adaptive,
    /// The controller with a suffix index and a learning head of its own.
    Auto,
}

/// One arm of the comparison: a kind and its tree budget.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Arm {
    pub kind: ArmKind,
    pub budget: usize,
}

impl Arm {
    /// Parses "off", "suffix", "static", "head", "auto", each optionally ":<budget>".
    pub fn parse(s: &str, default_budget: usize) -> Result<Arm> {
        let (name, budget) = match s.split_once(':') {
            Some((n, b)) => {
                (n, b.parse().map_err(|_| Error::msg(format!("arm '{s}': the budget after ':' is not a number")))?)
            }
            None => (s, default_budget),
        };
        let kind = match name.trim() {
            "off" => ArmKind::Off,
            "suffix" => ArmKind::Suffix,
            "static" => ArmKind::Static,
            "head" | "adaptive" => ArmKind::Adaptive,
            "auto" => ArmKind::Auto,
            other => return Err(Error::msg(format!("unknown arm '{other}' (off, suffix, static, head, auto)"))),
        };
        Ok(Arm { kind, budget })
    }

    fn name(&self) -> String {
        let base = match self.kind {
            ArmKind::Off => return "off".into(),
            ArmKind::Suffix => "suffix",
            ArmKind::Static => "static head",
            ArmKind::Adaptive => "adaptive head",
            ArmKind::Auto => return "auto".into(),
        };
        format!("{base} @{}", self.budget)
    }

    fn mode(&self) -> SpecMode {
        match self.kind {
            ArmKind::Off => SpecMode::Off,
            ArmKind::Suffix => SpecMode::Suffix,
            ArmKind::Static | ArmKind::Adaptive => SpecMode::Head,
            ArmKind::Auto => SpecMode::Auto,
        }
    }
}

/// One engine per arm (`engines[i]` decodes `b.arms[i]`), each given the speculators its arm
/// uses and no others.
pub fn run(mut engines: Vec<Engine>, b: &AdaptBench) -> Result<()> {
    if b.phases.iter().any(|p| p.items.is_empty()) {
        return Err(Error::msg("a bench-adapt phase has no requests; check --phase categories against --questions"));
    }
    if b.arms.first().map(|a| a.kind) != Some(ArmKind::Off) {
        return Err(Error::msg("bench-adapt's first arm must be 'off' (every arm is compared with it)"));
    }
    if b.static_head.is_none() && b.arms.iter().any(|a| a.kind == ArmKind::Static) {
        return Err(Error::msg("the 'static' arm needs a trained head: add --head FILE (augur train-head makes one)"));
    }
    if engines.len() != b.arms.len() {
        return Err(Error::msg("bench-adapt needs one engine per arm"));
    }
    let arms = b.arms.clone();
    for (a, engine) in arms.iter().zip(engines.iter_mut()) {
        super::warm_up(engine)?; // before the speculators, which would learn from it
        engine.suffix = None;
        engine.head = None;
        if matches!(a.kind, ArmKind::Suffix | ArmKind::Auto) {
            engine.suffix = Some(Box::new(SuffixSpeculator::in_memory()));
        }
        if matches!(a.kind, ArmKind::Static | ArmKind::Adaptive | ArmKind::Auto) {
            let learn = a.kind != ArmKind::Static;
            // the guard rail of a learning head: the static head's agreement (none: 0)
            let min_agreement = b.static_head.as_ref().filter(|_| learn).map_or(0.0, |f| f.meta.acceptance);
            engine.attach_head(b.static_head.clone(), HeadOptions { learn, min_agreement, ..Default::default() })?;
        }
    }
    // the arm whose head's agreement is reported: the adaptive head, else auto's
    let watch = arms
        .iter()
        .position(|a| a.kind == ArmKind::Adaptive)
        .or_else(|| arms.iter().position(|a| a.kind == ArmKind::Auto));

    let requests: usize = b.phases.iter().map(|p| p.items.len()).sum();
    let engine = &engines[0];
    println!(
        "device: {}\nmodel:  {}\n{requests} requests ({}), {} tokens each, greedy, chat template, depth {}; arms: {}",
        engine.gpu().describe(),
        engine.source,
        b.phases.iter().map(|p| format!("{} x {}", p.items.len(), p.name)).collect::<Vec<_>>().join(" then "),
        b.max_tokens,
        b.max_depth,
        arms.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
    );
    let base = GenerateParams { max_tokens: b.max_tokens, chat: true, max_depth: b.max_depth, ..Default::default() };
    let params: Vec<GenerateParams> =
        arms.iter().map(|a| GenerateParams { speculate: a.mode(), tree_budget: a.budget, ..base.clone() }).collect();
    // per request, per arm; plus the adaptive head's agreement after each request
    let mut per_request: Vec<Vec<Totals>> = Vec::new();
    let mut agreement: Vec<f64> = Vec::new();
    let mut phase_of: Vec<usize> = Vec::new();
    let n = arms.len();
    for (pi, phase) in b.phases.iter().enumerate() {
        for it in &phase.items {
            let ids = engines[0].encode_prompt(&it.prompt, true)?;
            let ids = &ids[..ids.len().min(engines[0].model.max_ctx / 2)];
            // which thread runs which arm, and which arm starts, rotate from request to request
            // (either alone tilts a comparison by 1-2% on these machines)
            let r = per_request.len();
            let arms = engines.iter_mut().zip(&params).collect();
            let outs = super::lockstep::side_by_side(arms, ids, (r + r / n) % n, r % n)?;
            let mut row = vec![Totals::default(); n];
            let mut outputs: Vec<Vec<u32>> = vec![Vec::new(); n];
            for (a, out) in outs.into_iter().enumerate() {
                let s = out.spec.clone().unwrap_or_default();
                row[a] = Totals {
                    tokens: out.stats.generated_tokens.saturating_sub(1),
                    decode_ms: out.stats.decode_ms,
                    rounds: s.rounds,
                    accepted: s.accepted,
                    train_ms: s.train_ms,
                    identical: 0,
                    requests: 1,
                };
                outputs[a] = out.tokens;
            }
            // arm 0 is plain decoding: every other arm must give its output
            for a in 0..n {
                row[a].identical = (outputs[a] == outputs[0]) as usize;
            }
            agreement.push(watch.and_then(|w| engines[w].head.as_ref()).map_or(0.0, |h| h.stats.agreement));
            per_request.push(row);
            phase_of.push(pi);
        }
    }
    let engine = &engines[0];

    // windows never straddle a phase boundary
    let mut windows: Vec<(usize, usize)> = Vec::new(); // (first request, end)
    let mut start = 0;
    for i in 1..=per_request.len() {
        if i == per_request.len() || i - start == b.window.max(1) || phase_of[i] != phase_of[start] {
            windows.push((start, i));
            start = i;
        }
    }
    let ai = watch.unwrap_or(arms.len() - 1);
    let mut header = String::from("| requests | phase |");
    let mut rule = String::from("|---|---|");
    for a in &arms {
        header += &format!(" {} tok/s | tau |", a.name());
        rule += "---|---|";
    }
    println!("\n{header} {0}/off | {0} agreement | {0} train share |\n{rule}---|---|---|", arms[ai].name());
    let mut win_tot: Vec<Vec<Totals>> = Vec::new();
    for &(s, e) in &windows {
        let mut tot = vec![Totals::default(); arms.len()];
        for r in &per_request[s..e] {
            for (t, x) in tot.iter_mut().zip(r) {
                t.add(x);
            }
        }
        let mut line = format!("| {}-{} | {} |", s + 1, e, b.phases[phase_of[s]].name);
        for t in &tot {
            line += &format!(" {:.2} | {:.2} |", t.tok_s(), t.tau());
        }
        let ad = &tot[ai];
        println!(
            "{line} {:.2}x | {:.2} | {:.1}% |",
            ad.tok_s() / tot[0].tok_s(),
            agreement[e - 1],
            100.0 * ad.train_ms / ad.decode_ms.max(1e-9)
        );
        win_tot.push(tot);
    }

    println!(
        "\n| phase | requests | {} | identical outputs |",
        arms.iter().map(|a| format!("{} tok/s (tau)", a.name())).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|---|{}---|", "---|".repeat(arms.len()));
    for (pi, p) in b.phases.iter().enumerate() {
        let mut tot = vec![Totals::default(); arms.len()];
        for (r, _) in per_request.iter().zip(&phase_of).filter(|(_, ph)| **ph == pi) {
            for (t, x) in tot.iter_mut().zip(r) {
                t.add(x);
            }
        }
        let cells: Vec<String> = tot.iter().map(|t| format!("{:.2} ({:.2})", t.tok_s(), t.tau())).collect();
        let ident: usize = tot[1..].iter().map(|t| t.identical).sum();
        println!(
            "| {} | {} | {} | {ident}/{} |",
            p.name,
            tot[0].requests,
            cells.join(" | "),
            tot[0].requests * (arms.len() - 1)
        );
    }
    shift_recovery(&per_request, &phase_of, ai, b.window.max(1));
    controller_verdict(&arms, &per_request, &phase_of, &b.phases);

    if let Some(path) = &b.svg {
        let x: Vec<f64> = windows.iter().map(|&(_, e)| e as f64).collect();
        let colors = ["#555555", "#2a7ab0", "#b07a2a", "#c0392b", "#27ae60", "#8e44ad", "#16a085", "#d35400"];
        let series = |f: &dyn Fn(&Totals) -> f64| -> Vec<Series> {
            arms.iter()
                .enumerate()
                .map(|(i, a)| Series {
                    name: a.name(),
                    color: colors[i.min(colors.len() - 1)].to_string(),
                    points: x.iter().zip(&win_tot).map(|(&x, t)| (x, f(&t[i]))).collect(),
                })
                .collect()
        };
        let shifts: Vec<f64> =
            (1..per_request.len()).filter(|&i| phase_of[i] != phase_of[i - 1]).map(|i| i as f64).collect();
        let title = format!("{} on {}", engine.source, engine.gpu().info.name);
        let svg = super::plot::two_panels(
            &title,
            Plot { y_label: "tau (tokens per round)".into(), series: series(&|t| t.tau()) },
            Plot { y_label: "decode tokens/s".into(), series: series(&|t| t.tok_s()) },
            "requests",
            &shifts,
        );
        crate::util::write_atomic(path, svg.as_bytes())?;
        println!("\nplot: {}", path.display());
    }
    Ok(())
}

/// The controller (an `auto` arm) against every single-speculator arm (suffix, static, head,
/// whatever budget each was given): per phase, its tokens/s over the best of them there; over
/// the whole stream, over each of them.
fn controller_verdict(arms: &[Arm], per_request: &[Vec<Totals>], phase_of: &[usize], phases: &[Phase]) {
    let Some(auto) = arms.iter().position(|a| a.kind == ArmKind::Auto) else { return };
    let singles: Vec<usize> =
        (0..arms.len()).filter(|&i| !matches!(arms[i].kind, ArmKind::Auto | ArmKind::Off)).collect();
    if singles.is_empty() {
        return;
    }
    let totals = |phase: Option<usize>| {
        let mut tot = vec![Totals::default(); arms.len()];
        for (r, &ph) in per_request.iter().zip(phase_of) {
            if phase.is_none_or(|p| p == ph) {
                for (t, x) in tot.iter_mut().zip(r) {
                    t.add(x);
                }
            }
        }
        tot
    };
    println!("\ncontroller ({}) against the single speculators:", arms[auto].name());
    for (pi, p) in phases.iter().enumerate() {
        let tot = totals(Some(pi));
        let best = *singles.iter().max_by(|&&a, &&b| tot[a].tok_s().total_cmp(&tot[b].tok_s())).unwrap();
        println!(
            "  phase {}: {:.2}x the best single speculator there ({})",
            p.name,
            tot[auto].tok_s() / tot[best].tok_s(),
            arms[best].name()
        );
    }
    let tot = totals(None);
    let each: Vec<String> =
        singles.iter().map(|&i| format!("{:.2}x {}", tot[auto].tok_s() / tot[i].tok_s(), arms[i].name())).collect();
    println!("  whole stream: {}", each.join(", "));
}

/// After each phase shift: the adaptive head's speedup over plain decoding in the last window
/// before the shift, and how many requests after it until a window of the same size is back to
/// at least 90% of that speedup. (Speedups, not raw tokens/s: prompts of another domain decode
/// at another speed even without speculation.)
fn shift_recovery(per_request: &[Vec<Totals>], phase_of: &[usize], ai: usize, window: usize) {
    let speedup = |rs: &[Vec<Totals>]| {
        let (mut off, mut ad) = (Totals::default(), Totals::default());
        for r in rs {
            off.add(&r[0]);
            ad.add(&r[ai]);
        }
        ad.tok_s() / off.tok_s()
    };
    for i in 1..per_request.len() {
        if phase_of[i] == phase_of[i - 1] {
            continue;
        }
        let before = speedup(&per_request[i.saturating_sub(window)..i]);
        let end = (i..per_request.len()).take_while(|&j| phase_of[j] == phase_of[i]).last().unwrap_or(i) + 1;
        let back = (i + window..=end).find(|&j| speedup(&per_request[j - window..j]) >= 0.9 * before);
        match back {
            Some(j) => println!(
                "\nshift at request {}: adaptive speedup {before:.2}x before; back to >= 90% of it in the window ending {} requests after the shift",
                i + 1,
                j - i
            ),
            None => println!(
                "\nshift at request {}: adaptive speedup {before:.2}x before; not back to 90% of it within the {} requests of the new phase",
                i + 1,
                end - i
            ),
        }
    }
}

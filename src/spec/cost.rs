//! What a verification pass of M rows costs on this device, measured: a start-up calibration
//! times passes of a few sizes (cached per model and device, so it runs once), and every round
//! afterwards rescales the curve by what its pass really took, so the model follows the machine
//! getting busier or the clock changing, while keeping the curve's shape.
//!
//! The context counts too: every row of a pass attends over the whole context, so a row costs
//! more at 1000 tokens of context than at 100 (on lavapipe a SmolLM2 step takes ~45 ms at 100
//! tokens and ~80 ms at 1000, and each extra verification row about half of that again). The
//! calibration also times passes over a long context, which gives a cost per row and key of
//! context; without it, rows priced at short contexts looked cheap on long prompts
//! (summarization) and the controller verified trees that did not pay.
//!
//! Wall-clock time of the whole submit-and-read-back is measured, not GPU timestamps: it is what
//! a round costs the user, and on small passes the submission and readback are a large part of
//! it (timestamp queries, where the device has them, are used by `augur bench` for per-kernel
//! times).

use crate::error::Result;
use crate::model::gpu::{GpuModel, PassSpec, Sampling};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Row counts the calibration times (clamped to what a pass holds): every size a round of the
/// default tree budget can have, since the kernels' row blocks make the curve uneven between
/// them (on lavapipe 6 rows cost less than halfway from 5 to 8, and 8 more than 7 by a block's
/// worth), then 16 for the slope beyond.
pub const CALIBRATION_ROWS: [usize; 10] = [1, 2, 3, 4, 5, 6, 7, 8, 9, 16];
/// Rows of the passes timed over a long context (the difference from the same passes over an
/// empty context is the attention over that context).
const CONTEXT_ROWS: usize = 4;
/// The long context the calibration times, at most (clamped to what the KV cache holds).
const CONTEXT_KEYS: usize = 768;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostModel {
    /// (rows, milliseconds) from the calibration over an empty context, rows ascending (a
    /// calibration's lower hull, `from_calibration`).
    pub curve: Vec<(usize, f64)>,
    /// Milliseconds that one row's attention adds per token of context (calibrated).
    #[serde(default)]
    pub per_row_key_ms: f64,
    /// The context length of the round being priced (`at_context`).
    #[serde(skip)]
    context: usize,
    /// Measured over modelled time, exponentially weighted over rounds.
    #[serde(skip, default = "one")]
    pub scale: f64,
    /// Per row count: how far the rounds of that size really took from the model (measured over
    /// modelled-and-scaled, exponentially weighted) and how many rounds; a size measured often
    /// enough is priced with its own correction, not by the calibration's shape alone.
    #[serde(skip)]
    seen: Vec<(f64, u32)>,
}

/// Rounds of one size before its own correction replaces the calibrated shape.
const TRUSTED_AFTER: u32 = 4;

fn one() -> f64 {
    1.0
}

impl CostModel {
    pub fn from_curve(mut curve: Vec<(usize, f64)>) -> CostModel {
        curve.sort_by_key(|p| p.0);
        curve.dedup_by_key(|p| p.0);
        CostModel { curve, per_row_key_ms: 0.0, context: 0, scale: 1.0, seen: Vec::new() }
    }

    /// The model a calibration's measured curve gives: its lower convex hull, so that a size
    /// that timed slower than the sizes around it (on a shared machine, a slow spell can cover
    /// all of a calibration's rounds of one size: session 20's three calibrations of one build
    /// priced 7 rows at 2.29x, 2.30x and 2.91x a 1-row pass) is priced from its neighbours. The
    /// errors left are on the cheap side, and those correct themselves: a size priced too low
    /// gets chosen, and its rounds' times replace the price (`observe`); a size priced too high
    /// was never chosen again, so nothing ever corrected it.
    pub fn from_calibration(curve: Vec<(usize, f64)>) -> CostModel {
        let mut c = CostModel::from_curve(curve);
        c.curve = lower_hull(&c.curve);
        c
    }

    pub fn with_context_cost(mut self, per_row_key_ms: f64) -> CostModel {
        self.per_row_key_ms = per_row_key_ms.max(0.0);
        self
    }

    /// The rounds priced and observed next have `n_past` tokens of context.
    pub fn at_context(&mut self, n_past: usize) {
        self.context = n_past;
    }

    /// The calibration's time for `m` rows over an empty context: linear between measured
    /// sizes, beyond the last one extended by its last slope.
    fn curve_ms(&self, m: usize) -> f64 {
        let c = &self.curve;
        match c.len() {
            0 => m as f64,
            1 => c[0].1 * m as f64 / c[0].0 as f64,
            _ => {
                let i = c.iter().position(|p| p.0 >= m).unwrap_or(c.len() - 1).max(1);
                let ((m0, t0), (m1, t1)) = (c[i - 1], c[i]);
                let slope = (t1 - t0) / (m1 - m0) as f64;
                (t0 + slope * (m as f64 - m0 as f64)).max(c[0].1 * 0.5)
            }
        }
    }

    /// The calibrated time for `m` rows at the current context.
    fn model_ms(&self, m: usize) -> f64 {
        self.curve_ms(m) + self.per_row_key_ms * (m * self.context) as f64
    }

    fn correction(&self, m: usize) -> f64 {
        match self.seen.get(m) {
            Some(&(r, n)) if n >= TRUSTED_AFTER => r,
            _ => 1.0,
        }
    }

    /// Expected milliseconds of a verification round with `m` rows at the current context.
    pub fn verify_ms(&self, m: usize) -> f64 {
        self.model_ms(m) * self.scale * self.correction(m)
    }

    /// A round of `m` rows at the current context took `ms`.
    pub fn observe(&mut self, m: usize, ms: f64) {
        let model = self.model_ms(m);
        if model > 0.0 && ms.is_finite() && ms > 0.0 {
            // the speed of the machine, from rounds of every size...
            let r = (ms / model).clamp(0.1, 10.0);
            self.scale += 0.1 * (r - self.scale);
            if self.seen.len() <= m {
                self.seen.resize(m + 1, (1.0, 0));
            }
            // ...and how far this size sits from it (what the calibration's shape got wrong)
            let shape = (r / self.scale).clamp(0.1, 10.0);
            let (avg, n) = &mut self.seen[m];
            *avg = if *n == 0 { shape } else { *avg + 0.2 * (shape - *avg) };
            *n += 1;
        }
    }
}

/// The greatest convex function under the points (sorted by x, distinct x), at the same x.
fn lower_hull(points: &[(usize, f64)]) -> Vec<(usize, f64)> {
    let mut hull: Vec<(usize, f64)> = Vec::new();
    for &p in points {
        // drop the last vertex while it lies on or above the line from the one before it to p
        while let [.., a, b] = hull[..] {
            let above = (b.1 - a.1) * (p.0 - a.0) as f64 >= (p.1 - a.1) * (b.0 - a.0) as f64;
            if !above {
                break;
            }
            hull.pop();
        }
        hull.push(p);
    }
    points
        .iter()
        .map(|&(x, _)| {
            let i = hull.iter().position(|v| v.0 >= x).unwrap_or(hull.len() - 1);
            if hull[i].0 == x || i == 0 {
                return (x, hull[i].1);
            }
            let (a, b) = (hull[i - 1], hull[i]);
            (x, a.1 + (b.1 - a.1) * (x - a.0) as f64 / (b.0 - a.0) as f64)
        })
        .collect()
}

/// Rounds of the calibration, each timing every size once.
const CALIBRATION_ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    crate::util::median_min_max(&mut v).0
}

/// Times verification-shaped passes (a chain of m - 1 drafts after the root, logits for every
/// row, acceptance) of each calibration size over an empty context, and passes of
/// `CONTEXT_ROWS` rows over a long context for the cost of attention per row and key. The
/// sizes are timed in turn, round after round, and each size is priced by the median over
/// rounds of its ratio to the same round's 1-row pass: a machine that slows down for a while
/// shifts whole rounds, not the curve's shape. (Timing each size in a block, best of two, once
/// gave 1, 2 and 3 rows the same price when the 1-row block ran slow, and the controller then
/// verified 1-node guesses at 26% as if the second row were free.) Made non-decreasing in m.
/// Writes KV slots 0..16 and a few at the long context, and the pass buffers, so it runs
/// before a request's prefill. `sim` simulates another device (see `EngineOptions::simulate`).
pub fn calibrate(model: &GpuModel, sim: SimulatedDevice) -> Result<CostModel> {
    let time = |m: usize, n_past: usize| -> Result<f64> {
        let t = Instant::now();
        verification_pass(model, m, n_past)?;
        sim.delay(m);
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let sizes = calibration_sizes(model);
    let rows = CONTEXT_ROWS.min(model.max_batch);
    let keys = CONTEXT_KEYS.min(model.max_ctx.saturating_sub(rows));
    let long = keys >= 64;
    warm_up(model)?;
    if long {
        time(rows, keys)?;
    }
    let (mut ones, mut ratios, mut context) = (Vec::new(), vec![Vec::new(); sizes.len()], Vec::new());
    for _ in 0..CALIBRATION_ROUNDS {
        let one = time(1, 0)?;
        ones.push(one);
        for (i, &m) in sizes.iter().enumerate() {
            ratios[i].push(if m == 1 { 1.0 } else { time(m, 0)? / one });
        }
        if long {
            // the same rows over the long context against over none, back to back
            let short = time(rows, 0)?;
            context.push((time(rows, keys)? - short) / one);
        }
    }
    let one = median(ones);
    let mut curve: Vec<(usize, f64)> = Vec::new();
    for (&m, r) in sizes.iter().zip(ratios) {
        let floor = curve.last().map_or(0.0, |p| p.1);
        curve.push((m, (one * median(r)).max(floor)));
    }
    let per_row_key_ms = if long { (one * median(context) / (rows * keys) as f64).max(0.0) } else { 0.0 };
    Ok(CostModel::from_calibration(curve).with_context_cost(per_row_key_ms))
}

/// A greedy verification pass of a chain of `m` rows after `n_past` cached tokens (writing
/// those KV slots), waited for.
fn verification_pass(model: &GpuModel, m: usize, n_past: usize) -> Result<()> {
    let greedy = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, draw: 0 };
    let tokens: Vec<u32> = (0..m as u32).map(|i| 100 + i).collect();
    let tree = super::TokenTree::chain(&tokens[1..], super::Drafter::Suffix);
    let spec = PassSpec {
        m,
        n_past,
        tree: Some(tree.rows(n_past)),
        logits_rows: 0..m,
        accept: Some(greedy),
        ..Default::default()
    };
    model.set_tokens(&tokens);
    model.run(&spec)
}

/// A verification pass of every calibrated size once: every pipeline compiled, every buffer
/// touched, and on a driver that compiles a kernel's code at its first dispatch (llvmpipe),
/// that code compiled. Writes KV slots 0..16, so it runs before a request's prefill.
pub fn warm_up(model: &GpuModel) -> Result<()> {
    for m in calibration_sizes(model) {
        verification_pass(model, m, 0)?;
    }
    Ok(())
}

/// The sizes of `CALIBRATION_ROWS` that a pass of `model` holds.
pub(crate) fn calibration_sizes(model: &GpuModel) -> Vec<usize> {
    CALIBRATION_ROWS.into_iter().filter(|&m| m <= model.max_batch.min(64).min(model.max_ctx)).collect()
}

/// For experiments: a device whose passes cost more, by a fixed amount per pass (a device where
/// launching and reading back dominate, so wide trees are nearly free) and per row (one where
/// wide trees cost more than here). The delay is real, so the controller has to measure it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SimulatedDevice {
    pub ms_per_pass: f64,
    pub ms_per_row: f64,
}

impl SimulatedDevice {
    /// Waits what a pass of `rows` rows costs on top of the real device.
    pub fn delay(&self, rows: usize) {
        let ms = self.ms_per_pass + self.ms_per_row * rows as f64;
        if ms > 0.0 {
            std::thread::sleep(std::time::Duration::from_secs_f64(ms / 1e3));
        }
    }
}

/// A calibration kept on disk for one model on one device.
#[derive(Serialize, Deserialize)]
struct Cached {
    model: String,
    device: String,
    simulated: SimulatedDevice,
    curve: Vec<(usize, f64)>,
    /// Absent in calibrations made before the context was priced: those are redone.
    per_row_key_ms: Option<f64>,
    /// The kernels it timed (`kernels_fingerprint`): other kernels cost otherwise, so a
    /// calibration from another version of augur is redone. Absent in older files.
    #[serde(default)]
    kernels: String,
}

/// The calibration from `path` when it was made for this model and device, else a new one
/// (saved there; a failed save is reported and otherwise ignored).
pub fn calibrated(
    model: &GpuModel,
    fingerprint: &str,
    path: Option<&std::path::Path>,
    sim: SimulatedDevice,
) -> Result<CostModel> {
    if let Some(cost) = cached(model, fingerprint, path, sim) {
        return Ok(cost);
    }
    let device = model.gpu.describe();
    let cost = calibrate(model, sim)?;
    if let Some(p) = path {
        let c = Cached {
            model: fingerprint.into(),
            device,
            simulated: sim,
            curve: cost.curve.clone(),
            per_row_key_ms: Some(cost.per_row_key_ms),
            kernels: crate::gpu::kernels::kernels_fingerprint(),
        };
        let json = serde_json::to_string_pretty(&c).expect("plain data");
        if let Err(e) = crate::util::write_atomic(p, json.as_bytes()) {
            eprintln!("augur: could not keep the cost calibration ({e}); it will run again next time");
        }
    }
    Ok(cost)
}

/// The calibration kept at `path`, if it was made for this model, device and kernels.
pub fn cached(
    model: &GpuModel,
    fingerprint: &str,
    path: Option<&std::path::Path>,
    sim: SimulatedDevice,
) -> Option<CostModel> {
    let text = std::fs::read_to_string(path?).ok()?;
    let c = serde_json::from_str::<Cached>(&text).ok()?;
    let fits = c.model == fingerprint
        && c.device == model.gpu.describe()
        && c.simulated == sim
        && c.kernels == crate::gpu::kernels::kernels_fingerprint()
        && c.curve.iter().map(|p| p.0).eq(calibration_sizes(model));
    let per_key = c.per_row_key_ms.filter(|_| fits)?;
    Some(CostModel::from_calibration(c.curve).with_context_cost(per_key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interpolates_extrapolates_and_rescales() {
        let mut c = CostModel::from_curve(vec![(4, 20.0), (1, 10.0), (2, 12.0)]);
        assert_eq!(c.verify_ms(1), 10.0);
        assert_eq!(c.verify_ms(3), 16.0);
        assert_eq!(c.verify_ms(6), 28.0); // the last slope, 4 ms per row
        for _ in 0..200 {
            c.observe(2, 24.0); // the device got twice as slow
        }
        assert!((c.verify_ms(4) - 40.0).abs() < 0.5, "{}", c.verify_ms(4));
        // a size seen often is priced by its own measurements, whatever the curve says
        for _ in 0..50 {
            c.observe(3, 100.0);
        }
        assert!((c.verify_ms(3) - 100.0).abs() < 0.5, "{}", c.verify_ms(3));
    }

    /// A size that timed slow is priced from its neighbours; a convex curve is kept as it is.
    #[test]
    fn a_calibration_is_priced_by_its_lower_convex_hull() {
        // session 20's run: 7 rows timed as 9 did
        let raw = vec![
            (1, 80.0),
            (2, 97.0),
            (3, 118.0),
            (4, 121.0),
            (5, 143.0),
            (6, 167.0),
            (7, 241.0),
            (8, 241.0),
            (9, 241.0),
            (16, 415.0),
        ];
        let c = CostModel::from_calibration(raw.clone());
        let slope = (241.0 - 167.0) / 3.0;
        assert!((c.verify_ms(7) - (167.0 + slope)).abs() < 1e-9, "{}", c.verify_ms(7));
        assert!((c.verify_ms(8) - (167.0 + 2.0 * slope)).abs() < 1e-9);
        assert_eq!(c.verify_ms(9), 241.0);
        assert_eq!(c.verify_ms(16), 415.0);
        // 2 and 3 lie above the line from 1 to 4 (4 rows timed nearly as 3 did): priced on it
        assert!((c.verify_ms(2) - (80.0 + 41.0 / 3.0)).abs() < 1e-9, "{}", c.verify_ms(2));
        assert!((c.verify_ms(3) - (80.0 + 82.0 / 3.0)).abs() < 1e-9, "{}", c.verify_ms(3));
        // never above the measurement, and non-decreasing
        for (m, t) in &raw {
            assert!(c.verify_ms(*m) <= *t + 1e-9);
        }
        for m in 1..16 {
            assert!(c.verify_ms(m + 1) >= c.verify_ms(m));
        }
        let convex = vec![(1, 10.0), (2, 12.0), (3, 15.0), (5, 22.0)];
        assert_eq!(CostModel::from_calibration(convex.clone()).curve, convex);
    }

    /// Rows cost more over a long context, by the calibrated price per row and key, and the
    /// model learns the machine's speed at one context without mispricing another.
    #[test]
    fn rows_over_a_long_context_cost_more() {
        let mut c = CostModel::from_curve(vec![(1, 10.0), (2, 12.0), (4, 16.0)]).with_context_cost(0.01);
        assert_eq!(c.verify_ms(2), 12.0);
        c.at_context(1000);
        assert!((c.verify_ms(1) - 20.0).abs() < 1e-9);
        assert!((c.verify_ms(2) - 32.0).abs() < 1e-9, "{}", c.verify_ms(2));
        // an extra row is dearer relative to a step: 0.2 of one at no context, 0.6 at 1000
        assert!(c.verify_ms(2) / c.verify_ms(1) > 1.5);
        // the device runs at half speed over a long context; the price at a short one follows
        for _ in 0..100 {
            c.observe(1, 40.0);
        }
        c.at_context(0);
        assert!((c.verify_ms(2) - 24.0).abs() < 0.5, "{}", c.verify_ms(2));
    }
}

//! What a verification pass of M rows costs on this device, measured: a start-up calibration
//! times passes of a few sizes (cached per model and device, so it runs once), and every round
//! afterwards rescales the curve by what its pass really took, so the model follows the context
//! growing, the machine getting busier or the clock changing, while keeping the curve's shape.
//!
//! Wall-clock time of the whole submit-and-read-back is measured, not GPU timestamps: it is what
//! a round costs the user, and on small passes the submission and readback are a large part of
//! it (timestamp queries, where the device has them, are used by `augur bench` for per-kernel
//! times).

use crate::error::Result;
use crate::model::gpu::{GpuModel, PassSpec, Sampling};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Row counts the calibration times (clamped to what a pass holds).
pub const CALIBRATION_ROWS: [usize; 7] = [1, 2, 3, 4, 5, 8, 16];

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CostModel {
    /// (rows, milliseconds) from the calibration, rows ascending.
    pub curve: Vec<(usize, f64)>,
    /// Measured over modelled time, exponentially weighted over rounds.
    #[serde(skip, default = "one")]
    pub scale: f64,
    /// Per row count: measured milliseconds (exponentially weighted) and how many rounds; a size
    /// measured often enough is priced by what it really took, not by the calibration's shape.
    #[serde(skip)]
    seen: Vec<(f64, u32)>,
}

/// Rounds of one size before its own measurements replace the calibrated curve.
const TRUSTED_AFTER: u32 = 4;

fn one() -> f64 {
    1.0
}

impl CostModel {
    pub fn from_curve(mut curve: Vec<(usize, f64)>) -> CostModel {
        curve.sort_by_key(|p| p.0);
        curve.dedup_by_key(|p| p.0);
        CostModel { curve, scale: 1.0, seen: Vec::new() }
    }

    /// The calibration's time for `m` rows: linear between measured sizes, beyond the last one
    /// extended by its last slope.
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

    /// Expected milliseconds of a verification round with `m` rows.
    pub fn verify_ms(&self, m: usize) -> f64 {
        match self.seen.get(m) {
            Some(&(ms, n)) if n >= TRUSTED_AFTER => ms,
            _ => self.curve_ms(m) * self.scale,
        }
    }

    /// A round of `m` rows took `ms`.
    pub fn observe(&mut self, m: usize, ms: f64) {
        let model = self.curve_ms(m);
        if model > 0.0 && ms.is_finite() && ms > 0.0 {
            let r = (ms / model).clamp(0.1, 10.0);
            self.scale += 0.1 * (r - self.scale);
            if self.seen.len() <= m {
                self.seen.resize(m + 1, (0.0, 0));
            }
            let (avg, n) = &mut self.seen[m];
            *avg = if *n == 0 { ms } else { *avg + 0.2 * (ms - *avg) };
            *n += 1;
        }
    }
}

/// Times verification-shaped passes (a chain of m - 1 drafts after the root, logits for every
/// row, acceptance) of each calibration size: the faster of two after a warm-up (the least
/// disturbed by other work), made non-decreasing in m. Writes KV
/// slots 0..16 and the pass buffers, so it runs before a request's prefill. `sim` simulates
/// another device (see `EngineOptions::simulate`).
pub fn calibrate(model: &GpuModel, sim: SimulatedDevice) -> Result<CostModel> {
    let mut curve = Vec::new();
    let greedy = Sampling { temperature: 0.0, top_k: 0, top_p: 1.0, seed: 0, draw: 0 };
    for m in CALIBRATION_ROWS.into_iter().filter(|&m| m <= model.max_batch.min(64).min(model.max_ctx)) {
        let tokens: Vec<u32> = (0..m as u32).map(|i| 100 + i).collect();
        let tree = super::TokenTree::chain(&tokens[1..], super::Drafter::Suffix);
        let spec = PassSpec {
            m,
            n_past: 0,
            tree: Some(tree.rows(0)),
            logits_rows: 0..m,
            accept: Some(greedy),
            compact: false,
        };
        let mut times = Vec::new();
        for rep in 0..3 {
            model.set_tokens(&tokens);
            let t = Instant::now();
            model.run(&spec)?;
            sim.delay(m);
            if rep > 0 {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let fastest = times.iter().cloned().fold(f64::MAX, f64::min);
        let floor = curve.last().map_or(0.0, |p: &(usize, f64)| p.1);
        curve.push((m, fastest.max(floor)));
    }
    Ok(CostModel::from_curve(curve))
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
}

/// The calibration from `path` when it was made for this model and device, else a new one
/// (saved there; a failed save is reported and otherwise ignored).
pub fn calibrated(
    model: &GpuModel,
    fingerprint: &str,
    path: Option<&std::path::Path>,
    sim: SimulatedDevice,
) -> Result<CostModel> {
    let device = model.gpu.describe();
    if let Some(p) = path
        && let Ok(text) = std::fs::read_to_string(p)
        && let Ok(c) = serde_json::from_str::<Cached>(&text)
        && c.model == fingerprint
        && c.device == device
        && c.simulated == sim
        && !c.curve.is_empty()
    {
        return Ok(CostModel::from_curve(c.curve));
    }
    let cost = calibrate(model, sim)?;
    if let Some(p) = path {
        let c = Cached { model: fingerprint.into(), device, simulated: sim, curve: cost.curve.clone() };
        let json = serde_json::to_string_pretty(&c).expect("plain data");
        if let Err(e) = crate::util::write_atomic(p, json.as_bytes()) {
            eprintln!("augur: could not keep the cost calibration ({e}); it will run again next time");
        }
    }
    Ok(cost)
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
}

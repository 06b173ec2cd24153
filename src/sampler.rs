//! The CPU twin of the sampling in shaders/accept.wgsl: the same rule (temperature, top-k,
//! top-p, a draw from a counter-based hash), in f64. Used to test the kernel and as the
//! reference distribution for the lossless acceptance rule.

/// PCG-style integer hash, identical to `hash` in accept.wgsl.
pub fn hash(x: u32) -> u32 {
    let s = x.wrapping_mul(747796405).wrapping_add(2891336453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277803737);
    (w >> 22) ^ w
}

/// The uniform in [0, 1) for (seed, draw) and decision `salt`, as the kernel computes it: the
/// generated token with index `draw` is drawn with salt 0, by whichever pass samples it.
pub fn uniform(seed: u32, draw: u32, salt: u32) -> f64 {
    (hash(seed ^ hash(draw ^ hash(salt))) >> 8) as f64 / 16777216.0
}

/// The distribution the sampler draws from: probabilities per token after temperature, top-k and
/// top-p (zero for dropped tokens). Temperature <= 0 gives a one-hot argmax.
pub fn distribution(logits: &[f32], temperature: f32, top_k: u32, top_p: f32) -> Vec<f64> {
    let n = logits.len();
    let amax = crate::model::cpu::argmax(logits) as usize;
    let mut p = vec![0f64; n];
    if temperature <= 0.0 {
        p[amax] = 1.0;
        return p;
    }
    let mx = logits[amax] as f64;
    let z: Vec<f64> = logits.iter().map(|&l| (l as f64 - mx) / temperature as f64).collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| z[b].partial_cmp(&z[a]).unwrap().then(a.cmp(&b)));
    let k = if top_k > 0 && (top_k as usize) < n { top_k as usize } else { n };
    // ties at the k-th value are kept, as the kernel's threshold keeps them
    let thr_k = z[order[k - 1]];
    let kept: Vec<usize> = order.iter().copied().filter(|&i| z[i] >= thr_k).collect();
    let mass: f64 = kept.iter().map(|&i| z[i].exp()).sum();
    let mut thr = thr_k;
    if top_p < 1.0 {
        // smallest prefix (by value) whose mass reaches top_p; ties kept
        let mut acc = 0.0;
        for &i in &kept {
            acc += z[i].exp();
            if acc >= top_p as f64 * mass {
                thr = z[i];
                break;
            }
        }
    }
    let total: f64 = kept.iter().filter(|&&i| z[i] >= thr).map(|&i| z[i].exp()).sum();
    for &i in &kept {
        if z[i] >= thr {
            p[i] = z[i].exp() / total;
        }
    }
    p
}

/// Samples as the kernel does: walk tokens in index order until the cumulative mass passes u.
pub fn sample_cpu(logits: &[f32], temperature: f32, top_k: u32, top_p: f32, seed: u32, draw: u32) -> u32 {
    let p = distribution(logits, temperature, top_k, top_p);
    let u = uniform(seed, draw, 0);
    let mut acc = 0.0;
    let mut last = 0;
    for (i, &pi) in p.iter().enumerate() {
        if pi > 0.0 {
            acc += pi;
            last = i;
            if u < acc {
                return i as u32;
            }
        }
    }
    last as u32
}

//! The CPU twin of the sampling in shaders/accept.wgsl: the same rule (temperature, top-k,
//! top-p, a Gumbel-max draw with noise from a counter-based hash), in f64. Used to test the kernel and as the
//! reference distribution for the lossless acceptance rule.

/// PCG-style integer hash, identical to `hash` in accept.wgsl.
pub fn hash(x: u32) -> u32 {
    let s = x.wrapping_mul(747796405).wrapping_add(2891336453);
    let w = ((s >> ((s >> 28) + 4)) ^ s).wrapping_mul(277803737);
    (w >> 22) ^ w
}

/// The noise key of the generated token with index `draw` (accept.wgsl `token_key`): the same
/// by whichever pass samples it.
pub fn token_key(seed: u32, draw: u32) -> u32 {
    hash(seed ^ hash(draw ^ hash(0)))
}

/// Gumbel noise -ln(-ln u) of vocabulary id `token` under `key`, u in (0, 1) from 24 bits of a
/// hash, as the kernel computes it (in f64 here).
pub fn gumbel(key: u32, token: u32) -> f64 {
    let u = ((hash(key ^ hash(token)) >> 8) as f64 + 0.5) / 16777216.0;
    -(-u.ln()).ln()
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

/// Samples as the kernel does: the kept token with the largest z + Gumbel noise, z the logit
/// over the temperature (the Gumbel-max rule: a draw from `distribution`).
pub fn sample_cpu(logits: &[f32], temperature: f32, top_k: u32, top_p: f32, seed: u32, draw: u32) -> u32 {
    let p = distribution(logits, temperature, top_k, top_p);
    if temperature <= 0.0 {
        return p.iter().position(|&x| x > 0.0).unwrap_or(0) as u32;
    }
    let key = token_key(seed, draw);
    let mut best = (f64::NEG_INFINITY, 0u32);
    for (i, &pi) in p.iter().enumerate() {
        if pi > 0.0 {
            let g = logits[i] as f64 / temperature as f64 + gumbel(key, i as u32);
            if g > best.0 {
                best = (g, i as u32);
            }
        }
    }
    best.1
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Gumbel-max rule draws from the filtered softmax: over 40,000 draws on random logits a
    /// chi-square goodness-of-fit test at significance 0.001 accepts it, for several filters;
    /// and drawing in proportion to the softmax without the filter fails it.
    #[test]
    fn gumbel_draws_follow_the_distribution() {
        let mut x = 12345u32;
        let logits: Vec<f32> = (0..30)
            .map(|_| {
                x = hash(x);
                (x >> 8) as f32 / 16777216.0 * 6.0 - 3.0
            })
            .collect();
        const N: u32 = 40_000;
        for (t, k, top_p) in [(1.0f32, 0u32, 1.0f32), (0.7, 8, 1.0), (1.3, 0, 0.8)] {
            let p = distribution(&logits, t, k, top_p);
            let mut count = vec![0u32; p.len()];
            for draw in 0..N {
                count[sample_cpu(&logits, t, k, top_p, 77, draw) as usize] += 1;
            }
            let kept: Vec<usize> = (0..p.len()).filter(|&i| p[i] > 0.0).collect();
            assert!(count.iter().enumerate().all(|(i, &c)| c == 0 || p[i] > 0.0), "a dropped token was drawn");
            let stat: f64 = kept
                .iter()
                .map(|&i| {
                    let e = p[i] * N as f64;
                    (count[i] as f64 - e).powi(2) / e
                })
                .sum();
            let dof = kept.len() - 1;
            // Wilson-Hilferty approximation of the chi-square quantile at 0.999
            let z = 3.090;
            let d = dof as f64;
            let critical = d * (1.0 - 2.0 / (9.0 * d) + z * (2.0 / (9.0 * d)).sqrt()).powi(3);
            assert!(dof >= 3, "filter ({t}, {k}, {top_p}) kept too few tokens");
            assert!(stat < critical, "({t}, {k}, {top_p}): chi-square {stat:.1} over {critical:.1} ({dof} dof)");
            // a wrong rule on the same counts: the unfiltered softmax must be told apart
            if top_p < 1.0 || k > 0 {
                let q = distribution(&logits, t, 0, 1.0);
                let bad: f64 = (0..q.len())
                    .map(|i| {
                        let e = q[i] * N as f64;
                        (count[i] as f64 - e).powi(2) / e
                    })
                    .sum();
                assert!(bad > critical, "({t}, {k}, {top_p}): the unfiltered softmax fits too ({bad:.1})");
            }
        }
    }
}

//! A matmul kernel variant against the built-in one, side by side in one process: two devices,
//! the second running the WGSL in FILE in place of shaders/matmul.wgsl, timed alternately at
//! M = 1..9 rows for ROUNDS rounds; medians and the variant's ratio to the built-in kernel. On a
//! noisy machine this tells variants apart that separate processes cannot (their runs minutes
//! apart differ by more than the variants do). Nothing is checked: a variant may compute
//! nonsense, which is what timing-only experiments (what would dropping this cost?) need.
//!
//!     cargo run --release --example matmul_ab -- variant.wgsl 576 3072 Q4 10 8 norm,swiglu
//!     # FILE K N FORMAT REPS ROUNDS [norm,swiglu], as matmul_curve
//!
//! With `format=F` in place of FILE the variant is the built-in kernel on a matrix of format F
//! (`format=Q4Half` against Q4: what the f16 scale pairs save). With `counters` in place of FILE
//! the variant is the built-in kernel compiled with naga's loop counters (`Gpu::loop_bounds`).
use augur::bench::{BENCH_FORMATS, bench_matrix};
use augur::gpu::kernels::Epilogue;
use augur::gpu::{Gpu, GpuOptions};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let file = arg(1, "");
    let other_format = file.strip_prefix("format=").map(str::to_string);
    let counters = file == "counters";
    let variant = match &other_format {
        Some(_) => None,
        None if counters => None,
        None => Some(std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("reading the variant '{file}': {e}"))),
    };
    let (k, n): (usize, usize) = (arg(2, "576").parse().expect("K"), arg(3, "1536").parse().expect("N"));
    let fmt = arg(4, "Q4");
    let (reps, rounds): (usize, usize) = (arg(5, "10").parse().expect("REPS"), arg(6, "8").parse().expect("ROUNDS"));
    let opts = arg(7, "");
    let norm = opts.contains("norm");
    let ep = if opts.contains("swiglu") { Epilogue::SwiGlu } else { Epilogue::Store };
    assert!(k % 32 == 0 && n % 8 == 0, "K must be a multiple of 32 and N of 8");
    assert!(BENCH_FORMATS.contains(&fmt.as_str()), "FORMAT is one of {BENCH_FORMATS:?}");
    // both devices alike but for the variant (`counters`: the built-in device has none)
    let base = GpuOptions { loop_bounds: counters.then_some(false), ..Default::default() };
    let built_in = Gpu::new(&base).expect("a GPU adapter");
    let other = Gpu::new(&GpuOptions { matmul_wgsl: variant, loop_bounds: counters.then_some(true), ..base.clone() })
        .expect("a GPU adapter");
    let m = bench_matrix(k, n, &fmt);
    let m_other = bench_matrix(k, n, other_format.as_deref().unwrap_or(&fmt));
    // (built-in, variant) ms per round and row count
    let mut t = vec![(Vec::new(), Vec::new()); 9];
    for round in 0..rounds {
        for rows in 1..=9usize {
            // which goes first alternates, so that neither always follows the other
            let time = |g: &Gpu, m| augur::model::gpu::bench_matmul_with(g, m, rows, reps, norm, ep);
            let (a, b) = if round % 2 == 0 {
                let a = time(&built_in, &m);
                (a, time(&other, &m_other))
            } else {
                let b = time(&other, &m_other);
                (time(&built_in, &m), b)
            };
            t[rows - 1].0.push(a);
            t[rows - 1].1.push(b);
        }
    }
    println!("{k}x{n} {fmt} {opts}, median of {rounds} rounds, ms (built-in / variant / ratio):");
    for (i, (a, b)) in t.iter_mut().enumerate() {
        let ratios: Vec<f64> = b.iter().zip(a.iter()).map(|(y, x)| y / x).collect();
        let (ma, mb, mr) = (median(a), median(b), median(&mut ratios.clone()));
        println!("M{} {ma:.3} {mb:.3} {mr:.3}", i + 1);
    }
}

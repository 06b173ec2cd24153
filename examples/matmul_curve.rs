//! The matmul kernel alone against the number of rows it multiplies (M = 1..9), for one matrix
//! shape and weight format, three rounds in one process: the kernel-level view of the M-pass
//! curve that `augur bench` measures for whole models. Weights are random; nothing is checked.
//!
//!     cargo run --release --example matmul_curve -- 1536 8960 Q4 5    # K N FORMAT REPS [norm,swiglu]
//!
//! FORMAT: Q4, Q8, Q8Sym or F16. `norm`: x RMS-normalised inside the matmul (NORM), as the QKV,
//! gate/up and LM-head matmuls do; `swiglu`: the SwiGLU epilogue (N columns of gate and up).
use augur::bench::{BENCH_FORMATS, bench_matrix};
use augur::gpu::kernels::Epilogue;
use augur::gpu::{Gpu, GpuOptions};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (k, n): (usize, usize) = (arg(1, "576").parse().expect("K"), arg(2, "1536").parse().expect("N"));
    let (fmt, reps): (String, usize) = (arg(3, "Q4"), arg(4, "20").parse().expect("REPS"));
    let opts = arg(5, "");
    let norm = opts.contains("norm");
    let ep = if opts.contains("swiglu") { Epilogue::SwiGlu } else { Epilogue::Store };
    assert!(k % 32 == 0 && n % 8 == 0, "K must be a multiple of 32 and N of 8");
    assert!(BENCH_FORMATS.contains(&fmt.as_str()), "FORMAT is one of {BENCH_FORMATS:?}");
    let gpu = Gpu::new(&GpuOptions::default()).expect("a GPU adapter");
    let m = bench_matrix(k, n, &fmt);
    for round in 0..3 {
        let mut line = format!("{k}x{n} {fmt} round {round}:");
        let mut base = 0.0;
        for rows in 1..=9usize {
            let ms = augur::model::gpu::bench_matmul_with(&gpu, &m, rows, reps, norm, ep);
            if rows == 1 {
                base = ms;
            }
            line += &format!(" M{rows} {ms:.3}ms ({:.2})", ms / base);
        }
        println!("{line}");
    }
}

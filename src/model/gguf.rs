//! GGUF (v2 and v3) reader: metadata, tensor table, alignment.
//!
//! Every count and size in the header is checked against the file length before anything is
//! allocated from it, so a header that lies gives an error, never a huge allocation or a panic.

use crate::error::{Error, Result};
use crate::model::quant::GgmlType;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    Str(String),
    Array(Vec<Value>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl Value {
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v as u64),
            Value::U16(v) => Some(v as u64),
            Value::U32(v) => Some(v as u64),
            Value::U64(v) => Some(v),
            Value::I8(v) if v >= 0 => Some(v as u64),
            Value::I16(v) if v >= 0 => Some(v as u64),
            Value::I32(v) if v >= 0 => Some(v as u64),
            Value::I64(v) if v >= 0 => Some(v as u64),
            _ => None,
        }
    }
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v as f64),
            Value::F64(v) => Some(v),
            _ => self.as_u64().map(|v| v as f64),
        }
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Value::Array(a) => Some(a),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub name: String,
    /// ggml order: dims[0] is the innermost (contiguous) dimension.
    pub dims: Vec<u64>,
    pub ty: GgmlType,
    /// Absolute byte offset of the tensor data in the file.
    pub offset: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

pub struct Gguf {
    pub path: String,
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: Vec<TensorInfo>,
    data: FileBytes,
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    path: &'a str,
}

impl<'a> Reader<'a> {
    fn err(&self, why: impl Into<String>) -> Error {
        Error::BadGguf { path: self.path.to_string(), why: why.into() }
    }
    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        let left = (self.buf.len() - self.pos) as u64;
        if n > left {
            return Err(self.err(format!("truncated at byte {} (wanted {n} more bytes, {left} left)", self.pos)));
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().unwrap()))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().unwrap()))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().unwrap()))
    }
    /// A count of items that each take at least `min_item_bytes`: refused if the rest of the
    /// file could not hold that many.
    fn count(&mut self, min_item_bytes: u64, what: &str) -> Result<u64> {
        let n = self.u64()?;
        let left = (self.buf.len() - self.pos) as u64;
        if n.saturating_mul(min_item_bytes.max(1)) > left {
            return Err(self.err(format!("{what} count {n} does not fit in the file")));
        }
        Ok(n)
    }
    fn string(&mut self) -> Result<String> {
        let n = self.count(1, "string length")?;
        let b = self.take(n)?;
        String::from_utf8(b.to_vec()).map_err(|_| self.err("a string is not valid UTF-8"))
    }
    fn value(&mut self, ty: u32, depth: u32) -> Result<Value> {
        Ok(match ty {
            0 => Value::U8(self.u8()?),
            1 => Value::I8(self.u8()? as i8),
            2 => Value::U16(self.u16()?),
            3 => Value::I16(self.u16()? as i16),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(self.u32()? as i32),
            6 => Value::F32(f32::from_bits(self.u32()?)),
            7 => Value::Bool(self.u8()? != 0),
            8 => Value::Str(self.string()?),
            9 => {
                if depth > 2 {
                    return Err(self.err("arrays nested too deeply"));
                }
                let ety = self.u32()?;
                let min = match ety {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 | 10..=12 => 8,
                    9 => 12,
                    _ => return Err(self.err(format!("unknown array element type {ety}"))),
                };
                let n = self.count(min, "array")?;
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(ety, depth + 1)?);
                }
                Value::Array(v)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(self.u64()? as i64),
            12 => Value::F64(f64::from_bits(self.u64()?)),
            _ => return Err(self.err(format!("unknown metadata value type {ty}"))),
        })
    }
}

/// A model file's bytes: mapped from disk when opened by path (tensors are read from the page
/// cache as they are converted, and the file is never copied into memory whole), or owned.
enum FileBytes {
    Owned(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl std::ops::Deref for FileBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            FileBytes::Owned(v) => v,
            FileBytes::Mapped(m) => m,
        }
    }
}

impl Gguf {
    pub fn open(path: impl AsRef<Path>) -> Result<Gguf> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        // SAFETY: the mapping is read-only and augur never writes a model file in place (`augur
        // pull` renames a finished download over the old one, which leaves this mapping on the
        // old file). Where mapping is refused, the file is read instead.
        let data = match unsafe { memmap2::Mmap::map(&file) } {
            Ok(map) => FileBytes::Mapped(map),
            Err(_) => FileBytes::Owned(std::fs::read(path).map_err(|e| Error::io(path, e))?),
        };
        Gguf::parse_bytes(path.display().to_string(), data)
    }

    /// Parses a GGUF file held in memory.
    pub fn parse(path: String, data: Vec<u8>) -> Result<Gguf> {
        Gguf::parse_bytes(path, FileBytes::Owned(data))
    }

    fn parse_bytes(path: String, data: FileBytes) -> Result<Gguf> {
        let mut r = Reader { buf: &data, pos: 0, path: &path };
        let magic = r.take(4).map_err(|_| r.err("file is shorter than a GGUF header"))?;
        if magic != b"GGUF" {
            return Err(r.err("missing GGUF magic bytes"));
        }
        let version = r.u32()?;
        if !(2..=3).contains(&version) {
            return Err(r.err(format!("GGUF version {version} is not supported (2 and 3 are)")));
        }
        // A tensor-info entry takes at least 8 (name) + 4 + 8 + 4 + 8 bytes; a KV at least 8 + 4 + 1.
        let n_tensors = r.count(32, "tensor")?;
        let n_kv = r.count(13, "metadata")?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_kv {
            let key = r.string()?;
            let ty = r.u32()?;
            let v = r.value(ty, 0)?;
            metadata.insert(key, v);
        }
        let alignment = match metadata.get("general.alignment") {
            Some(v) => v.as_u64().filter(|a| *a > 0 && a.is_power_of_two() && *a <= 1 << 20),
            None => Some(32),
        }
        .ok_or_else(|| r.err("general.alignment is not a power of two"))?;
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for _ in 0..n_tensors {
            let name = r.string()?;
            let n_dims = r.u32()?;
            if n_dims == 0 || n_dims > 4 {
                return Err(r.err(format!("tensor {name} has {n_dims} dimensions")));
            }
            let mut dims = Vec::new();
            for _ in 0..n_dims {
                dims.push(r.u64()?);
            }
            let ty_id = r.u32()?;
            let offset = r.u64()?;
            infos.push((name, dims, ty_id, offset));
        }
        let data_start = (r.pos as u64).div_ceil(alignment) * alignment;
        let file_len = data.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        for (name, dims, ty_id, offset) in infos {
            let ty = GgmlType::from_id(ty_id)
                .ok_or_else(|| r.err(format!("tensor {name} uses ggml type {ty_id}, which augur does not support")))?;
            let n: u64 = dims
                .iter()
                .try_fold(1u64, |a, &d| a.checked_mul(d))
                .ok_or_else(|| r.err(format!("tensor {name} is too large")))?;
            if dims[0] % ty.block_len() as u64 != 0 {
                return Err(
                    r.err(format!("tensor {name}: row length {} is not a multiple of the {ty:?} block", dims[0]))
                );
            }
            let n_bytes = n / ty.block_len() as u64 * ty.block_bytes() as u64;
            let abs = data_start.checked_add(offset).ok_or_else(|| r.err("tensor offset overflows"))?;
            if abs.checked_add(n_bytes).is_none_or(|end| end > file_len) {
                return Err(r.err(format!("tensor {name} runs past the end of the file (truncated download?)")));
            }
            tensors.push(TensorInfo { name, dims, ty, offset: abs, n_bytes });
        }
        Ok(Gguf { path, version, metadata, tensors, data })
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key).and_then(Value::as_u64).ok_or_else(|| self.missing(key))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key).and_then(Value::as_f64).ok_or_else(|| self.missing(key))
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key).and_then(Value::as_str).ok_or_else(|| self.missing(key))
    }

    fn missing(&self, key: &str) -> Error {
        Error::BadGguf { path: self.path.clone(), why: format!("metadata key {key} is missing or has the wrong type") }
    }

    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    pub fn tensor_bytes(&self, t: &TensorInfo) -> &[u8] {
        &self.data[t.offset as usize..(t.offset + t.n_bytes) as usize]
    }
}

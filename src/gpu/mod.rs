//! The GPU context: adapter and device selection (lavapipe included), buffers, compute pipelines
//! from the WGSL files in shaders/, and small helpers to read results back.
//!
//! Optional features (timestamp queries, subgroups) are used only when the adapter has them; the
//! kernels themselves need nothing beyond core WebGPU, so the same engine runs on Metal, DX12 and
//! Vulkan. With subgroups the matmul and attention share loads every lane needs across a subgroup;
//! without, every lane loads them itself; both do the same arithmetic in the same order
//! (bit-identical results).
//!
//! Kernels come in two plans (`KernelPlan`): lavapipe, a CPU with a few threads, is fastest when
//! one lane walks a whole reduction; a real GPU needs the reductions (a matmul's K, attention's
//! context) split across the lanes of a workgroup.

pub mod kernels;
pub mod profile;

use crate::error::{Error, Result};
use std::sync::{Arc, OnceLock};
use wgpu::util::DeviceExt;

/// How to choose and open a device.
#[derive(Debug, Clone, Default)]
pub struct GpuOptions {
    /// Do not request optional features even when the adapter has them (tests the fallback).
    pub no_optional_features: bool,
    /// Pick the first adapter whose name contains this (case-insensitive).
    pub adapter: Option<String>,
    /// Force a kernel plan (None: `AUGUR_KERNELS`, else by device type).
    pub plan: Option<KernelPlan>,
    /// WGSL that replaces shaders/matmul.wgsl on this device: for timing a kernel variant side
    /// by side with the built-in one in one process (examples/matmul_ab.rs). Compiled as the
    /// built-in kernels are, without loop counters (`Gpu::loop_bounds`): its loops must end.
    pub matmul_wgsl: Option<String>,
    /// Compile kernels with naga's loop counters (`Gpu::loop_bounds`); None: `AUGUR_LOOP_BOUNDS`.
    pub loop_bounds: Option<bool>,
}

/// How the matmul and attention kernels share out their work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KernelPlan {
    /// One lane walks a whole reduction: each matmul lane takes 4 columns down all of K, each
    /// attention lane a (row, head) over the whole context (shaders/matmul.wgsl,
    /// attention.wgsl). What CPU emulation runs fastest: lavapipe gives each of a few threads
    /// whole workgroups, and every extra lane or barrier costs it instructions.
    Serial,
    /// Reductions split across the lanes of a workgroup and merged in a fixed order
    /// (shaders/matmul_split.wgsl, attention_split.wgsl). What a GPU needs: with one lane per
    /// reduction it runs a few hundred lanes, each waiting on a chain of loads (an H200 decoded
    /// SmolLM2 at 53 tokens/s).
    Split,
}

impl KernelPlan {
    /// `AUGUR_KERNELS=serial|split` if set, else Serial for CPU devices and Split for GPUs.
    fn choose(device: wgpu::DeviceType) -> Result<KernelPlan> {
        match std::env::var("AUGUR_KERNELS").ok().filter(|v| !v.is_empty()).as_deref() {
            Some("serial") => Ok(KernelPlan::Serial),
            Some("split") => Ok(KernelPlan::Split),
            Some(other) => Err(Error::msg(format!("AUGUR_KERNELS={other}: use serial or split, or unset it"))),
            None if device == wgpu::DeviceType::Cpu => Ok(KernelPlan::Serial),
            None => Ok(KernelPlan::Split),
        }
    }
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    /// Timestamp queries are available (per-kernel timing in `augur bench`).
    pub timestamps: bool,
    /// Largest storage binding, in bytes: bigger tensors are split.
    pub max_binding: u64,
    /// Subgroup operations with subgroups of at least 8 lanes: the matmul and attention share
    /// loads every lane needs across a subgroup (shaders/lanes_subgroup.wgsl).
    pub subgroups: bool,
    /// Storage buffers can be mapped (CPU devices): their contents are written in place rather
    /// than through a staging copy.
    pub mappable: bool,
    /// How the matmul and attention kernels share out their work.
    pub plan: KernelPlan,
    /// The serial matmul reads x through a uniform binding in passes whose rows of x fit one
    /// (`kernels::MATMUL_X_UNIFORM`): on unless `AUGUR_UNIFORM_X=0` (for measuring it).
    pub uniform_x: bool,
    /// naga gives every loop of a kernel a 64-bit iteration counter that breaks out after 2^64
    /// turns (wgpu's `force_loop_bounding`, a guard for untrusted shaders). augur's kernels are
    /// its own and every loop in them ends on a count the host sets, so they are compiled
    /// without the counters (lavapipe runs each counter lane by lane, as a second exit of
    /// every loop): on unless `AUGUR_LOOP_BOUNDS=1` puts them back (for measuring it).
    pub loop_bounds: bool,
    /// `GpuOptions::matmul_wgsl`.
    pub matmul_wgsl: Option<String>,
    /// The kernels' pipelines, made on first use and shared by every model on this device.
    pub kernels: kernels::Kernels,
}

/// A measuring switch from the environment: `0` or `1`, None when unset or empty.
fn env_switch(name: &str) -> Result<Option<bool>> {
    match std::env::var(name).ok().filter(|v| !v.is_empty()).as_deref() {
        None => Ok(None),
        Some("0") => Ok(Some(false)),
        Some("1") => Ok(Some(true)),
        Some(other) => Err(Error::msg(format!("{name}={other}: use 0 or 1, or unset it"))),
    }
}

/// How a kernel binds one buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bind {
    Uniform,
    Read,
    ReadWrite,
}

/// WGPU_BACKEND if set, else the native compute backends (no GL).
fn backends() -> wgpu::Backends {
    wgpu::Backends::from_env().unwrap_or(wgpu::Backends::VULKAN | wgpu::Backends::METAL | wgpu::Backends::DX12)
}

fn instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = backends();
    wgpu::Instance::new(desc)
}

/// Every adapter wgpu can see, for `augur devices`.
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let inst = instance();
    pollster::block_on(inst.enumerate_adapters(backends())).into_iter().map(|a| a.get_info()).collect()
}

impl Gpu {
    pub fn new(opts: &GpuOptions) -> Result<Gpu> {
        let inst = instance();
        let adapters = pollster::block_on(inst.enumerate_adapters(backends()));
        let adapter = match &opts.adapter {
            Some(want) => adapters
                .into_iter()
                .find(|a| a.get_info().name.to_lowercase().contains(&want.to_lowercase()))
                .ok_or_else(|| Error::NoAdapter(format!("none matches '{want}'; `augur devices` lists them")))?,
            None => {
                // Prefer real GPUs over CPU emulation, discrete over integrated.
                let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
                    wgpu::DeviceType::DiscreteGpu => 0,
                    wgpu::DeviceType::IntegratedGpu => 1,
                    wgpu::DeviceType::VirtualGpu => 2,
                    wgpu::DeviceType::Other => 3,
                    wgpu::DeviceType::Cpu => 4,
                };
                adapters
                    .into_iter()
                    .min_by_key(rank)
                    .ok_or_else(|| Error::NoAdapter("wgpu found no Vulkan, Metal or DX12 device".into()))?
            }
        };
        let info = adapter.get_info();
        let plan = match opts.plan {
            Some(p) => p,
            None => KernelPlan::choose(info.device_type)?,
        };
        let have = adapter.features();
        let mut features = wgpu::Features::empty();
        if !opts.no_optional_features && have.contains(wgpu::Features::TIMESTAMP_QUERY) {
            features |= wgpu::Features::TIMESTAMP_QUERY;
        }
        if !opts.no_optional_features && have.contains(wgpu::Features::SUBGROUP) && info.subgroup_min_size >= 8 {
            features |= wgpu::Features::SUBGROUP;
        }
        if info.device_type == wgpu::DeviceType::Cpu && have.contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS) {
            features |= wgpu::Features::MAPPABLE_PRIMARY_BUFFERS;
        }
        let alimits = adapter.limits();
        // Ask for what the adapter has: the defaults cap buffers at 256 MiB.
        let limits = wgpu::Limits {
            max_buffer_size: alimits.max_buffer_size,
            max_storage_buffer_binding_size: alimits.max_storage_buffer_binding_size,
            max_storage_buffers_per_shader_stage: alimits.max_storage_buffers_per_shader_stage.min(16),
            max_compute_workgroups_per_dimension: alimits.max_compute_workgroups_per_dimension,
            ..Default::default()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("augur"),
            required_features: features,
            required_limits: limits.clone(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::Performance,
            trace: wgpu::Trace::Off,
        }))
        .map_err(|e| Error::Gpu(format!("cannot open {}: {e}", info.name)))?;
        let max_binding = limits.max_storage_buffer_binding_size.min(limits.max_buffer_size) & !255;
        let uniform_x = env_switch("AUGUR_UNIFORM_X")?.unwrap_or(true) && plan == KernelPlan::Serial;
        let loop_bounds = match opts.loop_bounds {
            Some(on) => on,
            None => env_switch("AUGUR_LOOP_BOUNDS")?.unwrap_or(false),
        };
        Ok(Gpu {
            loop_bounds,
            device,
            queue,
            info,
            timestamps: features.contains(wgpu::Features::TIMESTAMP_QUERY),
            max_binding,
            subgroups: features.contains(wgpu::Features::SUBGROUP),
            mappable: features.contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
            plan,
            uniform_x,
            matmul_wgsl: opts.matmul_wgsl.clone(),
            kernels: kernels::Kernels::default(),
        })
    }

    /// One device per process and option set, shared (tests create many engines).
    pub fn shared(opts: &GpuOptions) -> Result<Arc<Gpu>> {
        static FULL: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
        static BARE: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
        static SPLIT: OnceLock<std::result::Result<Arc<Gpu>, String>> = OnceLock::new();
        if opts.matmul_wgsl.is_some() || opts.loop_bounds.is_some() {
            return Gpu::new(opts).map(Arc::new);
        }
        let cell = match (opts.adapter.is_some(), opts.no_optional_features, opts.plan) {
            (false, false, None) => &FULL,
            (false, true, None) => &BARE,
            (false, false, Some(KernelPlan::Split)) => &SPLIT,
            _ => return Gpu::new(opts).map(Arc::new),
        };
        cell.get_or_init(|| Gpu::new(opts).map(Arc::new).map_err(|e| e.to_string())).clone().map_err(Error::Msg)
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({:?}, {:?}, driver {} {}, {:?} kernels)",
            self.info.name,
            self.info.backend,
            self.info.device_type,
            self.info.driver,
            self.info.driver_info,
            self.plan
        )
    }

    pub fn buffer_init(&self, label: &str, bytes: &[u8], usage: wgpu::BufferUsages) -> wgpu::Buffer {
        // zero-sized bindings are invalid: give empty buffers one word
        let padded;
        let bytes = if bytes.len() < 16 {
            padded = {
                let mut v = bytes.to_vec();
                v.resize(16, 0);
                v
            };
            &padded[..]
        } else {
            bytes
        };
        let usage = self.writable_in_place(usage);
        self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor { label: Some(label), contents: bytes, usage })
    }

    /// `usage` plus MAP_WRITE for a storage buffer on a device whose buffers are host memory, so
    /// that its contents are written in place rather than through a staging copy.
    fn writable_in_place(&self, usage: wgpu::BufferUsages) -> wgpu::BufferUsages {
        if self.mappable && usage.contains(wgpu::BufferUsages::STORAGE) {
            usage | wgpu::BufferUsages::MAP_WRITE
        } else {
            usage
        }
    }

    /// A storage buffer holding `data`.
    pub fn storage<T: bytemuck::Pod>(&self, label: &str, data: &[T]) -> wgpu::Buffer {
        self.buffer_init(
            label,
            bytemuck::cast_slice(data),
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        )
    }

    /// A storage buffer of `len` 32-bit words written straight into it as it is mapped at
    /// creation, `chunk` words at a time (`fill(i, words)` writes chunk i): weights laid out as
    /// they are uploaded, without a copy of the layout in host memory first (on a CPU device the
    /// buffer is host memory).
    pub fn storage_from_chunks(
        &self,
        label: &str,
        len: usize,
        chunk: usize,
        mut fill: impl FnMut(usize, &mut [u32]),
    ) -> wgpu::Buffer {
        let usage = self.writable_in_place(
            wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
        );
        // zero-sized bindings are invalid: an empty buffer gets 4 words, as in buffer_init
        let size = (len.max(4) * 4) as u64;
        let buf = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size,
            usage,
            mapped_at_creation: true,
        });
        {
            let mut view = buf.slice(..).get_mapped_range_mut().expect("a buffer mapped at creation is mapped");
            let chunk = chunk.max(1);
            let mut words = vec![0u32; chunk.min(len)];
            for (i, start) in (0..len).step_by(chunk).enumerate() {
                let n = chunk.min(len - start);
                fill(i, &mut words[..n]);
                view.slice(start * 4..(start + n) * 4).copy_from_slice(bytemuck::cast_slice(&words[..n]));
            }
        }
        buf.unmap();
        buf
    }

    /// A zeroed storage buffer of `bytes` bytes.
    pub fn storage_zeroed(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(16).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    /// A zeroed buffer of at least `bytes` bytes that matmuls read as x: bound as storage, or
    /// its first `kernels::UNIFORM_X_BYTES` as a uniform buffer (so it holds at least that many).
    pub fn activations(&self, label: &str, bytes: u64) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: bytes.max(kernels::UNIFORM_X_BYTES).div_ceil(16) * 16,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::UNIFORM
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub fn uniform<T: bytemuck::Pod>(&self, label: &str, data: &T) -> wgpu::Buffer {
        self.buffer_init(label, bytemuck::bytes_of(data), wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST)
    }

    /// A compute pipeline for `entry` of `source` (WGSL, validated by naga inside wgpu) with an
    /// explicit layout: group 0, binding i of kind `binds[i]`.
    pub fn pipeline(
        &self,
        label: &str,
        source: &str,
        entry: &str,
        binds: &[Bind],
        constants: &[(&str, f64)],
    ) -> Pipeline {
        self.pipeline_family(label, source, entry, binds, &[constants]).pop().unwrap()
    }

    /// One pipeline per set of override constants, from one shader module and one bind group
    /// layout, so that a bind group made for one of them serves them all.
    pub fn pipeline_family(
        &self,
        label: &str,
        source: &str,
        entry: &str,
        binds: &[Bind],
        variants: &[&[(&str, f64)]],
    ) -> Vec<Pipeline> {
        let family = self.family(label, source, entry, binds);
        variants.iter().map(|constants| family.pipeline(constants)).collect()
    }

    /// A shader module and its bind group layout, from which pipelines with different override
    /// constants are made when they are wanted (`PipelineFamily::pipeline`).
    pub fn family(&self, label: &str, source: &str, entry: &str, binds: &[Bind]) -> PipelineFamily {
        let desc = wgpu::ShaderModuleDescriptor { label: Some(label), source: wgpu::ShaderSource::Wgsl(source.into()) };
        let module = if self.loop_bounds {
            self.device.create_shader_module(desc)
        } else {
            // bounds checks stay (wgpu's or the driver's); only the loop counters go (`loop_bounds`)
            let checks =
                wgpu::ShaderRuntimeChecks { force_loop_bounding: false, ..wgpu::ShaderRuntimeChecks::checked() };
            // SAFETY: every loop in augur's kernels (shaders/*.wgsl) runs to a bound set by the
            // host or a constant, so none runs forever; `GpuOptions::matmul_wgsl` says the same
            // of a variant matmul.
            unsafe { self.device.create_shader_module_trusted(desc, checks) }
        };
        let entries: Vec<wgpu::BindGroupLayoutEntry> = binds
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupLayoutEntry {
                binding: i as u32,
                visibility: wgpu::ShaderStages::COMPUTE,
                ty: match b {
                    Bind::Uniform => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    Bind::Read | Bind::ReadWrite => wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Storage { read_only: *b == Bind::Read },
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                },
                count: None,
            })
            .collect();
        let layout = self
            .device
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor { label: Some(label), entries: &entries });
        let pipeline_layout = self.device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(label),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        PipelineFamily {
            device: self.device.clone(),
            module,
            layout,
            pipeline_layout,
            label: label.to_string(),
            entry: entry.to_string(),
        }
    }

    pub fn bind(&self, p: &Pipeline, buffers: &[&wgpu::Buffer]) -> wgpu::BindGroup {
        let whole: Vec<_> = buffers.iter().map(|b| b.as_entire_buffer_binding()).collect();
        self.bind_ranges(&p.label, &p.layout, &whole)
    }

    /// A bind group of `layout` with a range of a buffer for each binding.
    pub fn bind_ranges(
        &self,
        label: &str,
        layout: &wgpu::BindGroupLayout,
        buffers: &[wgpu::BufferBinding],
    ) -> wgpu::BindGroup {
        let entries: Vec<wgpu::BindGroupEntry> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: wgpu::BindingResource::Buffer(b.clone()),
            })
            .collect();
        self.device.create_bind_group(&wgpu::BindGroupDescriptor { label: Some(label), layout, entries: &entries })
    }

    /// Copies `bytes` bytes of `buf` back to the host (tests and set-up; not for the hot path).
    pub fn read(&self, buf: &wgpu::Buffer, bytes: u64) -> Vec<u8> {
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: bytes.div_ceil(4) * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = self.device.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, 0, &staging, 0, bytes.div_ceil(4) * 4);
        self.queue.submit([enc.finish()]);
        map_read(self, &staging, bytes)
    }

    pub fn read_f32(&self, buf: &wgpu::Buffer, n: usize) -> Vec<f32> {
        bytemuck::pod_collect_to_vec(&self.read(buf, n as u64 * 4))
    }

    pub fn wait(&self) -> Result<()> {
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| Error::Gpu(format!("device lost while waiting: {e}")))?;
        Ok(())
    }
}

/// Maps a MAP_READ buffer, waits, and copies out the first `bytes` bytes.
pub fn map_read(gpu: &Gpu, staging: &wgpu::Buffer, bytes: u64) -> Vec<u8> {
    let slice = staging.slice(..bytes.div_ceil(4) * 4);
    slice.map_async(wgpu::MapMode::Read, |_| {});
    let _ = gpu.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None });
    let out = slice.get_mapped_range().map(|v| v[..bytes as usize].to_vec()).unwrap_or_default();
    staging.unmap();
    out
}

pub struct Pipeline {
    pub pipeline: wgpu::ComputePipeline,
    pub layout: wgpu::BindGroupLayout,
    pub label: String,
}

/// See `Gpu::family`.
pub struct PipelineFamily {
    device: wgpu::Device,
    module: wgpu::ShaderModule,
    pub layout: wgpu::BindGroupLayout,
    pipeline_layout: wgpu::PipelineLayout,
    pub label: String,
    entry: String,
}

impl PipelineFamily {
    /// The pipeline with these override constants (compiled now: on lavapipe ~0.1 s for a
    /// matmul variant, mostly the driver's own compiler).
    pub fn pipeline(&self, constants: &[(&str, f64)]) -> Pipeline {
        let pipeline = self.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(&self.label),
            layout: Some(&self.pipeline_layout),
            module: &self.module,
            entry_point: Some(&self.entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        });
        Pipeline { pipeline, layout: self.layout.clone(), label: self.label.clone() }
    }
}

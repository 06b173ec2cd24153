//! Per-kernel GPU time from timestamp queries (used by `augur bench`). Each profiled dispatch
//! runs in its own compute pass with begin/end timestamps; times are summed per kernel label.

use super::{Gpu, map_read};
use std::collections::BTreeMap;

pub struct Profiler {
    set: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    staging: wgpu::Buffer,
    capacity: u32,
    labels: Vec<&'static str>,
}

impl Profiler {
    /// None when the device has no timestamp queries.
    pub fn new(gpu: &Gpu, max_dispatches: u32) -> Option<Profiler> {
        if !gpu.timestamps {
            return None;
        }
        let n = max_dispatches * 2;
        let set = gpu.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("profile"),
            ty: wgpu::QueryType::Timestamp,
            count: n,
        });
        let size = n as u64 * 8;
        let resolve = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile resolve"),
            size,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let staging = gpu.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("profile staging"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Some(Profiler { set, resolve, staging, capacity: max_dispatches, labels: Vec::new() })
    }

    /// Timestamp writes for the next dispatch, or None when full.
    pub fn writes(&mut self, label: &'static str) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        let i = self.labels.len() as u32;
        if i >= self.capacity {
            return None;
        }
        self.labels.push(label);
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.set,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        })
    }

    /// Resolves the queries of the last submission (call after `encode`, then submit, then `read`).
    pub fn resolve(&self, enc: &mut wgpu::CommandEncoder) {
        let n = self.labels.len() as u32 * 2;
        if n > 0 {
            enc.resolve_query_set(&self.set, 0..n, &self.resolve, 0);
            enc.copy_buffer_to_buffer(&self.resolve, 0, &self.staging, 0, n as u64 * 8);
        }
    }

    /// Milliseconds per kernel label (summed), and clears the labels for the next pass.
    pub fn read(&mut self, gpu: &Gpu) -> BTreeMap<&'static str, f64> {
        let n = self.labels.len();
        let mut out = BTreeMap::new();
        if n == 0 {
            return out;
        }
        let bytes = map_read(gpu, &self.staging, n as u64 * 16);
        let ts: Vec<u64> = bytemuck::pod_collect_to_vec(&bytes);
        let period = gpu.queue.get_timestamp_period() as f64;
        for (i, l) in self.labels.drain(..).enumerate() {
            let dt = ts[2 * i + 1].saturating_sub(ts[2 * i]) as f64 * period / 1e6;
            *out.entry(l).or_insert(0.0) += dt;
        }
        out
    }
}

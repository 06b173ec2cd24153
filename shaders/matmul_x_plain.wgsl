// How matmul.wgsl reads x without subgroups: every lane loads each vec4 itself.

struct Lane {
    @builtin(local_invocation_index) lid: u32,
};

fn x_slice(row: u32, kq0: u32, l: Lane) -> vec4<f32> {
    return vec4<f32>(0.0);
}

fn x_at(slice: vec4<f32>, j: u32, row: u32, kq: u32) -> vec4<f32> {
    return x[row * (p.k / 4u) + kq];
}

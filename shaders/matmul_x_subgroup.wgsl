// How matmul.wgsl reads x where the device has subgroups of at least 8 lanes (the host prepends
// one of this file and matmul_x_plain.wgsl). Every lane needs the same x values, but Mesa 25's
// lavapipe loads storage data lane by lane unless the address is a compile-time uniform (a
// bounds-checked scalar load per lane and component, ~200 instructions a vec4 across 8 lanes),
// so lane i of each 8 loads the block's i-th vec4 once and the others read it with a shuffle.

struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg: u32,
};

// This lane's share of x for one 32-value block of row `row` (vec4 index kq0 + lane % 8).
fn x_slice(row: u32, kq0: u32, l: Lane) -> vec4<f32> {
    return x[row * (p.k / 4u) + kq0 + (l.sg & 7u)];
}

// vec4 j (0..7) of the block whose slice this lane holds; `row` and `kq` are not needed here.
fn x_at(slice: vec4<f32>, j: u32, row: u32, kq: u32) -> vec4<f32> {
    return subgroupShuffle(slice, j);
}

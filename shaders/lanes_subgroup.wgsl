// Prepended (by src/gpu/kernels.rs) to the kernels that share loads across lanes, where the
// device has subgroups of at least 8 lanes; lanes_plain.wgsl otherwise.
//
// Why: Mesa 25's lavapipe treats a storage load as uniform only when its address is a
// compile-time uniform (constants, push constants), so a value every lane needs (x in a matmul,
// q in attention) is loaded by every lane on its own: a bounds-checked scalar load per lane and
// component, ~200 instructions a vec4 across 8 lanes. Instead lane i of each 8 loads the i-th of
// 8 consecutive values once and the others read it with a shuffle (on lavapipe this made M=4
// matmul passes 2x faster). Kernels keep both paths behind SUBGROUPS; the arithmetic and its
// order are the same in both, so results are bit-identical.

const SUBGROUPS: bool = true;

struct Lane {
    @builtin(local_invocation_index) lid: u32,
    @builtin(subgroup_invocation_id) sg: u32,
};

// This lane's index in its subgroup. (Kernels that exchange values between neighbouring lanes
// assume consecutive local invocation indices share a subgroup, as every implementation we know
// lays them out, lavapipe included.)
fn subgroup_lane(l: Lane) -> u32 {
    return l.sg;
}

// Which of 8 consecutive values this lane loads.
fn lane8(l: Lane) -> u32 {
    return l.sg & 7u;
}

// The value lane j (0..7) loaded. Every lane of the subgroup must be running.
fn from_lane(v: vec4<f32>, j: u32) -> vec4<f32> {
    return subgroupShuffle(v, j);
}

fn from_lane_f32(v: f32, j: u32) -> f32 {
    return subgroupShuffle(v, j);
}

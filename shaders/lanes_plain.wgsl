// Prepended where the device has no subgroups of 8+ lanes (see lanes_subgroup.wgsl): SUBGROUPS
// is false and every lane loads the values it needs itself; the functions below are not called.

const SUBGROUPS: bool = false;

struct Lane {
    @builtin(local_invocation_index) lid: u32,
};

fn subgroup_lane(l: Lane) -> u32 {
    return 0u;
}

fn lane8(l: Lane) -> u32 {
    return 0u;
}

fn from_lane(v: vec4<f32>, j: u32) -> vec4<f32> {
    return v;
}

fn from_lane_f32(v: f32, j: u32) -> f32 {
    return v;
}

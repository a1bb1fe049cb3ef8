# Sourced by the other scripts: where the cache lives and how cargo finds libtorch.
# GRADCAM_CACHE holds everything large and generated (virtual environment, weights, test
# references); it is never inside the repository.
GRADCAM_CACHE="${GRADCAM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gradcam-serve}"
GRADCAM_VENV="$GRADCAM_CACHE/venv"
export GRADCAM_CACHE GRADCAM_VENV
# torch-sys asks this Python for libtorch's headers and libraries.
export LIBTORCH_USE_PYTORCH=1
export VIRTUAL_ENV="$GRADCAM_VENV"
# Tools the set-up unpacks into the cache (promtool), then the environment's.
export PATH="$GRADCAM_CACHE/bin:$GRADCAM_VENV/bin:$PATH"

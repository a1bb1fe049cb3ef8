# Sourced by the scripts that run tests: the cache and libtorch (env.sh) and the PyTorch
# references the tests read, made once per version into the cache (minutes the first time: the
# trained one trains a network), in GRADCAM_TEST_REFERENCE, _FAMILY and _TRAINED.
. "$(dirname "${BASH_SOURCE[0]}")/env.sh"
GRADCAM_TEST_REFERENCE="$(scripts/reference.sh)"
GRADCAM_TEST_FAMILY="$(scripts/reference.sh family)"
GRADCAM_TEST_TRAINED="$(scripts/reference.sh trained)"
export GRADCAM_TEST_REFERENCE GRADCAM_TEST_FAMILY GRADCAM_TEST_TRAINED

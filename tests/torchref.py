"""The PyTorch side of the references, shared by the scripts that make them.

tests/reference.py, tests/family.py and tests/trained.py import it, and so does the device check
(scripts/gpu_check.py, whose kit scripts/device-bundle.sh assembles with a copy of this file
beside it). It therefore imports only what a GPU machine without the project's environment has:
torch, torchvision, numpy, PIL and safetensors; pytorch-grad-cam is imported when first asked
for (grad_cam()), with stand-ins for the heavy packages it imports but never needs here.

scripts/reference.sh keys each cached reference on the hash of its script and of this file, and
write_stamp() records the same two: a change here makes every reference again.
"""

import functools
import hashlib
import importlib.util
import sys
from collections import namedtuple
from pathlib import Path

import numpy as np
import torch
import torchvision
from safetensors.torch import save_file
from torchvision import transforms

# ImageNet's normalisation, which torchvision's ResNets expect and the service applies.
MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]
# The fixture photographs (in the repository; the device kit carries its own).
FIXTURES = Path(__file__).resolve().parent / "fixtures"
# pytorch-grad-cam's methods under the service's names, in the order the references list them.
METHOD_NAMES = ["gradcam", "hirescam", "gradcam++", "xgradcam", "layercam"]
_CLASS_NAMES = ["GradCAM", "HiResCAM", "GradCAMPlusPlus", "XGradCAM", "LayerCAM"]


# ---------------------------------------------------------------------------------------------
# A script's start and end


def begin(threads=None, subdirs=()):
    """The output directory named on the command line, made with `subdirs` inside it; PyTorch's
    intra-op threads set to `threads` (default: PyTorch's own choice, at least one)."""
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        sys.exit(f"usage: python {sys.argv[0]} OUT_DIR")
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for sub in subdirs:
        (out / sub).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()) if threads is None else threads)
    return out


def write_stamp(out, script):
    """OUT/stamp, written last: the sha256 of the script that made the directory and of this
    module, so that a directory cut short has none."""
    h = hashlib.sha256()
    for path in (Path(script), Path(__file__)):
        h.update(path.resolve().read_bytes())
    (out / "stamp").write_text(h.hexdigest())


# ---------------------------------------------------------------------------------------------
# Inputs and weights


def squash(side):
    """torchvision's preprocessing to side x side without keeping the aspect ratio (as the
    service resizes by default), then ImageNet's normalisation."""
    return transforms.Compose([
        transforms.Resize((side, side)),
        transforms.ToTensor(),
        transforms.Normalize(mean=MEAN, std=STD),
    ])


def randomise_batch_norms(model, generator, batches_tracked=None):
    """Every batch norm's scale, shift and running statistics drawn from `generator`, in module
    order, so that no layer is an identity; with `batches_tracked`, their counters set to it.

    The last batch norm of each residual branch (bn3 in bottleneck blocks, bn2 in basic ones)
    gets a fifth of the scale, so that activations stay in a sane range through deep stacks, as
    they do in trained networks.
    """
    last = "bn3" if hasattr(model.layer1[0], "bn3") else "bn2"
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                scale = 0.2 if name.rsplit(".", 1)[-1] == last else 1.0
                m.weight.copy_(scale * (0.5 + torch.rand(n, generator=generator)))
                m.bias.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=generator))
                m.running_var.copy_(0.5 + torch.rand(n, generator=generator))
                if batches_tracked is not None:
                    m.num_batches_tracked.fill_(batches_tracked)


def seeded_resnet50(seed):
    """torchvision's ResNet-50 with seeded random weights, in eval mode: convolutions as
    torchvision initialises them under torch.manual_seed(seed), every batch-norm statistic and
    the classifier from a generator seeded with seed + 1."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet50()
    g = torch.Generator().manual_seed(seed + 1)
    randomise_batch_norms(model, g, batches_tracked=1000)
    with torch.no_grad():
        model.fc.weight.copy_(0.05 * torch.randn(model.fc.weight.shape, generator=g))
        model.fc.bias.copy_(0.05 * torch.randn(model.fc.bias.shape, generator=g))
    return model.eval()


def decorrelate_classifier(model, inputs):
    """Makes the classes depend on the image rather than on the mean feature.

    A random network's pooled features share a large common component; with a random classifier
    that component picks the same class for every photograph. Removing it from the classifier's
    rows (deterministically, from the given input tensors, each a batch) gives each photo its
    own top class.
    """
    with torch.no_grad():
        feats = []
        hook = model.avgpool.register_forward_hook(lambda m, i, o: feats.append(o.flatten(1)))
        model(torch.cat(inputs))
        hook.remove()
        f = feats[0].mean(dim=0)
        w = model.fc.weight
        w -= torch.outer(w @ f, f) / (f @ f)
        w *= 20.0  # logits of a few units, as a trained classifier gives


def state(model, dtype=None):
    """The model's state dict with contiguous tensors, as safetensors stores it; with `dtype`,
    its floating-point tensors converted to that type."""
    return {
        k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
        for k, v in model.state_dict().items()
    }


def save_safetensors(model, path, dtype=None):
    save_file(state(model, dtype), str(path))


# ---------------------------------------------------------------------------------------------
# pytorch-grad-cam


GradCam = namedtuple("GradCam", "methods Target stood_in")


@functools.cache
def grad_cam():
    """pytorch-grad-cam: its methods by name (METHOD_NAMES, in that order), its
    ClassifierOutputTarget, and the packages stood in for while importing it.

    The package imports matplotlib, scipy and scikit-learn at module level for helpers the
    references never call (plots, 3-D resizing, sparse metrics, factorisation); where they are
    missing (a GPU machine running the device kit lacks them), an importer placed after the real
    ones answers for them and every submodule while pytorch-grad-cam is imported, so that no
    heavy wheel travels in the kit. A stand-in's attributes raise when called. Afterwards the
    stand-ins leave sys.modules, so that no other library takes them for the real packages.
    Where the packages are installed (the project's environment) nothing is stood in for.
    """
    missing = [n for n in ("matplotlib", "scipy", "sklearn")
               if n not in sys.modules and importlib.util.find_spec(n) is None]
    finder = _StandIn(missing)
    sys.meta_path.append(finder)
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    finally:
        sys.meta_path.remove(finder)
        for name in [m for m in sys.modules if m.split(".")[0] in finder.names]:
            del sys.modules[name]
    methods = {n: getattr(pytorch_grad_cam, c) for n, c in zip(METHOD_NAMES, _CLASS_NAMES)}
    return GradCam(methods, ClassifierOutputTarget, missing)


class _StandIn:
    """An importer of empty packages for the given top-level names (and anything below them);
    their attributes are functions that raise."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return importlib.util.spec_from_loader(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        module.__getattr__ = _absent(module.__name__)


def _absent(module):
    def attribute(name):
        if name.startswith("__"):
            raise AttributeError(name)

        def absent(*args, **kwargs):
            raise RuntimeError(f"{module}.{name} is not installed (stood in for the import)")

        return absent

    return attribute


def raw_cams(model, layer, x, target, names=METHOD_NAMES):
    """pytorch-grad-cam's raw maps (before ReLU) at `layer` for one target class, by method
    name, as float32 tensors on the CPU.

    The methods differ only in how they weigh one layer's activations and gradients: one forward
    and backward pass (GradCAM's, as the library runs it) captures them, and each method's own
    get_cam_image weighs them.
    """
    methods, target_cls, _ = grad_cam()
    targets = [target_cls(target)]
    capture = methods["gradcam"](model=model, target_layers=[layer])
    try:
        capture(input_tensor=x, targets=targets)
        acts = capture.activations_and_grads.activations[0].cpu().numpy()
        grads = capture.activations_and_grads.gradients[0].cpu().numpy()
    finally:
        capture.activations_and_grads.release()
    out = {}
    for name in names:
        cam = methods[name](model=model, target_layers=[layer])
        try:
            raw = cam.get_cam_image(x, layer, targets, acts, grads, False)[0]
        finally:
            cam.activations_and_grads.release()
        out[name] = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
    return out

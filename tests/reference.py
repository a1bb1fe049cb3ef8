"""Reference numbers from PyTorch for the Rust engine's parity tests.

Builds torchvision's ResNet-50 with seeded random weights (every parameter and every
batch-norm statistic randomised, so no layer is an identity), saves the weights as
`.safetensors` and as a PyTorch `.pth` zip, and for each photograph in tests/fixtures writes:

- the input tensor as torchvision preprocesses it (`Resize((224, 224))`, ImageNet mean/std);
- the logits;
- the seed tutorial's Grad-CAM map (its own hooks and full backward pass);
- pytorch-grad-cam's raw maps (before ReLU) for GradCAM, HiResCAM, GradCAM++, XGradCAM and
  LayerCAM at `layer1`..`layer4`, for the top-1 class, and for GradCAM at `layer4` also the
  2nd and 3rd; at `layer1` and `layer2` also the same maps computed in float64.

It also writes synthetic edge-case images (EXIF rotation, CMYK, 16-bit, ...) that need PIL to
make. Everything goes to the directory given on the command line; a stamp file records the hash
of this script so the test runner regenerates only when it changes.

Usage: python tests/reference.py OUT_DIR
"""

import copy
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torchvision
from PIL import Image, ImageOps
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import save_file
from torchvision import transforms

SEED = 20261129
FIXTURES = Path(__file__).resolve().parent / "fixtures"
PHOTOS = ["chelsea.png", "coffee.jpg", "rocket.jpg", "camera.png"]
METHODS = {
    "gradcam": GradCAM,
    "hirescam": HiResCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "layercam": LayerCAM,
}
LAYERS = ["layer4", "layer3", "layer2", "layer1"]


def seeded_resnet50():
    torch.manual_seed(SEED)
    model = torchvision.models.resnet50()
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                n = m.num_features
                # The last batch norm of each residual branch is kept small so that activations
                # stay in a sane range through 16 blocks, as trained networks do.
                scale = 0.2 if name.endswith("bn3") else 1.0
                m.weight.copy_(scale * (0.5 + torch.rand(n, generator=g)))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.num_batches_tracked.fill_(1000)
        model.fc.weight.copy_(0.05 * torch.randn(model.fc.weight.shape, generator=g))
        model.fc.bias.copy_(0.05 * torch.randn(model.fc.bias.shape, generator=g))
    return model.eval()


def decorrelate_classifier(model, inputs):
    """Makes the classes depend on the image rather than on the mean feature.

    A random network's pooled features share a large common component; with a random classifier
    that component picks the same class for every photograph. Removing it from the classifier's
    rows (deterministically, from the fixture photographs) gives each photo its own top class.
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


def seed_gradcam(model, layer, x):
    """The seed tutorial's algorithm (full backward), with the NaN guard it lacks."""
    feats, grads = [], []
    h1 = layer.register_forward_hook(lambda m, i, o: feats.append(o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: grads.append(go[0]))
    out = model(x)
    c = int(out.argmax(dim=1).item())
    one_hot = torch.zeros_like(out)
    one_hot[0][c] = 1
    model.zero_grad()
    out.backward(gradient=one_hot)
    h1.remove()
    h2.remove()
    w = grads[0].mean(dim=(0, 2, 3))
    heat = (feats[0].detach()[0] * w[:, None, None]).mean(dim=0)
    heat = heat.clamp(min=0)
    m = heat.max()
    return heat / m if m > 0 else heat


def cams(model, layer, x, target, methods):
    """pytorch-grad-cam's raw maps (before ReLU) for one target class, by method, as float32."""
    targets = [ClassifierOutputTarget(target)]
    capture = GradCAM(model=model, target_layers=[layer])
    capture(input_tensor=x, targets=targets)
    acts = capture.activations_and_grads.activations[0].cpu().numpy()
    grads = capture.activations_and_grads.gradients[0].cpu().numpy()
    capture.activations_and_grads.release()
    out = {}
    for method, cls in methods.items():
        cam = cls(model=model, target_layers=[layer])
        raw = cam.get_cam_image(x, layer, targets, acts, grads, False)[0]
        cam.activations_and_grads.release()
        out[method] = torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float32))
    return out


def write_synthetic(out: Path):
    """Edge-case images that the Rust tests decode; PIL makes the ones Rust cannot write."""
    syn = out / "synthetic"
    syn.mkdir(exist_ok=True)
    cat = Image.open(FIXTURES / "chelsea.png").convert("RGB")
    # EXIF orientation 6: stored rotated, displayed after a 90 degree clockwise turn.
    stored = cat.transpose(Image.Transpose.ROTATE_90)  # counter-clockwise
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(syn / "exif6.jpg", quality=95, exif=exif.tobytes())
    # Every EXIF orientation: stored so that, turned upright, it shows the cat as it is.
    undo = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    for o in range(1, 9):
        stored_o = cat.transpose(undo[o]) if o in undo else cat.copy()
        ex = Image.Exif()
        ex[0x0112] = o
        path = syn / f"orientation{o}.jpg"
        stored_o.save(path, quality=95, exif=ex.tobytes())
        upright = ImageOps.exif_transpose(Image.open(path))
        assert upright.size == cat.size, (o, upright.size)
    cat.convert("CMYK").save(syn / "cmyk.jpg", quality=95)
    arr16 = (np.asarray(cat.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(arr16).save(syn / "grey16.png")
    cat.convert("LA").save(syn / "grey_alpha.png")
    cat.convert("P", palette=Image.Palette.ADAPTIVE).save(syn / "palette.png")
    cat.save(syn / "cat.webp", lossless=True)
    cat.save(syn / "cat.bmp")
    cat.save(syn / "cat.tiff")
    frames = [cat, cat.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
    frames[0].save(syn / "animated.gif", save_all=True, append_images=frames[1:], duration=100)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    model = seeded_resnet50()
    pre = transforms.Compose([
        transforms.Resize((224, 224)),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    inputs = {p: pre(Image.open(FIXTURES / p).convert("RGB")).unsqueeze(0) for p in PHOTOS}
    decorrelate_classifier(model, list(inputs.values()))

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / "weights.safetensors"))
    torch.save(state, out / "weights.pth")

    model64 = copy.deepcopy(model).double()
    tensors = {}
    meta = {"seed": SEED, "photos": [], "methods": list(METHODS), "layers": LAYERS}
    for photo in PHOTOS:
        name = Path(photo).stem
        x = inputs[photo]
        with torch.no_grad():
            logits = model(x)
        top = logits[0].topk(3).indices.tolist()
        tensors[f"input.{name}"] = x.contiguous()
        tensors[f"logits.{name}"] = logits.contiguous()
        meta["photos"].append({"file": photo, "name": name, "top3": top})
        for layer_name in LAYERS:
            layer = getattr(model, layer_name)
            tensors[f"seed.{layer_name}.{name}"] = seed_gradcam(model, layer, x).contiguous()
            # The methods differ only in how they weigh one layer's activations and gradients:
            # one forward and backward pass per target serves all five.
            for k in range(3) if layer_name == "layer4" else range(1):
                methods = METHODS if k == 0 else {"gradcam": METHODS["gradcam"]}
                for method, raw in cams(model, layer, x, top[k], methods).items():
                    tensors[f"cam.{method}.{layer_name}.{name}.k{k}"] = raw
            # The same maps computed in float64: the exact answer both float32 implementations
            # are measured against (gradients flowing back through many blocks to layer1 and
            # layer2 pick up float32 rounding, more so where an activation sits near a ReLU's
            # kink).
            if layer_name in ("layer1", "layer2"):
                layer64 = getattr(model64, layer_name)
                for method, raw in cams(model64, layer64, x.double(), top[0], METHODS).items():
                    tensors[f"cam64.{method}.{layer_name}.{name}"] = raw
    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    write_synthetic(out)
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    (out / "stamp").write_text(digest)


if __name__ == "__main__":
    main()

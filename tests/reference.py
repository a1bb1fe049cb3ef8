"""Reference numbers from PyTorch for the Rust engine's parity tests.

Builds torchvision's ResNet-50 with seeded random weights (every parameter and every
batch-norm statistic randomised, so no layer is an identity: torchref.seeded_resnet50, the
network the device check uses too, with its classifier decorrelated on the photographs below),
saves the weights as
`.safetensors` and as a PyTorch `.pth` zip, and for each photograph in tests/fixtures writes:

- the input tensor as torchvision preprocesses it (`Resize((224, 224))`, ImageNet mean/std);
- the logits;
- the seed tutorial's Grad-CAM map (its own hooks and full backward pass);
- pytorch-grad-cam's raw maps (before ReLU) for GradCAM, HiResCAM, GradCAM++, XGradCAM and
  LayerCAM at `layer1`..`layer4`, for the top-1 class, and for GradCAM at `layer4` also the
  2nd and 3rd; at `layer1` and `layer2` also the same maps computed in float64.

It also writes synthetic edge-case images (EXIF rotation, CMYK, 16-bit, ...) that need PIL to
make. Everything goes to the directory given on the command line; a stamp file, written last,
records the hash of this script and of tests/torchref.py (scripts/reference.sh keys its cache on
the same files, so the references are made again when either changes).

Usage: python tests/reference.py OUT_DIR
"""

import copy
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from safetensors.torch import save_file

import torchref
from torchref import FIXTURES

SEED = 20261129
PHOTOS = ["chelsea.png", "coffee.jpg", "rocket.jpg", "camera.png"]
METHODS = torchref.METHOD_NAMES
LAYERS = ["layer4", "layer3", "layer2", "layer1"]


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
    out = torchref.begin()
    model = torchref.seeded_resnet50(SEED)
    pre = torchref.squash(224)
    inputs = {p: pre(Image.open(FIXTURES / p).convert("RGB")).unsqueeze(0) for p in PHOTOS}
    torchref.decorrelate_classifier(model, list(inputs.values()))

    state = torchref.state(model)
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
            # One forward and backward pass per target serves all five methods (raw_cams).
            for k in range(3) if layer_name == "layer4" else range(1):
                methods = METHODS if k == 0 else ["gradcam"]
                for method, raw in torchref.raw_cams(model, layer, x, top[k], methods).items():
                    tensors[f"cam.{method}.{layer_name}.{name}.k{k}"] = raw
            # The same maps computed in float64: the exact answer both float32 implementations
            # are measured against (gradients flowing back through many blocks to layer1 and
            # layer2 pick up float32 rounding, more so where an activation sits near a ReLU's
            # kink).
            if layer_name in ("layer1", "layer2"):
                layer64 = getattr(model64, layer_name)
                for method, raw in torchref.raw_cams(model64, layer64, x.double(), top[0]).items():
                    tensors[f"cam64.{method}.{layer_name}.{name}"] = raw
    save_file(tensors, str(out / "reference.safetensors"))
    (out / "reference.json").write_text(json.dumps(meta, indent=1))
    write_synthetic(out)
    torchref.write_stamp(out, __file__)


if __name__ == "__main__":
    main()

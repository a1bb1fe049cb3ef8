"""Reference numbers from PyTorch for every member of torchvision's ResNet family, for timm's
ResNets, and for checkpoints written the ways training code writes them.

For each member (resnet18 ... wide_resnet101_2): seeded random weights (every parameter and every
batch-norm statistic randomised), rounded to float16 so that the file is half the size and both
sides compute with the very same numbers; the logits of the test photograph and pytorch-grad-cam's
raw maps (before ReLU) for GradCAM at layer4 and for one other method at another layer.

Then, for a resnet18 with a 7-class head: the same model saved as a Lightning-style checkpoint
(state dict under `state_dict` with `model.` in front, epoch, optimiser state, hyper-parameters
holding an object of a class of this script), as DataParallel's state dict (`module.`), under
`model` with an optimiser, as a whole pickled module (to be refused), and with two networks in
one file (ambiguous); a labels file; and its logits and maps at 224 (squash) and at 288 with
torchvision's Resize(329) + CenterCrop(288), with the input tensor of the latter.

Usage: python tests/family.py OUT_DIR
"""

import json
import sys

import timm
import torch
import torchvision
from PIL import Image
from safetensors.torch import save_file
from torchvision import transforms

import torchref
from torchref import FIXTURES, MEAN, STD

SEED = 20261130
PHOTO = "chelsea.png"
# Each member: its second map (method, layer), so that every method and layer is covered.
FAMILY = {
    "resnet18": ("hirescam", "layer1"),
    "resnet34": ("gradcam++", "layer2"),
    "resnet50": ("xgradcam", "layer3"),
    "resnet101": ("layercam", "layer1"),
    "resnet152": ("hirescam", "layer2"),
    "resnext50_32x4d": ("gradcam++", "layer3"),
    "resnext101_32x8d": ("xgradcam", "layer2"),
    "resnext101_64x4d": ("layercam", "layer3"),
    "wide_resnet50_2": ("hirescam", "layer3"),
    "wide_resnet101_2": ("gradcam++", "layer1"),
}
TIMM = {"resnet50": "gradcam", "resnet18": "layercam", "resnext50_32x4d": "hirescam"}


class TrainingSettings:
    """Stands for a class of the training code: unpickling must keep it opaque."""

    def __init__(self):
        self.lr = 0.1
        self.schedule = [30, 60]


def randomise(model, seed, classes):
    """Every batch-norm statistic and parameter seeded (torchref.randomise_batch_norms: each
    residual branch's last batch norm small, so that activations stay in a sane range through
    deep stacks, as in trained nets), then rounded to float16."""
    g = torch.Generator().manual_seed(seed)
    torchref.randomise_batch_norms(model, g)
    with torch.no_grad():
        model.fc.weight.copy_(torch.randn(model.fc.weight.shape, generator=g) / 8)
        model.fc.bias.copy_(0.05 * torch.randn(classes, generator=g))
        # float16 values, held as float32: what the file stores is exactly what runs here.
        for p in list(model.parameters()) + list(model.buffers()):
            if p.is_floating_point():
                p.copy_(p.half().float())
    return model.eval()


def explain_into(tensors, key, model, x, method, layer):
    """The logits, GradCAM's raw map at layer4 and `method`'s at `layer`, for the top class."""
    with torch.no_grad():
        logits = model(x)
    top = int(logits[0].argmax())
    tensors[f"{key}.logits"] = logits.contiguous()
    tensors[f"{key}.gradcam.layer4"] = torchref.raw_cams(model, model.layer4, x, top,
                                                         ["gradcam"])["gradcam"]
    tensors[f"{key}.{method}.{layer}"] = torchref.raw_cams(model, getattr(model, layer), x, top,
                                                           [method])[method]
    return top


def main():
    out = torchref.begin(subdirs=("family", "timm", "ckpt"))
    photo = Image.open(FIXTURES / PHOTO).convert("RGB")
    x = torchref.squash(224)(photo).unsqueeze(0)
    tensors, meta = {}, {"photo": PHOTO, "family": {}, "timm": {}}

    for i, (arch, (method, layer)) in enumerate(FAMILY.items()):
        torch.manual_seed(SEED + i)
        model = randomise(getattr(torchvision.models, arch)(), SEED + 100 + i, 1000)
        torchref.save_safetensors(model, out / "family" / f"{arch}.safetensors", torch.float16)
        top = explain_into(tensors, f"family.{arch}", model, x, method, layer)
        meta["family"][arch] = {"method": method, "layer": layer, "top": top}
        print(f"family: {arch} top {top}", file=sys.stderr)
        del model

    for i, (arch, method) in enumerate(TIMM.items()):
        torch.manual_seed(SEED + 50 + i)
        model = timm.create_model(arch, pretrained=False, num_classes=1000)
        model = randomise(model, SEED + 150 + i, 1000)
        torchref.save_safetensors(model, out / "timm" / f"{arch}.safetensors", torch.float16)
        top = explain_into(tensors, f"timm.{arch}", model, x, method, "layer3")
        meta["timm"][arch] = {"method": method, "layer": "layer3", "top": top}

    # A resnet18 with 7 classes, saved every way training code saves one.
    torch.manual_seed(SEED + 200)
    model = randomise(torchvision.models.resnet18(num_classes=7), SEED + 201, 7)
    sd = model.state_dict()
    torchref.save_safetensors(model, out / "ckpt" / "resnet18_7.safetensors", torch.float16)
    # An optimiser with real state: one step on a copy, so that the model stays as it is.
    shadow = torchvision.models.resnet18(num_classes=7)
    shadow.load_state_dict(sd)
    opt = torch.optim.Adam(shadow.parameters(), lr=1e-3)
    shadow.train()
    shadow(torch.randn(2, 3, 64, 64)).sum().backward()
    opt.step()
    lightning = {
        "epoch": 12,
        "global_step": 3456,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 12}}}},
        "callbacks": {"ModelCheckpoint": {"best_model_score": torch.tensor(0.93)}},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"num_classes": 7, "settings": TrainingSettings()},
    }
    torch.save(lightning, out / "ckpt" / "lightning.ckpt")
    torch.save(torch.nn.DataParallel(model).state_dict(), out / "ckpt" / "dataparallel.pth")
    torch.save({"model": sd, "optimizer": opt.state_dict(), "epoch": 3}, out / "ckpt" / "model_key.pt")
    torch.save(model, out / "ckpt" / "whole_model.pt")
    two = {f"student.{k}": v for k, v in sd.items()}
    two.update({f"teacher.{k}": v * 2 for k, v in sd.items() if v.is_floating_point()})
    torch.save({"state_dict": two, "epoch": 1}, out / "ckpt" / "two_nets.ckpt")
    labels = ["circle", "square", "triangle", "star", "cross", "ring", "heart"]
    (out / "ckpt" / "labels7.txt").write_text("\n".join(labels) + "\n")
    (out / "ckpt" / "labels5.json").write_text(json.dumps(labels[:5]))

    top224 = explain_into(tensors, "r18_7.224", model, x, "layercam", "layer2")
    crop = transforms.Compose([
        transforms.Resize(int(288 / 0.875)), transforms.CenterCrop(288),
        transforms.ToTensor(), transforms.Normalize(MEAN, STD),
    ])
    x288 = crop(photo).unsqueeze(0)
    tensors["r18_7.288.input"] = x288.contiguous()
    top288 = explain_into(tensors, "r18_7.288", model, x288, "layercam", "layer2")
    meta["r18_7"] = {"labels": labels, "top224": top224, "top288": top288}

    save_file(tensors, str(out / "family.safetensors"))
    (out / "family.json").write_text(json.dumps(meta, indent=1))
    torchref.write_stamp(out, __file__)


if __name__ == "__main__":
    main()

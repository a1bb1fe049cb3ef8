"""Step b, weights: the seeded ResNet-50 of tests/reference.py (torchref.seeded_resnet50) with its
classifier decorrelated on the parity crops, saved as .safetensors for the binary; the crops and
the network's copies in other precisions, for the later steps."""

import copy

import numpy as np
import torch
from PIL import Image

import torchref

MEAN = np.array(torchref.MEAN, dtype=np.float32)
STD = np.array(torchref.STD, dtype=np.float32)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SEED = 0  # tests/reference.py's network, seeded otherwise


def photographs(kit):
    return sorted(p for p in (kit / "photos").iterdir()
                  if p.suffix.lower() in (".png", ".jpg", ".jpeg"))


def square_crop(path, side=224):
    """The picture's centre square, resized to side x side, as RGB uint8."""
    img = Image.open(path).convert("RGB")
    w, h = img.size
    s = min(w, h)
    box = ((w - s) // 2, (h - s) // 2, (w - s) // 2 + s, (h - s) // 2 + s)
    return np.asarray(img.crop(box).resize((side, side), Image.Resampling.BICUBIC))


def to_input(pixels, device):
    """(pixels / 255 - mean) / std in float32, NCHW, batch of one."""
    x = (pixels.astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))[None].to(device)


def weights(ctx):
    """The parity crops (written as PNG for the binary) and the seeded network, decorrelated on
    them and saved for the binary; the fp32 network stays on the device in ctx.model."""
    ctx.crop_dir = ctx.tmp / "crops"
    ctx.crop_dir.mkdir()
    for path in photographs(ctx.kit)[:ctx.plan.pictures]:
        pixels = square_crop(path)
        ctx.crops[path.stem] = pixels
        Image.fromarray(pixels).save(ctx.crop_dir / f"{path.stem}.png")
    if not ctx.crops:
        raise RuntimeError(f"no photographs in {ctx.kit / 'photos'}")
    model = torchref.seeded_resnet50(SEED)
    torchref.decorrelate_classifier(model, [to_input(p, "cpu") for p in ctx.crops.values()])
    ctx.weights = ctx.tmp / "weights.safetensors"
    torchref.save_safetensors(model, ctx.weights)
    ctx.model = model.to(ctx.device)
    return {"seed": SEED, "file_bytes": ctx.weights.stat().st_size,
            "pictures": sorted(ctx.crops), "crop": "centre square, bicubic to 224x224, PNG"}


def model_in(ctx, precision):
    """A copy of the reference network in `precision` (channels-last below fp32)."""
    model = copy.deepcopy(ctx.model).to(DTYPES[precision])
    if precision != "fp32":
        model = model.to(memory_format=torch.channels_last)
    return model

"""A ResNet-18 trained from scratch where one object decides the class, for pointing-game tests.

The task: every picture (160 x 160 RGB) holds exactly one large filled shape, the target, whose
kind is the class (circle, ring, triangle, cross, star); its colour, size (38-50% of the side),
orientation (triangles and stars point up or down) and position (anywhere it fits) are drawn
independently of the class. Under it lie distractors that no class resembles (thin straight
lines and small dots, in the same colours as targets) on a noisy, smoothly varying background.
Only the target's outline tells the class, so a faithful saliency map must point at the target.

Why the targets are this large: at the input size used here (128, squashed from 160 by
torchvision's `Resize((128, 128))`), layer4's map is 4 x 4, and ResNet's stride-2 layers centre
cell i's view on input pixel 32 i while pytorch-grad-cam's upsampling (OpenCV, half-pixel
centres) draws it around 32 i + 15.5: layer4's maps sit half a cell (20 picture pixels) right of
and below what they saw. A target must be about two cells wide for that map's peak to stay
inside it. With smaller targets (30-40%) the pointing game at layer4 fell to 80%; squares, whose
maps leaned on their sides, were replaced by rings for the same reason.

Training uses a curriculum: the background's texture and the number of distractors grow from
none to all over the first 30% of the steps (from scratch on two cores the network otherwise
spends its first thousands of pictures near chance).

A seeded torchvision `resnet18(num_classes=5)` is trained on pictures generated on the fly
(every picture fresh, so there is nothing to overfit), then evaluated on 200 held-out pictures
from another seed: accuracy, and for pytorch-grad-cam's GradCAM, HiResCAM, GradCAM++, XGradCAM
and LayerCAM at layer1..layer4 (target = the true class) the pointing-game rate: the first
arg-max of the map, upsampled to N x N by the library and scaled to picture pixels
((i + 0.5) * side / N), lies inside the target's bounding box.

Writes into OUT_DIR:
- weights.safetensors   the state dict (float32; batch-norm statistics and counters included);
- model.ckpt            the same weights as a PyTorch-Lightning-style checkpoint ("model." prefix);
- labels.txt            one class name per line, in class-index order;
- heldout/NNNN.png      the held-out pictures; heldout.json their classes and target boxes;
- torch_figures.json    accuracy, pointing-game rates (method -> layer -> rate), baselines (the
                        rate of the picture's centre and of a random point), per picture the
                        prediction, logits and every map's arg-max point (picture pixels),
                        training figures (epochs, steps, final train loss, seconds);
- stamp                 the hash of this script and of tests/torchref.py, written last.

Usage: python tests/trained.py OUT_DIR
"""

import json
import math
import os
import sys
import time

import numpy as np
import torch
import torchvision
from PIL import Image, ImageDraw
from safetensors.torch import save_file

import torchref
from torchref import MEAN, STD

METHODS, ClassifierOutputTarget, _ = torchref.grad_cam()  # pytorch-grad-cam's, by name
WALL_START = time.time()  # wall_seconds counts from here: the imports are left out
SEED = 20260611
TRAIN_SPLIT, HELDOUT_SPLIT = 1, 2
CLASSES = ["circle", "ring", "triangle", "cross", "star"]
SIDE = 160  # picture side, pixels
N = 128  # network input side (layer4 map: N / 32 = 4)
SIZE_RANGE = (0.38, 0.50)  # target's width and height, fraction of the side
HELDOUT = 200
EPOCHS = 4
PER_EPOCH = 2048  # fresh pictures per epoch
BATCH = 32
LR = 2e-3
WEIGHT_DECAY = 5e-4
CURRICULUM = 0.3  # fraction of the training steps over which the clutter grows to its full
LAYERS = ["layer1", "layer2", "layer3", "layer4"]
SS = 4  # supersampling of the target's outline


def luminance(rgb):
    return 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]


def colour(rng, background_lum):
    """A random colour at least 0.3 away from the background's luminance."""
    while True:
        c = rng.uniform(0.0, 1.0, 3).astype(np.float32)
        if abs(luminance(c) - background_lum) >= 0.3:
            return c


def background(rng, clutter):
    """Smooth colour blobs plus per-pixel noise (scaled by clutter), around a mid-grey level."""
    level = rng.uniform(0.35, 0.65)
    tint = rng.uniform(-0.08, 0.08, 3).astype(np.float32)
    coarse = rng.normal(0.0, 0.08, (6, 6, 3)).astype(np.float32)
    smooth = np.stack(
        [np.asarray(Image.fromarray(coarse[..., k]).resize((SIDE, SIDE), Image.Resampling.BICUBIC))
         for k in range(3)], axis=-1)
    fine = rng.standard_normal((SIDE, SIDE, 3), dtype=np.float32) * 0.05
    return np.float32(level) + tint + np.float32(clutter) * (smooth + fine), level


def shape_polygons(kind, e, flip):
    """Polygons (lists of (x, y) around the origin) of an upright shape about e wide and high.

    Every kind fills most of its e x e square, so that the target's box hardly depends on its
    kind; triangles and stars point up or (flip) down.
    """
    h = e / 2
    if kind == "triangle":
        polys = [[(0, -0.45 * e), (h, 0.45 * e), (-h, 0.45 * e)]]
    elif kind == "cross":
        w = 0.17 * e
        polys = [[(-h, -w), (h, -w), (h, w), (-h, w)], [(-w, -h), (w, -h), (w, h), (-w, h)]]
    elif kind == "star":
        big = h / math.sin(2 * math.pi / 5)  # outer radius: the two side points are e apart
        drop = big * (1 - math.cos(math.pi / 5)) / 2  # centres the star's box vertically
        pts = []
        for k in range(10):
            rr = big if k % 2 == 0 else big * 0.42
            t = -math.pi / 2 + k * math.pi / 5
            pts.append((rr * math.cos(t), rr * math.sin(t) + drop))
        polys = [pts]
    else:
        raise ValueError(kind)
    return [[(x, -y) for x, y in poly] for poly in polys] if flip else polys


def target_alpha(rng, kind):
    """The target's coverage over the picture (float in [0, 1]) and its bounding box."""
    e = rng.uniform(*SIZE_RANGE) * SIDE
    # Anywhere the whole target fits, whatever its kind.
    cx, cy = rng.uniform(e / 2, SIDE - e / 2, 2)
    flip = bool(rng.integers(2))
    big = Image.new("L", (SIDE * SS, SIDE * SS), 0)
    draw = ImageDraw.Draw(big)
    if kind in ("circle", "ring"):
        draw.ellipse([(cx - e / 2) * SS, (cy - e / 2) * SS, (cx + e / 2) * SS, (cy + e / 2) * SS],
                     fill=255)
        if kind == "ring":
            draw.ellipse([(cx - e / 4) * SS, (cy - e / 4) * SS, (cx + e / 4) * SS,
                          (cy + e / 4) * SS], fill=0)
    else:
        for poly in shape_polygons(kind, e, flip):
            draw.polygon([((cx + x) * SS, (cy + y) * SS) for x, y in poly], fill=255)
    alpha = np.asarray(big.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32) / 255
    ys, xs = np.nonzero(alpha >= 0.5)
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    return alpha, box


def distractors(rng, bg_lum, clutter):
    """Thin lines and small dots (the first `clutter` fraction of them): colour and coverage."""
    layer = Image.new("RGB", (SIDE * 2, SIDE * 2), (0, 0, 0))
    mask = Image.new("L", (SIDE * 2, SIDE * 2), 0)
    dl, dm = ImageDraw.Draw(layer), ImageDraw.Draw(mask)
    lines = rng.integers(3, 7)
    for k in range(lines):
        c = tuple(int(v * 255) for v in colour(rng, bg_lum))
        x0, y0 = rng.uniform(0, SIDE, 2)
        length = rng.uniform(0.15, 0.5) * SIDE
        t = rng.uniform(0, 2 * math.pi)
        xy = [x0 * 2, y0 * 2, (x0 + length * math.cos(t)) * 2, (y0 + length * math.sin(t)) * 2]
        w = int(rng.integers(2, 5))  # 1 to 2.5 picture pixels
        if k < round(clutter * lines):
            dl.line(xy, fill=c, width=w)
            dm.line(xy, fill=255, width=w)
    dots = rng.integers(3, 9)
    for k in range(dots):
        c = tuple(int(v * 255) for v in colour(rng, bg_lum))
        x, y = rng.uniform(0, SIDE, 2) * 2
        rad = rng.uniform(2, 4.5) * 2
        if k < round(clutter * dots):
            dl.ellipse([x - rad, y - rad, x + rad, y + rad], fill=c)
            dm.ellipse([x - rad, y - rad, x + rad, y + rad], fill=255)
    rgb = np.asarray(layer.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32) / 255
    a = np.asarray(mask.resize((SIDE, SIDE), Image.Resampling.BOX), dtype=np.float32) / 255
    # The layer was drawn on black: its colour where covered is rgb / a.
    return rgb, a[..., None]


def picture(split, index, clutter=1.0):
    """One picture (PIL RGB), its class index and the target's box; a pure function of its seed.

    clutter (0 to 1) scales the background's texture and the number of distractors drawn; the
    held-out pictures and the end of training have all of it.
    """
    rng = np.random.default_rng([SEED, split, index])
    label = int(rng.integers(len(CLASSES)))
    img, bg_lum = background(rng, clutter)
    d_rgb, d_a = distractors(rng, bg_lum, clutter)
    img = img * (1 - d_a) + d_rgb  # premultiplied colour over the background
    alpha, box = target_alpha(rng, CLASSES[label])
    fill = colour(rng, bg_lum) + rng.standard_normal((SIDE, SIDE, 3), dtype=np.float32) * 0.03
    img = img * (1 - alpha[..., None]) + fill * alpha[..., None]
    img = np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(img, "RGB"), label, box


PREPROCESS = torchref.squash(N)


def batch(split, indices, clutter):
    """Training pictures preprocessed as PREPROCESS does, a batch at a time (the same numbers)."""
    xs, ys = [], []
    for i in indices:
        img, label, _ = picture(split, i, clutter)
        xs.append(np.asarray(img.resize((N, N), Image.Resampling.BILINEAR)))
        ys.append(label)
    x = torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float().div(255)
    x = (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    return x.contiguous(memory_format=torch.channels_last), torch.tensor(ys)


def train(model):
    """AdamW with a one-cycle schedule on fresh pictures; returns the optimizer and figures."""
    steps_per_epoch = PER_EPOCH // BATCH
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LR, total_steps=EPOCHS * steps_per_epoch, pct_start=0.25)
    model.train()
    start = time.time()
    step = 0
    for epoch in range(EPOCHS):
        losses, correct = [], 0
        for b in range(steps_per_epoch):
            first = (epoch * steps_per_epoch + b) * BATCH
            # A curriculum: clutter grows from none to all over the first CURRICULUM of steps.
            clutter = min(1.0, (step + 1) / (CURRICULUM * EPOCHS * steps_per_epoch))
            x, y = batch(TRAIN_SPLIT, range(first, first + BATCH), clutter)
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y).sum())
        print(f"trained: epoch {epoch + 1}/{EPOCHS} loss {np.mean(losses):.4f} "
              f"train accuracy {correct / (steps_per_epoch * BATCH):.3f} "
              f"({time.time() - start:.0f} s)", file=sys.stderr, flush=True)
    model.eval()
    return opt, {
        "seed": SEED,
        "lr": LR,
        "epochs": EPOCHS,
        "steps": step,
        "batch": BATCH,
        "pictures_seen": step * BATCH,
        "final_train_loss": float(np.mean(losses)),
        "final_train_accuracy": correct / (steps_per_epoch * BATCH),
        "train_seconds": time.time() - start,
    }


class Captured:
    """Stands in for pytorch-grad-cam's ActivationsAndGradients with arrays already captured."""

    def __init__(self, activations, gradients):
        self.activations, self.gradients = [activations], [gradients]

    def release(self):
        pass


def pointing(model, x, labels):
    """Arg-max points (picture pixels) of each method's map at each layer, for the true class.

    One forward and backward pass captures every layer's activations and gradients; each method
    then runs its own pytorch-grad-cam pipeline (weights, ReLU, upsampling to N x N with
    normalisation) on them, which is what calling it directly computes, once per method.
    """
    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    layers = [getattr(model, name) for name in LAYERS]
    capture = METHODS["gradcam"](model=model, target_layers=layers)
    capture(input_tensor=x, targets=targets)
    acts = list(capture.activations_and_grads.activations)
    grads = list(capture.activations_and_grads.gradients)
    capture.activations_and_grads.release()
    points = {}
    for method, cls in METHODS.items():
        for li, name in enumerate(LAYERS):
            cam = cls(model=model, target_layers=[layers[li]])
            cam.activations_and_grads.release()
            cam.activations_and_grads = Captured(acts[li], grads[li])
            maps = cam.aggregate_multi_layers(cam.compute_cam_per_layer(x, targets, False))
            assert maps.shape == (len(labels), N, N), maps.shape
            flat = maps.reshape(len(labels), -1).argmax(axis=1)  # first arg-max
            iy, ix = np.divmod(flat, N)
            px = (ix + 0.5) * SIDE / N
            py = (iy + 0.5) * SIDE / N
            points[f"{method}.{name}"] = np.stack([px, py], axis=1)
    return points


def check_pipeline(model, x, labels):
    """The shortcut in `pointing` gives exactly what calling the CAM objects gives."""
    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    pts = pointing(model, x, labels)
    for method, cls in METHODS.items():
        for name in ("layer2", "layer4"):
            with cls(model=model, target_layers=[getattr(model, name)]) as cam:
                maps = cam(input_tensor=x, targets=targets)
            flat = maps.reshape(len(labels), -1).argmax(axis=1)
            iy, ix = np.divmod(flat, N)
            want = np.stack([(ix + 0.5) * SIDE / N, (iy + 0.5) * SIDE / N], axis=1)
            assert np.array_equal(want, pts[f"{method}.{name}"]), (method, name)


def inside(point, box):
    x, y = point
    return box[0] <= x < box[2] and box[1] <= y < box[3]


def evaluate(model, out):
    """Writes the held-out set and measures accuracy and pointing on it, as read back from PNG."""
    # Held-out pictures, written as PNG and read back as the service would read them.
    pictures = []
    for i in range(HELDOUT):
        img, label, box = picture(HELDOUT_SPLIT, i)
        file = f"heldout/{i:04d}.png"
        img.save(out / file)
        pictures.append({"file": file, "class_index": label, "label": CLASSES[label], "box": box})
    (out / "heldout.json").write_text(json.dumps({
        "input_size": N, "picture_side": SIDE, "mean": MEAN, "std": STD, "classes": CLASSES,
        "pictures": pictures}, indent=1))
    x = torch.stack([PREPROCESS(Image.open(out / p["file"]).convert("RGB")) for p in pictures])
    labels = np.array([p["class_index"] for p in pictures])
    boxes = [p["box"] for p in pictures]

    check_pipeline(model, x[:4], labels[:4])
    with torch.no_grad():
        logits = model(x)
    predicted = logits.argmax(1).numpy()
    accuracy = float((predicted == labels).mean())
    points = {}
    for start in range(0, HELDOUT, 50):
        part = pointing(model, x[start:start + 50], labels[start:start + 50])
        for key, value in part.items():
            points.setdefault(key, []).append(value)
    points = {k: np.concatenate(v) for k, v in points.items()}
    rates = {m: {name: float(np.mean([inside(p, b) for p, b in zip(points[f"{m}.{name}"], boxes)]))
                 for name in LAYERS} for m in METHODS}
    centre = float(np.mean([inside((SIDE / 2, SIDE / 2), b) for b in boxes]))
    area = float(np.mean([(b[2] - b[0]) * (b[3] - b[1]) / SIDE**2 for b in boxes]))
    return {
        "accuracy": accuracy,
        "correct": int((predicted == labels).sum()),
        "count": HELDOUT,
        "pointing": rates,
        "baselines": {"picture_centre": centre, "random_point": area},
        "per_picture": [{
            "file": p["file"],
            "predicted": int(predicted[i]),
            "logits": [float(v) for v in logits[i]],
            "points": {k: [float(v) for v in points[k][i]] for k in points},
        } for i, p in enumerate(pictures)],
    }


def summary(f):
    print(f"trained: held-out accuracy {f['accuracy']:.3f} ({f['correct']}/{f['count']}), "
          f"final train loss {f['final_train_loss']:.4f}, training {f['train_seconds']:.0f} s, "
          f"all {f['wall_seconds']:.0f} s", file=sys.stderr)
    print("trained: pointing game " + " ".join(f"{n:>7}" for n in LAYERS), file=sys.stderr)
    for m in METHODS:
        print(f"trained: {m:>13} " + " ".join(f"{f['pointing'][m][n]:7.3f}" for n in LAYERS),
              file=sys.stderr)
    b = f["baselines"]
    print(f"trained: baselines: picture centre {b['picture_centre']:.3f}, "
          f"random point {b['random_point']:.3f}", file=sys.stderr)


def main():
    # Two threads by default; GRADCAM_TRAINED_THREADS builds it under another count, to show the
    # suite does not depend on the exact floats one machine's training gives (scripts/trained_threads.sh).
    out = torchref.begin(threads=int(os.environ.get("GRADCAM_TRAINED_THREADS", "2")),
                         subdirs=("heldout",))
    torch.manual_seed(SEED)
    model = torchvision.models.resnet18(num_classes=len(CLASSES))
    model = model.to(memory_format=torch.channels_last)
    opt, figures = train(model)
    model = model.to(memory_format=torch.contiguous_format)

    state = torchref.state(model)
    save_file(state, str(out / "weights.safetensors"))
    torch.save({
        "epoch": EPOCHS - 1,
        "global_step": figures["steps"],
        "state_dict": {"model." + k: v for k, v in state.items()},
        "optimizer_states": [opt.state_dict()],
        "hyper_parameters": {"num_classes": len(CLASSES), "lr": LR, "arch": "resnet18",
                             "input_size": N},
        "pytorch-lightning_version": "2.5.0",
    }, out / "model.ckpt")
    (out / "labels.txt").write_text("".join(c + "\n" for c in CLASSES))

    figures.update(evaluate(model, out))
    figures["wall_seconds"] = time.time() - WALL_START
    (out / "torch_figures.json").write_text(json.dumps(figures, indent=1))

    summary(figures)
    torchref.write_stamp(out, __file__)


if __name__ == "__main__":
    main()

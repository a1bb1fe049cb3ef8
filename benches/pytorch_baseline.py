"""The same measurement as benches/engine.rs for PyTorch on the same weights and machine:
torchvision forward-only, pytorch-grad-cam's GradCAM, and the seed tutorial's algorithm.

Usage: python benches/pytorch_baseline.py WEIGHTS.safetensors
"""

import sys
import time

import torch
import torchvision
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from safetensors.torch import load_file


def rate(fn, batch, seconds=6.0):
    fn()  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n * batch / (time.perf_counter() - start)


def seed_algorithm(model, x):
    feats, grads = [], []
    layer = model.layer4[-1]
    h1 = layer.register_forward_hook(lambda m, i, o: feats.append(o))
    h2 = layer.register_full_backward_hook(lambda m, gi, go: grads.append(go[0]))
    out = model(x)
    one_hot = torch.zeros_like(out)
    one_hot[0][out.argmax(dim=1)] = 1
    model.zero_grad()
    out.backward(gradient=one_hot)
    h1.remove()
    h2.remove()
    w = grads[0].mean(dim=(0, 2, 3))
    return torch.relu((feats[0].detach()[0] * w[:, None, None]).mean(0))


def main():
    model = torchvision.models.resnet50()
    model.load_state_dict(load_file(sys.argv[1]))
    model.eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for batch in (1, 8):
        x = torch.randn(batch, 3, 224, 224)

        def forward():
            with torch.no_grad():
                model(x)

        print(f"pytorch forward             batch {batch}: {rate(forward, batch):6.2f} images/s")
        for name in ("layer4", "layer3"):
            cam = GradCAM(model=model, target_layers=[getattr(model, name)])
            targets = [ClassifierOutputTarget(1)] * batch
            r = rate(lambda: cam(input_tensor=x, targets=targets), batch)
            print(f"pytorch-grad-cam {name}     batch {batch}: {r:6.2f} images/s")
            cam.activations_and_grads.release()
    x = torch.randn(1, 3, 224, 224)
    print(f"seed algorithm layer4       batch 1: {rate(lambda: seed_algorithm(model, x), 1):6.2f} images/s")


if __name__ == "__main__":
    main()

"""The device check's steps and what they share, one concern a module; scripts/gpu_check.py runs
them (see its docstring for the whole check):

  context       the plan, the clock, the context the steps share, small helpers
  environment   a. torch, CUDA, the GPU, the CPUs, the binaries' versions
  weights       b. the seeded network (torchref.py) and the parity crops
  parity        c. the binary's logits and maps against PyTorch's
  engine        d. `gradcam-serve bench` beside PyTorch eager and pytorch-grad-cam
  service       e. the service over HTTP under gradcam-load
  goals         f. the performance goals
  probes        nvidia-smi, /proc and the server's metrics, read while measuring
  report        the JSON report, saved after every step
  markdown      its Markdown rendering
"""

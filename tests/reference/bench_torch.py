"""PyTorch side of `dp bench`: the same UNet, the same batch sizes, timed the same way.
Prints one JSON line: {"train_img_s": ..., "sample_img_s": ..., "threads": ...}.
    python3 tests/reference/bench_torch.py --hidden 64 --train-batch 64 --sample-batch 80 --seconds 10
"""
import argparse, json, os, sys, time

import torch

sys.path.insert(0, os.path.dirname(__file__))
from mnist_reference import UNet  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--hidden", type=int, default=64)
p.add_argument("--train-batch", type=int, default=64)
p.add_argument("--sample-batch", type=int, default=80)
p.add_argument("--seconds", type=float, default=10.0)
a = p.parse_args()
torch.manual_seed(0)
model = UNet(a.hidden, "time_class")
opt = torch.optim.Adam(model.parameters(), lr=1e-3)


def timed(fn, images):
    fn()  # warm-up
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < a.seconds:
        fn()
        n += 1
    return n * images / (time.perf_counter() - t0)


def train_step():
    b = a.train_batch
    x1 = torch.rand(b, 1, 28, 28)
    x0 = torch.randn(b, 1, 28, 28)
    t = torch.rand(b, 1)
    c = torch.nn.functional.one_hot(torch.randint(0, 10, (b,)), 10).float()
    t4 = t[:, :, None, None]
    loss = ((model((1 - t4) * x0 + t4 * x1, t, c) - (x1 - x0)) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()


def sample_step():
    # One guided Euler step for the batch: conditional and unconditional halves in one pass.
    b = a.sample_batch
    x = torch.randn(b, 1, 28, 28)
    c = torch.nn.functional.one_hot(torch.arange(b) % 10, 10).float()
    with torch.no_grad():
        u = model(torch.cat([x, x]), torch.full((2 * b, 1), 0.5), torch.cat([c, torch.zeros_like(c)]))
        x + (u[b:] + 5.0 * (u[:b] - u[b:])) / 50


model.train()
train = timed(train_step, a.train_batch)
model.eval()
sample = timed(sample_step, a.sample_batch)
print(json.dumps({"train_img_s": train, "sample_img_steps_s": sample, "threads": torch.get_num_threads(), "torch": torch.__version__}))

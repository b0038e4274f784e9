"""PyTorch reference for the MNIST UNets of SPEC part B, and the fixtures the Rust tests compare
against. Module and parameter names match src/mnist/unet.rs so the state dict loads unchanged
(burn-store's PyTorch adapter only transposes Linear weights and names BN gamma/beta).

    python3 tests/reference/mnist_reference.py            # writes tests/fixtures/mnist/*.safetensors

Each fixture is a tiny model (D = 4) with randomised weights *and* BatchNorm statistics, plus
inputs, injected noise and expected outputs. Tests need no Python: only these files.
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "mnist")


class Conv(nn.Module):  # Conv2d(k3, s, p1) + BN + GELU
    def __init__(self, cin, cout, stride=1):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, stride, 1)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x)))


class ConvUp(nn.Module):  # ConvTranspose2d + BN + GELU (UpConv k4 s2 p1, Unflatten k7 s7 p0)
    def __init__(self, cin, cout, k, s, p):
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, k, s, p)
        self.bn = nn.BatchNorm2d(cout)

    def forward(self, x):
        return F.gelu(self.bn(self.conv(x)))


class ConvBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.conv1 = Conv(cin, cout)
        self.conv2 = Conv(cout, cout)

    def forward(self, x):
        return self.conv2(self.conv1(x))


class DownBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.down = Conv(cin, cout, 2)
        self.block = ConvBlock(cout, cout)

    def forward(self, x):
        return self.block(self.down(x))


class UpBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.up = ConvUp(cin, cout, 4, 2, 1)
        self.block = ConvBlock(cout, cout)

    def forward(self, x):
        return self.block(self.up(x))


class FCBlock(nn.Module):
    def __init__(self, din, dout):
        super().__init__()
        self.fc1 = nn.Linear(din, dout)
        self.fc2 = nn.Linear(dout, dout)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))[:, :, None, None]


class UNet(nn.Module):
    def __init__(self, d, conditioning="time_class"):
        super().__init__()
        self.e1 = ConvBlock(1, d)
        self.e2 = DownBlock(d, d)
        self.e3 = DownBlock(d, 2 * d)
        self.unflatten = ConvUp(2 * d, 2 * d, 7, 7, 0)
        self.u1 = UpBlock(4 * d, d)
        self.u2 = UpBlock(2 * d, d)
        self.d1 = ConvBlock(2 * d, d)
        self.out = nn.Conv2d(d, 1, 3, 1, 1)
        self.conditioning = conditioning
        if conditioning != "none":
            self.fc1_t = FCBlock(1, 2 * d)
            self.fc2_t = FCBlock(1, d)
        if conditioning == "time_class":
            self.fc1_c = FCBlock(10, 2 * d)
            self.fc2_c = FCBlock(10, d)

    def forward(self, x, t=None, c=None):
        e1 = self.e1(x)
        e2 = self.e2(e1)
        e3 = self.e3(e2)
        u = self.unflatten(F.gelu(F.avg_pool2d(e3, 7)))
        if self.conditioning == "time_class":
            u = self.fc1_c(c) * u + self.fc1_t(t)
        elif self.conditioning == "time":
            u = u * self.fc1_t(t)
        u1 = self.u1(torch.cat([e3, u], 1))
        if self.conditioning == "time_class":
            u1 = self.fc2_c(c) * u1 + self.fc2_t(t)
        elif self.conditioning == "time":
            u1 = u1 * self.fc2_t(t)
        u2 = self.u2(torch.cat([e2, u1], 1))
        return self.out(self.d1(torch.cat([e1, u2], 1)))


def velocity(model, x, t, labels, guidance):
    b = x.shape[0]
    tt = torch.full((b, 1), t)
    if model.conditioning == "time":
        return model(x, tt)
    c = F.one_hot(torch.tensor(labels), 10).float()
    if guidance == 1.0:
        return model(x, tt, c)
    uc = model(x, tt, c)
    uu = model(x, tt, torch.zeros_like(c))
    return uu + guidance * (uc - uu)


def sample(model, x0, labels, guidance, steps, solver):
    x = x0.clone()
    dt = 1.0 / steps
    for i in range(steps):
        t = i * dt
        u = velocity(model, x, t, labels, guidance)
        if solver == "euler" or i == steps - 1:
            # Heun's last step is plain Euler (as in EDM): no corrector at t = 1.
            x = x + dt * u
        else:  # heun
            u2 = velocity(model, x + dt * u, t + dt, labels, guidance)
            x = x + dt * 0.5 * (u + u2)
    return x


def randomise_bn(model, g):
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 1.0 + 0.2 * torch.randn(n, generator=g)
            m.bias.data = 0.1 * torch.randn(n, generator=g)
            m.running_mean.data = 0.2 * torch.randn(n, generator=g)
            m.running_var.data = 0.5 + torch.rand(n, generator=g)


def state(model):
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}


def make(conditioning, seed):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed + 1)
    d, b = 4, 3
    model = UNet(d, conditioning)
    randomise_bn(model, g)
    weights = state(model)
    io = {}
    x = torch.rand(b, 1, 28, 28, generator=g)
    t = torch.rand(b, 1, generator=g)
    labels = [3, 7, 0]
    c = F.one_hot(torch.tensor(labels), 10).float()
    c[2] = 0.0  # the third row is "no class" (dropped for guidance)
    io.update({"x": x, "t": t, "c": c})
    args = (x,) if conditioning == "none" else (x, t, c if conditioning == "time_class" else None)

    model.eval()
    with torch.no_grad():
        io["out_eval"] = model(*args)

    # Train mode: batch statistics, and the running statistics the step leaves behind.
    model.train()
    io["out_train"] = model(*args).detach()
    for k, v in model.state_dict().items():
        if k in ("e1.conv1.bn.running_mean", "e1.conv1.bn.running_var", "unflatten.bn.running_var"):
            io["after_train." + k] = v.detach().clone()
    model.load_state_dict(weights, strict=False)

    if conditioning == "none":
        # Denoising loss (train mode) and its gradient for two parameters.
        eps = torch.randn(b, 1, 28, 28, generator=g)
        model.train()
        model.zero_grad()
        loss = ((model(x + 0.5 * eps) - x) ** 2).mean()
        loss.backward()
        io.update({"eps": eps, "loss": loss.detach().reshape(1)})
    else:
        x0 = torch.randn(b, 1, 28, 28, generator=g)
        model.train()
        model.zero_grad()
        t4 = t[:, :, None, None]
        xt = (1 - t4) * x0 + t4 * x
        u = model(xt, t, c if conditioning == "time_class" else None)
        loss = ((u - (x - x0)) ** 2).mean()
        loss.backward()
        io.update({"x0": x0, "loss": loss.detach().reshape(1)})
    io["grad.out.weight"] = model.out.weight.grad.detach().clone()
    io["grad.e1.conv1.conv.weight"] = model.e1.conv1.conv.weight.grad.detach().clone()
    model.load_state_dict(weights, strict=False)

    if conditioning != "none":
        model.eval()
        noise = torch.randn(2, 1, 28, 28, generator=g)
        io["sample.x0"] = noise
        with torch.no_grad():
            io["sample.euler"] = sample(model, noise, [3, 7], 5.0, 4, "euler")
            io["sample.heun"] = sample(model, noise, [3, 7], 5.0, 3, "heun")
            io["sample.euler_g1"] = sample(model, noise, [3, 7], 1.0, 2, "euler")

    os.makedirs(OUT, exist_ok=True)
    save_file(weights, os.path.join(OUT, f"unet_{conditioning}.weights.safetensors"))
    save_file({k: v.contiguous().float() for k, v in io.items()}, os.path.join(OUT, f"unet_{conditioning}.io.safetensors"))
    print(conditioning, "loss", float(io["loss"]))


if __name__ == "__main__":
    torch.use_deterministic_algorithms(True)
    for i, cond in enumerate(["none", "time", "time_class"]):
        make(cond, 100 + i)

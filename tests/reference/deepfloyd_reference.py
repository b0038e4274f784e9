"""diffusers reference for DeepFloyd IF stage 1 (SPEC part A), and the fixtures the Rust tests
compare against. Tests need no Python: only the files this writes.

    pip install diffusers==0.42.1 torch safetensors
    python3 tests/reference/deepfloyd_reference.py     # writes tests/fixtures/deepfloyd/

Real IF weights cannot be shipped (DeepFloyd licence), so the fixtures are tiny, randomly initialised
`UNet2DConditionModel`s with the IF-I layout: ResnetDownsampleBlock2D + SimpleCrossAttnDownBlock2D(s),
UNetMidBlock2DSimpleCrossAttn, SimpleCrossAttnUpBlock2D(s) + ResnetUpsampleBlock2D, scale-shift
ResNets, GELU, text_proj of the T5 tokens, and the attention-pooled "text" addition embedding.
Two configs differ the way IF-I-M and IF-I-XL do (widths, depth, layers per block, heads):

  tiny_m   2 levels, 1 layer per block, saved as one f32 safetensors file
  tiny_xl  3 levels, 2 layers per block, saved as f16 and sharded with an index (like the real XL)

Every parameter is perturbed away from its init (norm weights around 1, biases non-zero) so a
wrongly loaded or ignored tensor changes the output. The expected outputs are computed in f32 from
exactly the weights written (for tiny_xl: the f16 values widened to f32).
"""
import json
import math
import os
import shutil

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "fixtures", "deepfloyd")

# What convert_if.py (diffusers) sets for IF stage 1, with tiny sizes.
IF_COMMON = dict(
    in_channels=3,
    out_channels=6,
    act_fn="gelu",
    addition_embed_type="text",
    cross_attention_norm="group_norm",
    mid_block_type="UNetMidBlock2DSimpleCrossAttn",
    resnet_time_scale_shift="scale_shift",
    use_linear_projection=False,
    upcast_attention=False,
    class_embed_type=None,
)

CONFIGS = {
    "tiny_m": dict(
        sample_size=16,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        attention_head_dim=8,
        cross_attention_dim=32,  # a multiple of 32: diffusers' norm_cross has 32 groups
        encoder_hid_dim=24,
        addition_embed_type_num_heads=4,
        norm_num_groups=4,
    ),
    "tiny_xl": dict(
        sample_size=16,
        block_out_channels=(16, 24, 32),
        layers_per_block=2,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        attention_head_dim=8,
        cross_attention_dim=32,
        encoder_hid_dim=32,
        addition_embed_type_num_heads=4,
        norm_num_groups=8,
        resnet_out_scale_factor=1.414,
    ),
}

TOKENS = 8  # T5 gives 77; the UNet works with any token count and the fixture stays small.
BATCH = 2


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if p.dim() == 1 and ("norm" in name):
                p.copy_((1.0 + 0.2 * noise) if name.endswith("weight") else 0.2 * noise)
            elif p.dim() == 1:  # biases
                p.copy_(0.1 * noise)
            else:
                p.add_(0.05 * noise * p.std().clamp(min=1e-3))


def save_sharded_f16(sd, folder, shards=2):
    keys = sorted(sd)
    per = math.ceil(len(keys) / shards)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = {k: sd[k].to(torch.float16).contiguous() for k in keys[i * per:(i + 1) * per]}
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    total = sum(v.numel() * 2 for v in sd.values())
    with open(os.path.join(folder, "diffusion_pytorch_model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=1)


def make_unet(name, cfg, seed):
    torch.manual_seed(seed)
    model = UNet2DConditionModel(**IF_COMMON, **cfg).eval()
    perturb(model, seed + 1)
    folder = os.path.join(OUT, name, "unet")
    os.makedirs(folder, exist_ok=True)
    model.save_config(folder)
    sd = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    if name == "tiny_xl":
        save_sharded_f16(sd, folder)
        # Compute the reference from the values actually stored.
        model.load_state_dict({k: v.to(torch.float16).to(torch.float32) for k, v in sd.items()})
    else:
        save_file(sd, os.path.join(folder, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})

    g = torch.Generator().manual_seed(seed + 2)
    s = cfg["sample_size"]
    x = torch.randn(BATCH, 3, s, s, generator=g)
    text = torch.randn(BATCH, TOKENS, cfg["encoder_hid_dim"], generator=g)
    t = torch.tensor([999, 250])
    with torch.no_grad():
        t_emb = model.time_embedding(model.get_time_embed(sample=x, timestep=t))
        aug = model.add_embedding(text)
        out = model(x, t, encoder_hidden_states=text).sample
    save_file(
        {
            "sample": x,
            "timesteps": t.float(),
            "encoder_hidden_states": text,
            "time_emb": t_emb.contiguous(),
            "text_time_emb": aug.contiguous(),
            "out": out.contiguous(),
        },
        os.path.join(OUT, name, "io.safetensors"),
    )
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n} parameters, out std {out.std():.4f}")
    return model


def scheduler_fixture():
    # IF-I's scheduler as convert_if.py (and the published scheduler_config.json) sets it up.
    sched = DDPMScheduler(
        variance_type="learned_range",
        beta_schedule="squaredcos_cap_v2",
        prediction_type="epsilon",
        thresholding=True,
        dynamic_thresholding_ratio=0.95,
        sample_max_value=1.5,
    )
    folder = os.path.join(OUT, "scheduler")
    os.makedirs(folder, exist_ok=True)
    sched.save_config(folder)
    strided = list(range(990, -1, -30))
    sched.set_timesteps(timesteps=strided)
    g = torch.Generator().manual_seed(11)
    tensors = {
        "alphas_cumprod": sched.alphas_cumprod.float(),
        "betas": sched.betas.float(),
        "timesteps": torch.tensor(strided).float(),
    }
    # One step at several points of the strided list, with the noise diffusers draws injected:
    # randn_tensor(shape, generator) equals torch.randn(shape, generator) on CPU.
    for t in [990, 510, 30, 0]:
        model_output = torch.randn(1, 6, 8, 8, generator=g)
        model_output[:, 3:] = torch.tanh(model_output[:, 3:])  # v in [-1, 1] like the real model
        sample = 1.5 * torch.randn(1, 3, 8, 8, generator=g)
        for mode, thresholding, clip in [("threshold", True, True), ("clip", False, True), ("none", False, False)]:
            sched.register_to_config(thresholding=thresholding, clip_sample=clip)
            out = sched.step(model_output, t, sample, generator=torch.Generator().manual_seed(t)).prev_sample
            tensors[f"step_{t}_{mode}"] = out.contiguous()
        tensors[f"step_{t}_model_output"] = model_output.contiguous()
        tensors[f"step_{t}_sample"] = sample.contiguous()
        tensors[f"step_{t}_noise"] = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(t))
        # The learned-range variance (log) between t and the next strided timestep.
        tensors[f"step_{t}_log_variance"] = sched._get_variance(t, model_output[:, 3:]).contiguous()
    save_file(tensors, os.path.join(folder, "scheduler.safetensors"))
    ab = sched.alphas_cumprod
    print("alphas_cumprod", {t: float(ab[t]) for t in [250, 500, 750, 990]})


# ---- The course's algorithms, in plain PyTorch, with injected noise ------------------------------
# Written from the course's formulas (not DDPMScheduler.step), so the Rust scheduler is checked
# against them as well. Noise order: x_T (or SDEdit's forward noise) first, then per step the
# variance noise, then (inpainting) the noise that re-noises the known pixels.

ALGO_TIMESTEPS = list(range(990, -1, -198))  # 990, 792, 594, 396, 198, 0: five steps


class Noise:
    def __init__(self, seed):
        self.g = torch.Generator().manual_seed(seed)
        self.drawn = []

    def __call__(self, shape):
        z = torch.randn(*shape, generator=self.g)
        self.drawn.append(z)
        return z


def course_step(ab, out, t, tp, x, z):
    eps, v = out[:, :3], out[:, 3:]
    a_t, a_p = ab[t], ab[tp]
    alpha = a_t / a_p
    beta = 1 - alpha
    x0 = (x - (1 - a_t).sqrt() * eps) / a_t.sqrt()
    mean = a_p.sqrt() * beta / (1 - a_t) * x0 + alpha.sqrt() * (1 - a_p) / (1 - a_t) * x
    var = ((1 - a_p) / (1 - a_t) * beta).clamp(min=1e-20)
    frac = (v + 1) / 2
    log_var = frac * beta.log() + (1 - frac) * var.log()
    return mean + (0.5 * log_var).exp() * z


def guided(model, x, t, cond, uncond, g):
    b = x.shape[0]
    if uncond is None:
        return model(x, torch.tensor([t] * b), encoder_hidden_states=cond.expand(b, -1, -1)).sample
    out = model(torch.cat([x, x]), torch.tensor([t] * 2 * b),
                encoder_hidden_states=torch.cat([uncond.expand(b, -1, -1), cond.expand(b, -1, -1)])).sample
    un, co = out[:b], out[b:]
    eps = un[:, :3] + g * (co[:, :3] - un[:, :3])
    return torch.cat([eps, co[:, 3:]], dim=1)


def loop(ab, x, i_start, noise, output, after=lambda x, tp: x):
    ts = ALGO_TIMESTEPS
    for i in range(i_start, len(ts) - 1):
        t, tp = ts[i], ts[i + 1]
        out = output(x, t)
        x = course_step(ab, out, t, tp, x, noise(x.shape))
        x = after(x, tp)
    return x


def torch_flip(x):
    return torch.flip(x, [2])


def torch_skew(x, f):  # the visual-anagrams SkewView on a batch
    h, w = x.shape[2], x.shape[3]
    cols = [x[:, :, :, i].roll(int(f * (i - h // 2)), dims=2) for i in range(w)]
    return torch.stack(cols, dim=3)


def negate_inverse(y):
    m = torch.ones_like(y)
    m[:, :3] = -1
    return y * m


def gaussian_blur(x, k, sigma):  # torchvision's gaussian_blur: normalised kernel, reflect padding
    r = (k - 1) * 0.5
    g = torch.exp(-0.5 * ((torch.linspace(-r, r, k)) / sigma) ** 2)
    g = g / g.sum()
    c = x.shape[1]
    x = F.pad(x, [k // 2] * 4, mode="reflect")
    x = F.conv2d(x, g.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)
    return F.conv2d(x, g.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)


def algorithms_fixture(model):
    ab = DDPMScheduler(beta_schedule="squaredcos_cap_v2").alphas_cumprod
    e = model.config.encoder_hid_dim
    g = torch.Generator().manual_seed(7)
    p1, p2, null = (torch.randn(1, TOKENS, e, generator=g) for _ in range(3))
    side = 16
    image = torch.rand(1, 3, side, side, generator=g) * 2 - 1
    mask = torch.zeros(1, 1, side, side)
    mask[:, :, 4:12, 5:13] = 1
    t = {"p1": p1, "p2": p2, "null": null, "image": image, "mask": mask}
    G = 7.0

    def record(name, noise, out):
        for k, z in enumerate(noise.drawn):
            t[f"{name}.noise.{k}"] = z.contiguous()
        t[f"{name}.out"] = out.contiguous()

    with torch.no_grad():
        # Sampling from noise with CFG.
        n = Noise(1)
        x = loop(ab, n((1, 3, side, side)), 0, n, lambda x, s: guided(model, x, s, p1, null, G))
        record("sample", n, x)
        # Without guidance.
        n = Noise(2)
        x = loop(ab, n((1, 3, side, side)), 0, n, lambda x, s: guided(model, x, s, p1, None, G))
        record("sample_unguided", n, x)
        # SDEdit from i_start 2.
        n = Noise(3)
        t0 = ALGO_TIMESTEPS[2]
        x = ab[t0].sqrt() * image + (1 - ab[t0]).sqrt() * n(image.shape)
        x = loop(ab, x, 2, n, lambda x, s: guided(model, x, s, p2, null, G))
        record("sdedit", n, x)
        # Inpainting.
        n = Noise(4)
        x = loop(ab, n((1, 3, side, side)), 0, n, lambda x, s: guided(model, x, s, p1, null, G),
                 after=lambda x, tp: mask * x + (1 - mask) * (ab[tp].sqrt() * image + (1 - ab[tp]).sqrt() * n(x.shape)))
        record("inpaint", n, x)
        # Visual anagrams: (identity, p1) + (flip, p2), and (skew 1.5, p1) + (negate, p2).
        n = Noise(5)
        x = loop(ab, n((1, 3, side, side)), 0, n, lambda x, s: (
            guided(model, x, s, p1, null, G) + torch_flip(guided(model, torch_flip(x), s, p2, null, G))) / 2)
        record("anagram_flip", n, x)
        n = Noise(6)
        x = loop(ab, n((1, 3, side, side)), 0, n, lambda x, s: (
            torch_skew(guided(model, torch_skew(x, 1.5), s, p1, null, G), -1.5)
            + negate_inverse(guided(model, -x, s, p2, null, G))) / 2)
        record("anagram_skew_negate", n, x)
        # Hybrid: lowpass(eps_1) + highpass(eps_2), kernel 33, sigma 2 (32x32 so reflect padding fits).
        n = Noise(8)

        def hybrid_out(x, s):
            a, b = guided(model, x, s, p1, null, G), guided(model, x, s, p2, null, G)
            eps = gaussian_blur(a[:, :3], 33, 2.0) + b[:, :3] - gaussian_blur(b[:, :3], 33, 2.0)
            return torch.cat([eps, (a[:, 3:] + b[:, 3:]) / 2], dim=1)

        x = loop(ab, n((1, 3, 32, 32)), 0, n, hybrid_out)
        record("hybrid", n, x)
        t["blur_in"] = torch.randn(1, 3, 32, 32, generator=g)
        t["blur_out"] = gaussian_blur(t["blur_in"], 33, 2.0)
        # One-step denoise at t=500 (conditional only, as the course does it).
        noisy = ab[500].sqrt() * image + (1 - ab[500]).sqrt() * torch.randn(1, 3, side, side, generator=g)
        eps = guided(model, noisy, 500, p1, None, G)[:, :3]
        t["one_step.noisy"] = noisy
        t["one_step.out"] = (noisy - (1 - ab[500]).sqrt() * eps) / ab[500].sqrt()
    t["timesteps"] = torch.tensor(ALGO_TIMESTEPS).float()
    save_file({k: v.contiguous() for k, v in t.items()}, os.path.join(OUT, "tiny_m", "algorithms.safetensors"))


def main():
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    torch.set_num_threads(2)
    models = {name: make_unet(name, cfg, seed=100 * (i + 1)) for i, (name, cfg) in enumerate(CONFIGS.items())}
    scheduler_fixture()
    algorithms_fixture(models["tiny_m"])


if __name__ == "__main__":
    main()

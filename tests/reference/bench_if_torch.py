"""The diffusers side of `dp bench-if`: one UNet step of a randomly initialised IF stage-1 UNet
(the sizes passed in), batch 2 (guidance), 64x64, 77 text tokens, no grad, f32 (or --dtype f16) on the CPU.
Prints one JSON line: ms per step, peak resident memory, torch version and threads."""
import argparse
import json
import resource
import time

import torch
from diffusers import UNet2DConditionModel

p = argparse.ArgumentParser()
p.add_argument("--widths", required=True)  # e.g. 192,384,576,768
p.add_argument("--layers", type=int, default=3)
p.add_argument("--head-dim", type=int, default=64)
p.add_argument("--text-dim", type=int, default=4096)
p.add_argument("--batch", type=int, default=2)
p.add_argument("--side", type=int, default=64)
p.add_argument("--tokens", type=int, default=77)
p.add_argument("--steps", type=int, default=3)
p.add_argument("--dtype", choices=["f32", "f16"], default="f32")
a = p.parse_args()

widths = [int(w) for w in a.widths.split(",")]
n = len(widths)
torch.manual_seed(0)
with torch.no_grad():
    model = UNet2DConditionModel(
        sample_size=a.side, in_channels=3, out_channels=6, block_out_channels=widths, layers_per_block=a.layers,
        down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * (n - 1),
        up_block_types=["SimpleCrossAttnUpBlock2D"] * (n - 1) + ["ResnetUpsampleBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", attention_head_dim=a.head_dim, cross_attention_dim=widths[-1],
        encoder_hid_dim=a.text_dim, addition_embed_type="text", addition_embed_type_num_heads=64,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
    ).eval()
    dtype = torch.float16 if a.dtype == "f16" else torch.float32
    model = model.to(dtype)
    x = torch.randn(a.batch, 3, a.side, a.side, dtype=dtype)
    text = torch.randn(a.batch, a.tokens, a.text_dim, dtype=dtype)
    t = torch.tensor([500] * a.batch)
    model(x, t, encoder_hidden_states=text)  # warm-up
    start = time.perf_counter()
    for _ in range(a.steps):
        model(x, t, encoder_hidden_states=text)
    ms = (time.perf_counter() - start) / a.steps * 1000
print(json.dumps({
    "ms_per_step": ms,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "parameters": sum(p.numel() for p in model.parameters()),
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "dtype": a.dtype,
}))

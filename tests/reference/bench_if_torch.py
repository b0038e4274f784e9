"""The diffusers side of `dp bench-if`: one UNet step of a randomly initialised IF stage-1 UNet
(the sizes passed in), batch 2 (guidance), 64x64, 77 text tokens, no grad, f32 (or --dtype f16), on the CPU
or (--device cuda) an NVIDIA GPU. Prints one JSON line: ms per step, peak resident memory (and peak GPU
memory allocated by PyTorch on cuda), torch version and threads."""
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
p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
a = p.parse_args()
dev = torch.device(a.device)
# f32 on a GPU means f32 arithmetic, as burn's wgpu computes it: no TF32 tensor-core rounding.
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def sync():
    if a.device == "cuda":
        torch.cuda.synchronize()


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
    model = model.to(dev, dtype)
    x = torch.randn(a.batch, 3, a.side, a.side, dtype=dtype).to(dev)
    text = torch.randn(a.batch, a.tokens, a.text_dim, dtype=dtype).to(dev)
    t = torch.tensor([500] * a.batch, device=dev)
    model(x, t, encoder_hidden_states=text)  # warm-up
    sync()
    start = time.perf_counter()
    for _ in range(a.steps):
        # .cpu() reads the output back each step, as burn's side does
        model(x, t, encoder_hidden_states=text).sample.cpu()
    ms = (time.perf_counter() - start) / a.steps * 1000
print(json.dumps({
    "ms_per_step": ms,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "parameters": sum(p.numel() for p in model.parameters()),
    "torch": torch.__version__,
    "threads": torch.get_num_threads(),
    "dtype": a.dtype,
    "device": torch.cuda.get_device_name() if a.device == "cuda" else "cpu",
    "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if a.device == "cuda" else None,
}))

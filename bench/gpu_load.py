#!/usr/bin/env python3
"""Generate a synthetic Llama-shaped safetensors model, or time loading one onto the GPU.

  gpu_load.py generate OUT.safetensors [--size-gb 2]
  gpu_load.py load FILE --label TEXT      prints one JSON line: seconds, GB/s, time to first tensor

Loading uses safetensors' safe_open(..., device="cuda"): the file is mmapped and each tensor is
read through the mapping and copied to the GPU, the way model servers load weights.
"""
import argparse, json, os, time
import torch
from safetensors import safe_open
from safetensors.torch import save_file


def generate(path, size_gb):
    hidden, inter, vocab = 4096, 11008, 32000
    tensors, total, layer = {}, 0, 0
    g = torch.Generator().manual_seed(0)
    def add(name, shape):
        nonlocal total
        t = torch.empty(shape, dtype=torch.bfloat16).uniform_(-0.05, 0.05, generator=g)
        tensors[name] = t
        total += t.numel() * 2
    add("model.embed_tokens.weight", (vocab, hidden))
    while total < size_gb * (1 << 30):
        p = f"model.layers.{layer}."
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            add(p + f"self_attn.{n}.weight", (hidden, hidden))
        add(p + "mlp.gate_proj.weight", (inter, hidden))
        add(p + "mlp.up_proj.weight", (inter, hidden))
        add(p + "mlp.down_proj.weight", (hidden, inter))
        add(p + "input_layernorm.weight", (hidden,))
        add(p + "post_attention_layernorm.weight", (hidden,))
        layer += 1
    add("model.norm.weight", (hidden,))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file(tensors, path, metadata={"format": "pt"})
    print(json.dumps({"generated": path, "bytes": os.path.getsize(path), "layers": layer, "tensors": len(tensors)}))


def load(path, label):
    size = os.path.getsize(path)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    first = None
    out = {}
    with safe_open(path, framework="pt", device="cuda:0") as f:
        for k in f.keys():
            out[k] = f.get_tensor(k)
            if first is None:
                torch.cuda.synchronize()
                first = time.perf_counter() - t0
    torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    checksum = float(sum(t.float().sum().item() for t in list(out.values())[:4]))
    print(json.dumps({"label": label, "seconds": round(secs, 3), "GBps": round(size / secs / 1e9, 3),
                      "first_tensor_ms": round(first * 1000, 1), "bytes": size, "tensors": len(out), "checksum4": checksum}), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["generate", "load"])
    ap.add_argument("path")
    ap.add_argument("--size-gb", type=float, default=2)
    ap.add_argument("--label", default="")
    a = ap.parse_args()
    generate(a.path, a.size_gb) if a.cmd == "generate" else load(a.path, a.label)

#!/usr/bin/env python3
"""Writes a synthetic model directory: model.safetensors with realistic transformer tensor shapes
(random bf16 bytes), config.json and tokenizer.json. Standard library only.

usage: gen_safetensors.py OUT_DIR [--size-mb N] [--seed S]
"""
import argparse, json, os, random, struct

def shapes(hidden, layers, vocab):
    inter = hidden * 4 * 2 // 3 // 256 * 256 or hidden * 2
    yield "model.embed_tokens.weight", [vocab, hidden]
    for i in range(layers):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", [hidden]
        for n in ("q_proj", "k_proj", "v_proj", "o_proj"):
            yield p + f"self_attn.{n}.weight", [hidden, hidden]
        yield p + "post_attention_layernorm.weight", [hidden]
        yield p + "mlp.gate_proj.weight", [inter, hidden]
        yield p + "mlp.up_proj.weight", [inter, hidden]
        yield p + "mlp.down_proj.weight", [hidden, inter]
    yield "model.norm.weight", [hidden]
    yield "lm_head.weight", [vocab, hidden]

def plan(target_bytes):
    hidden, layers, vocab = 256, 2, 4096
    while True:
        total = sum(2 * eval("*".join(map(str, s)) or "1") for _, s in shapes(hidden, layers, vocab))
        if total >= target_bytes or hidden >= 8192:
            return hidden, layers, vocab
        if layers < 32:
            layers += 2
        else:
            hidden += 64

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--size-mb", type=int, default=64)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    hidden, layers, vocab = plan(a.size_mb << 20)
    header, off, tensors = {"__metadata__": {"format": "pt"}}, 0, []
    for name, shape in shapes(hidden, layers, vocab):
        n = 2
        for d in shape:
            n *= d
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [off, off + n]}
        tensors.append(n)
        off += n
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)  # the data section starts 8-byte aligned
    os.makedirs(a.out, exist_ok=True)
    rnd = random.Random(a.seed)
    with open(os.path.join(a.out, "model.safetensors"), "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        block = rnd.randbytes(1 << 20)
        for n in tensors:
            while n > 0:
                k = min(n, len(block))
                f.write(block[:k])
                block = block[k:] + rnd.randbytes(k) if k < len(block) else rnd.randbytes(1 << 20)
                n -= k
    with open(os.path.join(a.out, "config.json"), "w") as f:
        json.dump({"architectures": ["LlamaForCausalLM"], "hidden_size": hidden, "num_hidden_layers": layers, "vocab_size": vocab, "torch_dtype": "bfloat16"}, f, indent=2)
    with open(os.path.join(a.out, "tokenizer.json"), "w") as f:
        json.dump({"model": {"type": "BPE", "vocab": {f"tok{i}": i for i in range(vocab)}}}, f)
    print(f"wrote {a.out}: hidden {hidden}, layers {layers}, {off + 8 + len(hj)} bytes of safetensors")

if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Generate loopbox's fixture model: a tiny random-weight llama GGUF.

It is a real model file that llama.cpp's llama-server loads in well under a
second and serves over its OpenAI-compatible API (with `tools`, under
`--jinja`). Its answers are random text: it tests plumbing, not agents.

Deterministic: the same script (and python3-gguf/numpy) gives the same bytes.

Usage: make-fixture-model.py OUTPUT.gguf
Needs python3-gguf and python3-numpy (both are in the loopbox llama-cpu image):
  docker run --rm --user "$(id -u):$(id -g)" --entrypoint python3 \
    -v "$PWD/scripts:/s:ro" -v "$OUTDIR:/out" IMAGE /s/make-fixture-model.py /out/fixture.gguf
"""

import os
import sys

import numpy as np
import gguf

SEED = 20251124
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_BLOCKS = 2
N_FF = 128
CONTEXT_LENGTH = 65536

# ChatML, with tools rendered Hermes/Qwen style (<tools>, <tool_call>,
# <tool_response>). Assistant tool-call arguments may be a JSON string or an
# object; content may be null.
CHAT_TEMPLATE = (
    "{%- if tools %}"
    "<|im_start|>system\n"
    "{%- if messages[0].role == 'system' %}\n{{ messages[0].content }}\n{%- endif %}\n\n"
    "# Tools\n\n"
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>"
    "{%- for tool in tools %}\n{{ tool | tojson }}{%- endfor %}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments "
    "within <tool_call></tool_call> XML tags:\n<tool_call>\n"
    "{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n"
    "{%- elif messages[0].role == 'system' %}"
    "<|im_start|>system\n{{ messages[0].content }}<|im_end|>\n"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message.role == 'system' %}"
    "{%- if not loop.first %}<|im_start|>system\n{{ message.content }}<|im_end|>\n{%- endif %}"
    "{%- elif message.role == 'assistant' %}"
    "<|im_start|>assistant\n{%- if message.content %}{{ message.content }}{%- endif %}"
    "{%- if message.tool_calls %}{%- for tc in message.tool_calls %}"
    "{%- if tc.function is defined %}{%- set f = tc.function %}{%- else %}{%- set f = tc %}{%- endif %}"
    "\n<tool_call>\n{\"name\": \"{{ f.name }}\", \"arguments\": "
    "{%- if f.arguments is string %}{{ f.arguments }}{%- else %}{{ f.arguments | tojson }}{%- endif %}"
    "}\n</tool_call>"
    "{%- endfor %}{%- endif %}<|im_end|>\n"
    "{%- elif message.role == 'tool' %}"
    "<|im_start|>user\n<tool_response>\n{{ message.content }}\n</tool_response><|im_end|>\n"
    "{%- else %}"
    "<|im_start|>{{ message.role }}\n{{ message.content }}<|im_end|>\n"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}"
)


def bytes_to_unicode():
    """GPT-2's byte -> printable unicode character map (byte-level BPE)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
          + list(range(ord("®"), ord("ÿ") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def build_vocab():
    byte_tokens = [bytes_to_unicode()[b] for b in range(256)]
    merges = ["Ġ t", "h e", "i n", "e r", "Ġ a", "o n", "Ġt he"]
    merged = []
    for m in merges:
        t = m.replace(" ", "")
        if t not in merged:
            merged.append(t)
    tokens = byte_tokens + merged
    types = [gguf.TokenType.NORMAL] * len(tokens)
    # <tool_call> etc. are deliberately NOT single tokens: a random model that
    # emitted one would start a tool-call parse in llama-server that then
    # fails ("does not match the expected ... format", HTTP 500 mid-stream).
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    for s in specials:
        tokens.append(s)
        types.append(gguf.TokenType.CONTROL)
    return tokens, types, merges


def main():
    if len(sys.argv) != 2:
        sys.stderr.write("usage: make-fixture-model.py OUTPUT.gguf\n")
        return 2
    out = sys.argv[1]
    tokens, types, merges = build_vocab()
    n_vocab = len(tokens)
    ids = {t: i for i, t in enumerate(tokens)}

    tmp = out + ".tmp"
    w = gguf.GGUFWriter(tmp, "llama")
    w.add_name("loopbox-fixture")
    w.add_context_length(CONTEXT_LENGTH)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_BLOCKS)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(N_EMBD // N_HEAD)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_vocab_size(n_vocab)

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(ids["<|endoftext|>"])
    w.add_eos_token_id(ids["<|im_end|>"])
    w.add_eot_token_id(ids["<|im_end|>"])
    w.add_pad_token_id(ids["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.add_chat_template(CHAT_TEMPLATE)

    rng = np.random.default_rng(SEED)

    def rand(*shape):
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    def ones(n):
        return np.ones((n,), dtype=np.float32)

    # numpy shapes are (rows, cols) = ggml (ne1, ne0) reversed: (out, in).
    w.add_tensor("token_embd.weight", rand(n_vocab, N_EMBD))
    head_dim = N_EMBD // N_HEAD
    for i in range(N_BLOCKS):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "attn_q.weight", rand(N_HEAD * head_dim, N_EMBD))
        w.add_tensor(p + "attn_k.weight", rand(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(p + "attn_v.weight", rand(N_HEAD_KV * head_dim, N_EMBD))
        w.add_tensor(p + "attn_output.weight", rand(N_EMBD, N_HEAD * head_dim))
        w.add_tensor(p + "ffn_norm.weight", ones(N_EMBD))
        w.add_tensor(p + "ffn_gate.weight", rand(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_up.weight", rand(N_FF, N_EMBD))
        w.add_tensor(p + "ffn_down.weight", rand(N_EMBD, N_FF))
    w.add_tensor("output_norm.weight", ones(N_EMBD))
    w.add_tensor("output.weight", rand(n_vocab, N_EMBD))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(tmp, out)
    print(f"wrote {out} ({os.path.getsize(out)} bytes, {n_vocab} tokens)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

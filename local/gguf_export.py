"""GGUF export: a model (optionally with its adapter merged) as one file llama.cpp and Ollama read.

Built on the ``gguf`` package (llama.cpp's own Python library): its tensor-name table
(``TensorNameMap``), its metadata keys and its quantisers (F16, BF16, Q8_0) — no llama.cpp build
at export time (what breaks unsloth's export most often). What this module adds is what
llama.cpp's ``convert_hf_to_gguf.py`` does per architecture for the two families this project
trains and fine-tunes:

* ``llama`` (``LlamaForCausalLM``; our p4d recipe, Llama 2/3, Mistral-style checkpoints saved as
  Llama): q/k projection rows permuted into llama.cpp's rotary layout;
* ``gpt2`` (``GPT2LMHeadModel``; our tiny demo recipe): ``Conv1D`` weights transposed to
  ``[out, in]``, the tied embedding also written as ``output``.

Norms and biases stay F32 (1-D), as llama.cpp writes them; with ``q8_0`` a matrix whose rows are
not a multiple of 32 falls back to F16. Tokenizers: byte-level BPE (GPT-2, Llama 3, the
tokenizer our stage 1 trains) with its merges, special tokens and chat template. An adapter is
merged into a full-precision reload of the base first (``local.model.load_full_precision``),
never into the 4-bit training copy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from local.errors import LocalError

log = logging.getLogger(__name__)

DTYPES = ("f16", "bf16", "q8_0")
#: HF architecture → GGUF architecture name.
ARCHS = {"LlamaForCausalLM": "llama", "GPT2LMHeadModel": "gpt2"}
_GPT2_CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
_SKIP = (".rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def architecture(model_dir: Path) -> str:
    """The GGUF architecture of ``model_dir`` from its ``config.json``; refuses other families."""
    cfg_path = Path(model_dir) / "config.json"
    if not cfg_path.is_file():
        raise LocalError(f"--model {model_dir}: no config.json (is it a Hugging Face model folder?)")
    archs = json.loads(cfg_path.read_text(encoding="utf-8")).get("architectures") or []
    for name in archs:
        if name in ARCHS:
            return ARCHS[name]
    raise LocalError(
        f"--model {model_dir}: architecture {archs or 'unknown'} is not supported by export-gguf "
        f"(supported: {', '.join(sorted(ARCHS))})"
    )


def check_tokenizer(tokenizer_json: dict[str, Any], where: Path) -> None:
    """Refuse tokenizers this exporter cannot describe in GGUF (pure)."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE" or model.get("byte_fallback"):
        raise LocalError(
            f"{where}: only byte-level BPE tokenizers (GPT-2, Llama 3 style) can be exported to "
            f"GGUF here; this one is {model.get('type', 'unknown')}"
            f"{' with byte fallback (SentencePiece style)' if model.get('byte_fallback') else ''}"
        )


def permute_rotary(weight: Any, n_head: int) -> Any:
    """llama.cpp's row order for q/k: each head's two rotary halves interleaved (its
    ``LlamaModel.permute``; transformers' GGUF loader undoes exactly this)."""
    rows = weight.shape[0]
    return (
        weight.reshape(n_head, 2, rows // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def gguf_tensors(state: dict[str, Any], arch: str, hf_cfg: Any) -> list[tuple[str, Any]]:
    """``(gguf name, float32 numpy array)`` for every weight of ``state`` (an HF state dict)."""
    import gguf

    n_layers = hf_cfg.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], n_layers)
    out = []
    for key, tensor in state.items():
        if key.endswith(_SKIP):
            continue
        data = tensor.detach().to("cpu").float().numpy()
        if arch == "llama":
            if key.endswith("self_attn.q_proj.weight"):
                data = permute_rotary(data, hf_cfg.num_attention_heads)
            elif key.endswith("self_attn.k_proj.weight"):
                data = permute_rotary(data, hf_cfg.num_key_value_heads)
        elif arch == "gpt2" and key.endswith(_GPT2_CONV1D):
            data = data.T.copy()
        name = names.get_name(key, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise LocalError(f"export-gguf: no GGUF name for tensor {key!r} of a {arch} model")
        out.append((name, data))
        if arch == "gpt2" and name == "token_embd.weight" and "lm_head.weight" not in state:
            out.append(("output.weight", data))
    return out


def encode(name: str, data: Any, dtype: str) -> tuple[Any, Any]:
    """``(array, GGML type)`` for one tensor: 1-D in F32, matrices in ``dtype``."""
    import numpy as np
    from gguf import GGMLQuantizationType as Q
    from gguf.quants import quantize

    if data.ndim == 1:
        return data.astype(np.float32), Q.F32
    if dtype == "bf16":
        return quantize(data, Q.BF16), Q.BF16
    if dtype == "q8_0" and data.shape[-1] % 32 == 0:
        return quantize(data, Q.Q8_0), Q.Q8_0
    return data.astype(np.float16), Q.F16


def _add_hparams(writer: Any, arch: str, hf_cfg: Any) -> None:
    if arch == "llama":
        heads = hf_cfg.num_attention_heads
        writer.add_context_length(hf_cfg.max_position_embeddings)
        writer.add_embedding_length(hf_cfg.hidden_size)
        writer.add_block_count(hf_cfg.num_hidden_layers)
        writer.add_feed_forward_length(hf_cfg.intermediate_size)
        writer.add_head_count(heads)
        writer.add_head_count_kv(hf_cfg.num_key_value_heads)
        head_dim = getattr(hf_cfg, "head_dim", None) or hf_cfg.hidden_size // heads
        writer.add_rope_dimension_count(head_dim)
        rope = getattr(hf_cfg, "rope_parameters", None) or {}
        theta = rope.get("rope_theta") or getattr(hf_cfg, "rope_theta", None) or 10000.0
        writer.add_rope_freq_base(float(theta))
        writer.add_layer_norm_rms_eps(hf_cfg.rms_norm_eps)
    else:
        writer.add_context_length(hf_cfg.n_positions)
        writer.add_embedding_length(hf_cfg.n_embd)
        writer.add_block_count(hf_cfg.n_layer)
        writer.add_feed_forward_length(hf_cfg.n_inner or 4 * hf_cfg.n_embd)
        writer.add_head_count(hf_cfg.n_head)
        writer.add_layer_norm_eps(hf_cfg.layer_norm_epsilon)


def _pre_tokenizer(tok_json: dict[str, Any]) -> str:
    """llama.cpp's name for the split regex: Llama 3's or GPT-2's."""
    text = json.dumps(tok_json.get("pre_tokenizer") or {})
    return "llama-bpe" if "(?i:'s|'t" in text else "gpt2"


def _add_tokenizer(writer: Any, tokenizer: Any, tok_json: dict[str, Any], chat_template: str | None) -> None:
    from gguf import TokenType

    vocab = tokenizer.get_vocab()
    n = max(vocab.values()) + 1
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [TokenType.UNUSED] * n
    for text, i in vocab.items():
        tokens[i] = text
        types[i] = TokenType.NORMAL
    for added in tok_json.get("added_tokens") or []:
        i = added["id"]
        types[i] = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
    merges = tok_json["model"].get("merges") or []
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer(tok_json))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    for what, value in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("pad", tokenizer.pad_token_id),
        ("unk", tokenizer.unk_token_id),
    ):
        if value is not None:
            getattr(writer, f"add_{what}_token_id")(int(value))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(bool(probe) and probe[-1] == tokenizer.eos_token_id and len(probe) > 1)
    if chat_template:
        writer.add_chat_template(chat_template)


def write_gguf(
    model: Any, tokenizer: Any, tokenizer_json: dict[str, Any], dest: Path, *, arch: str,
    dtype: str, name: str, chat_template: str | None,
) -> int:  # fmt: skip
    """Write ``model`` (full precision, HF) as GGUF to ``dest``; returns the tensor count."""
    import gguf

    file_type = {
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "bf16": gguf.LlamaFileType.MOSTLY_BF16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[dtype]
    writer = gguf.GGUFWriter(str(dest), arch)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(name)
    writer.add_file_type(int(file_type))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_hparams(writer, arch, model.config)
    writer.add_vocab_size(model.config.vocab_size)
    _add_tokenizer(writer, tokenizer, tokenizer_json, chat_template)
    tensors = gguf_tensors(model.state_dict(), arch, model.config)
    for tname, data in tensors:
        array, qtype = encode(tname, data, dtype)
        writer.add_tensor(tname, array, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(tensors)


def modelfile(gguf_name: str, chat_template: str | None, eos_token: str | None) -> str:
    """An Ollama ``Modelfile`` beside the GGUF (pure).

    With a chat template in the file, Ollama picks it up from the GGUF metadata; without one,
    the prompt/response format the fine-tune trains on (``local.records.PROMPT_TEMPLATE``) is
    spelled as Ollama's Go template.
    """
    from local.records import PROMPT_TEMPLATE

    lines = [f"FROM ./{gguf_name}"]
    if not chat_template:
        template = PROMPT_TEMPLATE.replace("{prompt}", "{{ .Prompt }}")
        lines.append(f'TEMPLATE """{template}"""')
    if eos_token:
        lines.append(f"PARAMETER stop {json.dumps(eos_token)}")
    return "\n".join(lines) + "\n"

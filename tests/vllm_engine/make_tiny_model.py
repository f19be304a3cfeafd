"""Write a tiny Llama model directory (text files only) for running a real vLLM engine in tests.

Run with the vLLM venv's python (it has `tokenizers`):

    python make_tiny_model.py OUT_DIR

No weights are written: the engine is started with `--load-format dummy`, which fills random weights.
The tokenizer is a byte-level BPE trained here on the text below, so nothing is downloaded.
Output is deterministic; when OUT_DIR already holds the same model (checked via a stamp file with the
recipe hash and each file's sha256) the script does nothing and does not even import `tokenizers`.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

# Bump to force regeneration when the recipe changes in a way the script's own hash would not show.
RECIPE_VERSION = 1
STAMP_NAME = ".tiny-model.json"
FILES = ("config.json", "tokenizer.json", "tokenizer_config.json")

BOS = "<|bos|>"
EOS = "<|eos|>"
PAD = "<|pad|>"
# Special tokens first, so they get ids 0, 1, 2 whatever the corpus.
SPECIAL_TOKENS = [BOS, EOS, PAD]
VOCAB_SIZE = 700

# Roles are plain text (not special tokens): the template only needs to be valid Jinja that vLLM can
# render; `content` is used as a string so vLLM detects the "string" content format.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)

CORPUS = """\
The gateway sits in front of a pool of inference workers and routes each request to the least busy one.
Every request carries a model name, a list of messages and a few sampling parameters such as the
temperature, the maximum number of new tokens and an optional list of stop strings.
The router reads the number of running and waiting requests from each worker and the share of the
key-value cache in use, and picks the worker that will answer soonest.
When a worker stops answering, the router marks it unhealthy and retries the request elsewhere.
Costs are counted per tenant: prompt tokens and completion tokens are priced separately, and the
ledger is written once the last chunk of a streamed answer has been sent.
A small model is enough for tests: its answers are random, but the token counts are real.

user: What is the capital of France?
assistant: The capital of France is Paris.
user: How many tokens did that answer use?
assistant: Seven tokens, counted by the tokenizer of the model that served it.
system: You are a helpful assistant. Answer briefly and say when you do not know.
user: Summarise the meeting notes in three bullet points.
assistant: - The release moves to Thursday.
- Two reviewers will check the routing change.
- Load tests run every night on the staging cluster.

def route(request, workers):
    healthy = [w for w in workers if w.healthy]
    if not healthy:
        raise RuntimeError("no healthy worker")
    return min(healthy, key=lambda w: (w.waiting, w.running, w.kv_cache_usage))

class Ledger:
    def __init__(self):
        self.entries = []

    def record(self, tenant, prompt_tokens, completion_tokens, price):
        cost = prompt_tokens * price.prompt + completion_tokens * price.completion
        self.entries.append({"tenant": tenant, "cost": round(cost, 6)})
        return cost

{"model": "tiny", "messages": [{"role": "user", "content": "Hello!"}], "max_tokens": 16, "stream": true}
{"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "length"}]}
{"usage": {"prompt_tokens": 12, "completion_tokens": 16, "total_tokens": 28}}
data: {"choices": [], "usage": {"prompt_tokens": 12}}
data: [DONE]

Numbers and dates: 0 1 2 3 4 5 6 7 8 9 10 42 100 256 1024 2048 3.14 1e-5 2026-11-27 23:59:59 UTC.
Punctuation: ( ) [ ] { } < > = + - * / % ! ? , . ; : ' " ` ~ @ # $ ^ & | \\ _
Some other languages: Bonjour, comment allez-vous ? Guten Tag, wie geht es Ihnen? Hola, muy bien.
Grüße aus Zürich, déjà vu, naïve café, smörgåsbord, 東京, Москва, ελληνικά, emoji 🙂.

Once upon a time a careful engineer wrote a harness that started a real engine, waited until it was
healthy, sent it a few requests, checked every answer against what the engine had said before, and
then stopped it, leaving no stray process behind. The tests were slow to start but quick to run.
The quick brown fox jumps over the lazy dog. Pack my box with five dozen liquor jugs.
"""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def recipe_hash() -> str:
    """Hash of everything that determines the output: this script's bytes and the tokenizers version."""
    try:
        from importlib.metadata import version

        tok_version = version("tokenizers")
    except Exception:  # metadata missing: the script hash alone still catches recipe edits
        tok_version = "unknown"
    script = Path(__file__).read_bytes()
    return _sha256(f"{RECIPE_VERSION}\n{tok_version}\n".encode() + script)


def is_complete(out_dir: Path, want_recipe: str) -> bool:
    stamp_path = out_dir / STAMP_NAME
    try:
        stamp = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        return False
    if stamp.get("recipe") != want_recipe or set(stamp.get("files", {})) != set(FILES):
        return False
    for name, digest in stamp["files"].items():
        try:
            if _sha256((out_dir / name).read_bytes()) != digest:
                return False
        except OSError:
            return False
    return True


def build_tokenizer_json() -> tuple[str, int, dict[str, int]]:
    """Train the BPE; return (tokenizer.json text, vocab size, special token ids)."""
    # Training is multi-threaded; one thread keeps it trivially reproducible and costs nothing here.
    os.environ.setdefault("RAYON_NUM_THREADS", "1")
    from tokenizers import (  # type: ignore[import-not-found]  # only in the vLLM venv
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )

    tokenizer = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines(keepends=True), trainer=trainer)
    ids = {tok: tokenizer.token_to_id(tok) for tok in SPECIAL_TOKENS}
    # Like Llama tokenizers: BOS prepended when special tokens are requested (completions API);
    # chat requests get BOS from the chat template instead.
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A",
        pair=f"{BOS} $A {BOS} $B",
        special_tokens=[(BOS, ids[BOS])],
    )
    # Round-trip through json with sorted keys: the serialized form is then byte-stable.
    text = json.dumps(json.loads(tokenizer.to_str()), indent=2, ensure_ascii=False, sort_keys=True) + "\n"
    return text, tokenizer.get_vocab_size(with_added_tokens=True), ids


def build_files() -> dict[str, bytes]:
    tok_json, vocab_size, ids = build_tokenizer_json()
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "torch_dtype": "bfloat16",
        "hidden_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        # The CPU attention kernels reject head_dim 16; 64 works.
        "head_dim": 64,
        "num_hidden_layers": 2,
        "intermediate_size": 256,
        "hidden_act": "silu",
        "vocab_size": vocab_size,
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-05,
        "rope_theta": 10000.0,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "initializer_range": 0.02,
        "bos_token_id": ids[BOS],
        "eos_token_id": ids[EOS],
        "pad_token_id": ids[PAD],
    }
    tok_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "model_max_length": 1024,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }
    return {
        "config.json": (json.dumps(config, indent=2) + "\n").encode(),
        "tokenizer.json": tok_json.encode(),
        "tokenizer_config.json": (json.dumps(tok_config, indent=2) + "\n").encode(),
    }


def _write_atomic(path: Path, data: bytes) -> None:
    # A concurrent reader (or an interrupted run) never sees a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_tiny_model(out_dir: Path) -> bool:
    """Write the model into out_dir; return False if it was already there."""
    want = recipe_hash()
    if is_complete(out_dir, want):
        return False
    files = build_files()
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAMP_NAME).unlink(missing_ok=True)  # stamp last: it marks the directory complete
    for name, data in files.items():
        _write_atomic(out_dir / name, data)
    stamp = {"recipe": want, "files": {name: _sha256(data) for name, data in files.items()}}
    _write_atomic(out_dir / STAMP_NAME, (json.dumps(stamp, indent=2, sort_keys=True) + "\n").encode())
    return True


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(f"usage: {argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out_dir = Path(argv[1]).resolve()
    written = make_tiny_model(out_dir)
    print(f"{'wrote' if written else 'up to date'}: {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

#!/usr/bin/env python3
"""Train tsglang's demo model: a small real Llama 4 (Scout code path) that writes King James English.

Everything the model needs comes from this script and tools/demo_data/kjv.txt.gz (the King James
Bible, public domain): it renders the Bible and templated chat dialogues, trains a byte-level BPE
tokenizer with Llama 4's special tokens, trains transformers' Llama4ForCausalLM (MoE in every
layer, top-1 routing with a shared expert, qk-norm, llama3 RoPE scaling, NoPE every 4th layer,
chunked local attention, attention temperature tuning), saves it in the Scout hub layout
(Llama4ForConditionalGeneration config with a nested text_config, tensors under
`language_model.`, bf16 safetensors) and evaluates it on held-out books.

Run on a machine with one GPU (PyTorch, transformers 5.x, tokenizers, safetensors, matplotlib);
the defaults are the shipped model's settings (3000 steps, about 2.5 minutes on an H200):
    python3 tools/train_demo.py --out models/llama4-demo
    python3 tools/train_demo.py --out /tmp/demo --steps 0 --max-minutes 3   # schedule sized to 3 min
A CPU smoke test with a toy model (about a minute):
    python3 tools/train_demo.py --out /tmp/demo --device cpu --steps 20 --batch-size 2 \
        --hidden-size 64 --num-layers 4 --head-dim 16 --intermediate-size 64 --samples-max-new 8
Rewrite a model card from its eval.json (no torch needed), optionally tabulating other runs:
    python3 tools/train_demo.py --out models/llama4-demo --card-only --compare other/eval.json

The functions (corpus, dialogues, tokenizer, config/model, batches, train, eval, save/load) are
importable, e.g. to train an EAGLE-3 draft on the same data against the saved model.
"""
import argparse
import copy
import gzip
import hashlib
import json
import math
import os
import random
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_DATA = os.path.join(HERE, "demo_data", "kjv.txt.gz")

# `bible -f` book abbreviations → KJV book names, in canonical order.
BOOKS = [
    ("Ge", "Genesis"), ("Exo", "Exodus"), ("Lev", "Leviticus"), ("Num", "Numbers"),
    ("Deu", "Deuteronomy"), ("Josh", "Joshua"), ("Jdgs", "Judges"), ("Ruth", "Ruth"),
    ("1Sm", "1 Samuel"), ("2Sm", "2 Samuel"), ("1Ki", "1 Kings"), ("2Ki", "2 Kings"),
    ("1Chr", "1 Chronicles"), ("2Chr", "2 Chronicles"), ("Ezra", "Ezra"), ("Neh", "Nehemiah"),
    ("Est", "Esther"), ("Job", "Job"), ("Psa", "Psalms"), ("Prv", "Proverbs"),
    ("Eccl", "Ecclesiastes"), ("SSol", "Song of Solomon"), ("Isa", "Isaiah"), ("Jer", "Jeremiah"),
    ("Lam", "Lamentations"), ("Eze", "Ezekiel"), ("Dan", "Daniel"), ("Hos", "Hosea"),
    ("Joel", "Joel"), ("Amos", "Amos"), ("Obad", "Obadiah"), ("Jonah", "Jonah"), ("Mic", "Micah"),
    ("Nahum", "Nahum"), ("Hab", "Habakkuk"), ("Zep", "Zephaniah"), ("Hag", "Haggai"),
    ("Zec", "Zechariah"), ("Mal", "Malachi"), ("Mat", "Matthew"), ("Mark", "Mark"),
    ("Luke", "Luke"), ("John", "John"), ("Acts", "Acts"), ("Rom", "Romans"),
    ("1Cor", "1 Corinthians"), ("2Cor", "2 Corinthians"), ("Gal", "Galatians"),
    ("Eph", "Ephesians"), ("Phi", "Philippians"), ("Col", "Colossians"),
    ("1Th", "1 Thessalonians"), ("2Th", "2 Thessalonians"), ("1Tim", "1 Timothy"),
    ("2Tim", "2 Timothy"), ("Titus", "Titus"), ("Phmn", "Philemon"), ("Heb", "Hebrews"),
    ("Jas", "James"), ("1Pet", "1 Peter"), ("2Pet", "2 Peter"), ("1Jn", "1 John"),
    ("2Jn", "2 John"), ("3Jn", "3 John"), ("Jude", "Jude"), ("Rev", "Revelation"),
]
# Held out entirely (never trained on, not even in dialogues): the last eight books.
HELDOUT_BOOKS = ["James", "1 Peter", "2 Peter", "1 John", "2 John", "3 John", "Jude", "Revelation"]

# Llama 4's special tokens (llama4-spec.md §5.2), registered as special added tokens at ids
# 0..len-1 (the real model has them at 200000+; only the strings matter to the chat format).
SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>",
    "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>", "<|image_start|>",
    "<|image_end|>", "<|image|>", "<|patch|>", "<|tile_x_separator|>", "<|tile_y_separator|>",
]
BOS, EOT_TEXT, EOM, EOT, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|eom|>", "<|eot|>", "<|finetune_right_pad|>"

# Llama 4's pre-tokenisation regex (o200k-style, llama4-spec.md §5.1); tokenizer.json uses the
# same Sequence[Split(regex, isolated), ByteLevel(use_regex=false)] layout as the real model.
SPLIT_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Jinja chat template equivalent to Llama 4's for plain chats (llama4-spec.md §5.3): BOS, then
# `<|header_start|>role<|header_end|>\n\n` + content + `<|eot|>` per message (system content
# trimmed, tool results as `ipython`, image parts as `<|image|>`), no default system prompt.
CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'tool' or message['role'] == 'ipython' -%}{%- set role = 'ipython' -%}"
    "{%- else -%}{%- set role = message['role'] -%}{%- endif -%}"
    "{{- '<|header_start|>' + role + '<|header_end|>\\n\\n' -}}"
    "{%- if message['content'] is string -%}"
    "{%- if message['role'] == 'system' -%}{{- message['content'] | trim -}}"
    "{%- else -%}{{- message['content'] -}}{%- endif -%}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'text' -%}{{- part['text'] -}}"
    "{%- elif part['type'] == 'image' -%}{{- '<|image|>' -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|eot|>' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|header_start|>assistant<|header_end|>\\n\\n' -}}{%- endif -%}"
)


def render_chat(messages, add_generation_prompt=False):
    """Python mirror of CHAT_TEMPLATE (string contents only)."""
    out = BOS
    for m in messages:
        role = "ipython" if m["role"] in ("tool", "ipython") else m["role"]
        content = m["content"].strip() if m["role"] == "system" else m["content"]
        out += f"<|header_start|>{role}<|header_end|>\n\n{content}<|eot|>"
    if add_generation_prompt:
        out += "<|header_start|>assistant<|header_end|>\n\n"
    return out


# ----------------------------------------------------------------------------------------------
# Data


def load_kjv(path=DEFAULT_DATA):
    """Returns [(book, chapter, verse, text)] in canonical order from `bible -f` output."""
    names = dict(BOOKS)
    line_re = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")
    verses = []
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            m = line_re.match(line)
            if not m:
                raise ValueError(f"unparsed line in {path}: {line[:80]!r}")
            abbr, ch, v, text = m.groups()
            verses.append((names[abbr], int(ch), int(v), " ".join(text.split())))
    if len(verses) != 31102:
        raise ValueError(f"expected 31102 verses, got {len(verses)}")
    return verses


def render_verse(book, ch, v, text):
    return f"{book} {ch}:{v} {text}\n"


def split_corpus(verses, heldout_books=HELDOUT_BOOKS, val_every=50, val_offset=25):
    """Splits by chapter. Returns dict with train/val chapter lists and the held-out text.

    Held out: every chapter of `heldout_books`. Validation (for monitoring and checkpoint choice
    only): the non-held-out chapters whose 0-based index in canonical order is ≡ val_offset
    (mod val_every). Everything else is training text.
    """
    chapters = {}
    for book, ch, v, text in verses:
        chapters.setdefault((book, ch), []).append((v, text))
    train, val, held = [], [], []
    idx = 0
    for (book, ch), vs in chapters.items():
        rendered = "".join(render_verse(book, ch, v, t) for v, t in vs)
        item = {"book": book, "chapter": ch, "verses": vs, "text": rendered}
        if book in heldout_books:
            held.append(item)
            continue
        (val if idx % val_every == val_offset else train).append(item)
        idx += 1
    return {
        "train": train, "val": val, "heldout": held,
        "val_text": "".join(c["text"] for c in val),
        "heldout_text": "".join(c["text"] for c in held),
    }


def make_dialogues(train_chapters, book_chapter_counts, rng, target_chars, n_params_m):
    """Templated chats in the Llama 4 format; only training chapters are quoted."""
    verses = [(c["book"], c["chapter"], v, t) for c in train_chapters for v, t in c["verses"]]
    short = [x for x in verses if len(x[3].split()) <= 45]
    by_ref = {(b, c, v): t for b, c, v, t in verses}
    books = []
    for c in train_chapters:
        if not books or books[-1] != c["book"]:
            books.append(c["book"])
    topics = ["love", "faith", "hope", "peace", "light", "wisdom", "mercy", "truth", "joy",
              "fear", "bread", "water", "the sea", "the heart", "righteousness", "sin", "death",
              "life", "the earth", "heaven", "prayer", "the poor", "children", "kings", "a shepherd",
              "the night", "the morning", "gold", "fire", "the wicked", "strength", "grace",
              "the spirit", "blessing", "forgiveness", "the law", "a river", "the mountains"]
    topic_words = {"prayer": "pray", "forgiveness": "forgive", "blessing": "bless",
                   "children": "children", "kings": "kings", "a shepherd": "shepherd",
                   "a river": "river", "the mountains": "mountains"}
    topic_index = {}
    for tpc in topics:
        w = topic_words.get(tpc, tpc.split()[-1])
        pat = re.compile(r"\b" + re.escape(w) + r"\b", re.IGNORECASE)
        hits = [x for x in short if pat.search(x[3])]
        if hits:
            topic_index[tpc] = hits

    def ref(b, c, v):
        return f"{b} {c}:{v}"

    def maybe_lower(s):
        r = rng.random()
        if r < 0.15:
            return s.lower()
        if r < 0.25:
            return s.rstrip(".?!")
        return s

    who = (f"I am the tsglang demo model: a small Llama 4 model with about {n_params_m} million "
           "parameters, trained on the King James Bible. I am an example for the tsglang serving "
           "engine, not a source of truth.")
    greet_replies = [
        "Hello! I am the tsglang demo model. Ask me for a verse of the King James Bible, or give "
        "me the beginning of one and I will continue it.",
        "Peace be unto you. I am a small demo model for tsglang, and I know the words of the King "
        "James Bible.",
        "Greetings! I can quote and continue verses from the King James Bible. What would you "
        "like to read?",
    ]

    def exchange():
        kind = rng.choices(
            ["greet", "who", "quote", "continue", "next", "topic", "fact", "thanks"],
            weights=[10, 12, 22, 18, 8, 16, 9, 5])[0]
        if kind == "greet":
            q = rng.choice(["Hello", "Hello!", "Hi", "Hi there!", "Good morning.", "Good evening.",
                            "Hey", "Greetings.", "Peace be with you.", "Hello, how are you?"])
            return maybe_lower(q), rng.choice(greet_replies)
        if kind == "who":
            q, a = rng.choice([
                ("Who are you?", who), ("What are you?", who), ("What is your name?", who),
                ("Which model are you?", who), ("Tell me about yourself.", who),
                ("Are you a person?", "No. I am a small language model, the tsglang demo model, "
                 "trained on the text of the King James Bible."),
                ("What can you do?", "I can quote verses of the King James Bible, continue a verse "
                 "that you begin, and answer simple questions in the words of that book."),
                ("Who made you?", "I was trained by the train_demo.py script of tsglang, a "
                 "TypeScript serving engine for Llama 4 models."),
            ])
            return maybe_lower(q), a
        if kind == "quote":
            b, c, v, t = rng.choice(short)
            r = ref(b, c, v)
            q = rng.choice([f"Quote {r}.", f"What does {r} say?", f"Recite {r}.",
                            f"Please give me {r}.", f"Can you quote {r} for me?", f"{r}?",
                            f"Read me {r}."])
            return maybe_lower(q) if rng.random() < 0.5 else q, f"{r} {t}"
        if kind == "continue":
            while True:
                b, c, v, t = rng.choice(short)
                words = t.split()
                if len(words) >= 8:
                    break
            k = rng.randint(3, min(8, len(words) - 3))
            prefix = " ".join(words[:k])
            q = rng.choice([f"Continue this verse: {prefix}", f"Finish the verse: {prefix}",
                            f"Complete this: {prefix}", f"{prefix}...",
                            f"How does this verse go on? {prefix}"])
            return q, t
        if kind == "next":
            while True:
                b, c, v, t = rng.choice(verses)
                nt = by_ref.get((b, c, v + 1))
                if nt is not None:
                    break
            q = rng.choice([f"What comes after {ref(b, c, v)}?",
                            f"What is the next verse after {ref(b, c, v)}?"])
            return q, f"{ref(b, c, v + 1)} {nt}"
        if kind == "topic":
            tpc = rng.choice(sorted(topic_index))
            b, c, v, t = rng.choice(topic_index[tpc])
            q = rng.choice([f"What does the Bible say about {tpc}?", f"Tell me about {tpc}.",
                            f"Give me a verse about {tpc}.", f"Speak to me of {tpc}."])
            return maybe_lower(q), f"It is written in {ref(b, c, v)}: {t}"
        if kind == "fact":
            i = rng.randrange(len(books))
            b = books[i]
            form = rng.randrange(5)
            if form == 0 and i + 1 < len(books):
                return f"Which book comes after {b}?", f"The book of {books[i + 1]} cometh after {b}."
            if form == 1 and i > 0:
                return f"Which book comes before {b}?", f"The book of {books[i - 1]} cometh before {b}."
            if form == 2:
                n = book_chapter_counts[b]
                return (rng.choice([f"How many chapters are in {b}?", f"How many chapters hath {b}?"]),
                        f"The book of {b} hath {n} chapter{'s' if n != 1 else ''}.")
            if form == 3:
                ch = rng.choice([c for c in train_chapters if c["book"] == b])
                n = len(ch["verses"])
                return (f"How many verses are in {b} {ch['chapter']}?",
                        f"{b} {ch['chapter']} hath {n} verse{'s' if n != 1 else ''}.")
            return ("What is the first book of the Bible?", "The first book of the Bible is Genesis.")
        q = rng.choice(["Thank you!", "Thanks.", "Thank you very much.", "Goodbye.", "Bye!"])
        a = rng.choice(["You are welcome. Grace be with you.",
                        "Farewell. The LORD bless thee, and keep thee.",
                        "You are welcome. Peace be unto you."])
        return maybe_lower(q), a

    systems = ["You are a helpful assistant.", "You are the tsglang demo model.",
               "Answer in the words of the King James Bible.", "You are a helpful assistant. Be brief."]
    dialogues, chars = [], 0
    while chars < target_chars:
        msgs = []
        if rng.random() < 0.15:
            msgs.append({"role": "system", "content": rng.choice(systems)})
        for _ in range(rng.choices([1, 2, 3], weights=[70, 20, 10])[0]):
            q, a = exchange()
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        dialogues.append(msgs)
        chars += len(render_chat(msgs))
    return dialogues


def count_params_formula(a):
    d, V, L, E, I = a.hidden_size, a.vocab_size, a.num_layers, a.num_experts, a.intermediate_size
    hq, hkv, hd = a.num_heads, a.num_kv_heads, a.head_dim
    attn = d * hq * hd + 2 * d * hkv * hd + hq * hd * d
    moe = E * d + E * d * 2 * I + E * I * d + 3 * d * I
    return 2 * V * d + d + L * (attn + moe + 2 * d)


# ----------------------------------------------------------------------------------------------
# Tokenizer


def train_tokenizer(texts, vocab_size):
    """Byte-level BPE with Llama 4's pre-tokeniser; specials at ids 0..len(SPECIALS)-1."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    special_re = re.compile("|".join(re.escape(s) for s in SPECIALS))
    pieces = [p for t in texts for p in special_re.split(t) if p]   # specials never merge
    tok.train_from_iterator(pieces, trainer, length=len(pieces))
    bos = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B:1", special_tokens=[(BOS, bos)])
    for i, s in enumerate(SPECIALS):
        assert tok.token_to_id(s) == i, (s, tok.token_to_id(s))
    return tok


def special_ids(tok):
    return {s: tok.token_to_id(s) for s in SPECIALS}


def write_tokenizer_files(tok, out_dir, model_max_length):
    ids = special_ids(tok)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    added = {str(ids[s]): {"content": s, "lstrip": False, "normalized": False, "rstrip": False,
                           "single_word": False, "special": True} for s in SPECIALS}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS, "eos_token": EOT,
            "pad_token": PAD, "add_bos_token": True, "add_eos_token": False,
            "clean_up_tokenization_spaces": False, "model_max_length": model_max_length,
            "model_input_names": ["input_ids", "attention_mask"],
            "added_tokens_decoder": added, "chat_template": CHAT_TEMPLATE,
        }, f, indent=2)
    with open(os.path.join(out_dir, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": ids[BOS], "eos_token_id": [ids[EOT_TEXT], ids[EOM], ids[EOT]],
                   "pad_token_id": ids[PAD], "do_sample": True, "temperature": 0.6, "top_p": 0.9},
                  f, indent=2)


# ----------------------------------------------------------------------------------------------
# Model


def build_text_config(a, ids):
    from transformers import Llama4TextConfig
    return Llama4TextConfig(
        vocab_size=a.vocab_size, hidden_size=a.hidden_size, intermediate_size=a.intermediate_size,
        intermediate_size_mlp=2 * a.intermediate_size, num_hidden_layers=a.num_layers,
        num_attention_heads=a.num_heads, num_key_value_heads=a.num_kv_heads, head_dim=a.head_dim,
        hidden_act="silu", max_position_embeddings=a.rope_factor * a.seq_len,
        initializer_range=0.02, rms_norm_eps=1e-5, use_cache=True,
        pad_token_id=ids[PAD], bos_token_id=ids[BOS],
        eos_token_id=[ids[EOT_TEXT], ids[EOM], ids[EOT]], tie_word_embeddings=False,
        attention_dropout=0.0, num_experts_per_tok=1, num_local_experts=a.num_experts,
        interleave_moe_layer_step=1, use_qk_norm=True, router_aux_loss_coef=a.aux_coef,
        router_jitter_noise=0.0,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": float(a.rope_factor),
                         "low_freq_factor": 1.0, "high_freq_factor": 1.0,
                         "original_max_position_embeddings": a.seq_len},
        no_rope_layer_interval=4, attention_chunk_size=a.chunk_size, attn_temperature_tuning=True,
        floor_scale=a.floor_scale, attn_scale=0.1, attention_bias=False,
    )


def build_model(cfg, attn="sdpa"):
    from transformers import Llama4ForCausalLM
    cfg = copy.deepcopy(cfg)
    cfg._attn_implementation = attn
    model = Llama4ForCausalLM(cfg)
    assert model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr(), "lm_head tied"
    return model


def hub_config(cfg, ids):
    """Scout hub form: Llama4ForConditionalGeneration with a nested text_config (text only)."""
    import transformers
    from transformers import Llama4TextConfig
    full = cfg.to_dict()
    # every Llama4TextConfig field (not PreTrainedConfig's generic ones such as id2label)
    text = {"model_type": "llama4_text"}
    text.update({k: full[k] for k in Llama4TextConfig.__annotations__ if k in full})
    text["torch_dtype"] = "bfloat16"
    rp = dict(text["rope_parameters"])
    text["rope_theta"] = rp["rope_theta"]              # the hub files' spelling, beside transformers 5's
    text["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
    return {
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
        "text_config": text, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "boi_token_index": ids["<|image_start|>"], "eoi_token_index": ids["<|image_end|>"],
        "image_token_index": ids["<|patch|>"], "transformers_version": transformers.__version__,
    }


def text_config_from_hub(cfg_json):
    from transformers import Llama4TextConfig
    text = dict(cfg_json["text_config"])
    for k in ("model_type", "torch_dtype", "dtype", "rope_scaling", "rope_theta", "transformers_version"):
        text.pop(k, None)
    return Llama4TextConfig(**text)


def save_hub(model, out_dir, cfg_json):
    """bf16 safetensors with hub names (`model.*` → `language_model.model.*`, lm_head likewise)."""
    import torch
    from safetensors.torch import save_file
    state = {f"language_model.{k}": v.detach().to(torch.bfloat16).contiguous().cpu()
             for k, v in model.state_dict().items()}
    save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
    return state


def load_hub_model(model_dir, dtype=None, attn="eager", device="cpu"):
    """Loads a model saved by save_hub into a fresh Llama4ForCausalLM (names renamed back)."""
    import torch
    from safetensors.torch import load_file
    with open(os.path.join(model_dir, "config.json")) as f:
        cfg = text_config_from_hub(json.load(f))
    model = build_model(cfg, attn)
    sd = load_file(os.path.join(model_dir, "model.safetensors"))
    prefix = "language_model."
    assert all(k.startswith(prefix) for k in sd), "unexpected tensor names"
    model.load_state_dict({k[len(prefix):]: v for k, v in sd.items()}, strict=True)
    return model.to(device=device, dtype=dtype or torch.float32).eval()


# ----------------------------------------------------------------------------------------------
# Training


class Batcher:
    """Windows of a token stream, each starting with BOS: x = [BOS] + s[i:i+L-1], y = s[i:i+L].

    With probability p_align a window starts right after a document's BOS (so position 0..
    matches a real prompt), otherwise anywhere. Targets equal to BOS are ignored.
    """

    def __init__(self, stream, doc_starts, bos, seq_len, batch_size, p_align, device, seed):
        import torch
        self.torch = torch
        self.L, self.B, self.p_align, self.bos = seq_len, batch_size, p_align, bos
        self.stream = torch.tensor(stream, dtype=torch.long, device=device)
        n = len(stream)
        assert n > seq_len + 1
        self.max_start = n - seq_len
        self.align = torch.tensor([s + 1 for s in doc_starts if s + 1 <= self.max_start],
                                  dtype=torch.long, device=device)
        self.ar = torch.arange(seq_len, device=device)
        self.gen = torch.Generator(device=device).manual_seed(seed)
        self.device = device

    def next(self):
        t, B = self.torch, self.B
        rand = t.randint(0, self.max_start + 1, (B,), device=self.device, generator=self.gen)
        pick = t.randint(0, len(self.align), (B,), device=self.device, generator=self.gen)
        use = t.rand(B, device=self.device, generator=self.gen) < self.p_align
        starts = t.where(use, self.align[pick], rand)
        y = self.stream[starts[:, None] + self.ar[None, :]]
        x = t.cat([t.full((B, 1), self.bos, dtype=t.long, device=self.device), y[:, :-1]], dim=1)
        return x, y.masked_fill(y == self.bos, -100)


def attach_training_hooks(model, dropout):
    """Residual dropout on attention and FFN outputs (training only) and router-logit capture."""
    import torch.nn.functional as F
    router_logits, handles = [], []

    def drop(mod, inp, out):
        if not mod.training or dropout <= 0:
            return None
        if isinstance(out, tuple):
            return (F.dropout(out[0], dropout, True),) + tuple(out[1:])
        return F.dropout(out, dropout, True)

    def grab(mod, inp, out):
        if mod.training:
            router_logits.append(out[1])

    for layer in model.model.layers:
        handles.append(layer.self_attn.register_forward_hook(drop))
        handles.append(layer.feed_forward.register_forward_hook(drop))
        if getattr(layer, "is_moe_layer", False):
            handles.append(layer.feed_forward.router.register_forward_hook(grab))
    return router_logits, handles


def balance_loss(router_logits, num_experts):
    """Switch-style load balancing: E · Σ_e (fraction routed to e) · (mean softmax prob of e)."""
    import torch
    import torch.nn.functional as F
    total = 0.0
    for lg in router_logits:
        lg = lg.float()
        p = torch.softmax(lg, dim=-1).mean(0)
        f = F.one_hot(lg.argmax(-1), num_experts).float().mean(0)
        total = total + num_experts * (f * p).sum()
    return total / max(1, len(router_logits))


def lr_at(step, total, peak, warmup, min_ratio):
    if step < warmup:
        return peak * (step + 1) / warmup
    prog = min(1.0, (step - warmup) / max(1, total - warmup))
    return peak * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * prog)))


def train(model, batcher, a, device, val_ids, bos, log=print):
    """AdamW + warmup/cosine, bf16 autocast on CUDA. Returns (history, info, best_state)."""
    import torch
    import torch.nn.functional as F
    use_amp = device.startswith("cuda")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8, **({"fused": True} if use_amp else {}))
    router_logits, handles = attach_training_hooks(model, a.dropout)
    V = model.config.vocab_size
    E = model.config.num_local_experts
    tokens_per_step = a.batch_size * a.seq_len

    total = a.steps if a.steps else None
    budget_s = a.max_minutes * 60 if a.max_minutes else None
    history, val_hist = [], []
    best = {"val": float("inf"), "step": -1, "state": None}
    train_time, eval_time = 0.0, 0.0
    calib_at, calib_t0 = 10, None
    step = 0

    def sync():
        if use_amp:
            torch.cuda.synchronize()

    def run_val(step):
        nonlocal eval_time
        sync()
        t0 = time.time()
        model.eval()
        r = nll_windows(model, val_ids, bos, a.seq_len, a.eval_batch, device, amp=use_amp)
        model.train()
        v = r["nll_mean"]
        val_hist.append({"step": step, "tokens": step * tokens_per_step, "val_loss": v})
        if v < best["val"]:
            best.update(val=v, step=step,
                        state={k: t.detach().to("cpu", copy=True) for k, t in model.state_dict().items()})
        sync()
        eval_time += time.time() - t0
        return v

    model.train()
    sync()
    t_start = time.time()
    while True:
        if total is None and step == calib_at:
            sync()
            calib_t0 = time.time()
        if total is None and step == calib_at + 20:
            sync()
            per_step = (time.time() - calib_t0) / 20
            remaining = budget_s - (time.time() - t_start - eval_time)
            # a validation pass costs about 3 training steps
            total = step + max(1, int(remaining / (per_step * (1 + 3.0 / max(1, a.eval_every)))))
            if a.max_steps:
                total = min(total, a.max_steps)
            log(f"calibration: {per_step * 1000:.1f} ms/step -> schedule of {total} steps")
        if total is not None and step >= total:
            break
        # before calibration (first 30 steps) only the warmup part of the schedule is used
        lr = lr_at(step, total if total is not None else 10 ** 9, a.lr, a.warmup, a.min_lr_ratio)
        for g in opt.param_groups:
            g["lr"] = lr
        x, y = batcher.next()
        router_logits.clear()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            h = model.model(input_ids=x, use_cache=False).last_hidden_state
            logits = model.lm_head(h)
        loss = F.cross_entropy(logits.float().view(-1, V), y.view(-1), ignore_index=-100)
        aux = balance_loss(router_logits, E) if router_logits else torch.zeros((), device=x.device)
        (loss + a.aux_coef * aux).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        if step % a.log_every == 0 or step == 1:
            lv, av, gv = loss.detach().item(), float(aux.detach()), float(gnorm)
            now = time.time()
            history.append({"step": step, "tokens": step * tokens_per_step, "loss": lv, "aux": av,
                            "lr": lr, "grad_norm": gv})
            if step % (a.log_every * 10) == 0 or step == 1:
                el = now - t_start - eval_time
                log(f"step {step}/{total or '?'} loss {lv:.4f} aux {av:.3f} lr {lr:.2e} "
                    f"gnorm {gv:.2f} | {step * tokens_per_step / max(el, 1e-9):,.0f} tok/s "
                    f"| {el:.0f}s")
        if a.eval_every and step % a.eval_every == 0:
            v = run_val(step)
            log(f"  val loss {v:.4f} (ppl {math.exp(v):.2f}) at step {step}")
        if budget_s and total is not None and a.steps and time.time() - t_start > budget_s * 1.5:
            log("stopping: far over the time budget")
            break
    sync()
    wall = time.time() - t_start
    train_time = wall - eval_time
    final_val = run_val(step) if (not val_hist or val_hist[-1]["step"] != step) else val_hist[-1]["val_loss"]
    for hd in handles:
        hd.remove()
    info = {"steps": step, "tokens": step * tokens_per_step, "train_seconds": train_time,
            "eval_seconds": eval_time, "wall_seconds": wall,
            "tokens_per_second": step * tokens_per_step / max(train_time, 1e-9),
            "final_val_loss": final_val, "best_val_loss": best["val"], "best_step": best["step"]}
    log(f"trained {step} steps, {info['tokens']:,} tokens in {train_time:.1f}s "
        f"({info['tokens_per_second']:,.0f} tok/s; +{eval_time:.1f}s validation); "
        f"final val {final_val:.4f}, best val {best['val']:.4f} at step {best['step']}")
    return history, val_hist, info, best


# ----------------------------------------------------------------------------------------------
# Evaluation


def nll_windows(model, ids, bos, window, batch, device, amp=False, collect_router=False):
    """Mean NLL of `ids` cut into consecutive windows of `window` tokens (last one may be shorter).

    Each window w is scored as the sequence [BOS] + w: the logits at positions 0..len(w)-1
    predict w[0..len(w)-1] (so the model input is [BOS] + w[:-1]). NLL from log_softmax in
    fp32, summed in fp64.
    """
    import torch
    wins = [ids[i:i + window] for i in range(0, len(ids), window)]
    sums, count = [], 0
    loads = None
    handles = []
    if collect_router:
        E = model.config.num_local_experts
        loads = [torch.zeros(E, dtype=torch.float64) for _ in model.model.layers]

        def mk(i):
            def hook(mod, inp, out):
                sel = out[1].argmax(-1).flatten().cpu()
                loads[i] += torch.bincount(sel, minlength=E).double()
            return hook
        for i, layer in enumerate(model.model.layers):
            if getattr(layer, "is_moe_layer", False):
                handles.append(layer.feed_forward.router.register_forward_hook(mk(i)))
    with torch.no_grad():
        by_len = {}
        for k, w in enumerate(wins):
            by_len.setdefault(len(w), []).append(k)
        out_sums = [0.0] * len(wins)
        for n, ks in by_len.items():
            for j in range(0, len(ks), batch):
                grp = ks[j:j + batch]
                y = torch.tensor([wins[k] for k in grp], dtype=torch.long, device=device)
                x = torch.cat([torch.full((len(grp), 1), bos, dtype=torch.long, device=device),
                               y[:, :-1]], dim=1)
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    logits = model(input_ids=x, use_cache=False).logits
                lp = torch.log_softmax(logits.float(), dim=-1)
                nll = -lp.gather(-1, y[..., None])[..., 0].double().sum(-1).cpu()
                for k, s in zip(grp, nll.tolist()):
                    out_sums[k] = s
        sums = out_sums
        count = sum(len(w) for w in wins)
    for hd in handles:
        hd.remove()
    total = math.fsum(sums)
    res = {"windows": len(wins), "tokens": count, "nll_sum": total, "nll_mean": total / count,
           "ppl": math.exp(total / count), "window_nll_sums": sums}
    if loads is not None:
        res["expert_load"] = [(l / l.sum()).tolist() if l.sum() > 0 else None for l in loads]
    return res


def unigram_ppl(train_ids, eval_ids, vocab_size):
    """Add-one smoothed unigram model from train_ids, perplexity on eval_ids."""
    counts = [0] * vocab_size
    for t in train_ids:
        counts[t] += 1
    n = len(train_ids)
    logp = [math.log((c + 1) / (n + vocab_size)) for c in counts]
    nll = -math.fsum(logp[t] for t in eval_ids) / len(eval_ids)
    return {"ppl": math.exp(nll), "nll_mean": nll, "train_tokens": n}


def generate(model, prompt_ids, max_new, eos_ids, device, temperature=0.0, top_p=1.0, gen=None):
    """Plain loop without a KV cache: greedy (temperature 0) or temperature + top-p sampling."""
    import torch
    ids = list(prompt_ids)
    with torch.no_grad():
        for _ in range(max_new):
            logits = model(input_ids=torch.tensor([ids], device=device), use_cache=False).logits[0, -1]
            logits = logits.float().cpu()
            if temperature <= 0:
                nxt = int(torch.argmax(logits))
            else:
                probs = torch.softmax(logits / temperature, dim=-1)
                sp, si = torch.sort(probs, descending=True)
                keep = (torch.cumsum(sp, 0) - sp) < top_p          # smallest set reaching top_p
                sp = sp * keep
                nxt = int(si[torch.multinomial(sp / sp.sum(), 1, generator=gen)])
            ids.append(nxt)
            if nxt in eos_ids:
                break
    return ids[len(prompt_ids):]


PLAIN_PROMPTS = ["In the beginning God", "Genesis 1:1", "And Jesus said unto them,",
                 "The LORD is my shepherd", "Psalms 23:1"]
CHAT_PROMPTS = [
    [{"role": "user", "content": "Hello! Who are you?"}],
    [{"role": "user", "content": "Quote John 3:16."}],
    [{"role": "user", "content": "What does the Bible say about love?"}],
    [{"role": "user", "content": "Continue this verse: The LORD is my shepherd;"}],
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "Which book comes after Genesis?"}],
]


def run_samples(model, tok, device, max_new, seed):
    import torch
    ids = special_ids(tok)
    eos = {ids[EOT_TEXT], ids[EOM], ids[EOT]}
    out = []
    for kind, prompts in (("text", PLAIN_PROMPTS), ("chat", CHAT_PROMPTS)):
        for p in prompts:
            if kind == "text":
                pids = tok.encode(p).ids                      # post-processor adds BOS
                shown = p
            else:
                text = render_chat(p, add_generation_prompt=True)
                pids = tok.encode(text, add_special_tokens=False).ids
                shown = p
            g = generate(model, pids, max_new, eos, device)
            gen = torch.Generator().manual_seed(seed)
            s = generate(model, pids, max_new, eos, device, temperature=0.6, top_p=0.9, gen=gen)
            out.append({"kind": kind, "prompt": shown, "prompt_ids": pids,
                        "greedy_ids": g, "greedy": tok.decode(g, skip_special_tokens=False),
                        "sampled_ids": s, "sampled": tok.decode(s, skip_special_tokens=False)})
    return out


def hf_generate_check(model, tok, device, prompts, n_new=40):
    """Greedy with transformers' generate (KV cache, chunked masks) vs our cache-free loop."""
    import torch
    ids = special_ids(tok)
    eos = [ids[EOT_TEXT], ids[EOM], ids[EOT]]
    results = []
    for name, pids in prompts:
        ours = generate(model, pids, n_new, set(eos), device)
        try:
            with torch.no_grad():
                o = model.generate(input_ids=torch.tensor([pids], device=device), max_new_tokens=n_new,
                                   do_sample=False, eos_token_id=eos, pad_token_id=ids[PAD])
            theirs = o[0, len(pids):].tolist()
            results.append({"prompt": name, "prompt_tokens": len(pids),
                            "match": len(theirs) > 0 and theirs == ours[:len(theirs)],
                            "ours": ours, "hf": theirs})
        except Exception as e:  # report, do not fail the run
            results.append({"prompt": name, "error": f"{type(e).__name__}: {e}"[:300]})
    return results


def plot_loss(history, val_hist, path, title, shipped_step=None):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    st = [h["tokens"] / 1e6 for h in history]
    ls = [h["loss"] for h in history]
    ax.plot(st, ls, lw=0.8, alpha=0.5, label="train loss (batch)")
    if len(ls) > 5:
        sm, e = [], ls[0]
        for v in ls:
            e = 0.9 * e + 0.1 * v
            sm.append(e)
        ax.plot(st, sm, lw=1.5, label="train loss (EMA)")
    if val_hist:
        ax.plot([v["tokens"] / 1e6 for v in val_hist], [v["val_loss"] for v in val_hist], "o-",
                ms=3, label="validation loss")
    if shipped_step is not None and history:
        tps = history[-1]["tokens"] / history[-1]["step"]
        ax.axvline(shipped_step * tps / 1e6, color="gray", ls="--", lw=1, label=f"shipped (step {shipped_step})")
    ax.set_xlabel("training tokens (millions)")
    ax.set_ylabel("cross-entropy (nats/token)")
    ax.set_ylim(bottom=max(0.0, min(ls + [v["val_loss"] for v in val_hist]) - 0.3),
                top=min(max(ls), 9.0))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Model card


def fmt_sample(s):
    if s["kind"] == "text":
        head = f"**Text prompt** `{s['prompt']}` (prompt + continuation):"
        pre = s["prompt"]
    else:
        turns = "; ".join(f"{m['role']}: \"{m['content']}\"" for m in s["prompt"])
        head = f"**Chat** ({turns}), the assistant's reply:"
        pre = ""
    return (f"{head}\n\ngreedy:\n```text\n{pre}{s['greedy']}\n```\n"
            f"sampled (temperature 0.6, top-p 0.9):\n```text\n{pre}{s['sampled']}\n```\n")


def write_card(out_dir, r):
    a = r["args"]
    cfg = r["text_config"]
    ev = r["eval"]
    tr = r["training"]
    h = ev["heldout"]
    layer_rows = "\n".join(
        f"| {i} | {'RoPE (llama3-scaled)' if cfg['no_rope_layers'][i] else 'NoPE'} | "
        f"{'chunked local, ' + str(cfg['attention_chunk_size']) if cfg['no_rope_layers'][i] else 'global causal'} | "
        f"{'yes' if cfg['no_rope_layers'][i] else 'no'} | {'no' if cfg['no_rope_layers'][i] else 'yes'} | "
        f"MoE {cfg['num_local_experts']}E top-1 + shared | "
        + (" ".join(f"{x:.2f}" for x in ev["expert_load"][i]) if ev.get("expert_load") and ev["expert_load"][i] else "-")
        + " |" for i in range(cfg["num_hidden_layers"]))
    samples = "\n".join(fmt_sample(s) for s in r["samples"])
    runs_table = ""
    if r.get("compared_runs"):
        rows = "\n".join(
            ("| **{steps} / {dropout}** (shipped) | **{best_step}** | **{val:.4f}** | **{held:.2f}** | **{secs:.0f}** |"
             if x["shipped"] else "| {steps} / {dropout} | {best_step} | {val:.4f} | {held:.2f} | {secs:.0f} |").format(**x)
            for x in r["compared_runs"])
        runs_table = f"""
Runs compared (same data and seed; each ships its best-validation step).
The choice used the validation loss only; the held-out perplexities of the other runs are listed
for transparency: the validation chapters come from the training books, the held-out books do
not, and the two rankings disagree.

| steps / dropout | best step | validation loss | held-out ppl | training s |
|---|---|---|---|---|
{{rows}}
""".replace("{rows}", rows)
    hf = r.get("hf_generate_check", [])
    hf_line = ", ".join(("match" if x.get("match") else ("error" if "error" in x else "MISMATCH")) for x in hf)
    card = f"""# llama4-demo: a tiny Llama 4 (Scout architecture) that writes King James English

The default model of tsglang: a real Llama 4 text model, trained from scratch by
`tools/train_demo.py`, small enough to ship in the repository ({r['size_mb']:.1f} MB of bf16
weights) and run on a CPU. It follows Llama 4 Scout's code path end to end, so every part of the
engine's Llama 4 support is exercised by a model whose output can be read.

It writes King James Bible English and answers simple chat requests (greetings, "who are you",
quoting or continuing verses). It is a demonstration, not a source of truth: it invents verses.

## Data and licence

- **Text:** the King James Version of the Bible (1611), **public domain**, from Debian's
  `bible-kjv-text` 4.38 package (see `tools/demo_data/README.md` for how `kjv.txt.gz` was made).
  Rendered one verse a line as `Book C:V text`, one document per chapter
  (`<|begin_of_text|>` … `<|end_of_text|>`).
- **Held out** (never trained on): {', '.join(HELDOUT_BOOKS)} → `heldout.txt`
  ({h['bytes']:,} bytes, {len(r['split']['heldout'])} chapters).
- **Validation** (monitoring and checkpoint choice only, not trained on): {len(r['split']['val'])}
  chapters, every 50th chapter of the remaining books ({', '.join(r['split']['val'])}).
- **Training:** the other {r['data']['train_chapters']} chapters ({r['data']['bible_tokens']:,} tokens) plus
  {r['data']['dialogues']:,} synthetic chat dialogues generated from templates by the script
  ({r['data']['dialogue_tokens']:,} tokens, {100 * r['data']['dialogue_share']:.1f}% of the training
  stream) in the Llama 4 chat format: greetings, questions about the model, quote a verse,
  continue a verse, the next verse, a verse about a topic, book order and chapter counts. Their
  answers quote training chapters only.
- The training text is public domain and the dialogues are the script's own templates; the
  weights, tokenizer and this card are part of tsglang and under its licence (Apache-2.0).

## Architecture (transformers `Llama4ForCausalLM`, Scout code path)

| | |
|---|---|
| parameters | **{r['n_params']:,}** total ({r['n_params_active']:,} active per token: one routed expert + the shared expert per layer) |
| hidden / layers | {cfg['hidden_size']} / {cfg['num_hidden_layers']} |
| attention | {cfg['num_attention_heads']} query heads, {cfg['num_key_value_heads']} KV heads (GQA), head_dim {cfg['head_dim']}, no biases |
| FFN | MoE in every layer (`interleave_moe_layer_step` 1): {cfg['num_local_experts']} routed experts, top-1, sigmoid score on the expert input, + shared expert; width {cfg['intermediate_size']} |
| vocab | {cfg['vocab_size']} (byte-level BPE, Llama 4 pre-tokeniser regex, Llama 4 special tokens at ids 0–{len(SPECIALS) - 1}) |
| RoPE | interleaved pairs, θ = 500000, llama3 scaling factor {cfg['rope_parameters']['factor']:g}, low 1, high 1, original context {cfg['rope_parameters']['original_max_position_embeddings']} |
| NoPE layers | every 4th (`no_rope_layers` {cfg['no_rope_layers']}): global attention + attention temperature tuning (`floor_scale` {cfg['floor_scale']}, `attn_scale` {cfg['attn_scale']}) |
| RoPE layers | chunked local attention (`attention_chunk_size` {cfg['attention_chunk_size']}), weightless qk-norm |
| embeddings | untied (`lm_head` separate), RMSNorm ε 1e-5 |
| context | trained on {a['seq_len']}-token sequences (= {a['seq_len'] // cfg['attention_chunk_size']} attention chunks; temperature tuning acts from position {cfg['floor_scale'] - 1}); `max_position_embeddings` {cfg['max_position_embeddings']} |

Per layer (expert load = fraction of held-out tokens routed to each expert):

| layer | position | attention | qk-norm | temp. tuning | FFN | expert load |
|---|---|---|---|---|---|---|
{layer_rows}

**Files (Scout hub layout, text only).** `config.json` is `Llama4ForConditionalGeneration` /
`model_type: llama4` with a nested `text_config` (`llama4_text`, every field transformers wrote,
plus the hub spelling `rope_theta` + `rope_scaling` beside transformers 5's `rope_parameters`).
There is **no `vision_config` and no vision tensors**: this is a text-only demo. `model.safetensors`
holds bf16 tensors named `language_model.model.*` and `language_model.lm_head.weight`; routed
experts are fused as transformers stores them: `feed_forward.experts.gate_up_proj`
[E, hidden, 2·width] (gate half first) and `feed_forward.experts.down_proj` [E, width, hidden].
`tokenizer.json` (byte-level BPE, post-processor prepends `<|begin_of_text|>`),
`tokenizer_config.json` (bos/eos/pad, `add_bos_token`, a `chat_template` equivalent to Llama 4's
for plain chats) and `generation_config.json` (eos = `<|end_of_text|>`, `<|eom|>`, `<|eot|>`;
temperature 0.6, top-p 0.9 as Llama 4).

transformers' `Llama4ForConditionalGeneration` would build a (random) default vision tower from a
config without `vision_config`; load the text model instead (what `load_hub_model` in the script
does):

```python
import json, torch
from safetensors.torch import load_file
from transformers import Llama4ForCausalLM, Llama4TextConfig
cfg = json.load(open("models/llama4-demo/config.json"))["text_config"]
for k in ("model_type", "torch_dtype", "rope_theta", "rope_scaling"): cfg.pop(k, None)
model = Llama4ForCausalLM(Llama4TextConfig(**cfg))
sd = load_file("models/llama4-demo/model.safetensors")
model.load_state_dict({{k.removeprefix("language_model."): v for k, v in sd.items()}})
```

## Training

{tr['steps']:,} steps of {a['batch_size']} × {a['seq_len']} tokens ({tr['tokens'] / 1e6:.1f} M tokens,
≈ {tr['tokens'] / r['data']['stream_tokens']:.0f} passes over the {r['data']['stream_tokens'] / 1e6:.2f} M-token
training stream) on one {r['device_name']}, **{tr['train_seconds']:.0f} s** of training
({tr['tokens_per_second']:,.0f} tokens/s, eager PyTorch, no compilation) + {tr['eval_seconds']:.0f} s of
validation; whole script {r['script_seconds']:.0f} s. AdamW (β 0.9/0.95, weight decay {a['weight_decay']}
on matrices), peak LR {a['lr']:g}, {a['warmup']} warmup steps, cosine to {a['min_lr_ratio']:g}× peak,
gradient clip {a['grad_clip']}, bf16 autocast with fp32 master weights, residual dropout {a['dropout']}
(training only; not part of the architecture), Switch-style load-balancing loss × {a['aux_coef']} on the
router logits. Each sequence starts with `<|begin_of_text|>`; {int(100 * a['p_align'])}% start at a
document start. The shipped weights are the step with the lowest validation loss
(step {tr['best_step']:,}; final step {tr['steps']:,}). {a['card_note']} Seed {a['seed']}; PyTorch {r['versions']['torch']},
transformers {r['versions']['transformers']}, tokenizers {r['versions']['tokenizers']}.

![loss](loss.png)
{runs_table}
## Evaluation: held-out perplexity

| model | held-out perplexity (tokens) | bits per byte |
|---|---|---|
| **llama4-demo** (fp32 compute from the bf16 file) | **{h['ppl']:.2f}** | {h['bits_per_byte']:.3f} |
| unigram baseline (training-split token frequencies, add-one) | {ev['unigram']['ppl']:.1f} | {ev['unigram']['bits_per_byte']:.3f} |

Validation loss at the shipped step: {tr['best_val_loss']:.4f} (ppl {math.exp(tr['best_val_loss']):.2f}).

**Procedure** (reproducible by another implementation; numbers in `eval.json`):

1. Read `heldout.txt` as UTF-8 ({h['bytes']:,} bytes, sha256 `{h['sha256']}`) and tokenise it
   with `tokenizer.json` **without special tokens** → {h['tokens']:,} tokens (first ids
   {h['first_ids']}).
2. Cut the ids into consecutive, non-overlapping windows of W = {h['window']} tokens from the start;
   the last window keeps the remainder ({h['windows']} windows: {h['windows'] - 1} full + one of
   {h['tokens'] - (h['windows'] - 1) * h['window']} tokens).
3. For each window w, run the model on `[<|begin_of_text|> (id {r['bos_id']})] + w[:-1]` (positions from 0,
   no cache); the logits at position i predict w[i]. Every window token is predicted,
   {h['tokens']:,} predictions in all.
4. Weights: the bf16 values of `model.safetensors` converted to fp32; all compute in fp32 (eager
   attention, TF32 off); NLL = −log_softmax(logits)[target] in fp32, summed in fp64.
5. Mean NLL = sum / {h['tokens']:,} = {h['nll_mean']:.6f} nats; **perplexity = exp(mean) = {h['ppl']:.4f}**;
   bits per byte = sum / ln 2 / bytes. `eval.json` lists each window's NLL sum.
6. Unigram baseline: count token ids over the training chapters (each chapter tokenised on its
   own, without special tokens; {ev['unigram']['train_tokens']:,} tokens), p(t) = (count(t) + 1) /
   (N + {cfg['vocab_size']}); perplexity over the same {h['tokens']:,} held-out tokens = {ev['unigram']['ppl']:.4f}.

The saved file was reloaded into a fresh `Llama4ForCausalLM` (names renamed back) and gives the
same held-out NLL as the in-memory weights rounded to bf16: {ev['reload_check']['in_memory_nll_mean']:.8f}
vs {ev['reload_check']['reloaded_nll_mean']:.8f} ({'identical' if ev['reload_check']['identical'] else 'DIFFERENT'}).
transformers' `generate` (KV cache) greedy vs the cache-free loop: {hf_line or 'not run'}.

## Samples

Greedy and sampled (temperature 0.6, top-p 0.9, seed {a['seed']}) continuations, at most
{a['samples_max_new']} new tokens, fp32 compute from the bf16 weights; plain prompts get
`<|begin_of_text|>` prepended, chats are rendered with the chat template plus the assistant header.
Special tokens are shown.

{samples}
## Re-running

```bash
# on a machine with one GPU, PyTorch, transformers 5.x, tokenizers, safetensors, matplotlib:
python3 tools/train_demo.py --out models/llama4-demo {r['rerun_args']}
```

The script is deterministic in its data, dialogues and batches for a given `--seed`; GPU kernels
make the weights differ slightly between runs. `python3 tools/train_demo.py --help` lists the
size and training options (the same functions can train a draft model on this data).
"""
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(card)


# ----------------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="models/llama4-demo")
    p.add_argument("--data", default=DEFAULT_DATA)
    p.add_argument("--device", default="cuda")
    p.add_argument("--seed", type=int, default=1234)
    # size
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--hidden-size", type=int, default=256)
    p.add_argument("--num-layers", type=int, default=6)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--num-kv-heads", type=int, default=2)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--num-experts", type=int, default=4)
    p.add_argument("--intermediate-size", type=int, default=256)
    p.add_argument("--chunk-size", type=int, default=128)
    p.add_argument("--floor-scale", type=int, default=128)
    p.add_argument("--rope-factor", type=int, default=16)
    # data
    p.add_argument("--dialogue-share", type=float, default=0.2,
                   help="dialogue characters / all training characters (0.2 gives about 15%% of tokens)")
    p.add_argument("--p-align", type=float, default=0.3, help="share of windows starting at a document")
    # training
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=3000, help="schedule length (0: size it to --max-minutes)")
    p.add_argument("--max-minutes", type=float, default=7.0,
                   help="training-loop time budget: sizes the schedule when --steps is 0, else a safety stop at 1.5x")
    p.add_argument("--max-steps", type=int, default=0, help="cap when sizing from --max-minutes")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-ratio", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--dropout", type=float, default=0.4, help="residual dropout (training only)")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--aux-coef", type=float, default=0.01)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-batch", type=int, default=16)
    p.add_argument("--no-keep-best", action="store_true", help="ship the last step, not the best-validation one")
    p.add_argument("--samples-max-new", type=int, default=80)
    p.add_argument("--card-note", default="", help="extra sentence for the model card's training section")
    p.add_argument("--card-only", action="store_true",
                   help="no training: rewrite README.md in --out from its eval.json and config.json")
    p.add_argument("--compare", nargs="*", default=[],
                   help="with --card-only: eval.json files of other runs to tabulate beside this one")
    return p.parse_args(argv)


def rewrite_card(a):
    """Regenerates README.md from eval.json + config.json (optionally with a runs table)."""
    with open(os.path.join(a.out, "eval.json")) as f:
        r = json.load(f)
    with open(os.path.join(a.out, "config.json")) as f:
        r["text_config"] = json.load(f)["text_config"]
    if a.card_note:
        r["args"]["card_note"] = a.card_note
        with open(os.path.join(a.out, "eval.json")) as f:
            e = json.load(f)
        e["args"]["card_note"] = a.card_note
        with open(os.path.join(a.out, "eval.json"), "w") as f:
            json.dump(e, f, indent=1)
    if a.compare:
        own = os.path.abspath(os.path.join(a.out, "eval.json"))
        runs = []
        for path in sorted(set([own] + [os.path.abspath(p) for p in a.compare])):
            with open(path) as f:
                e = json.load(f)
            runs.append({"steps": e["training"]["steps"], "dropout": e["args"]["dropout"],
                         "best_step": e["training"]["best_step"], "val": e["training"]["best_val_loss"],
                         "held": e["eval"]["heldout"]["ppl"], "secs": e["training"]["train_seconds"],
                         "shipped": path == own})
        r["compared_runs"] = sorted(runs, key=lambda x: (x["steps"], x["dropout"]))
    write_card(a.out, r)
    print(f"rewrote {os.path.join(a.out, 'README.md')}")


def main(argv=None):
    t_script = time.time()
    a = parse_args(argv)
    if a.card_only:
        return rewrite_card(a)
    import tokenizers
    import torch
    import transformers

    def log(*s):
        print(*s, flush=True)

    random.seed(a.seed)
    torch.manual_seed(a.seed)
    os.makedirs(a.out, exist_ok=True)
    device = a.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("CUDA is not available (use --device cpu for a smoke test)")
    device_name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    log(f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"tokenizers {tokenizers.__version__}, device {device_name}")

    # --- data
    verses = load_kjv(a.data)
    split = split_corpus(verses)
    book_chapter_counts = {}
    for b, c, _, _ in verses:
        book_chapter_counts[b] = max(book_chapter_counts.get(b, 0), c)
    heldout_text = split["heldout_text"]
    with open(os.path.join(a.out, "heldout.txt"), "w", encoding="utf-8", newline="\n") as f:
        f.write(heldout_text)
    heldout_bytes = heldout_text.encode("utf-8")
    assert len(heldout_bytes) <= 200_000, len(heldout_bytes)
    n_params = count_params_formula(a)
    bible_chars = sum(len(c["text"]) for c in split["train"])
    rng = random.Random(a.seed)
    dialogues = make_dialogues(split["train"], book_chapter_counts, rng,
                               a.dialogue_share / (1 - a.dialogue_share) * bible_chars,
                               round(n_params / 1e6))
    log(f"verses {len(verses)}; chapters train {len(split['train'])} val {len(split['val'])} "
        f"heldout {len(split['heldout'])} ({len(heldout_bytes):,} bytes); dialogues {len(dialogues)}")

    # --- tokenizer
    t0 = time.time()
    chapter_docs = [BOS + c["text"] + EOT_TEXT for c in split["train"]]
    dialogue_docs = [render_chat(d) for d in dialogues]
    tok = train_tokenizer([c["text"] for c in split["train"]] + dialogue_docs, a.vocab_size)
    assert tok.get_vocab_size() == a.vocab_size, tok.get_vocab_size()
    ids = special_ids(tok)
    write_tokenizer_files(tok, a.out, a.rope_factor * a.seq_len)
    log(f"tokenizer: {tok.get_vocab_size()} tokens in {time.time() - t0:.1f}s; "
        f"BOS {ids[BOS]} EOT {ids[EOT]}")

    # --- token stream
    docs = [("bible", d) for d in chapter_docs] + [("chat", d) for d in dialogue_docs]
    random.Random(a.seed + 1).shuffle(docs)
    enc = tok.encode_batch([d for _, d in docs], add_special_tokens=False)
    stream, doc_starts = [], []
    n_bible = n_chat = 0
    for (kind, _), e in zip(docs, enc):
        assert e.ids[0] == ids[BOS]
        doc_starts.append(len(stream))
        stream.extend(e.ids)
        if kind == "bible":
            n_bible += len(e.ids)
        else:
            n_chat += len(e.ids)
    train_bible_ids = [t for e in tok.encode_batch([c["text"] for c in split["train"]],
                                                    add_special_tokens=False) for t in e.ids]
    val_ids = tok.encode(split["val_text"], add_special_tokens=False).ids
    held_ids = tok.encode(heldout_text, add_special_tokens=False).ids
    data_info = {"train_chapters": len(split["train"]), "bible_tokens": n_bible,
                 "dialogues": len(dialogues), "dialogue_tokens": n_chat,
                 "dialogue_share": n_chat / (n_bible + n_chat), "stream_tokens": len(stream),
                 "val_tokens": len(val_ids), "heldout_tokens": len(held_ids),
                 "chars_per_token_heldout": len(heldout_text) / len(held_ids)}
    log("data: " + json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in data_info.items()}))
    log("example dialogue: " + repr(dialogue_docs[0][:300]))

    # --- model
    cfg = build_text_config(a, ids)
    model = build_model(cfg, "sdpa").to(device)
    n_actual = sum(p.numel() for p in model.parameters())
    assert n_actual == n_params, (n_actual, n_params)
    E, d, I = a.num_experts, a.hidden_size, a.intermediate_size
    n_active = n_params - a.num_layers * (E - 1) * 3 * d * I
    log(f"model: {n_params:,} parameters ({n_active:,} active/token), {2 * n_params / 1e6:.1f} MB bf16; "
        f"no_rope_layers {cfg.no_rope_layers}, layer_types {cfg.layer_types}, moe_layers {cfg.moe_layers}")
    log(f"rope inv_freq: {[round(float(x), 6) for x in model.model.rotary_emb.inv_freq[:4]]} ... "
        f"{[round(float(x), 9) for x in model.model.rotary_emb.inv_freq[-2:]]}")

    # --- train
    batcher = Batcher(stream, doc_starts, ids[BOS], a.seq_len, a.batch_size, a.p_align, device, a.seed)
    if device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
    history, val_hist, tinfo, best = train(model, batcher, a, device, val_ids, ids[BOS], log)
    if not a.no_keep_best and best["state"] is not None and best["step"] != tinfo["steps"]:
        model.load_state_dict(best["state"])
        log(f"shipping the best-validation weights of step {best['step']}")
    elif a.no_keep_best:
        tinfo["best_step"] = tinfo["steps"]
        tinfo["best_val_loss"] = tinfo["final_val_loss"]

    # --- save (hub layout) and reload check
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    cfg_json = hub_config(cfg, ids)
    state = save_hub(model, a.out, cfg_json)
    size_mb = os.path.getsize(os.path.join(a.out, "model.safetensors")) / 1e6
    mem = build_model(cfg, "eager")
    mem.load_state_dict({k[len("language_model."):]: v for k, v in state.items()}, strict=True)
    mem = mem.to(device=device, dtype=torch.float32).eval()
    r_mem = nll_windows(mem, held_ids, ids[BOS], a.seq_len, a.eval_batch, device)
    del mem
    fresh = load_hub_model(a.out, torch.float32, "eager", device)
    for k, v in fresh.state_dict().items():
        assert torch.equal(v.cpu(), state["language_model." + k].float()), k
    r = nll_windows(fresh, held_ids, ids[BOS], a.seq_len, a.eval_batch, device, collect_router=True)
    reload_check = {"in_memory_nll_mean": r_mem["nll_mean"], "reloaded_nll_mean": r["nll_mean"],
                    "identical": r_mem["nll_sum"] == r["nll_sum"]}
    log(f"held-out: {r['tokens']} tokens, {r['windows']} windows, ppl {r['ppl']:.4f}; reload {reload_check}")
    uni = unigram_ppl(train_bible_ids, held_ids, a.vocab_size)
    uni["bits_per_byte"] = uni["nll_mean"] * len(held_ids) / math.log(2) / len(heldout_bytes)
    uni["smoothing"] = "add-one over the full vocabulary"
    log(f"unigram baseline ppl {uni['ppl']:.2f}")
    r_val = nll_windows(fresh, val_ids, ids[BOS], a.seq_len, a.eval_batch, device)

    # --- samples
    samples = run_samples(fresh, tok, device, a.samples_max_new, a.seed)
    for s in samples:
        log(f"[{s['kind']}] {s['prompt']!r}\n  greedy:  {s['greedy']!r}\n  sampled: {s['sampled']!r}")
    hf_check = hf_generate_check(fresh, tok, device, [
        (PLAIN_PROMPTS[0], tok.encode(PLAIN_PROMPTS[0]).ids),
        ("first 200 held-out tokens (crosses chunk boundaries)", [ids[BOS]] + held_ids[:200])])
    log("hf generate check: " + json.dumps([{k: v for k, v in x.items() if k in ('prompt', 'match', 'error')} for x in hf_check]))

    # --- outputs
    plot_loss(history, val_hist, os.path.join(a.out, "loss.png"),
              f"llama4-demo: {n_params / 1e6:.1f}M params, {a.batch_size}x{a.seq_len} tokens/step",
              shipped_step=tinfo["best_step"])
    heldout = {
        "file": "heldout.txt", "bytes": len(heldout_bytes),
        "sha256": hashlib.sha256(heldout_bytes).hexdigest(), "books": HELDOUT_BOOKS,
        "tokens": r["tokens"], "first_ids": held_ids[:16], "window": a.seq_len,
        "windows": r["windows"], "predicted_tokens": r["tokens"], "nll_sum": r["nll_sum"],
        "nll_mean": r["nll_mean"], "ppl": r["ppl"],
        "bits_per_byte": r["nll_sum"] / math.log(2) / len(heldout_bytes),
        "window_nll_sums": r["window_nll_sums"],
    }
    procedure = (
        "Tokenise heldout.txt (UTF-8) with tokenizer.json without special tokens; cut the ids into "
        f"consecutive non-overlapping windows of W={a.seq_len} tokens (the last window keeps the "
        "remainder); for each window w run the model on [BOS] + w[:-1] (positions from 0, no cache) "
        "so the logits at position i predict w[i]; weights = bf16 values of model.safetensors in "
        "fp32, fp32 compute (eager attention, TF32 off); NLL = -log_softmax(logits)[target] summed "
        "in fp64 over all window tokens; ppl = exp(sum / tokens). Unigram baseline: add-one smoothed "
        "token frequencies over the training chapters (each tokenised alone, no special tokens), "
        "same held-out tokens.")
    results = {
        "args": vars(a), "text_config": cfg_json["text_config"], "n_params": n_params,
        "n_params_active": n_active, "size_mb": size_mb, "device_name": device_name,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "tokenizers": tokenizers.__version__},
        "bos_id": ids[BOS], "data": data_info,
        "split": {"heldout": [f"{c['book']} {c['chapter']}" for c in split["heldout"]],
                  "val": [f"{c['book']} {c['chapter']}" for c in split["val"]]},
        "training": tinfo,
        "eval": {"procedure": procedure, "heldout": heldout, "unigram": uni,
                 "reload_check": reload_check, "expert_load": r.get("expert_load"),
                 "val_shipped": {k: r_val[k] for k in ("tokens", "windows", "nll_mean", "ppl")}},
        "samples": samples, "hf_generate_check": hf_check,
        "history": history, "val_history": val_hist,
    }
    rerun = f"--steps {tinfo['steps']} --seed {a.seed}"
    defaults = vars(parse_args([]))
    for k, v in vars(a).items():
        if k not in ("out", "steps", "seed", "max_minutes", "max_steps", "device", "data", "card_note") \
                and v != defaults[k]:
            rerun += f" --{k.replace('_', '-')}" + ("" if isinstance(v, bool) else f" {v}")
    results["rerun_args"] = rerun
    results["script_seconds"] = time.time() - t_script
    with open(os.path.join(a.out, "eval.json"), "w") as f:
        json.dump({k: v for k, v in results.items() if k not in ("text_config",)}, f, indent=1)
    write_card(a.out, results)
    log(f"done in {time.time() - t_script:.0f}s; wrote {sorted(os.listdir(a.out))}")
    return results


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Adds DeepSeek V4's special tokens to a DeepSeek V3 tokenizer.json.

usage: v4_tokenizer.py IN_DIR OUT_DIR

The test fixtures carry the V3 tokenizer (same BPE and pre-tokenizer as V4,
spec/MODEL.md §10); V4 adds special tokens after V3's last id, among them
the three strings a strict ds4 loader requires besides BOS/EOS/User/
Assistant: <think> (128821), </think> (128822) and ｜DSML｜ (128825), at the
ids reported for the V4 vocabulary. Tokens already present are left alone.
tokenizer_config.json is copied unchanged."""
import json
import os
import shutil
import sys

V4_SPECIALS = [(128821, "<think>"), (128822, "</think>"), (128825, "\uff5cDSML\uff5c")]


def main():
    src, dst = sys.argv[1], sys.argv[2]
    os.makedirs(dst, exist_ok=True)
    with open(os.path.join(src, "tokenizer.json"), encoding="utf-8") as f:
        tok = json.load(f)
    have = {a["content"] for a in tok["added_tokens"]} | set(tok["model"]["vocab"])
    used = {a["id"] for a in tok["added_tokens"]} | set(tok["model"]["vocab"].values())
    for tid, text in V4_SPECIALS:
        if text in have:
            continue
        if tid in used:
            sys.exit("id %d is taken; cannot add %s" % (tid, text))
        tok["added_tokens"].append({"id": tid, "content": text, "single_word": False, "lstrip": False,
                                    "rstrip": False, "normalized": False, "special": True})
    with open(os.path.join(dst, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False)
    cfg = os.path.join(src, "tokenizer_config.json")
    if os.path.exists(cfg):
        shutil.copy(cfg, os.path.join(dst, "tokenizer_config.json"))


if __name__ == "__main__":
    main()

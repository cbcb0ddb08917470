"""Tokenizers: train a byte-level BPE, tokenize datasets into shards, inspect and count them."""

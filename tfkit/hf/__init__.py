"""Models in and out through Hugging Face transformers, in safetensors.

`export_hf` (export.py) writes a run as a transformers folder; `import_hf` (import_.py)
reads one (a local folder or a Hub id) back as a run directory, `chat_tokens.py` adding
the chat tokens its tokenizer lacks (`--chat-tokens`); `mapping.py` says which
architecture a tfkit model is and renames its weights both ways; `tokenizer.py` (with
the chat template) and `card.py` write the rest.
"""

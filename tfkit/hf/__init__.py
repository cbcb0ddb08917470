"""Models in and out through Hugging Face transformers, in safetensors.

`export_hf` (export.py) writes a run as a transformers folder; `import_hf` (import_.py)
reads one back as a run directory; `mapping.py` says which architecture a tfkit model
is and renames its weights both ways; `tokenizer.py` and `card.py` write the rest.
"""

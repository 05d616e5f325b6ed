"""PyTorch/HF ⇄ dreamjax checkpoint conversion. ``keymap`` is the one table both directions use."""

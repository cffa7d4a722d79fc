"""Integrations: leaves of the package that connect models to other tools (search index, web page, ONNX, open_clip,
the Hugging Face hub, diffusers pipelines). Each imports its optional dependency lazily, so ``import longclip`` never
needs them."""

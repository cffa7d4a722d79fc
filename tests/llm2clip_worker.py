"""Run under torchrun by tests/test_llm2clip_train.py: one LLM2CLIP step of work on every rank.

Usage: ``llm2clip_worker.py cache LM DATA OUTPUT`` | ``llm2clip-text LM DATA OUTPUT`` |
``llm2clip-mntp LM DATA OUTPUT`` | ``llm2clip CLIP DATA OUTPUT CACHE``.
"""

from __future__ import annotations

import sys

from longclip.train import TrainConfig, train
from longclip.train.tasks import LLM2CLIPMNTPOptions, LLM2CLIPOptions, LLM2CLIPTextOptions
from longclip.train.tasks.llm2clip import build_text_cache


def main(argv: list[str]) -> None:
    stage, model, data, output = argv[:4]
    if stage == "cache":
        build_text_cache(model, data, output, shard_size=3, batch_size=4, device="cpu")
        return
    common = dict(model=model, data=data, output=output, batch_size=4, epochs=1, num_workers=0, log_every=1,
                  device="cpu", lr=1e-3)  # fmt: skip
    if stage == "llm2clip-text":
        train(TrainConfig.for_method("llm2clip-text", **common), LLM2CLIPTextOptions(lora_r=4))
    elif stage == "llm2clip-mntp":
        train(TrainConfig.for_method("llm2clip-mntp", **common), LLM2CLIPMNTPOptions(lora_r=4, mask_token=","))
    else:
        options = LLM2CLIPOptions(text_cache=argv[4], long_probability=1.0, attach_language_model=False)
        train(TrainConfig.for_method("llm2clip", **common), options)


if __name__ == "__main__":
    main(sys.argv[1:])

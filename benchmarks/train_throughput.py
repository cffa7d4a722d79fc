"""Training throughput and peak memory of Long-CLIP fine-tuning with a ViT-B/16-sized CLIP.

Runs the real training loop (``longclip.train.fit``: forward, primary-component-matching loss, backward, AdamW,
schedule) on random weights and synthetic batches (224 px images, long captions of 150-230 tokens, short captions
of ~15), for each precision in its own process so that peak memory is that precision's alone. Reports samples/s
(steps after the first, which warms up) and peak memory: resident set size on the CPU, allocated memory on CUDA.

The reference row, ``padded-248 fp32``, is what the original Long-CLIP code computes: every caption, long and short,
padded to 248 tokens, in float32. The other rows are this package's loop, whose collator pads a batch only to its
longest caption, at each ``--precisions`` setting (``bf16``: float32 weights under bfloat16 autocast).

    python benchmarks/train_throughput.py                          # CPU, fp32 and bf16, batch 8
    python benchmarks/train_throughput.py --device cuda --batch-size 64 --precisions fp32 bf16 fp16

Random weights change nothing about speed; the numbers are for comparing settings on one machine, not a promise.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
import types

VIT_B16 = dict(vision_width=768, vision_layers=12, text_width=512, text_layers=12, image_size=224, patch=16)


def run_one(
    precision: str, device: str, batch_size: int, steps: int, threads: int | None, padded: bool = False
) -> dict:
    """Train ``steps`` steps in this process and return its measurements (``padded``: captions padded to 248)."""
    import torch
    from transformers import CLIPConfig, CLIPModel

    from longclip.models import LongCLIPModel
    from longclip.positions import freeze_position_rows
    from longclip.train import TrainConfig, fit
    from longclip.train.distributed import DistributedContext
    from longclip.train.tasks import LongCLIPOptions, LongCLIPTask

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    text = dict(hidden_size=VIT_B16["text_width"], intermediate_size=4 * VIT_B16["text_width"], num_attention_heads=8,
                num_hidden_layers=VIT_B16["text_layers"], max_position_embeddings=248, hidden_act="quick_gelu",
                bos_token_id=49406, eos_token_id=49407)  # fmt: skip
    vision = dict(hidden_size=VIT_B16["vision_width"], intermediate_size=4 * VIT_B16["vision_width"],
                  num_attention_heads=12, num_hidden_layers=VIT_B16["vision_layers"],
                  image_size=VIT_B16["image_size"], patch_size=VIT_B16["patch"], hidden_act="quick_gelu")  # fmt: skip
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=512))
    freeze_position_rows(clip, 20)
    model = LongCLIPModel(clip).to(device)
    if padded:
        # The original computes every one of the 248 positions; encode_text would cut the batch to its longest text.
        def encode_all_positions(self, input_ids, attention_mask=None, normalize=False):
            features = self.clip.get_text_features(input_ids=input_ids.to(self.device)).pooler_output
            return torch.nn.functional.normalize(features, dim=-1) if normalize else features

        model.encode_text = types.MethodType(encode_all_positions, model)

    generator = torch.Generator().manual_seed(0)

    def ids(lengths):
        rows = torch.zeros(len(lengths), 248 if padded else max(lengths), dtype=torch.long)
        for i, n in enumerate(lengths):
            rows[i, 0], rows[i, 1 : n - 1], rows[i, n - 1] = 49406, torch.randint(300, 40000, (n - 2,)), 49407
        return rows

    def batches(epoch, first_step):
        for _ in range(first_step, steps):
            yield {
                "pixels": torch.randn(batch_size, 3, 224, 224, generator=generator),
                "long_ids": ids(torch.randint(150, 231, (batch_size,), generator=generator).tolist()),
                "short_ids": ids(torch.randint(12, 19, (batch_size,), generator=generator).tolist()),
                "indices": torch.arange(batch_size),
                "num_bad": 0,
            }

    with tempfile.TemporaryDirectory() as out:
        config = TrainConfig(
            model="(random ViT-B/16)", data="(synthetic)", output=out, batch_size=batch_size, precision=precision,
            log_every=1, save_every=10**9, warmup_steps=1, device=device, max_steps=steps,
        )  # fmt: skip
        context = DistributedContext(device=torch.device(device))
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        fit(LongCLIPTask(model, LongCLIPOptions(), context), batches, steps, config, context)
        seconds = time.perf_counter() - started
        rows = [json.loads(line) for line in open(f"{out}/metrics.jsonl") if '"loss"' in line]
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    measured = [r["samples_per_s"] for r in rows[1:]]
    return {
        "run": f"{'padded-248' if padded else 'longclip'} {precision}",
        "precision": precision,
        "samples_per_s": sum(measured) / len(measured),
        "peak_memory_mib": round(peak),
        "seconds": round(seconds, 1),
        "final_loss": rows[-1]["loss"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4, help="steps per precision; the first is not counted")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--no-reference", action="store_true", help="skip the padded-248 fp32 reference row")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # internal: run one setting, print JSON
    args = parser.parse_args(argv)
    if args.one:
        precision, _, padded = args.one.partition(":")
        print(json.dumps(run_one(precision, args.device, args.batch_size, args.steps, args.threads, bool(padded))))
        return 0

    import torch
    from text_throughput import load_average, machine_description

    load_before = load_average()
    settings = ([] if args.no_reference else ["fp32:padded"]) + list(args.precisions)
    results = []
    for setting in settings:
        command = [sys.executable, __file__, "--one", setting, "--device", args.device,
                   "--batch-size", str(args.batch_size), "--steps", str(args.steps)]  # fmt: skip
        if args.threads:
            command += ["--threads", str(args.threads)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{setting}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))

    threads = args.threads or torch.get_num_threads()
    print(f"\n# Long-CLIP fine-tuning step, ViT-B/16-sized CLIP (random weights), batch {args.batch_size}\n")
    print(f"- machine: {machine_description(args.device)}; torch threads: {threads}")
    versions = f"torch {torch.__version__}, Python {platform.python_version()}"
    print(f"- {versions}; {args.steps} steps per row, first not timed")
    print("- padded-248 fp32: the original code's computation (all 248 positions of every caption, float32)\n")
    print("| run | samples/s | vs padded-248 fp32 | peak memory (MiB) | wall time (s) | final loss |")
    print("|---|---:|---:|---:|---:|---:|")
    reference = next((r["samples_per_s"] for r in results if r["run"] == "padded-248 fp32"), None)
    for r in results:
        ratio = f"{r['samples_per_s'] / reference:.2f}x" if reference else "n/a"
        print(f"| {r['run']} | {r['samples_per_s']:.3f} | {ratio} | {r['peak_memory_mib']} | {r['seconds']} | "
              f"{r['final_loss']:.4f} |")  # fmt: skip
    print(f"\nLoad average before / after: {load_before} / {load_average()}")
    if args.json:
        payload = {"device": args.device, "machine": machine_description(args.device), "batch_size": args.batch_size,
                   "results": results}  # fmt: skip
        with open(args.json, "w") as f:
            json.dump(payload, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

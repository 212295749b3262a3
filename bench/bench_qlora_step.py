"""Benchmark one QLoRA ORPO step (NF4 base, bf16 compute) at long S: peak RSS and time with the base's
non-quantised weights upcast to fp32 (train.upcast_base = true, what PEFT's prepare_model_for_kbit_training
does, and this project did before) against bf16 end to end (the default now).

    python -P bench/bench_qlora_step.py            # S = 4096 and 8192 tokens per sequence
    python -P bench/bench_qlora_step.py --quick    # S = 2048
    python -P bench/bench_qlora_step.py --sizes 4096

A random Llama shaped like a small model (hidden 1024, 8 layers, 16 query / 4 KV heads, SmolLM2's 49,152-token
vocabulary), quantised to NF4 by bitsandbytes' CPU backend, LoRA r = 16 on every projection, one pair
(chosen and rejected of S tokens each, the last 300 of each the response), the fused token-chunked ORPO loss,
gradient checkpointing on, one thread. Each (variant, S) runs in a fresh process; peak extra memory = the RSS
high-water mark during the step minus RSS just before it (after the model is loaded and prepared), and the
model's own resident size after preparation is reported apart (the fp32 copies live there).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402

VARIANTS = ("bf16", "upcast-fp32")
RESPONSE = 300


def _build_model(directory: Path) -> None:
    import torch
    from sealong.loop.backends.models import build_tiny_random_llama

    model, tok = build_tiny_random_llama(
        0,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
        max_position_embeddings=16384,
        tie_word_embeddings=False,
    )
    model.to(torch.bfloat16).save_pretrained(directory)
    tok.save_pretrained(directory)


def child(variant: str, S: int, model_dir: str) -> dict:
    import torch
    from sealong.loop.backends.models import load_causal_lm
    from sealong.loop.config import TrainConfig
    from sealong.loop.training.orpo import IGNORE, PairExample, add_lora, orpo_step_loss

    torch.set_num_threads(1)
    model = load_causal_lm(Path(model_dir), "bfloat16", quantize="nf4")
    cfg = TrainConfig(
        quantize="nf4", lora_r=16, lora_alpha=32, gradient_checkpointing=True, upcast_base=variant != "bf16"
    )
    peft_model = add_lora(model, cfg, None)
    g = torch.Generator().manual_seed(0)
    V = peft_model.get_base_model().config.vocab_size

    def seq() -> tuple[list[int], list[int]]:
        ids = torch.randint(0, V, (S,), generator=g).tolist()
        return ids, [IGNORE] * (S - RESPONSE) + ids[S - RESPONSE :]

    pair = PairExample(*seq(), *seq())
    before = harness.reset_peak_rss()
    t0 = time.perf_counter()
    out, _ = orpo_step_loss(peft_model, [pair], beta=0.1, loss="fused", pad_id=0)
    out.loss.backward()
    seconds = time.perf_counter() - t0
    return {
        "peak_extra_mib": (harness.peak_rss() - before) / 2**20,
        "model_rss_mib": before / 2**20,
        "seconds": seconds,
        "loss": float(out.loss),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", help="tokens per sequence (default 4096 8192)")
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "S", "MODEL_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        import json

        print(json.dumps(child(args.child[0], int(args.child[1]), args.child[2])))
        return
    sizes = args.sizes or ((2048,) if args.quick else (4096, 8192))
    rows, table = [], []
    with tempfile.TemporaryDirectory() as tmp:
        _build_model(Path(tmp))
        for S in sizes:
            for variant in VARIANTS:
                r = harness.run_child([__file__, "--child", variant, str(S), tmp])
                case = f"S={S} pair, H=1024 L=8 V=49152 NF4 r=16 ckpt"
                rows += [
                    dict(case=case, variant=variant, metric="peak_extra_rss", value=f"{r['peak_extra_mib']:.0f}", unit="MiB"),
                    dict(case=case, variant=variant, metric="model_rss", value=f"{r['model_rss_mib']:.0f}", unit="MiB"),
                    dict(case=case, variant=variant, metric="time_fwd_bwd", value=f"{r['seconds']:.3g}", unit="s"),
                ]  # fmt: skip
                table.append(
                    [
                        S,
                        variant,
                        f"{r['model_rss_mib']:.0f}",
                        f"{r['peak_extra_mib']:.0f}",
                        f"{r['seconds']:.2f}",
                    ]
                )
    harness.append_rows("qlora_step", rows, notes="one thread; fresh process per row")
    harness.print_table(
        "one QLoRA ORPO step, NF4 base, bf16 compute",
        ["S", "variant", "RSS before step (MiB)", "peak extra (MiB)", "fwd+bwd (s)"],
        table,
    )


if __name__ == "__main__":
    main()

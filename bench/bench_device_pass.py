"""One pass of the loop's compute on this machine's device, with time, tokens/s and peak memory per phase.

The GPU acceptance check of issue 4, runnable on the CPU too (same code, `--device cpu`):
  sample  N plan-and-solve answers per question through transformers (shared prefill), the policy on DEVICE;
  score   embedding MBR over them (all-MiniLM-L6-v2; the fused Triton kernel when DEVICE is CUDA);
  eval    greedy answers to held-out questions, SubEM;
  train   QLoRA ORPO steps: NF4 base through bitsandbytes (its CUDA backend on a GPU), bf16 compute on a
          GPU (fp32 on the CPU), LoRA on every attention and MLP projection, the fused token-chunked loss,
          pairs = MBR best vs worst of the sampled answers.
Models: the bundled SmolLM2-135M-Instruct and all-MiniLM-L6-v2, or local directories (--policy,
--embedder; on the GPU machine the kit's same-shape models with random weights, see bench/device_kit.py).
Questions: the synthetic multi-hop tasks. Rows go to bench/results.csv (or --csv; bench = device_pass),
each phase's row is printed as soon as it ends, and a failing phase is reported and the others still run
(exit 1 if any failed).

    .venv/bin/python -P bench/bench_device_pass.py                # device auto: CUDA if there is one
    .venv/bin/python -P bench/bench_device_pass.py --device cpu --quick
    .venv/bin/python -P bench/bench_device_pass.py --vllm-ab      # vLLM's two throughput A/Bs (CUDA + vllm)

--vllm-ab settles issue 15's two vLLM choices by measurement, through the project's own VllmSampler:
vllm.batching (per-question vs continuous: the same questions, seeds and engine, the prefix cache reset
before each) and vllm.engine_in_process (true vs false: one child process per engine, since vLLM reads
VLLM_ENABLE_V1_MULTIPROCESSING when the engine starts; engine start time recorded too). It reports
seconds, generated tokens/s and the share of questions whose samples came out identical in both modes
(seeds are per request; a different batch may still change the numerics). Without vLLM or CUDA it says
so and exits 0: UNTESTED on hardware until a GPU with vLLM runs it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import harness  # noqa: E402


class Phase:
    """Wall time and peak memory (CUDA: max allocated; CPU: the process's RSS high-water mark)."""

    def __init__(self, device):
        self.device = device

    def __enter__(self):
        import torch

        harness.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        else:
            harness.reset_peak_rss()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import torch

        harness.sync()
        self.seconds = time.perf_counter() - self.t0
        self.peak_mib = (
            torch.cuda.max_memory_allocated() if self.device.type == "cuda" else harness.peak_rss()
        ) / 2**20


AB_BATCHING = ("per-question", "continuous")


def vllm_ab_child(args) -> None:
    """One engine (engine_in_process as given), both batching modes on it; prints one JSON line."""
    import tempfile

    from sealong.loop.backends.models import prepare_base_model
    from sealong.loop.backends.sampler import make_sampler
    from sealong.loop.config import PLAN_AND_SOLVE, config_from_dict
    from sealong.loop.recipe.prompts import build_prompt
    from sealong.loop.tasks.synthetic import generate

    def cfg_for(batching: str):
        return config_from_dict(
            {
                # replicas = 2 only satisfies the check that engine_in_process = false runs under replicas;
                # this process is one engine
                "sample": {"backend": "vllm", "n": args.n, "max_new_tokens": args.new_tokens, "replicas": 2},
                "policy": {"max_prompt_tokens": 2 * args.context_tokens},
                "vllm": {
                    "batching": batching,
                    "engine_in_process": args.engine_in_process == 1,
                    "max_model_len": 2 * args.context_tokens + args.new_tokens + 256,
                    "max_lora_rank": 16,
                    "gpu_memory_utilization": 0.6,
                },
            },
            check_paths=False,
        )

    questions = generate(args.questions, 0, "train", [1, 2], args.context_tokens // 2, args.context_tokens)
    seeds = [1000 + k for k in range(len(questions))]
    out: dict = {"engine_in_process": args.engine_in_process == 1}
    with tempfile.TemporaryDirectory() as wd:
        base = prepare_base_model(args.policy, wd)
        t0 = time.perf_counter()
        sampler, tok = make_sampler(cfg_for(AB_BATCHING[0]), base, None, None, None, seed=0)
        out["engine_start_s"] = time.perf_counter() - t0
        prompts = [
            build_prompt(tok, q.context, q.question, PLAN_AND_SOLVE, sampler.prompt_budget).input_ids
            for q in questions
        ]
        sampler.sample(prompts[:1], seeds[:1])  # warm-up: first-call allocations, not either mode's cost
        samples = {}
        for batching in AB_BATCHING:
            sampler.cfg = cfg_for(batching)  # the same engine; only how the questions are sent changes
            reset = getattr(sampler.engine.llm, "reset_prefix_cache", None)
            if reset:
                reset()  # neither mode may reuse the other's prefill
            t0 = time.perf_counter()
            samples[batching] = sampler.sample(prompts, seeds)
            seconds = time.perf_counter() - t0
            tokens = sum(c.n_tokens for q in samples[batching] for c in q)
            out[batching] = {"seconds": seconds, "tokens": tokens, "prefix_cache_reset": bool(reset)}
        a, b = (samples[m] for m in AB_BATCHING)
        out["same_samples"] = sum(x == y for x, y in zip(a, b)) / len(a)
    print(json.dumps(out))


def vllm_ab(args) -> None:
    """Both A/Bs: one child process per engine_in_process value, each timing both batching modes."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        print("vLLM is not installed here: the batching and engine_in_process A/Bs are skipped", flush=True)
        return
    import torch

    if not torch.cuda.is_available():
        print("no CUDA GPU here: the batching and engine_in_process A/Bs are skipped", flush=True)
        return
    policy_name = Path(args.policy).name if not args.policy.startswith("bundled:") else args.policy[8:]
    random_weights = Path(args.policy, "RANDOM_WEIGHTS").is_file()
    case = (
        f"vllm A/B {policy_name}{' (random weights)' if random_weights else ''} q={args.questions} "
        f"N={args.n} new={args.new_tokens} ctx<={args.context_tokens}"
    )
    print(f"{case} on {harness.gpu_name()}", flush=True)
    rows, table, failed = [], [], []
    for in_process in (1, 0):
        engine = "in-process" if in_process else "child process"
        argv = [__file__, "--vllm-ab-child", "--engine-in-process", str(in_process), "--policy", args.policy]
        argv += ["--questions", str(args.questions), "--n", str(args.n), "--new-tokens", str(args.new_tokens)]
        argv += ["--context-tokens", str(args.context_tokens)]
        try:
            res = harness.run_child(argv, timeout=300)
        except Exception as e:  # report, and still run the other engine
            failed.append(engine)
            print(f"A/B FAILED: engine {engine}: {e}", flush=True)
            continue
        rows.append(dict(case=case, variant=f"engine {engine}", metric="engine_start", value=f"{res['engine_start_s']:.2f}", unit="s"))  # fmt: skip
        rows.append(dict(case=case, variant=f"engine {engine}", metric="same_samples_across_batching", value=f"{res['same_samples']:.3f}", unit="share of questions"))  # fmt: skip
        for batching in AB_BATCHING:
            r = res[batching]
            rate = r["tokens"] / r["seconds"] if r["seconds"] else 0.0
            variant = f"batching {batching}, engine {engine}"
            notes = "" if r["prefix_cache_reset"] else "prefix cache not reset between modes"
            rows.append(dict(case=case, variant=variant, metric="seconds", value=f"{r['seconds']:.3f}", unit="s", notes=notes))  # fmt: skip
            rows.append(dict(case=case, variant=variant, metric="tokens_per_s", value=f"{rate:.1f}", unit="tok/s", notes=notes))  # fmt: skip
            table.append([batching, engine, f"{r['seconds']:.2f}", r["tokens"], f"{rate:.0f}", f"{res['engine_start_s']:.1f}", f"{res['same_samples']:.2f}"])  # fmt: skip
            print("  ".join(map(str, table[-1])), flush=True)
    if not args.no_csv and rows:
        harness.append_rows("device_pass", rows, csv_path=args.csv)
    harness.print_table(case, ["batching", "engine", "seconds", "tokens", "tok/s", "engine start s", "same samples"], table)  # fmt: skip
    if failed:
        sys.exit(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    ap.add_argument("--questions", type=int, default=16)
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--context-tokens", type=int, default=1000)
    ap.add_argument("--train-steps", type=int, default=4)
    ap.add_argument(
        "--policy", default="bundled:smollm2-135m-instruct", help="policy spec or model directory"
    )
    ap.add_argument("--embedder", default="bundled:all-minilm-l6-v2", help="embedder spec or directory")
    ap.add_argument("--csv", type=Path, default=None, help="append rows here instead of bench/results.csv")
    ap.add_argument("--quick", action="store_true", help="2 questions, N=4, 16 new tokens, 1 step")
    ap.add_argument("--no-csv", action="store_true", help="print only (tests)")
    ap.add_argument("--vllm-ab", action="store_true", help="only vLLM's batching and engine-process A/Bs")
    ap.add_argument("--vllm-ab-child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--engine-in-process", type=int, choices=[0, 1], default=1, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.questions, args.n, args.new_tokens, args.context_tokens, args.train_steps = 2, 4, 16, 200, 1
    if args.vllm_ab_child:
        return vllm_ab_child(args)
    if args.vllm_ab:
        return vllm_ab(args)

    import importlib.util
    import tempfile
    import traceback

    import torch
    from sealong.kernels import mbr
    from sealong.loop.backends.models import (
        compute_device,
        load_causal_lm,
        load_embedder,
        load_policy,
        load_tokenizer,
        prepare_base_model,
    )
    from sealong.loop.backends.transformers_backend import greedy_batch, sample_n
    from sealong.loop.config import PLAN_AND_SOLVE, TrainConfig
    from sealong.loop.recipe.metrics import subem
    from sealong.loop.recipe.prompts import build_prompt
    from sealong.loop.tasks.synthetic import generate
    from sealong.loop.training.orpo import PairExample, add_lora, encode_response, orpo_step_loss

    device = compute_device(args.device)
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    ctx_range = (args.context_tokens // 2, args.context_tokens)
    train_q = generate(args.questions, 0, "train", [1, 2], *ctx_range)
    eval_q = generate(args.questions, 0, "eval", [1, 2], *ctx_range)
    rows, table, failed = [], [], []
    header = ["phase", "seconds", "tokens", "tok/s", "peak MiB", "notes"]
    policy_name = Path(args.policy).name if not args.policy.startswith("bundled:") else args.policy[8:]
    random_weights = Path(args.policy, "RANDOM_WEIGHTS").is_file()
    case = (
        f"{policy_name}{' (random weights)' if random_weights else ''} {device.type} {dtype} "
        f"q={args.questions} N={args.n} new={args.new_tokens} ctx<={args.context_tokens}"
    )
    where = harness.gpu_name() if device.type == "cuda" else "CPU"
    print(f"one pass of the loop on {where} ({case})", flush=True)

    def record(phase: str, p: Phase, tokens: int, extra: str = "") -> None:
        rate = tokens / p.seconds if p.seconds else 0.0
        for metric, value, unit in (
            ("seconds", f"{p.seconds:.3f}", "s"),
            ("tokens_per_s", f"{rate:.1f}", "tok/s"),
            ("peak_memory", f"{p.peak_mib:.0f}", "MiB"),
        ):
            rows.append({"case": case, "variant": phase, "metric": metric, "value": value, "unit": unit})
        table.append([phase, f"{p.seconds:.2f}", f"{tokens}", f"{rate:.1f}", f"{p.peak_mib:.0f}", extra])
        print(
            "  ".join(f"{h}={v}" for h, v in zip(header, table[-1])), flush=True
        )  # kept if a later one dies

    def phase_failed(phase: str) -> None:
        failed.append(phase)
        print(f"PHASE FAILED: {phase}", flush=True)
        traceback.print_exc()

    if device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is None:
        print("bitsandbytes is not importable: the train phase (NF4 on CUDA) will fail", flush=True)

    with tempfile.TemporaryDirectory() as wd:
        base = prepare_base_model(args.policy, wd)
        tok = load_tokenizer(base)
        prompts = [build_prompt(tok, q.context, q.question, PLAN_AND_SOLVE, 4096).input_ids for q in train_q]
        samples: list = []
        try:
            policy = load_policy(base, None, dtype, device=args.device)
            with Phase(device) as p:
                samples = [
                    sample_n(policy, tok, ids, args.n, 0.7, 1.0, args.new_tokens, seed=i)
                    for i, ids in enumerate(prompts)
                ]
            record(
                "sample",
                p,
                sum(c.n_tokens for s in samples for c in s),
                f"{sum(len(ids) for ids in prompts)} prompt tokens",
            )
            eval_prompts = [
                build_prompt(tok, q.context, q.question, PLAN_AND_SOLVE, 4096).input_ids for q in eval_q
            ]
            with Phase(device) as p:
                greedy = []
                for i in range(0, len(eval_prompts), 4):
                    greedy += greedy_batch(policy, tok, eval_prompts[i : i + 4], args.new_tokens)
            score = 100 * sum(subem(g.text, q.answers) for g, q in zip(greedy, eval_q)) / len(eval_q)
            record("eval", p, sum(g.n_tokens for g in greedy), f"SubEM {score:.1f} on {len(eval_q)}")
            del policy
        except Exception:
            phase_failed("sample/eval")
        if device.type == "cuda":
            torch.cuda.empty_cache()

        scores: list[float] = []
        try:
            if not samples:
                raise RuntimeError("no samples to score (the sample phase failed)")
            embedder = load_embedder(args.embedder, device=args.device)
            texts = [c.text for s in samples for c in s]
            with Phase(device) as p:
                emb = embedder.encode(texts, batch_size=64, convert_to_tensor=True).float()
                scores = mbr.mbr_scores(emb, [len(s) for s in samples], backend="auto").tolist()
            backend = "triton" if emb.is_cuda else "torch reference"
            record("score", p, 0, f"{len(texts)} answers, {backend}")
            del embedder
        except Exception:
            phase_failed("score")

        try:
            pairs, k = [], 0
            for ids, s in zip(prompts, samples):
                qs = scores[k : k + len(s)] if scores else [0.0] * len(s)
                k += len(s)
                best, worst = max(range(len(s)), key=qs.__getitem__), min(range(len(s)), key=qs.__getitem__)
                worst = worst if worst != best else (best + 1) % len(s)
                c_ids, c_lab = encode_response(tok, ids, s[best].text, 2048)
                r_ids, r_lab = encode_response(tok, ids, s[worst].text, 2048)
                pairs.append(PairExample(c_ids, c_lab, r_ids, r_lab))
            if not pairs:  # the sample phase failed: train on the prompts with fixed answers instead
                for ids, q in zip(prompts, train_q):
                    c_ids, c_lab = encode_response(tok, ids, q.answers[0], 2048)
                    r_ids, r_lab = encode_response(tok, ids, "I do not know.", 2048)
                    pairs.append(PairExample(c_ids, c_lab, r_ids, r_lab))
            cfg = TrainConfig(
                quantize="nf4", lora_r=16, lora_alpha=32, loss="fused", gradient_checkpointing=True
            )
            model = add_lora(load_causal_lm(base, dtype, "nf4", device=args.device), cfg, None)
            params = [q for q in model.parameters() if q.requires_grad]
            opt = torch.optim.AdamW(params, lr=cfg.lr)
            model.train()
            n_tok, losses = 0, []
            with Phase(device) as p:
                for step in range(args.train_steps):
                    out, t = orpo_step_loss(
                        model, [pairs[step % len(pairs)]], cfg.beta, "fused", tok.pad_token_id
                    )
                    out.loss.backward()
                    opt.step()
                    opt.zero_grad(set_to_none=True)
                    n_tok, losses = n_tok + t, losses + [round(out.loss.item(), 4)]
            quantised = type(model.get_base_model().model.layers[0].mlp.down_proj.base_layer).__name__
            record("train", p, n_tok, f"{args.train_steps} step(s), loss {losses}, base layers {quantised}")
        except Exception:
            phase_failed("train")

    if not args.no_csv and rows:
        harness.append_rows("device_pass", rows, csv_path=args.csv)
    harness.print_table(f"one pass of the loop on {where} ({case})", header, table)
    print(json.dumps({"device": str(device), "phases": {r[0]: float(r[1]) for r in table}, "failed": failed}))
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()

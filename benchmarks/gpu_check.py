"""One-GPU check of the torch layer: loader to the device, packed attention kernels, a transformers model.

    PYTHONPATH=. python3 benchmarks/gpu_check.py                   # on the GPU machine, from the repository root
    PYTHONPATH=. python3 benchmarks/gpu_check.py --device cpu      # smoke run here: fp32, the CUDA-only parts skip

Prints one ``PASS`` / ``FAIL`` / ``SKIP`` line per check and exits 1 if any check failed (each check is guarded:
one failure does not stop the others). Needs torch, numpy, pyarrow, numba, xxhash, tqdm; transformers for the
model checks; not ``datasets`` (``data_samples/reference_like`` is read as plain Arrow). Checks:

1. ``loader``: pack ``data_samples/reference_like`` at capacity 8,192 (or use ``--data``), read it with
   ``PackedDataset`` + ``PackedCollator`` + ``DataLoader(num_workers=2, pin_memory=True)``, move every batch to
   the device; every pack is seen exactly once.
2. ``attn/...``: for a batch of two packs, :func:`packer.torch.varlen_attention`, SDPA with
   :func:`packer.torch.block_causal_mask`, compiled flex attention with :func:`packer.torch.flex_block_mask` and
   torch's own ``torch.nn.attention.varlen.varlen_attn`` (if this torch has it), each against one causal SDPA call
   per sequence computed in fp32, in fp32 and bf16.
3. ``hf/...``: a small randomly initialised Llama in bf16 with ``attn_implementation`` ``sdpa``,
   ``flex_attention`` and ``flash_attention_2`` (on flash-attn when installed, else transformers' own
   flash-attention code path on torch's ``varlen_attn``): ``model(**batch)`` on the packed batch, stacked and
   flattened, against every sequence alone; a control run with the config's default ``use_cache=True`` and the batch's ``use_cache=False`` removed must
   differ (it turns transformers' packed-sequence detection off); then a few training steps whose loss drops.
"""
from __future__ import annotations

import argparse
import importlib.util
import inspect
import math
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

SAMPLES = REPO / "data_samples" / "reference_like"
RESULTS: list[tuple[str, str, str]] = []


def report(name: str, status: str, detail: str = "") -> None:
    RESULTS.append((name, status, detail))
    print(f"{status:4s}  {name:38s} {detail}", flush=True)


def check(name: str):
    """Run the decorated function now as one guarded check: it returns a detail string (PASS), raises
    ``Skip`` (SKIP) or anything else (FAIL, with the traceback's last lines)."""

    def wrap(fn):
        t = time.perf_counter()
        try:
            detail = fn() or ""
            report(name, "PASS", f"{detail} [{time.perf_counter() - t:.1f}s]")
        except Skip as e:
            report(name, "SKIP", str(e))
        except Exception as e:  # noqa: BLE001 - the point is to keep going
            tb = traceback.format_exc().strip().splitlines()
            report(name, "FAIL", f"{type(e).__name__}: {e} [{time.perf_counter() - t:.1f}s]")
            print("      " + "\n      ".join(tb[-8:]), flush=True)
        return fn

    return wrap


class Skip(Exception):
    pass


def expect(cond: bool, message: str) -> None:
    if not cond:
        raise AssertionError(message)


# ------------------------------------------------------------------------------------------------------ data
def packed_folder(args, tmp: Path) -> Path:
    if args.data:
        return Path(args.data)
    from packer.convert import PackConfig, pack_dataset
    from packer.input import Columns

    out = tmp / "packed"
    pack_dataset(SAMPLES, out, config=PackConfig(capacity=args.capacity, columns=Columns(labels="labels")),
                 progress=False)
    return out


def two_packs(ds):
    """The two packs holding the most sequences (a padding segment included when they have one)."""
    n_seg = [int(ds[i]["cu_seqlens"].numel()) for i in range(len(ds))]
    order = sorted(range(len(ds)), key=lambda i: -n_seg[i])[:2]
    return [ds[i] for i in order]


# ------------------------------------------------------------------------------------------------ attention
def segments(cu: torch.Tensor) -> list[tuple[int, int]]:
    b = cu.tolist()
    return list(zip(b[:-1], b[1:]))


def per_sequence_sdpa(q, k, v, cu):
    """(T, H, D) -> (T, H, D) in fp32: one causal SDPA call per segment, the reference."""
    outs = []
    for a, b in segments(cu):
        qs, ks, vs = (x[a:b].float().transpose(0, 1)[None] for x in (q, k, v))
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, is_causal=True)[0].transpose(0, 1))
    return torch.cat(outs)


def torch_varlen():
    """torch's varlen attention as ``fn(q, k, v, cu, max_seqlen, scale) -> out`` (causal), or None."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    if "window_size" in params:  # torch >= 2.11: causal is window (-1, 0)
        causal = {"window_size": (-1, 0)}
    elif "is_causal" in params:  # torch 2.10
        causal = {"is_causal": True}
    else:
        return None
    gqa = "enable_gqa" in params
    has_scale = "scale" in params

    def fn(q, k, v, cu, max_seqlen, scale=None):
        if k.shape[1] != q.shape[1]:
            if gqa:
                extra = {"enable_gqa": True}
            else:
                rep = q.shape[1] // k.shape[1]
                k, v, extra = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1), {}
        else:
            extra = {}
        kw = dict(causal, **extra)
        if scale is not None and has_scale:
            kw["scale"] = scale
        elif scale is not None and abs(scale - q.shape[-1] ** -0.5) > 1e-6:
            raise RuntimeError(f"this varlen_attn takes no scale and {scale} is not the default 1/sqrt(dim)")
        return varlen_attn(q, k, v, cu, cu, int(max_seqlen), int(max_seqlen), **kw)

    return fn


def attention_checks(args, batch, device):
    from packer.torch import block_causal_mask, flex_block_mask, varlen_attention

    cu_cpu = batch["cu_seqlens"]
    b, length = batch["input_ids"].shape
    total = b * length
    heads, dim = 8, 64
    gen = torch.Generator(device="cpu").manual_seed(0)
    base = [torch.randn(total, heads, dim, generator=gen) for _ in range(3)]
    cu = cu_cpu.to(device)
    # on CPU bf16 only when asked (--dtype bf16): slow there, and what matters is the GPU
    dtypes = [torch.float32, torch.bfloat16] if device.type == "cuda" or args.dtype == "bf16" else [torch.float32]
    tol = {torch.float32: 2e-4, torch.bfloat16: 2e-2}
    varlen = torch_varlen() if device.type == "cuda" else None
    flex_compiled = None

    for dtype in dtypes:
        tag = str(dtype).replace("torch.", "")
        q, k, v = (x.to(device, dtype) for x in base)
        ref = per_sequence_sdpa(q, k, v, cu)

        def compare(out, what):
            # |diff| <= tol * (1 + |ref|): bf16 rounds the output itself to 2**-9 relative
            diff = (out.float() - ref).abs()
            err, worst = float(diff.max()), float((diff / (1 + ref.abs())).max())
            expect(worst <= tol[dtype], f"{what}: max |diff| {err:.2e}, max |diff| / (1 + |ref|) {worst:.2e} > "
                                        f"{tol[dtype]:.0e}")
            return f"max |diff| {err:.1e}, /(1+|ref|) {worst:.1e} (tol {tol[dtype]:.0e}), {len(segments(cu_cpu))} " \
                   f"segments, T={total:,}"

        @check(f"attn/varlen_attention/{tag}")
        def _():
            return compare(varlen_attention(q, k, v, cu), "varlen_attention")

        @check(f"attn/sdpa+block_causal_mask/{tag}")
        def _():
            mask = block_causal_mask(cu_cpu, shape=(b, length), device=device)
            qb, kb, vb = (x.view(b, length, heads, dim).transpose(1, 2) for x in (q, k, v))
            out = F.scaled_dot_product_attention(qb, kb, vb, attn_mask=mask)
            return compare(out.transpose(1, 2).reshape(total, heads, dim), "SDPA with block_causal_mask")

        @check(f"attn/flex+flex_block_mask/{tag}")
        def _():
            nonlocal flex_compiled
            from torch.nn.attention.flex_attention import flex_attention

            if flex_compiled is None:
                flex_compiled = torch.compile(flex_attention)  # uncompiled flex materialises the scores
            block_mask = flex_block_mask(cu_cpu, shape=(b, length), device=device)
            qb, kb, vb = (x.view(b, length, heads, dim).transpose(1, 2) for x in (q, k, v))
            out = flex_compiled(qb, kb, vb, block_mask=block_mask)
            sparsity = f", block sparsity {block_mask.sparsity():.0f}%"
            return compare(out.transpose(1, 2).reshape(total, heads, dim), "flex attention") + sparsity

        @check(f"attn/torch.varlen_attn/{tag}")
        def _():
            if device.type != "cuda":
                raise Skip("torch varlen_attn runs on CUDA only")
            if varlen is None:
                raise Skip(f"torch {torch.__version__} has no torch.nn.attention.varlen.varlen_attn")
            if dtype == torch.float32:
                raise Skip("varlen_attn (a flash kernel) takes fp16/bf16 only")
            return compare(varlen(q, k, v, cu, batch["max_seqlen"]), "torch varlen_attn")


# ------------------------------------------------------------------------------------------------ transformers
def fa_kernels(device):
    """``(flash_attn_func, flash_attn_varlen_func, label)`` for transformers' flash_attention_2 code path when the
    flash-attn package is missing: torch's varlen_attn on CUDA, packer's varlen_attention on CPU."""
    from packer.torch import varlen_attention

    tv = torch_varlen() if device.type == "cuda" else None

    def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False):
        rep = q.shape[2] // k.shape[2]
        k, v = k.repeat_interleave(rep, 2), v.repeat_interleave(rep, 2)
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                             is_causal=causal, scale=softmax_scale)
        return out.transpose(1, 2)

    def flash_attn_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                               softmax_scale=None, causal=False):
        assert causal, "the causal LM asks for causal attention"
        if tv is not None:
            return tv(q, k, v, cu_seqlens_q.to(torch.int32), int(max_seqlen_q), softmax_scale)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        return varlen_attention(q, k, v, cu_seqlens_q, softmax_scale=softmax_scale, causal=True)

    if device.type == "cuda" and tv is None:
        return None
    label = "torch varlen_attn" if tv is not None else "packer varlen_attention (CPU)"
    return flash_attn_func, flash_attn_varlen_func, label


def tiny_model(impl, vocab, dtype, device, *, use_cache=True):
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=512, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation=impl, dtype=dtype).to(device)
    model.config.use_cache = use_cache
    return model


def hf_checks(args, items, device):
    try:
        import transformers
    except ImportError:
        report("hf/*", "SKIP", "transformers is not installed")
        return
    from packer.torch import PackedCollator

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype] if args.dtype else (
        torch.bfloat16 if device.type == "cuda" else torch.float32)
    # bf16: logits of the packed batch and of the sequences alone differ by rounding only (a few 1e-3 relative);
    # a leak across sequences is of the order of the logits themselves (the use_cache control shows how much)
    # (measured on CPU at capacity 2,048: bf16 6e-3 to 8e-3, fp32 6e-7; the leak control 1.2 in both)
    rel_tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
    vocab = 1 + max(int(it["input_ids"].max()) for it in items)
    tag = str(dtype).replace("torch.", "")

    def to_dev(batch):
        return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}

    stacked = to_dev(PackedCollator(keys="all")(items))
    flat = to_dev(PackedCollator(keys="hf", flatten=True)(items))
    cu_cpu = PackedCollator()(items)["cu_seqlens"]
    n_labels = stacked["num_label_tokens"]

    reference = {}

    @check(f"hf/reference(sdpa, each sequence alone)/{tag}")
    def _():
        model = tiny_model("sdpa", vocab, dtype, device)
        ids = stacked["input_ids"].reshape(-1)
        with torch.no_grad():
            reference["logits"] = torch.cat(
                [model(input_ids=ids[a:b][None], use_cache=False).logits[0].float() for a, b in segments(cu_cpu)]
            )
        reference["scale"] = float(reference["logits"].abs().max())
        return f"{len(segments(cu_cpu))} segments, max |logit| {reference['scale']:.3f}"

    def rel_err(model, batch):
        with torch.no_grad():
            logits = model(**batch).logits
        return float((logits.reshape(-1, logits.shape[-1]).float() - reference["logits"]).abs().max()) / reference["scale"]

    impls = ["sdpa", "flex_attention"]
    fa_native = importlib.util.find_spec("flash_attn") is not None and device.type == "cuda"
    impls.append("flash_attention_2")

    def build(impl):
        if impl != "flash_attention_2" or fa_native:
            return tiny_model(impl, vocab, dtype, device), ""
        import transformers.modeling_flash_attention_utils as fa_utils

        kernels = fa_kernels(device)
        if kernels is None:
            raise Skip("no flash-attn package and no torch varlen_attn: nothing to run flash_attention_2 on")
        if not hasattr(fa_utils, "lazy_import_flash_attention") or not hasattr(fa_utils, "_lazy_define_process_function"):
            raise Skip(f"transformers {transformers.__version__}: no flash-attention loader hook to stand in for")
        flash_fn, varlen_fn, label = kernels
        process = fa_utils._lazy_define_process_function(varlen_fn)
        fa_utils.lazy_import_flash_attention = lambda *a, **k: ((flash_fn, varlen_fn, None, None, None), process)
        model = tiny_model("sdpa", vocab, dtype, device)
        model.config._attn_implementation = "flash_attention_2"  # no flash-attn: skip the availability check
        return model, f"[transformers' FA2 path on {label}] "

    for impl in impls:
        @check(f"hf/{impl}/logits vs alone/{tag}")
        def _(impl=impl):
            expect("logits" in reference, "no reference (its check failed)")
            model, how = build(impl)
            details = []
            for name, batch in (("(B, L) keys=all", stacked), ("(1, T) keys=hf", flat)):
                err = rel_err(model, batch)
                expect(err <= rel_tol, f"{how}{name}: max |diff| / max |logit| = {err:.2e} > {rel_tol:.0e}")
                details.append(f"{name} {err:.1e}")
            return f"{how}relative max |diff| " + ", ".join(details) + f" (tol {rel_tol:.0e})"

        @check(f"hf/{impl}/train steps/{tag}")
        def _(impl=impl):
            if impl == "flex_attention" and device.type != "cuda":
                raise Skip("flex attention has no CPU backward")
            model, how = build(impl)
            model.train()
            opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
            losses = []
            for _ in range(args.steps):
                loss = model(**stacked, num_items_in_batch=n_labels).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                losses.append(float(loss.detach()))
            expect(all(math.isfinite(x) for x in losses), f"non-finite loss: {losses}")
            expect(losses[-1] < losses[0] - 0.1, f"loss did not drop: {losses}")
            return f"{how}loss {losses[0]:.3f} -> {losses[-1]:.3f} in {args.steps} steps on one packed batch"

    @check(f"hf/sdpa/control: without the batch's use_cache=False it leaks/{tag}")
    def _():
        expect("logits" in reference, "no reference (its check failed)")
        bare = {k: v for k, v in stacked.items() if k != "use_cache"}
        err = rel_err(tiny_model("sdpa", vocab, dtype, device, use_cache=True), bare)
        expect(err > 10 * rel_tol, f"expected a cache to turn packing detection off, but max diff is only {err:.2e}")
        return f"relative max |diff| {err:.2f} with the config's default use_cache=True and no use_cache key"


# ------------------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a smoke run: fp32, CUDA parts skip)")
    p.add_argument("--data", help="an already packed folder (default: pack data_samples/reference_like)")
    p.add_argument("--capacity", type=int, default=None, help="pack capacity (default 8192 on cuda, 2048 on cpu)")
    p.add_argument("--steps", type=int, default=6, help="training steps per attention implementation")
    p.add_argument("--dtype", choices=["bf16", "fp32"], help="of the transformers model (default bf16 on cuda)")
    p.add_argument("--skip", nargs="*", default=[], choices=["loader", "attn", "hf"], help="checks to leave out")
    args = p.parse_args(argv)
    t_start = time.perf_counter()

    device = torch.device(args.device)
    if args.capacity is None:
        args.capacity = 8192 if device.type == "cuda" else 2048
    print(f"python {platform.python_version()}, torch {torch.__version__}", end="")
    try:
        import transformers

        print(f", transformers {transformers.__version__}", end="")
    except ImportError:
        print(", transformers missing", end="")
    print(f", flash_attn {'installed' if importlib.util.find_spec('flash_attn') else 'missing'}", end="")
    print(f", datasets {'installed' if importlib.util.find_spec('datasets') else 'missing'}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            report("device", "FAIL", "torch.cuda.is_available() is False; run with --device cpu for a smoke run")
            return 1
        props = torch.cuda.get_device_properties(0)
        report("device", "PASS", f"{torch.cuda.get_device_name(0)}, {props.total_memory / 2**30:.0f} GiB, "
                                 f"capability {props.major}.{props.minor}, CUDA {torch.version.cuda}")
    else:
        report("device", "PASS", f"cpu ({torch.get_num_threads()} threads)")

    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        from packer.torch import PackedCollator, PackedDataset

        state = {}

        @check("pack")
        def _():
            t = time.perf_counter()
            state["folder"] = packed_folder(args, Path(tmp))
            ds = PackedDataset(state["folder"])
            state["ds"] = ds
            what = f"given folder {args.data}" if args.data else f"{SAMPLES.name} packed in {time.perf_counter() - t:.1f}s"
            return f"{what}: {len(ds)} packs of {ds.capacity:,} tokens"

        if "loader" not in args.skip:
            @check("loader: DataLoader(2 workers) -> device")
            def _():
                expect("ds" in state, "no packed folder (its check failed)")
                from torch.utils.data import DataLoader

                ds = state["ds"]
                loader = DataLoader(ds, batch_size=2, shuffle=True, num_workers=2, collate_fn=PackedCollator(),
                                    pin_memory=device.type == "cuda", persistent_workers=False)
                seen, tokens, batches = [], 0, []
                t = time.perf_counter()
                for batch in loader:
                    b = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                         for k, v in batch.items()}
                    rows, length = b["input_ids"].shape
                    expect(length == ds.capacity, f"row length {length} != capacity {ds.capacity}")
                    expect(int(b["cu_seqlens"][-1]) == rows * length, "cu_seqlens does not end at B * L")
                    expect(int((b["labels"][..., 1:] != -100).sum()) == b["num_label_tokens"],
                           "num_label_tokens disagrees with the labels on the device")
                    tokens += b["num_tokens"]
                    seen.extend(b["index"].tolist())
                    batches.append(b)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                dt = time.perf_counter() - t
                # the device copies hold what the dataset gives for those packs (no shared-memory slot reused early)
                for b in batches:
                    for row, i in enumerate(b["index"].tolist()):
                        item = ds[i]
                        for key in ("input_ids", "labels", "position_ids"):
                            expect(torch.equal(b[key][row].cpu(), item[key]), f"pack {i}: {key} differs on the device")
                expect(sorted(seen) == list(range(len(ds))), f"{len(seen)} packs seen, {len(set(seen))} distinct, "
                                                              f"of {len(ds)}")
                # one pass over a small folder: the time is mostly starting the two worker processes
                return (f"{len(ds)} packs each seen once, equal to the dataset's, in {dt:.2f} s including worker "
                        f"start-up ({tokens / 1e6:.1f} M real tokens); throughput: benchmarks/bench_loader.py")

        items = None
        if "ds" in state:
            items = two_packs(state["ds"])
        if items is not None and "attn" not in args.skip:
            attention_checks(args, PackedCollator()(items), device)
        if items is not None and "hf" not in args.skip:
            hf_checks(args, items, device)

    failed = [r for r in RESULTS if r[1] == "FAIL"]
    counts = {s: sum(r[1] == s for r in RESULTS) for s in ("PASS", "FAIL", "SKIP")}
    print(f"\n{counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
          f"in {time.perf_counter() - t_start:.0f}s")
    for name, _, detail in failed:
        print(f"FAILED: {name}: {detail}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

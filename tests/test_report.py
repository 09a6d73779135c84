"""packer.report / packer report: the padding-vs-packing comparison, computed from the data and the plan."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests._report_helpers import (
    REFERENCE_HEADINGS,
    REFERENCE_SECTIONS,
    expected_steps,
    png_ok,
    sampler_loop,
    slow_padding,
    slow_table_rows,
)
from packer.cli import main
from packer.convert import PackConfig, pack_dataset
from packer import format as fmt
from packer.errors import PackerError
from packer.plan import make_segments, plan_packs
from packer.input import open_input
from packer.report import (
    ModelShape,
    TrainingSetup,
    parse_count,
    report_from_input,
    report_from_lengths,
    report_from_packed,
    render_config,
    render_json,
    render_markdown,
    render_packer_settings,
    simulate_padding,
)
from packer.schedule import epoch_schedule, run_counts
from data_samples.synthetic import REFERENCE_ROWS, reference_like_lengths

SAMPLE = Path(__file__).resolve().parent.parent / "data_samples" / "reference_like"
REFERENCE_SETUP = TrainingSetup(num_gpus=4, effective_batch_size=128, epochs=4, padding_batch_size=2,
                                packing_batch_size=1)
# the reference's padding run pads every row whole (its global_max_length is "(dynamic)", no cut)
REFERENCE_PADDING = TrainingSetup(num_gpus=4, effective_batch_size=128, epochs=4, padding_batch_size=2,
                                  packing_batch_size=1, padding_full_rows=True)


# ------------------------------------------------------------------ the full reference-like set, from lengths


@pytest.fixture(scope="module")
def full_lengths():
    # the same lengths write_reference_like(path, rows=99_388, seed=0) writes; the report reads only lengths
    return reference_like_lengths(REFERENCE_ROWS, seed=0)


@pytest.fixture(scope="module")
def full_report(full_lengths):
    return report_from_lengths(full_lengths, capacity=20_000, setup=REFERENCE_PADDING)


def test_full_padding_figures_equal_the_reference(full_report):
    pad = full_report.padding
    # exact in the reference (shared/seed/padding_vs_packing.md)
    assert pad["total_samples"] == pad["samples_analyzed"] == 99_388
    assert pad["per_device_train_batch_size"] == 2
    assert pad["effective_batch_size"] == 128
    assert pad["num_gpus"] == 4
    assert pad["gradient_accumulation_steps"] == 16
    assert full_report.packing["gradient_accumulation_steps"] == 32
    assert pad["steps_per_epoch"] == 776.46875  # shown as 776.5
    assert pad["total_optimizer_steps"] == 3_106
    assert pad["samples_per_step"] == 128
    assert pad["total_samples_seen"] == 397_552
    assert pad["num_train_epochs"] == 4
    assert pad["data_loss"] == 0.0
    md = render_markdown(full_report)
    assert "| steps_per_epoch | 776.5 |" in md
    assert "| total_optimizer_steps | 3,106 |" in md
    assert "| total_samples_seen | 397,552 |" in md
    assert "| gradient_accumulation_steps | 16 | 32 |" in md


def test_full_padding_overhead_is_measured(full_report, full_lengths):
    pad = full_report.padding
    tokens, slots, _, peak = slow_padding(full_lengths, batch_size=2, seed=0, shuffles=4)
    assert pad["tokens_per_epoch"] == tokens
    assert pad["token_slots_per_epoch"] == slots
    assert pad["peak_micro_batch_slots"] == peak
    assert pad["padding_overhead"] == pytest.approx(1 - tokens / slots, rel=1e-12)
    assert pad["packing_efficiency"] == pytest.approx(tokens / slots, rel=1e-12)
    assert pad["global_max_length"] == int(full_lengths.max())
    assert pad["padding_overhead_global_max"] == pytest.approx(1 - full_lengths.mean() / full_lengths.max())
    # dynamic padding wastes far less than padding to the global max, and more than packing
    assert full_report.packing["padding_overhead"] < pad["padding_overhead"] < pad["padding_overhead_global_max"]


def test_full_packing_figures_come_from_the_plan(full_report, full_lengths):
    pack = full_report.packing
    segments = make_segments(full_lengths, capacity=20_000, overflow="drop")
    plan = plan_packs(segments.length, capacity=20_000)
    assert pack["packs"] == plan.n_packs
    assert pack["packing_efficiency"] == pytest.approx(plan.efficiency)
    assert pack["packing_efficiency"] >= 0.999
    assert 14.5 <= pack["samples_per_pack"] <= 15.5
    assert pack["samples_per_pack"] == pytest.approx(segments.row.shape[0] / plan.n_packs)
    # PackSampler's schedule: plan.n_packs // 4 packs per GPU, 32 per optimizer step, no step across epochs
    assert pack["steps_per_epoch"] == -(-(plan.n_packs // 4) // 32)
    assert pack["total_optimizer_steps"] == 4 * pack["steps_per_epoch"]
    assert pack["samples_per_step"] == pytest.approx(128 * pack["samples_per_pack"])
    assert pack["packs_left_out_per_epoch"] == plan.n_packs % 4
    if plan.n_packs % 4 == 0:
        assert pack["total_samples_seen"] == 4 * segments.row.shape[0]
    assert pack["data_loss"] == pytest.approx(segments.dropped_rows / 99_388)
    assert pack["global_max_length"] == 20_000
    # the speed follows the token cost model: real tokens per processed slot, packing over padding
    assert pack["relative_training_speed"] == pytest.approx(
        pack["packing_efficiency"] / full_report.padding["packing_efficiency"])
    assert pack["relative_training_speed"] > 1.3
    # the step ratio compares two epoch loops: padding 99,388 / 4 = 24,847 rows per GPU, ceil(24,847 / 32) = 777
    assert full_report.padding["loop_steps_per_epoch"] == 777
    assert full_report.padding["loop_total_optimizer_steps"] == 3_108
    assert full_report.step_ratio == pack["total_optimizer_steps"] / 3_108


# ------------------------------------------------------------------ steps, rounding, rescaling


@pytest.mark.parametrize("epochs", ["4", "1", "0.1", "2.5", "3.3"])
@pytest.mark.parametrize("rows", [1, 127, 128, 129, 1000])
def test_steps_follow_the_documented_rounding(rows, epochs):
    lengths = np.full(rows, 10, dtype=np.int64)
    r = report_from_lengths(lengths, capacity=100, setup=TrainingSetup(num_gpus=1, effective_batch_size=128,
                                                                      epochs=float(epochs), padding_batch_size=1))
    assert r.padding["steps_per_epoch"] == rows / 128
    assert r.padding["total_optimizer_steps"] == expected_steps(rows, epochs, 128)
    packs = r.packing["packs"]
    assert packs == math.ceil(rows / 10)
    # one GPU: every pack every epoch, ceil(packs / 128) steps an epoch, Trainer's max_steps over the run
    assert r.packing["steps_per_epoch"] == math.ceil(packs / 128)
    assert r.packing["total_optimizer_steps"] == expected_steps(r.packing["steps_per_epoch"], epochs, 1)
    whole, _, frac = epochs.partition(".")
    seen = rows * int(whole + frac) / 10 ** len(frac)
    assert r.padding["total_samples_seen"] == round(seen)


def test_step_settings_are_rescaled_half_up():
    # 2,048 rows of 1,000 tokens on 4 GPUs, 128 per step: 4 padding steps an epoch, 16 in all.
    # capacity 4,000: 512 packs, 128 per GPU, 4 steps an epoch: ratio 1 (nothing rescaled)
    # capacity 16,000: 128 packs, 32 per GPU, 1 step an epoch: ratio 1/16; capacity 8,000: 2 steps, ratio 1/8
    lengths = np.full(2048, 1000, dtype=np.int64)
    setup = TrainingSetup(num_gpus=4, effective_batch_size=128, epochs=4,
                          step_settings={"eval_steps": 10, "warmup_steps": 1, "save_delay_steps": 500})
    r = report_from_lengths(lengths, capacity=4_000, setup=setup)
    assert r.padding["loop_total_optimizer_steps"] == r.padding["total_optimizer_steps"] == 64
    assert r.packing["total_optimizer_steps"] == 16 and r.step_ratio == 16 / 64
    r = report_from_lengths(lengths, capacity=16_000, setup=setup)
    assert r.packing["packs"] == 128 and r.packing["total_optimizer_steps"] == 4
    assert r.step_ratio == 4 / 64
    assert r.recommended_config["eval_steps"] == 1  # 10 / 16 = 0.625 -> 1
    assert r.other_step_settings == {"save_delay_steps": 31}  # 500 / 16 = 31.25; not a TrainingArguments field
    r = report_from_lengths(lengths, capacity=8_000, setup=setup)
    assert r.step_ratio == 8 / 64
    cfg = json.loads(render_config(r, fmt_name="json"))
    assert cfg == {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 32, "num_train_epochs": 4,
                   "eval_steps": 1, "warmup_steps": 1}  # 1.25 -> 1, 0.125 -> 1 (at least one step)
    assert r.other_step_settings == {"save_delay_steps": 63}  # 62.5 rounds up
    yaml = render_config(r)
    assert "\neval_steps: 1  # padding run: 10 x 0.1250" in yaml
    assert "step_setting_floored" in {w.code for w in r.warnings}  # warmup 1 x 0.125 is not proportional


# ------------------------------------------------------------------ bad options


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_gpus": 0}, "--num-gpus"),
        ({"num_gpus": -2}, "--num-gpus"),
        ({"effective_batch_size": 0}, "--effective-batch-size"),
        ({"effective_batch_size": 100}, "not divisible by --num-gpus 4 x --padding-batch-size 2 = 8"),
        ({"effective_batch_size": 16, "padding_batch_size": 1, "packing_batch_size": 3}, "--packing-batch-size 3"),
        ({"epochs": -1}, "--epochs"),
        ({"epochs": 0}, "--epochs"),
        ({"epochs": float("nan")}, "--epochs"),
        ({"padding_batch_size": 0}, "--padding-batch-size"),
        ({"packing_batch_size": 1.5}, "--packing-batch-size"),
        ({"step_settings": {"eval_steps": 0}}, "eval_steps"),
        ({"step_settings": {"eval steps": 5}}, "identifier"),
        ({"step_settings": [("eval_steps", 5), ("eval_steps", 6)]}, "twice"),
        ({"sampler_seed": -1}, "--sampler-seed"),
        ({"loss_warning": 1.5}, "--loss-warning"),
        ({"padding_full_rows": "yes"}, "padding_full_rows"),
    ],
)
def test_bad_setup_is_refused(kwargs, words):
    with pytest.raises(PackerError) as e:
        TrainingSetup(**kwargs)
    assert words in str(e.value)


def test_divisibility_error_suggests_sizes():
    with pytest.raises(PackerError) as e:
        TrainingSetup(num_gpus=4, effective_batch_size=100, padding_batch_size=2)
    assert "96 or 104" in str(e.value)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--num-gpus", "0"], "--num-gpus must be a positive integer"),
        (["--effective-batch-size", "100"], "not divisible"),
        (["--epochs", "-1"], "--epochs must be a positive number"),
        (["--hidden-size", "4096"], "--hidden-size alone"),
        (["--max-length", "0"], "capacity must be positive"),
    ],
)
def test_cli_bad_options_exit_2(argv, words, capsys):
    assert main(["report", str(SAMPLE), *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("packer: error: ") and words in err


def test_cli_bad_step_setting_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["report", str(SAMPLE), "--step-setting", "save_delay_steps"])
    assert e.value.code == 2
    assert "NAME=STEPS" in capsys.readouterr().err


# ------------------------------------------------------------------ padding simulation and cost model


@settings(max_examples=60, deadline=None)
@given(
    lengths=st.lists(st.integers(0, 500), min_size=1, max_size=60),
    batch=st.integers(1, 7),
    seed=st.integers(0, 2**32 - 1),
    shuffles=st.integers(1, 3),
)
def test_simulate_padding_matches_slow_reference(lengths, batch, seed, shuffles):
    sim = simulate_padding(np.array(lengths), batch_size=batch, seed=seed, shuffles=shuffles)
    tokens, slots, attention, peak = slow_padding(lengths, batch_size=batch, seed=seed, shuffles=shuffles)
    assert sim.tokens == tokens
    assert sim.slots == slots
    assert sim.attention == pytest.approx(attention, rel=1e-12)
    assert sim.peak_slots == peak
    assert sim.slots >= sim.tokens


def test_batch_of_one_has_no_padding():
    sim = simulate_padding(np.array([5, 7, 1, 100]), batch_size=1, shuffles=2)
    assert sim.overhead == 0.0 and sim.slots == 113


def test_flops_cost_model_matches_hand_count():
    # four rows, capacity 10: packs hold [6, 4] and [5, 3] (bfd), micro-batches of 2 padded to their longest
    lengths = np.array([6, 5, 4, 3], dtype=np.int64)
    setup = TrainingSetup(num_gpus=1, effective_batch_size=2, epochs=1, padding_batch_size=2, packing_batch_size=1)
    model = ModelShape(hidden_size=8, num_layers=2, num_params=1000)
    r = report_from_lengths(lengths, capacity=10, strategy="bfd", setup=setup, model=model)
    assert r.cost_model["name"] == "flops" and r.cost_model["model"]["estimated"] == []
    _, slots, attention, _ = slow_padding(lengths, batch_size=2, seed=0, shuffles=1)
    pad_cost = 6 * 1000 * slots + 6 * 2 * 8 * attention
    pack_cost = 6 * 1000 * 2 * 10 + 6 * 2 * 8 * (6**2 + 4**2 + 0**2 + 5**2 + 3**2 + 2**2)
    assert r.padding["cost_per_epoch"] == pytest.approx(pad_cost)
    assert r.packing["cost_per_epoch"] == pytest.approx(pack_cost)
    assert r.packing["relative_training_speed"] == pytest.approx((18 / pack_cost) / (18 / pad_cost))
    assert "flops" in render_markdown(r) and "Attention is" in render_markdown(r)


def test_model_shape_estimates():
    assert ModelShape(hidden_size=4096, num_layers=32).resolve()["num_params"] == 12 * 32 * 4096**2
    est = ModelShape(num_params=parse_count("7B")).resolve()
    assert est["num_layers"] == 33 and est["hidden_size"] == 128 * 33
    assert ModelShape(num_params=12 * 10 * 64**2, hidden_size=64).resolve()["num_layers"] == 10
    assert ModelShape(num_params=12 * 10 * 64**2, num_layers=10).resolve()["hidden_size"] == 64
    with pytest.raises(PackerError, match="--num-layers alone"):
        ModelShape(num_layers=32)
    with pytest.raises(PackerError):
        ModelShape()


def test_parse_count():
    assert parse_count("7B") == 7_000_000_000
    assert parse_count("1.5k") == 1_500
    assert parse_count("7e9") == 7_000_000_000
    assert parse_count(42) == 42
    for bad in ("seven", "0", "-3B", "7X"):
        with pytest.raises(PackerError):
            parse_count(bad)


# ------------------------------------------------------------------ CLI end to end: tokenized and packed folders


def test_cli_tokenized_markdown_has_the_reference_rows(capsys):
    assert main(["report", str(SAMPLE), "--eval-steps", "500", "--step-setting", "save_delay_steps=2000"]) == 0
    md = capsys.readouterr().out
    assert slow_table_rows(md) == REFERENCE_SECTIONS
    headings = [line for line in md.splitlines() if line.startswith("#")]
    for h in REFERENCE_HEADINGS:
        assert h in headings
    assert headings.index("## Key Takeaways") < headings.index("## Recommendation")
    assert "```yaml\n" in md and "\nsave_delay_steps: " in md
    # every data row has both columns filled
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith(("| **", "| Parameter")):
            cells = [c.strip() for c in line.split("|")[1:-1]]
            assert len(cells) == 4 and all(cells), line


def test_cli_tokenized_json_equals_the_library(capsys):
    assert main(["report", str(SAMPLE), "--format", "json", "--max-length", "8192", "--overflow", "split",
                 "--num-gpus", "2", "--effective-batch-size", "16", "--epochs", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    setup = TrainingSetup(num_gpus=2, effective_batch_size=16, epochs=3)
    lib = report_from_input(SAMPLE, capacity=8192, overflow="split", setup=setup)
    assert out == json.loads(render_json(lib))
    lengths = open_input([SAMPLE]).lengths
    # the padding run trains the same pieces as the packs hold (finding 3)
    assert out["padding"]["global_max_length"] == 8192 < int(lengths.max())
    assert out["padding"]["samples_analyzed"] == out["packing"]["samples_analyzed"]
    assert out["padding"]["tokens_per_epoch"] == out["packing"]["tokens_per_epoch"] == int(lengths.sum())
    assert out["packing"]["sequences_split"] == int(np.count_nonzero(lengths > 8192))
    assert out["packing"]["data_loss"] == 0.0
    assert out["padding"]["gradient_accumulation_steps"] == 4 and out["packing"]["gradient_accumulation_steps"] == 8


@pytest.fixture(scope="module")
def packed_sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_packed")
    split = root / "split"
    drop = root / "drop"
    pack_dataset(SAMPLE, split, config=PackConfig(capacity=8192, overflow="split", shard_size=16), progress=False)
    pack_dataset(SAMPLE, drop, config=PackConfig(capacity=20_000, overflow="drop", shard_size=7), progress=False)
    return {"split": split, "drop": drop}


def test_packed_folder_with_every_row_kept_equals_the_tokenized_report(packed_sample):
    from_packed = report_from_packed(packed_sample["split"], setup=REFERENCE_SETUP)
    from_input = report_from_input(SAMPLE, capacity=8192, overflow="split", setup=REFERENCE_SETUP)
    assert from_packed.source["lengths_exact"] is True
    assert from_packed.padding == from_input.padding
    # the packed folder also knows the sequences left with no trained token (its labels were read when packing);
    # a report of tokenized input reads the lengths only
    loss_keys = ("sequences_untrainable", "loss_sequences", "loss_tokens")
    assert from_input.packing["sequences_untrainable"] == 0
    assert from_packed.packing["sequences_untrainable"] == fmt.read_manifest(packed_sample["split"])["stats"][
        "sequences_untrainable"]
    assert {k: v for k, v in from_packed.packing.items() if k not in loss_keys} == {
        k: v for k, v in from_input.packing.items() if k not in loss_keys}
    np.testing.assert_array_equal(from_packed.distributions.lengths, open_input([SAMPLE]).lengths)


def test_cli_packed_folder_with_drops(packed_sample, capsys):
    assert main(["report", str(packed_sample["drop"]), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    ref = report_from_input(SAMPLE, capacity=20_000, overflow="drop", setup=REFERENCE_SETUP)
    assert out["source"]["kind"] == "packed" and out["source"]["lengths_exact"] is False
    # the packs are read back exactly, and the padding run trains the same sequences: both columns exact
    assert out["packing"] == json.loads(render_json(ref))["packing"]
    assert out["padding"] == json.loads(render_json(ref))["padding"]
    # padding every row whole needs the dropped rows' lengths, which are spread from the manifest's totals
    full = TrainingSetup(padding_full_rows=True)
    ref_full = report_from_input(SAMPLE, capacity=20_000, overflow="drop", setup=full)
    assert main(["report", str(packed_sample["drop"]), "--format", "json", "--padding-full-rows"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("total_samples", "samples_analyzed", "global_max_length", "avg_sequence_length",
                "total_optimizer_steps", "tokens_per_epoch", "padding_overhead_global_max"):
        assert out["padding"][key] == pytest.approx(ref_full.padding[key]), key
    assert out["padding"]["padding_overhead"] == pytest.approx(ref_full.padding["padding_overhead"], abs=0.02)
    assert main(["report", str(packed_sample["drop"]), "--padding-full-rows"]) == 0
    assert "spread from the manifest's totals" in capsys.readouterr().out


def test_cli_packed_folder_refuses_other_plan_options(packed_sample, capsys):
    assert main(["report", str(packed_sample["drop"]), "--max-length", "4096"]) == 2
    assert "was packed with --max-length 20000, not 4096" in capsys.readouterr().err
    assert main(["report", str(packed_sample["drop"]), "--max-length", "20000", "--overflow", "drop"]) == 0
    assert main(["report", str(packed_sample["drop"]), str(SAMPLE)]) == 2


def test_truncate_lengths_are_recovered(tmp_path):
    out = tmp_path / "trunc"
    pack_dataset(SAMPLE, out, config=PackConfig(capacity=20_000, overflow="truncate"), progress=False)
    r = report_from_packed(out, setup=REFERENCE_SETUP)
    lengths = open_input([SAMPLE]).lengths
    got = r.distributions.lengths
    assert got.sum() == lengths.sum() and got.max() == lengths.max()
    np.testing.assert_array_equal(got[lengths <= 20_000], lengths[lengths <= 20_000])
    assert r.packing["sequences_truncated"] == int(np.count_nonzero(lengths > 20_000))


# ------------------------------------------------------------------ plot


def test_plot_without_matplotlib_says_how_to_install(tmp_path, monkeypatch, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    png = tmp_path / "report.png"
    assert main(["report", str(SAMPLE), "--plot", str(png)]) == 2
    err = capsys.readouterr().err
    assert "pip install 'packer-llm[plot]'" in err
    assert not png.exists()


def test_nothing_to_pack_is_an_error():
    with pytest.raises(PackerError, match="no row holds a token"):
        report_from_lengths(np.zeros(5, dtype=np.int64), capacity=10)
    with pytest.raises(PackerError, match="every row was dropped or empty"):
        report_from_lengths(np.array([50, 60]), capacity=10, overflow="drop")
    # 3 packs cannot feed 4 GPUs: PackSampler refuses it, so the report does too
    with pytest.raises(PackerError, match="3 packs cannot give each of 4 GPUs one"):
        report_from_lengths(np.array([10, 10, 10]), capacity=10)
    with pytest.raises(PackerError, match="cannot give each of 4 ranks one"):
        epoch_schedule(3, world=4)


def test_cli_config_only(capsys):
    assert main(["report", str(SAMPLE), "--config-only", "--config-format", "json", "--save-steps", "1000"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["per_device_train_batch_size"] == 1 and cfg["gradient_accumulation_steps"] == 32
    assert 1 <= cfg["save_steps"] < 1000
    assert "global_max_length" not in cfg and "effective_batch_size" not in cfg  # not TrainingArguments fields


# ------------------------------------------------------------------ finding 1: the schedule a PackSampler loop trains


@pytest.fixture(scope="module")
def sample_lengths():
    return open_input([SAMPLE]).lengths


def _pack_sequences(n):
    # a readable, uneven number of sequences per pack: 1..13
    return (np.arange(n, dtype=np.int64) * 7) % 13 + 1


# (packs, per-device batch, accumulation, epochs): remainders of packs over ranks and of packs over steps, an
# epoch shorter than one step, a fractional run
LOOP_CASES = [(33, 1, 32, 4), (57, 2, 3, 2), (100, 1, 1, 1.5), (41, 3, 2, 3)]


@pytest.mark.parametrize("world", range(1, 9))
@pytest.mark.parametrize("n, batch, accum, epochs", LOOP_CASES)
def test_schedule_equals_a_pack_sampler_loop(world, n, batch, accum, epochs):
    pytest.importorskip("torch")
    seqs = _pack_sequences(n)
    steps, packs, sequences = sampler_loop(seqs, world=world, batch_size=batch, grad_accum=accum, epochs=epochs)
    run = run_counts(seqs, world=world, batch_size=batch, grad_accum=accum, epochs=epochs)
    assert (run.steps, run.samples) == (steps, packs)
    if float(epochs).is_integer():
        assert run.exact and run.sequences == sequences
    else:
        # the fractional last epoch's packs depend on the balancing: estimated at its kept packs' mean
        assert not run.exact and abs(run.sequences - sequences) <= packs
    sched = epoch_schedule(n, world=world, batch_size=batch, grad_accum=accum)
    assert sched.left_out == n % world and sched.per_rank == n // world


@pytest.mark.parametrize("world", range(1, 9))
@pytest.mark.parametrize("batch, accum, epochs", [(1, 32, 4), (2, 1, 3), (1, 3, 2)])
def test_report_predicts_the_sampler_loop(world, batch, accum, epochs, sample_lengths):
    pytest.importorskip("torch")
    setup = TrainingSetup(num_gpus=world, effective_batch_size=world * batch * accum, epochs=epochs,
                          padding_batch_size=1, packing_batch_size=batch)
    r = report_from_lengths(sample_lengths, capacity=20_000, setup=setup)
    seqs = r.distributions.pack_sequences
    steps, packs, sequences = sampler_loop(seqs, world=world, batch_size=batch, grad_accum=accum, epochs=epochs)
    assert r.packing["total_optimizer_steps"] == steps
    assert r.packing["steps_per_epoch"] == steps // epochs
    assert r.packing["total_packs_seen"] == packs
    assert r.packing["total_samples_seen"] == sequences
    assert r.packing["packs_per_epoch"] == packs // epochs


def test_the_issue_cases_match_the_sampler(sample_lengths):
    pytest.importorskip("torch")
    # 33 packs, 4 GPUs, effective batch 128, 4 epochs: 1 step per epoch, 4 in all, 1,831 sequences (not 0.258,
    # 2 and 1,996)
    r = report_from_lengths(sample_lengths, capacity=20_000, setup=REFERENCE_SETUP)
    assert r.packing["packs"] == 33
    assert (r.packing["steps_per_epoch"], r.packing["total_optimizer_steps"]) == (1, 4)
    assert r.packing["total_samples_seen"] == 1_831
    assert sampler_loop(r.distributions.pack_sequences, world=4, batch_size=1, grad_accum=32, epochs=4) == (
        4, 128, 1_831)
    # 1,113 packs: 4 GPUs x 32 -> 36 steps (not 35); 8 GPUs x 2 x 4, 3 epochs -> 54 (not 53)
    seqs = _pack_sequences(1_113)
    assert run_counts(seqs, world=4, grad_accum=32, epochs=4).steps == 36
    assert run_counts(seqs, world=8, batch_size=2, grad_accum=4, epochs=3).steps == 54
    assert sampler_loop(seqs, world=8, batch_size=2, grad_accum=4, epochs=3)[0] == 54


def test_padding_loop_steps_equal_a_distributed_sampler_loop():
    torch_data = pytest.importorskip("torch.utils.data")
    for rows, world, batch, accum in [(99_388, 4, 2, 16), (1_001, 3, 2, 5), (10, 4, 1, 1)]:
        sched = epoch_schedule(rows, world=world, batch_size=batch, grad_accum=accum, remainder="repeat")
        sampler = torch_data.DistributedSampler(range(rows), num_replicas=world, rank=world - 1, drop_last=False)
        loader = torch_data.DataLoader(range(rows), batch_size=batch, sampler=sampler)
        assert sched.per_rank == len(sampler) and sched.micro_batches == len(loader)
        assert sched.steps_per_epoch == -(-len(loader) // accum)  # Trainer's num_update_steps_per_epoch


# ------------------------------------------------------------------ finding 2: warnings; packing advised only when it holds


def test_doubtful_defaults_warn_and_do_not_recommend_packing(capsys):
    # the sample with the defaults: 33 packs for 4 GPUs x 32 per step, 11.5% of the tokens dropped
    assert main(["report", str(SAMPLE)]) == 0
    md = capsys.readouterr().out
    assert "## Warnings" in md and "**Use packing mode**" not in md
    assert "not recommended as configured" in md
    assert main(["report", str(SAMPLE), "--format", "json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    codes = [w["code"] for w in out["warnings"]]
    assert codes == ["under_one_step_per_epoch", "few_steps_per_epoch", "data_loss", "packs_left_out"]
    assert out["use_packing"] is False
    assert "11.52% of the tokens" in out["warnings"][2]["message"] and "--overflow split" in out["warnings"][2][
        "message"]
    assert "warning (data_loss)" in captured.err  # JSON and --config-only users see them on stderr


@pytest.mark.parametrize(
    "setup_kwargs, plan_kwargs, codes",
    [
        # 2,048 rows of 1,000 tokens, 8 rows a pack: 256 packs, 64 per GPU, 2 steps an epoch
        ({}, {"capacity": 8_000}, ["few_steps_per_epoch"]),
        # 16 rows a pack: 128 packs, 32 per GPU: 1 step, and a full one
        ({}, {"capacity": 16_000}, ["few_steps_per_epoch"]),
        # 6 rows a pack: 342 packs, 2 left out per epoch on 4 GPUs (0.6%, under the 2% threshold)
        ({"effective_batch_size": 8}, {"capacity": 6_000}, []),
        ({"effective_batch_size": 8, "loss_warning": 0.001}, {"capacity": 6_000}, ["packs_left_out"]),
    ],
)
def test_each_warning_has_its_trigger(setup_kwargs, plan_kwargs, codes):
    setup = TrainingSetup(**{"num_gpus": 4, "effective_batch_size": 128, "epochs": 4, **setup_kwargs})
    r = report_from_lengths(np.full(2048, 1000, dtype=np.int64), setup=setup, **plan_kwargs)
    assert [w.code for w in r.warnings] == codes
    assert r.use_packing is False  # equal lengths: padding wastes nothing, packing is no faster


def test_loss_threshold_and_full_rows_warnings(sample_lengths):
    # one GPU, 2 packs per step: 17 steps an epoch; 11.5% of the tokens lost is under a 20% threshold
    one = dict(num_gpus=1, effective_batch_size=2, loss_warning=0.2)
    r = report_from_lengths(sample_lengths, capacity=20_000, setup=TrainingSetup(**one))
    assert [w.code for w in r.warnings] == []
    assert r.use_packing is True
    assert "**Use packing mode**" in render_markdown(r)
    r = report_from_lengths(sample_lengths, capacity=20_000, setup=TrainingSetup(**one, padding_full_rows=True))
    assert [w.code for w in r.warnings] == ["different_data"]
    assert r.use_packing is False


def test_the_full_set_recommends_packing(full_lengths):
    # with the default --overflow drop, the 67 rows over 20,000 tokens hold 1.36% of the tokens: more than the 1%
    # that packer pack warns about, so the report warns too (one threshold for both)
    dropped = report_from_lengths(full_lengths, capacity=20_000, setup=REFERENCE_SETUP)
    assert [w.code for w in dropped.warnings] == ["data_loss"] and not dropped.use_packing
    r = report_from_lengths(full_lengths, capacity=20_000, overflow="split", setup=REFERENCE_SETUP)
    assert r.warnings == () and r.use_packing
    md = render_markdown(r)
    assert "**Use packing mode**" in md and "## Warnings" not in md
    assert r.packing["steps_per_epoch"] >= 10


# ------------------------------------------------------------------ finding 3: the same data on both sides


@pytest.mark.parametrize("overflow", ["drop", "truncate", "split"])
def test_padding_trains_the_sequences_the_packs_hold(overflow, sample_lengths):
    r = report_from_lengths(sample_lengths, capacity=4096, overflow=overflow, setup=REFERENCE_SETUP)
    segments = make_segments(sample_lengths, capacity=4096, overflow=overflow)
    d = r.distributions
    np.testing.assert_array_equal(np.sort(d.trained_lengths), np.sort(segments.length.astype(np.int64)))
    assert int(d.pack_tokens.sum()) == int(d.trained_lengths.sum()) == r.padding["tokens_per_epoch"]
    assert r.padding["global_max_length"] <= 4096
    assert r.padding["samples_analyzed"] == r.packing["samples_analyzed"]
    assert "same max length and overflow policy" in r.notes["global_max_length"]
    assert "same max length (4,096) and overflow policy" in render_markdown(r)


def test_split_speedup_is_not_inflated_by_whole_rows(sample_lengths):
    setup = dict(num_gpus=4, effective_batch_size=128, epochs=4)
    same = report_from_lengths(sample_lengths, capacity=4096, overflow="split", setup=TrainingSetup(**setup))
    full = report_from_lengths(sample_lengths, capacity=4096, overflow="split",
                               setup=TrainingSetup(**setup, padding_full_rows=True))
    assert full.padding["global_max_length"] == int(sample_lengths.max())  # padded whole: 38,787 tokens
    assert same.packing["relative_training_speed"] < full.packing["relative_training_speed"]
    assert "different_data" in {w.code for w in full.warnings}
    assert "different_data" not in {w.code for w in same.warnings}


# ------------------------------------------------------------------ finding 4: blocks users can paste


def _training_arguments(monkeypatch):
    transformers = pytest.importorskip("transformers")
    import transformers.training_args as ta

    # the fields and their checks run; the device set-up (which needs accelerate, not in the dev install) does not
    monkeypatch.setattr(ta, "is_torch_available", lambda: False)
    return transformers.TrainingArguments


def test_config_block_builds_training_arguments(tmp_path, monkeypatch):
    yaml = pytest.importorskip("yaml")
    TrainingArguments = _training_arguments(monkeypatch)
    setup = TrainingSetup(num_gpus=4, effective_batch_size=128, epochs=4, step_settings={
        "eval_steps": 500, "save_steps": 1000, "warmup_steps": 100, "logging_steps": 10, "save_delay_steps": 2000})
    r = report_from_input(SAMPLE, capacity=8192, overflow="split", setup=setup)
    for text, load in ((render_config(r), yaml.safe_load), (render_config(r, fmt_name="json"), json.loads)):
        cfg = load(text)
        args = TrainingArguments(output_dir=str(tmp_path), **cfg)
        assert args.gradient_accumulation_steps == 32 and args.per_device_train_batch_size == 1
        assert args.num_train_epochs == 4 and args.eval_steps == cfg["eval_steps"] >= 1
    assert "save_delay_steps" not in cfg and r.other_step_settings["save_delay_steps"] >= 1
    md = render_markdown(r)
    assert "not `TrainingArguments` fields" in md and "\nsave_delay_steps: " in md


def test_packer_settings_block_packs_the_reported_plan(tmp_path, capsys):
    import shlex

    r = report_from_input(SAMPLE, capacity=8192, overflow="split", strategy="mixed", setup=REFERENCE_SETUP)
    command = render_packer_settings(r).splitlines()[0]
    argv = shlex.split(command.replace("INPUT", str(SAMPLE)).replace("PACKED", str(tmp_path / "p")))
    assert argv[0] == "packer"
    assert main(argv[1:]) == 0
    again = report_from_packed(tmp_path / "p", setup=REFERENCE_SETUP)
    loss_keys = ("sequences_untrainable", "loss_sequences", "loss_tokens")  # known once packed (labels read)
    assert {k: v for k, v in again.packing.items() if k not in loss_keys} == {
        k: v for k, v in r.packing.items() if k not in loss_keys}
    assert "grad_accum=32" in render_packer_settings(r) and "--filler" in command


# ------------------------------------------------------------------ finding 5: the picture


def test_plot_shows_slots_steps_and_lengths(sample_lengths):
    pytest.importorskip("matplotlib")
    from packer.plot import report_figure

    r = report_from_lengths(sample_lengths, capacity=20_000, setup=REFERENCE_SETUP)
    slots, steps, lengths = report_figure(r).axes
    # token slots: real tokens and padding per mode, the lost tokens apart
    heights = [round(p.get_height()) for p in slots.patches]
    pad, pack = r.padding, r.packing
    assert heights[:2] == [pad["tokens_per_epoch"], pack["tokens_per_epoch"]]
    assert heights[2:4] == [round(pad["token_slots_per_epoch"] - pad["tokens_per_epoch"]),
                            pack["token_slots_per_epoch"] - pack["tokens_per_epoch"]]
    assert heights[4] == pack["tokens_lost"] > 0
    # steps: the loop counts, integer ticks
    assert [round(p.get_height()) for p in steps.patches] == [pad["loop_total_optimizer_steps"],
                                                               pack["total_optimizer_steps"]]
    assert all(float(t).is_integer() for t in steps.get_yticks())
    # lengths: integer counts, the axis starts at the shortest row (not at 1), the capacity marked
    assert all(float(t).is_integer() for t in lengths.get_yticks())
    lo = int(sample_lengths[sample_lengths > 0].min())
    assert lengths.get_xlim()[0] == pytest.approx(lo)
    assert [line.get_xdata()[0] for line in lengths.lines] == [20_000]


def test_plot_is_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "report.png"
    assert main(["report", str(SAMPLE), "--plot", str(png)]) == 0
    assert png_ok(png)
    assert png.stat().st_size > 10_000  # three panels, not an empty canvas


@pytest.mark.parametrize("where", ["missing/report.png", "."])
def test_plot_path_is_checked_before_any_work(where, tmp_path, capsys, monkeypatch):
    pytest.importorskip("matplotlib")
    import packer.cli.report as cli_report

    def no_work(*a, **k):
        raise AssertionError("the report was computed before the plot path was checked")

    monkeypatch.setattr(cli_report, "report_from_input", no_work)
    assert main(["report", str(SAMPLE), "--plot", str(tmp_path / where)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "--plot" in captured.err and ("does not exist" in captured.err or "is a folder" in captured.err)

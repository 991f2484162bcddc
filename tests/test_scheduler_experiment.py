"""helpers.experiments.scheduler: variants, the damage ladder and the claims board's frames, on a tiny model."""
import numpy as np
import pandas as pd
import pytest
import torch

from helpers.claims.board import board
from helpers.data import CalibrationSettings
from helpers.evaluation.metrics import DenseReference
from helpers.experiments import scheduler as sc
from helpers.experiments.core import Runner, Variant, latest_frame
from helpers.models import load_model
from helpers.results import ResultsTable

CALIBRATION = CalibrationSettings(dataset="c4", n_samples=4, seq_len=32)


def test_variants_name_schedule_seed_bits_inputs_and_ablation():
    labels = [sc.schedule_variant(k, 0.5, seed, CALIBRATION).label for k in ("uniform", "hessian") for seed in (0, 1)]
    assert len(set(labels)) == 4 and labels[0] == "uniform s=0.50 seed=0"
    ablated = sc.schedule_variant("hessian", 0.5, 1, CALIBRATION, ablation="decades", bits=4)
    assert ablated.label == "hessian s=0.50 4-bit [decades] seed=1"
    assert ablated.recipe.calibration.seed == 1 and ablated.settings["ablation"] == "decades"
    assert ablated.settings["schedule"]["hessian"].clustering == "decades"
    with pytest.raises(ValueError, match="varies the Hessian scheduler"):
        sc.schedule_variant("uniform", 0.5, 0, CALIBRATION, ablation="decades")


def ladder(ratios, *, main=None):
    """Uniform points: the ladder's rungs on seed 0 at `ratios`, the same sparsities on seed 1 at 1.5x (a main
    run's other seed) and `main` ({sparsity: ratio}) on seed 0, a main run's matched points between the rungs."""
    rows = [{"label": "dense", "schedule": "dense", "sparsity": 0.0, "bits": np.nan, "inputs": "compressed",
             "ablation": "none", "ppl_ratio": 1.0, "seed": np.nan}]
    rows += [{"label": f"u{s}-{seed}", "schedule": "uniform", "sparsity": s, "bits": np.nan, "inputs": "compressed",
              "ablation": "none", "ppl_ratio": r * (1.5 if seed else 1), "seed": seed}
             for s, r in ratios.items() for seed in (0, 1)]
    rows += [{"label": f"main{s}", "schedule": "uniform", "sparsity": s, "bits": np.nan, "inputs": "compressed",
              "ablation": "none", "ppl_ratio": r, "seed": 0} for s, r in (main or {}).items()]
    return pd.DataFrame(rows).set_index("label")


def test_the_damage_ladder_reads_its_own_rungs_and_interpolates_log_ratio_in_sparsity():
    points = ladder({0.3: 1.2, 0.5: 2.0, 0.7: 8.0}, main={0.4: 5.0, 0.55: 1.1})
    rungs = sc.ladder_rungs(points, [0.3, 0.5, 0.7], seed=0)
    assert rungs.to_dict() == {0.3: 1.2, 0.5: 2.0, 0.7: 8.0}   # no other seed, no main-run point between rungs
    matched = sc.matched_sparsities(rungs, [2.0, 4.0])
    assert matched[2.0] == 0.5                                   # a rung hit exactly
    assert matched[4.0] == 0.6                                   # halfway in log ratio between 2x and 8x
    with pytest.raises(ValueError, match="outside the ladder"):
        sc.matched_sparsities(rungs, [10.0])
    with pytest.raises(ValueError, match="no uniform 16-bit point at sparsity \\[0.6\\]"):
        sc.ladder_rungs(points, [0.3, 0.6], seed=0)
    with pytest.raises(ValueError, match="do not rise"):
        sc.matched_sparsities(sc.ladder_rungs(ladder({0.3: 1.2, 0.5: 1.1}), [0.3, 0.5], seed=0), [1.15])


def test_frames_from_a_tiny_run_carry_what_every_hs_claim_reads(tmp_path):
    model, tokenizer = load_model("tiny-llama")
    windows = torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(0))
    reference = DenseReference(model, windows, progress=False, lazy=True)
    variants = [Variant.dense()] + [sc.schedule_variant(k, s, seed, CALIBRATION) for s in (0.5, 0.7)
                                    for k in ("uniform", "owl", "hessian") for seed in (0, 1)]
    variants += [sc.schedule_variant("uniform", 0.5, 0, CALIBRATION, inputs="dense")]
    table = ResultsTable(tmp_path / "r.jsonl")
    Runner(model, table, "tiny-llama", {"d": 1}, tokenizer=tokenizer, log=lambda *_: None, progress=False).run(
        variants, [sc.window_measurement(reference)])
    frame = latest_frame(table)
    points = sc.points_table(frame)
    assert points.ppl_ratio["dense"] == 1.0 and set(points.schedule) == {"dense", "uniform", "owl", "hessian"}
    frames = sc.board_frames(frame)
    assert len(frames["schedule"]) == 12 * 5 and set(frames["schedule"].seed) == {0, 1}
    errors = frames["layer_errors"]
    assert len(errors) == errors.layer.nunique() > 0 and (errors.estimated_error > 0).all()  # the dense-H uniform run
    overhead = frames["overhead"]
    assert (overhead.schedule_seconds > 0).all() and set(overhead.label) == {"owl", "hessian"}
    assert (0 < overhead.observe_seconds).all() and (overhead.observe_seconds < overhead.schedule_seconds).all()
    costs = sc.overhead_summary(overhead)                     # the observe-only pass is inside what HS5 counts
    assert (costs.share_without_observe < costs.share).all() and (costs.share_without_observe > 0).all()
    assert set(frames["dense_statistics"].statistics) == {"dense", "sequential"}
    table_ = board(frames, claims=("HS1", "HS2", "HS3", "HS4", "HS5", "HS6"))
    assert not table_.why.str.contains("missing").any()          # every decider found its columns
    hessian = frame[(frame.label == "hessian s=0.70 seed=0") & (frame.metric == "layer_error")]
    assert abs(hessian.layer_sparsity.astype(float).mean() - 0.7) < 0.1   # scheduled per layer, around the target
    assert hessian.layer_sparsity.astype(float).std() > 0                   # ... and not uniform
    paired = sc.paired_schedules(frames["schedule"])
    assert set(paired.comparison) == {"hessian / uniform", "owl / uniform", "hessian / owl"}
    assert (paired.seeds == 2).all() and (paired.windows == 5).all()


def test_kind_probes_prune_one_layer_kind_more_and_price_it_per_weight(tmp_path):
    from helpers.experiments.core import parse_variant

    with pytest.raises(ValueError, match="needs schedule_kind"):
        parse_variant({"method": "sparsegpt", "sparsity": 0.5, "schedule": "kind"})
    with pytest.raises(ValueError, match="belong to it only"):
        parse_variant({"method": "sparsegpt", "sparsity": 0.5, "schedule": "owl", "schedule_kind": "q_proj"})
    with pytest.raises(ValueError, match="belong to 'hessian'"):
        parse_variant({"method": "sparsegpt", "sparsity": 0.5, "schedule": "kind", "schedule_kind": "q_proj",
                       "schedule_levels": 2})
    with pytest.raises(ValueError, match="goes with the 'kind' schedule only"):
        sc.schedule_variant("uniform", 0.5, 0, CALIBRATION, kind="q_proj")
    model, tokenizer = load_model("tiny-llama")
    windows = torch.randint(0, 256, (5, 32), generator=torch.Generator().manual_seed(0))
    reference = DenseReference(model, windows, progress=False, lazy=True)
    variants = [Variant.dense()] + [sc.schedule_variant(k, 0.5, seed, CALIBRATION) for k in ("uniform", "hessian")
                                    for seed in (0, 1)]
    variants += [sc.schedule_variant("kind", 0.5, seed, CALIBRATION, kind=kind, extra=0.3)
                 for kind in ("down_proj", "q_proj") for seed in (0, 1)]
    assert variants[-1].label == "kind s=0.50 +0.30 q_proj seed=1"
    table = ResultsTable(tmp_path / "r.jsonl")
    Runner(model, table, "tiny-llama", {"d": 1}, tokenizer=tokenizer, log=lambda *_: None, progress=False).run(
        variants, [sc.window_measurement(reference)])
    frame = latest_frame(table)
    probed = frame[(frame.label == "kind s=0.50 +0.30 down_proj seed=0") & (frame.metric == "layer_error")]
    down = probed.layer.str.endswith("down_proj")
    assert np.allclose(probed.layer_sparsity[down].astype(float), 0.8)
    assert np.allclose(probed.layer_sparsity[~down].astype(float), 0.5)
    points = sc.points_table(frame)
    assert set(sc.schedule_frame(frame, points).schedule) == {"uniform", "hessian"}  # probes stay out of HS1-HS3
    kinds = sc.layer_kinds(frame, points, 0.5, 0)
    sensitivity = sc.kind_sensitivity(sc.window_rows(frame, points), points, 0.5, kinds).set_index("kind")
    assert set(sensitivity.index) == {"down_proj", "q_proj"} and (sensitivity.seeds == 2).all()
    # q_proj holds 64x64 of each block's 64x64 x 4 + 3 x 64x172 (tiny-llama) weights: a smaller share than down_proj
    assert 0 < sensitivity.added_points["q_proj"] < sensitivity.added_points["down_proj"]
    assert np.allclose(sensitivity.kl_per_point * sensitivity.added_points, sensitivity.kl_added)
    assert (sensitivity.low <= sensitivity.kl_added).all() and (sensitivity.kl_added <= sensitivity.high).all()
    assert sensitivity.kl_added["down_proj"] > 0                # pruning 30% more of the MLP output adds error
    assert {"hessian_sparsity", "uniform_sparsity"} <= set(sensitivity.columns)
    assert "kind_sparsity" not in sensitivity.columns and np.allclose(sensitivity.uniform_sparsity, 0.5)
    from helpers.experiments.scheduler_figures import kinds_figure

    fig, finding = kinds_figure(kinds, title="tiny", sensitivity=sensitivity.reset_index())
    assert len(fig.axes) == 3 and "costs most KL per weight for down_proj" in finding

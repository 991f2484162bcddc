"""The experiment core: variants, a checked dense snapshot, one runner, one reader.

Every notebook, the LLM-KICK sweep and the command line stand on these four pieces:

    variants = [parse_variant({"method": "wanda", "sparsity": 0.5}, calibration),   # spec -> Recipe
                parse_variant({"method": "rtn", "bits": 4, "activation_bits": 8}),  # W4A8
                parse_variant({"kv_bits": 4})]                                      # KV4, weights dense
    runner = Runner(model, table, model_name="smollm2-135m", protocol=protocol, tokenizer=tokenizer)
    runner.run(variants, [Measurement("wikitext2", measure)])   # restore, check, compress, measure, record
    frame = latest_frame(table, model="smollm2-135m", protocol=protocol)

- `parse_variant` turns a plain spec (a notebook parameter, a CLI flag set) into a `Variant`: a
  label, a validated `Recipe` and/or a context held while it is evaluated (activation / KV-cache
  quantization), and the settings recorded beside its results.
- `ModelSnapshot` keeps the dense weights once; `restore` puts them back and verifies that every
  tensor equals the saved state (`check`), so nothing is measured on a model that an earlier step
  left compressed.
- `Runner.run` does, for each variant: skip what is recorded, restore (checked), compress, run each
  `Measurement`, and write its tidy rows (tagged with a key and an attempt id) as soon as they are
  measured, so a killed run loses at most the measurement in progress. Every row carries the bits per
  weight under helpers.compression.storage's convention, named in `storage_convention`. The key holds
  helpers.results.NUMBERS_VERSION: a row recorded by code whose numbers differ is measured again (and
  the log says so), never reused.
- `latest_frame` reads the latest attempt of every recorded key.
"""
from __future__ import annotations

import contextlib
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, ContextManager, Iterable, Mapping, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from ..compression.activations import ActivationSettings, KVSettings, quantize_activations, quantize_kv_cache
from ..compression.compress import METHODS, CompressionReport, Recipe, check_recipe, compress_model
from ..compression.quantizer import QuantSettings
from ..compression.storage import STORAGE_CONVENTION, VALUE_BITS
from ..data import CalibrationSettings, calibration_samples, check_calibration
from ..evaluation.tasks.generation import context_length
from ..results import NUMBERS_VERSION, ResultsTable, run_key

DENSE_LABEL = "dense"
# Set (to anything but "" or "0") where a notebook is re-executed over committed results (reproduce --from-committed,
# `make figures`): the Runner measures nothing, and a point that is not recorded is left out with a note.
RECORDED_ONLY = "HELPERS_RECORDED_ONLY"


def recorded_only() -> bool:
    """Whether this process may only read recorded results (RECORDED_ONLY is set)."""
    return os.environ.get(RECORDED_ONLY, "") not in ("", "0")


# --------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One point to compare with the dense model.

    recipe: compresses the weights (helpers.compression.compress); compress: how to apply it when not
    by the standard sequential pass (a layer-wise schedule, stored dense Hessians), (model, runner) ->
    CompressionReport, the runner giving calibration ids, device and batch size;
    during_evaluation(model): a context manager held while the variant is measured (activation or
    KV-cache quantization); settings: recorded beside the results (what the label alone does not say);
    family: groups variants in figures ("pruning", "quantization", "activations", ...).
    """
    label: str
    recipe: Recipe | None = None
    during_evaluation: Callable[[nn.Module], ContextManager] | None = None
    settings: dict = field(default_factory=dict)
    family: str = ""
    compress: Callable[[nn.Module, "Runner"], CompressionReport] | None = None

    def __post_init__(self):
        if self.label == DENSE_LABEL:
            if self.recipe is not None or self.during_evaluation is not None or self.compress is not None:
                raise ValueError(f"the label {DENSE_LABEL!r} names the uncompressed model; give this variant "
                                 "another label.")
        elif self.recipe is None and self.during_evaluation is None:
            raise ValueError(f"variant {self.label!r} has neither a recipe nor a during_evaluation context; "
                             "give at least one (the dense model is Variant.dense()).")
        if self.compress is not None and self.recipe is None:
            raise ValueError(f"variant {self.label!r}: compress= applies a recipe; give the recipe too "
                             "(it is recorded).")

    @classmethod
    def dense(cls) -> "Variant":
        return cls(DENSE_LABEL, family=DENSE_LABEL)

    @property
    def is_dense(self) -> bool:
        return self.label == DENSE_LABEL

    @property
    def needs_calibration(self) -> bool:
        """Whether compressing this variant draws calibration tokens (its recipe's, or a schedule's pass)."""
        return self.recipe is not None and (self.recipe.needs_calibration or self.compress is not None)

    @property
    def method(self) -> str:
        if self.is_dense:
            return DENSE_LABEL
        return self.recipe.method if self.recipe is not None else self.settings.get("method", self.label)

    def record_settings(self) -> dict:
        out = dict(self.settings)
        if self.recipe is not None:
            out["recipe"] = self.recipe.as_dict()
        return out


QUANT_KEYS = {"bits", "group_size", "symmetric", "act_order", "static_groups", "mse", "group_fit",
              "protect_fraction", "protect_rule", "protect_bits", "protect_group_size"}
PRUNE_KEYS = {"sparsity", "pattern"}
RECIPE_KEYS = {"damping", "block_size", "seed", "true_sequential"}
EVALUATION_KEYS = {"activation_bits", "activation_granularity", "activation_symmetric", "kv_bits",
                   "kv_granularity", "kv_token_group_size", "kv_symmetric"}
SCHEDULE_KEYS = {"schedule", "schedule_inputs", "owl_multiplier", "owl_spread", "schedule_levels",
                 "schedule_clustering", "schedule_spread", "schedule_probe_sparsity", "schedule_normalize_by_size",
                 "schedule_kind", "schedule_kind_extra"}
SPEC_KEYS = {"method", "label", "family", "blocks"} | QUANT_KEYS | PRUNE_KEYS | RECIPE_KEYS | EVALUATION_KEYS | SCHEDULE_KEYS


_BLOCK_LABELS = {"full_attention": "global blocks", "sliding_attention": "sliding-window blocks"}


def blocks_label(blocks) -> str:
    """How labels name a selection of decoder blocks: "global blocks", "sliding-window blocks", "blocks 0,3"."""
    return _BLOCK_LABELS.get(blocks, blocks) if isinstance(blocks, str) else "blocks " + ",".join(map(str, blocks))


def _grid_label(quant: QuantSettings) -> str:
    label = f"{quant.bits}-bit {f'g{quant.group_size}' if quant.group_size else 'per-channel'}"
    if quant.symmetric:
        label += " sym"
    if quant.act_order:
        label += " act-order" + (" static" if quant.static_groups else "")
    if quant.mse:
        label += " mse"
    if quant.group_fit != "block_start":
        label += f" fit={quant.group_fit}"
    if quant.protects:
        label += f" + {quant.protect_fraction:.1%} {quant.protect_rule}@{quant.protect_bits}"
    return label


def parse_variant(spec: Mapping[str, Any], calibration: CalibrationSettings | None = None) -> Variant:
    """A Variant from a plain spec; the one parser behind every notebook and the command line.

    Weights (helpers.compression.compress): `method` (one of METHODS); pruning `sparsity`, `pattern`
    ('unstructured' or N:M); quantization `bits`, `group_size` (None: per output channel),
    `symmetric`, `act_order`, `static_groups`, `mse`, `group_fit`, protected groups `protect_fraction`,
    `protect_rule`, `protect_bits`, `protect_group_size`; `damping`, `block_size`, `seed`,
    `true_sequential`.
    While evaluated (helpers.compression.activations): `activation_bits` (+ `activation_granularity`,
    `activation_symmetric`), `kv_bits` (+ `kv_granularity`, `kv_token_group_size`, `kv_symmetric`).
    Per-layer sparsity (helpers.compression.schedules): `schedule` ('uniform', 'owl', 'hessian') spreads
    `sparsity` over the layers from one observe-only pass, then compresses sequentially; OWL's
    `owl_multiplier` (M) and `owl_spread` (lambda); the Hessian scheduler's `schedule_levels`,
    `schedule_clustering`, `schedule_spread`, `schedule_probe_sparsity`, `schedule_normalize_by_size`;
    `schedule_inputs` 'compressed' (default: sequential) or 'dense' (every layer from the dense Hessians);
    'kind' prunes one layer kind `schedule_kind` (e.g. 'down_proj') `schedule_kind_extra` (default 0.1) more
    than `sparsity`, every other layer at `sparsity` (what pruning that kind more costs).
    `blocks`: which decoder blocks the weight recipe and the KV cache touch ('all', or Gemma-3's
    'full_attention' / 'sliding_attention' blocks, or block indices; helpers.models.selected_blocks).
    `label` and `family` override the generated ones. Examples:
        {"method": "sparsegpt", "sparsity": 0.5, "pattern": "2:4"}
        {"method": "gptq", "bits": 3, "group_size": 128, "act_order": True}
        {"method": "rtn", "bits": 3, "group_size": 64, "protect_fraction": 0.02, "protect_rule": "hessian"}
        {"method": "rtn", "bits": 4, "activation_bits": 8}                      # W4A8
        {"kv_bits": 4}                                                          # KV4, weights dense
        {"method": "sparsegpt", "sparsity": 0.7, "schedule": "owl", "owl_spread": 0.08}
    """
    spec = dict(spec)
    unknown = set(spec) - SPEC_KEYS
    if unknown:
        raise ValueError(f"variant spec {spec!r} has unknown keys {sorted(unknown)}; expected some of "
                         f"{sorted(SPEC_KEYS)}.")
    method = spec.get("method")
    evaluation = {k: spec[k] for k in EVALUATION_KEYS if spec.get(k) is not None}
    if method is None and not ({"activation_bits", "kv_bits"} & set(evaluation)):
        raise ValueError(f"variant spec {spec!r} has no method and no activation_bits / kv_bits; expected e.g. "
                         "{'method': 'wanda', 'sparsity': 0.5} or {'kv_bits': 4}.")
    if method is not None and method not in METHODS:
        raise ValueError(f"variant spec {spec!r} has method={method!r}; expected one of {sorted(METHODS)}.")
    if method is None and set(spec) & (QUANT_KEYS | PRUNE_KEYS | RECIPE_KEYS):
        raise ValueError(f"variant spec {spec!r} sets weight-compression keys without a method; add "
                         "'method' (e.g. 'rtn') or drop them.")
    recipe, label, settings, family = None, "", {}, "pruning"
    if method is not None:
        quant = None
        if spec.get("bits") is not None:
            quant = QuantSettings(**{k: spec[k] for k in QUANT_KEYS if k in spec})
        elif set(spec) & (QUANT_KEYS - {"bits"}):
            raise ValueError(f"variant spec {spec!r} describes a quantization grid without bits; add e.g. 'bits': 4.")
        fields = {k: spec[k] for k in RECIPE_KEYS | PRUNE_KEYS | {"blocks"} if k in spec}
        if calibration is not None:
            fields["calibration"] = calibration
        recipe = Recipe(method=method, quant=quant, **fields)  # validates the combination
        pattern = recipe.parsed_pattern
        parts = []
        if METHODS[method].prunes and (pattern.structured or recipe.sparsity or quant is None):
            sparsity = pattern.sparsity if pattern.structured else recipe.sparsity
            parts.append(f"{method} {sparsity:.0%}" + (f" {pattern}" if pattern.structured else ""))
        if quant is not None:
            parts.append(("+ " if parts else f"{method.upper()} ") + _grid_label(quant))
            family = "joint" if len(parts) > 1 else "quantization"
            settings.update(bits=quant.bits, group_size=quant.group_size, protect_fraction=quant.protect_fraction,
                            protect_rule=quant.protect_rule if quant.protects else "none",
                            protect_bits=quant.protect_bits, protection_group_size=quant.protection_group_size)
        label = " ".join(parts) + (" true-sequential" if recipe.true_sequential else "")
    blocks = spec.get("blocks", "all")
    if blocks != "all" and spec.get("schedule") is not None:
        raise ValueError(f"variant spec {spec!r}: a schedule spreads sparsity over every block; drop 'blocks'.")
    if blocks != "all" and evaluation.get("activation_bits"):
        raise ValueError(f"variant spec {spec!r}: activation quantization covers every block; drop 'blocks' or "
                         "activation_bits.")
    compress = None
    if spec.get("schedule") is not None:
        recipe, compress, schedule_settings = _schedule(spec, recipe)
        settings["schedule"] = schedule_settings
        probe = schedule_settings.get("probe")
        label += (f" +{probe.extra:.0%} {probe.kind}" if probe is not None
                  else f" {spec['schedule']}" if spec["schedule"] != "uniform" else "")
        label += " (dense Hessians)" if schedule_settings["inputs"] == "dense" else ""
    elif set(spec) & (SCHEDULE_KEYS - {"schedule"}):
        raise ValueError(f"variant spec {spec!r} sets schedule parameters without 'schedule'; add e.g. "
                         "'schedule': 'owl' or drop them.")
    activation = kv = None
    if evaluation.get("activation_bits"):
        options = {name: evaluation[f"activation_{name}"] for name in ("granularity", "symmetric")
                   if f"activation_{name}" in evaluation}
        activation = ActivationSettings(bits=int(evaluation["activation_bits"]), **options)
        settings["activations"] = activation.as_dict()
    if evaluation.get("kv_bits"):
        options = {name: evaluation[f"kv_{name}"] for name in ("granularity", "token_group_size", "symmetric")
                   if f"kv_{name}" in evaluation}
        kv = KVSettings(bits=int(evaluation["kv_bits"]), blocks=blocks, **options)
        settings["kv_cache"] = kv.as_dict()
    during = None
    if activation is not None or kv is not None:
        family = "activations"
        plain_rtn = recipe is not None and recipe.method == "rtn" and recipe.quant.group_size is None \
            and not recipe.quant.protects and not recipe.quant.symmetric
        short = (f"A{activation.bits}" if activation else "") + (f"KV{kv.bits}" if kv else "")
        if recipe is None:
            label = short
        elif plain_rtn:
            label = f"W{recipe.quant.bits}{short}"      # W4A8: per-channel RTN weights
        else:
            label = f"{label} + {short}"
        settings["method"] = label

        def during(model):
            stack = contextlib.ExitStack()
            if activation is not None:
                stack.enter_context(quantize_activations(model, activation))
            if kv is not None:
                stack.enter_context(quantize_kv_cache(model, kv))
            return stack

    if blocks != "all":
        settings["blocks"] = blocks if isinstance(blocks, str) else list(blocks)
        label += f" [{blocks_label(blocks)}]"
    return Variant(spec.get("label") or label, recipe, during, settings, family=spec.get("family") or family,
                   compress=compress)


def _schedule(spec: Mapping[str, Any], recipe: Recipe | None):
    """The schedule part of a spec: (recipe, compress(model, runner), recorded settings)."""
    from ..compression.schedules import (SCHEDULE_INPUTS, SCHEDULES, HessianSchedulerSettings, KindProbe,
                                         OWLSettings, scheduled_compress)

    name = spec["schedule"]
    if name not in SCHEDULES:
        raise ValueError(f"schedule={name!r}; expected one of {SCHEDULES}.")
    if recipe is None or not METHODS[recipe.method].prunes or recipe.parsed_pattern.structured or not recipe.sparsity:
        raise ValueError(f"variant spec {dict(spec)!r}: a schedule needs a pruning method with an unstructured target "
                         "sparsity, e.g. {'method': 'sparsegpt', 'sparsity': 0.7, 'schedule': 'owl'}.")
    owl = OWLSettings(**{field: spec[key] for key, field in (("owl_multiplier", "outlier_multiplier"),
                                                             ("owl_spread", "spread")) if key in spec})
    hessian_keys = ("schedule_levels", "schedule_clustering", "schedule_spread", "schedule_probe_sparsity",
                    "schedule_normalize_by_size")
    hessian = HessianSchedulerSettings(**{key.removeprefix("schedule_"): spec[key] for key in hessian_keys
                                          if key in spec})
    if name != "owl" and {"owl_multiplier", "owl_spread"} & set(spec):
        raise ValueError(f"owl_multiplier / owl_spread set but schedule={name!r}; they belong to 'owl'.")
    if name != "hessian" and set(hessian_keys) & set(spec):
        raise ValueError(f"{sorted(set(hessian_keys) & set(spec))} set but schedule={name!r}; they belong to "
                         "'hessian'.")
    if (name == "kind") != ("schedule_kind" in spec) or (name != "kind" and "schedule_kind_extra" in spec):
        raise ValueError(f"variant spec {dict(spec)!r}: schedule 'kind' needs schedule_kind (e.g. 'down_proj'), and "
                         "schedule_kind / schedule_kind_extra belong to it only.")
    probe = KindProbe(spec["schedule_kind"], *([spec["schedule_kind_extra"]] if "schedule_kind_extra" in spec
                                                else [])) if name == "kind" else None
    inputs = spec.get("schedule_inputs", "compressed")
    if inputs not in SCHEDULE_INPUTS or (inputs == "dense" and recipe.method not in ("sparsegpt", "gptq")):
        raise ValueError(f"schedule_inputs={inputs!r} with method {recipe.method!r}; expected one of {SCHEDULE_INPUTS} "
                         "('dense' prunes from stored Hessians: sparsegpt only).")
    recorded = {"name": name, "inputs": inputs, **({"owl": owl} if name == "owl" else {}),
                **({"hessian": hessian} if name == "hessian" else {}), **({"probe": probe} if probe else {})}

    def compress(model, runner):
        calibration = runner.calibration(recipe.calibration)
        report, _ = scheduled_compress(model, recipe, name, calibration, owl=owl, hessian=hessian, probe=probe,
                                       inputs=inputs, device=runner.device, batch_size=runner.batch_size)
        return report

    return recipe, compress, recorded


# --------------------------------------------------------------------------- the dense snapshot
class ModelSnapshot:
    """The model's weights saved once (on the CPU); `restore` puts them back and checks them."""

    def __init__(self, model: nn.Module):
        self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def differences(self, model: nn.Module) -> list[str]:
        """Names of the tensors of `model` that differ from the saved state (or are missing / extra)."""
        current = model.state_dict()
        names = sorted(set(current) ^ set(self.state))
        for name, saved in self.state.items():
            value = current.get(name)
            if value is not None and not torch.equal(value.detach().to("cpu"), saved):
                names.append(name)
        return names

    def check(self, model: nn.Module) -> None:
        """Raise unless every weight of `model` equals the saved dense state exactly."""
        differ = self.differences(model)
        if differ:
            raise RuntimeError(f"{len(differ)} tensors of the model differ from the saved dense state (e.g. "
                               f"{differ[:3]}): it was not restored, so nothing is measured on it. Call "
                               "snapshot.restore(model) first (the Runner does so before every variant).")

    def restore(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)
        self.check(model)


# --------------------------------------------------------------------------- the runner
@dataclass
class Point:
    """What a measurement sees: the model as compressed for `variant`, its report, this attempt's id."""
    model: nn.Module
    variant: Variant
    report: CompressionReport | None
    attempt: str


@dataclass(frozen=True)
class Measurement:
    """One unit of work per variant: `measure(point)` -> tidy rows ({"metric", "value", ...}).

    name: what is measured ("context_kl", "wikitext2", a task name), recorded in the `task` column;
    describe: what identifies it (e.g. the task's settings), part of the skip key; dataset: recorded;
    prepare: called on the dense model once before any variant is compressed, when some variant still needs
    this measurement (a lazy dense reference runs its pass there).
    current: row -> False for a recorded row this code no longer accepts (e.g. one that lacks a field a defect
    fix added); a (variant, measurement) whose latest attempt has such a row is measured again.
    """
    name: str
    measure: Callable[[Point], list[dict]]
    describe: Mapping = field(default_factory=dict)
    dataset: str | None = None
    prepare: Callable[[], None] | None = None
    current: Callable[[Mapping], bool] | None = None


@dataclass
class Runner:
    """Restore (checked) -> compress -> measure -> record, for every variant; what is recorded is skipped."""
    model: nn.Module
    table: ResultsTable
    model_name: str
    protocol: dict
    snapshot: ModelSnapshot | None = None
    tokenizer: Any = None
    device: Any = None
    batch_size: int = 8
    run_id: str | None = None
    log: Callable[[str], None] = print
    progress: bool = True
    _calibration: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.snapshot is None:
            self.snapshot = ModelSnapshot(self.model)

    def key(self, variant: Variant, measurement: Measurement, numbers_version: int | str | None = NUMBERS_VERSION) -> str:
        """The skip key of one (variant, measurement); numbers_version=None gives the key of a row written
        before rows carried a numbers version."""
        version = {} if numbers_version is None else {"numbers_version": numbers_version}
        return run_key(model=self.model_name, label=variant.label, settings=variant.record_settings(),
                       protocol=self.protocol, task=measurement.name, measured=dict(measurement.describe), **version)

    def stale_versions(self, variant: Variant, measurements: Sequence[Measurement], recorded: set[str],
                       versions: set) -> list[str]:
        """The other numbers versions (None: rows without one, "unknown") that recorded any of `measurements`
        of `variant`: what is measured again rather than reused."""
        found = {version for version in versions for m in measurements
                 if self.key(variant, m, numbers_version=version) in recorded}
        return sorted("unknown" if version is None else str(version) for version in found)

    @staticmethod
    def outdated(records: Sequence[Mapping], measurements: Sequence[Measurement]) -> set[str]:
        """The keys whose latest attempt has a row that its measurement's `current` rejects."""
        checks = {m.name: m.current for m in measurements if m.current is not None}
        if not checks:
            return set()
        latest = {r["key"]: r["attempt"] for r in records if r.get("task") in checks}
        return {r["key"] for r in records if r.get("task") in checks and latest.get(r["key"]) == r["attempt"]
                and not checks[r["task"]](r)}

    def calibration(self, settings: CalibrationSettings) -> torch.Tensor:
        """The calibration tokens a recipe records (dataset, count, length and seed), drawn once per settings:
        a variant never runs on ids drawn for another recipe's settings."""
        if settings not in self._calibration:
            if self.tokenizer is None:
                raise ValueError("a variant needs calibration data: give the Runner tokenizer=.")
            self._calibration[settings] = calibration_samples(self.tokenizer, settings)
        return self._calibration[settings]

    def compress(self, variant: Variant) -> CompressionReport | None:
        if variant.compress is not None:
            return variant.compress(self.model, self)
        if variant.recipe is None:
            return None
        ids = self.calibration(variant.recipe.calibration) if variant.recipe.needs_calibration else None
        return compress_model(self.model, variant.recipe, calibration_ids=ids, device=self.device,
                              batch_size=self.batch_size, progress=False)

    def run(self, variants: Sequence[Variant], measurements: Sequence[Measurement], *,
            extra: Mapping | None = None) -> dict[str, CompressionReport | None]:
        """Run every (variant, measurement) not yet recorded; returns the reports of the variants compressed now.

        extra: columns added to every row written (e.g. {"sweep": "main"}). The model is dense again
        (checked) when this returns or raises."""
        labels = [v.label for v in variants]
        if len(set(labels)) != len(labels):
            raise ValueError(f"variant labels must be unique (they name the curves and rows); got {labels}.")
        names = [m.name for m in measurements]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"measurement names must be unique and at least one; got {names}.")
        records = [r for r in self.table.records() if r.get("attempt")]
        recorded = {r.get("key") for r in records} - self.outdated(records, measurements)
        other_versions = {r.get("numbers_version") for r in records} - {NUMBERS_VERSION}
        pending = {v.label: [m for m in measurements if self.key(v, m) not in recorded] for v in variants}
        left_out = {label for label, todo in pending.items() if todo} if recorded_only() else set()
        for label in left_out:
            self.log(f"{label}: {', '.join(m.name for m in pending[label])} not recorded, not measured "
                     f"({RECORDED_ONLY} is set: a re-execution over committed results measures nothing)")
            pending[label] = []
        checked = set(self._calibration)
        for variant in variants:  # every recipe against the model's shapes, every calibration to draw: before any work
            if variant.recipe is not None:
                check_recipe(self.model, variant.recipe)
            calibration = variant.recipe.calibration if variant.needs_calibration else None
            if pending[variant.label] and calibration is not None and calibration not in checked:
                check_calibration(calibration, context_length=context_length(self.model))
                checked.add(calibration)
        reports = {}
        try:
            for measurement in measurements:  # on the dense model, before anything is compressed
                if measurement.prepare is not None and any(measurement in todo for todo in pending.values()):
                    self.snapshot.restore(self.model)
                    measurement.prepare()
            for variant in tqdm(variants, desc="variants", disable=not self.progress):
                todo = pending[variant.label]
                if not todo:
                    if variant.label not in left_out:
                        self.log(f"{variant.label}: already recorded, skipped")
                    continue
                stale = self.stale_versions(variant, todo, recorded, other_versions)
                if stale:
                    self.log(f"{variant.label}: recorded by numbers version {', '.join(stale)}, this code is "
                             f"{NUMBERS_VERSION}: measured again")
                self.snapshot.restore(self.model)
                started = time.perf_counter()
                report = self.compress(variant)
                seconds_compress = time.perf_counter() - started
                reports[variant.label] = report
                common = {"model": self.model_name, "method": variant.method, "settings": variant.record_settings(),
                          "protocol": self.protocol, "label": variant.label, "family": variant.family,
                          "run": self.run_id, "seconds_compress": seconds_compress,
                          "bits_per_weight": report.bits_per_weight if report is not None else float(VALUE_BITS),
                          "storage_convention": STORAGE_CONVENTION,
                          "achieved_sparsity": report.achieved_sparsity if report is not None else 0.0,
                          **(extra or {})}
                messages = [f"compress {seconds_compress:.0f} s"]
                for measurement in todo:
                    attempt = uuid.uuid4().hex[:12]
                    started = time.perf_counter()
                    context = (variant.during_evaluation(self.model) if variant.during_evaluation
                               else contextlib.nullcontext())
                    with context:
                        rows = measurement.measure(Point(self.model, variant, report, attempt))
                    seconds = time.perf_counter() - started
                    rows = list(rows) + [{"metric": "seconds", "value": seconds}]
                    key = self.key(variant, measurement)
                    for row in rows:
                        self.table.append(**{"dataset": measurement.dataset, **common, "task": measurement.name,
                                             "key": key, "attempt": attempt, **row})
                    recorded.add(key)
                    messages.append(f"{measurement.name} {_headline(rows)}({seconds:.0f} s)")
                self.log(f"{variant.label}: " + ", ".join(messages))
        finally:
            self.snapshot.restore(self.model)
        return reports


def _headline(rows: list[dict]) -> str:
    first = next((r for r in rows if r.get("metric") != "seconds"), None)
    if first is None or not isinstance(first.get("value"), (int, float)):
        return ""
    return f"{first['metric']} {first['value']:.4g} "


# --------------------------------------------------------------------------- the reader
def latest_frame(table: ResultsTable, *, model: str | None = None, protocol: dict | None = None,
                 labels: Iterable[str] | None = None, tasks: Iterable[str] | None = None):
    """The runner's rows (those with an attempt) for this model and protocol, as a DataFrame with
    settings/protocol flattened by dots: the latest attempt of each key only (file order is time order),
    and where one label's measurement was recorded under several keys (its settings were redefined, or
    a code change added a recorded field) only the key recorded last, so stale rows never mix in."""
    import pandas as pd

    from ..results import plain

    wanted_protocol = None if protocol is None else plain(protocol)
    records = [r for r in table.records() if r.get("attempt") and r.get("key")
               and (model is None or r.get("model") == model)
               and (wanted_protocol is None or r.get("protocol") == wanted_protocol)]
    if labels is not None:
        keep = set(labels)
        records = [r for r in records if r.get("label") in keep]
    if tasks is not None:
        keep = set(tasks)
        records = [r for r in records if r.get("task") in keep]
    latest, newest_key = {}, {}
    for record in records:
        latest[record["key"]] = record["attempt"]
        point = (record.get("model"), record.get("label"), record.get("task"), run_key(protocol=record.get("protocol")))
        newest_key[point] = record["key"]
    keys = set(newest_key.values())
    records = [r for r in records if r["key"] in keys and latest[r["key"]] == r["attempt"]]
    return pd.json_normalize(records) if records else pd.DataFrame()


def variant_table(frame, settings: Mapping[str, Sequence[str]], *, dense_label: str = DENSE_LABEL):
    """One row per variant (index: label, in recorded order) from the runner's rows (`latest_frame`): method,
    family, one column per entry of `settings` (name -> the flattened recorded settings it is read from, the
    first present wins; nan where a variant has none), perplexity, ppl_ratio (to the `dense_label` row's),
    working (`claims.rules.is_working`, the project's one rule), bits_per_weight and achieved_sparsity."""
    import pandas as pd

    from ..claims.rules import is_working

    rows = frame[frame.metric == "perplexity"].drop_duplicates("label", keep="last").set_index("label")
    if dense_label not in rows.index:
        raise ValueError(f"no {dense_label!r} perplexity row among the recorded variants {list(rows.index)}; run "
                         "Variant.dense() with the measurement first (it is recorded from the dense reference, no "
                         "extra pass).")
    out = pd.DataFrame(index=rows.index)
    out["method"], out["family"] = rows["method"], rows.get("family", "")
    for column, sources in settings.items():
        values = pd.Series(float("nan"), index=out.index, dtype=object)
        for source in reversed(list(sources)):
            if source in rows.columns:
                values = rows[source].where(rows[source].notna(), values)
        out[column] = values
    out["perplexity"] = rows["value"].astype(float)
    out["ppl_ratio"] = out.perplexity / out.loc[dense_label, "perplexity"]
    out["working"] = [is_working(r) for r in out.ppl_ratio]
    for column in ("bits_per_weight", "achieved_sparsity"):
        out[column] = rows[column] if column in rows.columns else float("nan")
    return out

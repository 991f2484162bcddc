"""helpers.compression.storage: the one storage model gives the hand-computed bits for every setting."""
import pytest
import torch

from helpers.compression.compress import Recipe, compress_model
from helpers.compression.quantizer import QuantSettings
from helpers.compression.storage import STORAGE_CONVENTION, VALUE_BITS, bits_per_weight, storage_bits
from helpers.models import compressed_linears, linear_weight, load_model


def test_per_channel_asymmetric_by_hand():
    # 8 x 576, 4-bit, one grid per row: 4608 codes x 4 + 8 x (16-bit scale + 4-bit zero)
    bits = storage_bits((8, 576), QuantSettings(bits=4))
    assert bits.total == 4608 * 4 + 8 * 20 and bits.sparse_index == 0 and bits.group_index == 0


def test_grouped_with_a_partial_last_group_by_hand():
    # 576 = 4 x 128 + 64: five grids per row, the last one over 64 columns
    bits = storage_bits((8, 576), QuantSettings(bits=4, group_size=128))
    assert bits.grids == 8 * 5 * (16 + 4)
    assert bits.total == 4608 * 4 + 8 * 5 * 20
    # symmetric grids have an implied zero: scales only
    assert storage_bits((8, 576), QuantSettings(bits=3, group_size=128, symmetric=True)).grids == 8 * 5 * 16
    # act-order with dynamic groups: ceil(log2(5)) = 3 bits per column say which group a column is in
    assert storage_bits((8, 576), QuantSettings(bits=4, group_size=128, act_order=True)).group_index == 576 * 3


def test_protected_groups_by_hand():
    # 4 x 256, 3-bit g64, 25% of the 16 groups at 8 bits: 4 groups of 64
    bits = storage_bits((4, 256), QuantSettings(bits=3, group_size=64, protect_fraction=0.25, protect_bits=8))
    assert bits.values == (1024 - 256) * 3
    assert bits.grids == 16 * (16 + 3)
    assert bits.protected_values == 256 * 8 and bits.protected_grids == 4 * (16 + 8)
    assert bits.protected_index == min(16, 4 * 4)


def test_sparse_and_joint_by_hand():
    # 50% pruned, fp16 values: 512 kept x 16 + a bitmap of 1024 bits -> 9 bits per weight
    assert storage_bits((4, 256), kept=512).per_weight == 0.5 * 16 + 1
    # nothing pruned, nothing quantized: fp16
    assert storage_bits((4, 256)).per_weight == VALUE_BITS
    # 50% pruned + 4-bit per channel: 512 codes x 4 + bitmap 1024 + 4 grids x 20
    assert storage_bits((4, 256), QuantSettings(bits=4), kept=512).total == 512 * 4 + 1024 + 4 * 20
    with pytest.raises(ValueError, match="kept=2000"):
        storage_bits((4, 256), kept=2000)


def test_every_method_describes_its_storage_and_the_model_total_is_their_weighted_mean():
    for recipe in (Recipe(method="magnitude", sparsity=0.5), Recipe(method="rtn", quant=QuantSettings(bits=4)),
                   Recipe(method="random", sparsity=0.0, pattern="2:4")):
        model, _ = load_model("tiny-llama", layers=2, seed=0)
        report = compress_model(model, recipe, progress=False)
        total = weights = 0
        for name, linear in compressed_linears(model).items():
            storage = report.layers[name]["storage"]
            assert storage["convention"] == STORAGE_CONVENTION
            weight = linear_weight(linear)
            kept = int((weight != 0).sum()) if recipe.quant is None else None
            expected = storage_bits(tuple(weight.shape), recipe.quant, kept=kept)
            assert storage["total"] == expected.total
            total, weights = total + expected.total, weights + weight.numel()
        assert report.bits_per_weight == pytest.approx(total / weights)
    assert bits_per_weight(None) == VALUE_BITS  # the uncompressed model


def test_a_method_that_quantizes_without_describing_its_storage_is_an_error(monkeypatch):
    from helpers.compression import compress as compress_module

    def undescribed(self, name, weight, collector):
        return weight.float().round(), {}

    monkeypatch.setattr(compress_module.RoundToNearest, "compress_weight", undescribed)
    model, _ = load_model("tiny-llama", layers=1, seed=0)
    with pytest.raises(RuntimeError, match="without describing its storage"):
        compress_model(model, Recipe(method="rtn", quant=QuantSettings(bits=4)), progress=False)
    with pytest.raises(ValueError, match="no 'storage' entry"):
        bits_per_weight({"layer": {"bits": 4}})


@pytest.mark.parametrize("spec", [
    dict(method="rtn", quant=QuantSettings(bits=4, group_size=48)),
    dict(method="gptq", quant=QuantSettings(bits=4, group_size=48)),
    dict(method="gptq", quant=QuantSettings(bits=4, group_size=48, act_order=True)),
    dict(method="gptq", quant=QuantSettings(bits=4, group_size=48, act_order=True, static_groups=True)),
    dict(method="sparsegpt", sparsity=0.5, quant=QuantSettings(bits=4, group_size=48)),
    dict(method="rtn", quant=QuantSettings(bits=3, group_size=48, protect_fraction=0.05)),
])
def test_a_group_size_that_does_not_divide_the_width_gives_partial_groups_counted_per_real_group(spec):
    """tiny-llama's widths 64 and 128 with groups of 48: 48 + 16 and 48 + 48 + 32 (as 576 = 4 x 128 + 64)."""
    model, _ = load_model("tiny-llama", layers=2, seed=1)
    ids = torch.randint(0, 256, (2, 32), generator=torch.Generator().manual_seed(0))
    report = compress_model(model, Recipe(**spec), calibration_ids=ids, progress=False)
    quant = spec["quant"]
    for name, linear in compressed_linears(model).items():
        rows, columns = linear_weight(linear).shape
        storage = report.layers[name]["storage"]
        assert storage["grids"] == rows * -(-columns // 48) * (16 + quant.bits)
        assert torch.isfinite(linear_weight(linear)).all()
        if spec["method"] != "sparsegpt" and not quant.protects and not quant.act_order:
            last = linear_weight(linear)[:, 48 * (columns // 48):]
            assert max(len(torch.unique(row)) for row in last) <= 2 ** quant.bits  # one grid per partial group

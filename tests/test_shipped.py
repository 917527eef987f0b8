"""Every shipped pretrained checkpoint, loaded fresh, reproduces the metric in its manifest."""

import pytest

import zoo

SHIPPED = [(name, tag) for name, tags in sorted(zoo.available().items()) for tag in sorted(tags)]


def test_registry_lists_shipped_tags():
    for name, tag in SHIPPED:
        assert tag in zoo.get_spec(name).pretrained


def test_shipped_weights_are_small():
    total = sum(entry["size_bytes"] for tags in zoo.available().values() for entry in tags.values())
    assert total < 20 * 2**20, f"shipped weights weigh {total / 2**20:.1f} MiB"


@pytest.mark.parametrize("name,tag", SHIPPED, ids=[f"{n}.{t}" for n, t in SHIPPED])
def test_shipped_checkpoint_reproduces_its_metric(name, tag, tfds_dir):
    from train.evaluate import evaluate_pretrained
    from zoo.pretrained import read_manifest

    recorded = read_manifest(name, tag)["metric"]
    result = evaluate_pretrained(name, tag, split=recorded["split"], data_dir=str(tfds_dir))
    value = result["metrics"][recorded["name"]]
    assert result["metrics"]["count"] == recorded["count"]
    # 0.1 percentage points for accuracies; losses agree to 1e-3 (same data, same weights)
    assert value == pytest.approx(recorded["value"], abs=1e-3), (name, tag, recorded, value)

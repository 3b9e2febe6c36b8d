"""The side-by-side harness (`selfcompress.compare`, tools/bench_methods.py)
on generated MNIST-format data: every method kind runs for two seeds, IMP's
and gradual pruning's reported points respect the budget, dense_final trains the architecture the
self-compression run ended with, and a rerun resumes without training."""

import json
import math
import os

import pytest

import selfcompress as sc
from selfcompress import compare, errors, pruning
from test_imp import imp_config
from test_training import fake_mnist, smoke_config


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return fake_mnist(tmp_path_factory.mktemp("data"), n_train=500, n_test=100)


def test_every_method_kind_side_by_side(data_dir, tmp_path):
  methods = ["sc:bits", "dense_final", "imp:init", "gmp"]
  budget = 300.0  # KB: the quantized levels fit, the float32 ones do not
  kwargs = dict(sc_config=smoke_config(data_dir, max_train_examples=300,
                                       epochs=3, shed_every_epochs=1),
                imp_config=imp_config(data_dir), final_from="sc:bits")
  lines = []
  rows = compare.run(methods, [0, 1], budget, str(tmp_path), **kwargs,
                     print_fn=lines.append)
  assert [(r["method"], r["seed"]) for r in rows] == [
      (m, s) for s in (0, 1) for m in methods]
  for r in rows:
    assert 0 <= r["test_accuracy"] <= 1 and r["seconds"] > 0
  for r in rows:
    if r["method"] == "imp:init":
      assert r["size_kb"] <= budget, r
      assert "bits" in r["detail"] and "over budget" not in r["detail"]
    if r["method"] == "gmp":  # 4-bit values fit unpruned: nothing to cut
      assert r["size_kb"] <= budget and "over budget" not in r["detail"], r
      assert r["detail"].startswith("sparsity 0.00%"), r
    if r["method"] == "sc:bits":
      # The budget is the run's target_kb.
      workdir = os.path.join(tmp_path, "sc_bits", f"seed_{r['seed']}")
      with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["target_kb"] == budget
  # dense_final: the shed architecture of the same seed's SC run, trained
  # afresh (its weight count is the shed model's kernel sizes).
  shed = sc.shed(sc.load_model(os.path.join(tmp_path, "sc_bits", "seed_0",
                                            "model.keras"), compile=False))
  kept = sum(math.prod(l.kernel.shape) for l in pruning.prunable(shed))
  dense = next(r for r in rows if r["method"] == "dense_final")
  assert dense["detail"].startswith(f"{kept:,} weights")
  table = open(os.path.join(tmp_path, "results.md")).read()
  assert "| sc:bits | 2 |" in table and "time / imp:init" in table
  assert os.path.getsize(os.path.join(tmp_path, "pareto.png")) > 0
  # Resume: every run is finished, so nothing trains again.
  again = compare.run(methods, [0, 1], budget, str(tmp_path), **kwargs,
                      print_fn=lines.append)
  assert [r["test_accuracy"] for r in again] == [
      r["test_accuracy"] for r in rows]
  assert [r["seconds"] for r in again] == [r["seconds"] for r in rows]
  # A budget gradual pruning must prune for: sized at 4 bits, it fits.
  tight = compare.run_gmp(kwargs["sc_config"], 40.0, 0, str(tmp_path / "g"))
  assert tight["size_kb"] <= 40.0 and "over budget" not in tight["detail"]
  assert float(tight["detail"].split("sparsity ")[1].split("%")[0]) > 50
  # A budget IMP cannot reach: the best point near its smallest, flagged.
  over = compare.run_imp(kwargs["imp_config"], "init", 1.0, 0, str(tmp_path))
  floor = float(over["detail"].split("its smallest point is ")[1].split()[0])
  assert 1.0 < floor
  assert floor - 0.005 <= over["size_kb"] <= compare.FLOOR_SLACK * floor  # .2f


@pytest.mark.parametrize("methods,final_from,message", [
    (["sc:nope"], None, "Unknown method 'sc:nope'"),
    (["imp:reinit"], None, "Unknown method 'imp:reinit'"),
    (["dense_final"], None, "dense_final needs --final_from"),
    (["dense_final", "sc:bits"], "sc:bits", "listed before dense_final"),
])
def test_bad_methods(methods, final_from, message, tmp_path):
  with pytest.raises(errors.ConfigError, match=message):
    compare.run(methods, [0], 8.0, str(tmp_path), sc_config=None,
                imp_config=None, final_from=final_from)
  assert not os.listdir(tmp_path)


def test_imp_reads_the_self_compression_configs_data(data_dir):
  """Same data for every method: an augmentation (or split) set on the
  self-compression config reaches IMP's runs, and the harness says so."""
  sc_config = smoke_config(data_dir, random_crop_padding=1, num_validation=50)
  lines = []
  c = compare.same_data(imp_config(data_dir), sc_config, lines.append)
  assert c.random_crop_padding == 1 and c.num_validation == 50
  assert c.imp.levels == 1 and c.method == "dense"  # the rest is IMP's own
  assert "random_crop_padding=1 (was 0)" in lines[0]
  lines = []
  assert compare.same_data(c, sc_config, lines.append) == c and not lines

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bpnp.data import Batch, BlindPnPDataModule, CachedDataset, ObjectProtocol, PointControl, SyntheticDataset
from bpnp.data.cache import write_cache

ROOT = Path(__file__).resolve().parents[1]


def load_module(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def small_module(**kw) -> BlindPnPDataModule:
    args = dict(options={"num_points": 64}, train_samples=24, val_samples=8, test_samples=8, batch_size=4)
    return BlindPnPDataModule(**{**args, **kw})


def test_batches_are_typed_padded_and_independent_of_workers():
    runs = []
    for workers in (0, 2):
        dm = small_module(
            num_workers=workers, outlier_rate_2d=0.25, options={"num_points": 64, "visibility": "hpr"}
        )
        dm.setup("fit")
        runs.append([b for _, b in zip(range(3), dm.train_dataloader(), strict=False)])
    for a, b in zip(*runs, strict=True):
        assert isinstance(a, Batch) and len(a) == 4
        assert a.id == b.id
        torch.testing.assert_close(a.points2d, b.points2d)
        assert torch.equal(a.mask3d, b.mask3d) and torch.equal(a.match, b.match)
        # Padding is masked and unmatched.
        assert (a.match[~a.mask2d] == -1).all() and a.mask2d.sum() < a.mask2d.numel()
    ids = [i for b in runs[0] for i in b.id]
    assert ids != sorted(ids)  # training order is shuffled


def test_splits_differ_and_eval_loaders_are_ordered():
    dm = small_module(num_workers=0, eval_batch_size=8)
    dm.setup()
    val = next(iter(dm.val_dataloader()))
    test = next(iter(dm.test_dataloader()))
    assert len(val) == 8 and val.id == sorted(val.id)
    assert not torch.equal(val.points3d[0], test.points3d[0])


def test_configurable_from_a_parsed_config():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(BlindPnPDataModule, "data")
    cfg = parser.parse_object(
        {"data": {"source": "synthetic", "options": {"visibility": "hpr", "noise_px": 0.5}, "m_max": 100}}
    )
    dm = BlindPnPDataModule(**cfg.data.as_dict())
    ds = dm.dataset("train")
    assert isinstance(ds, SyntheticDataset) and ds.protocol.visibility == "hpr" and ds.control.m_max == 100


def test_bad_configuration_is_named(tmp_path):
    with pytest.raises(ValueError, match="unknown data source"):
        BlindPnPDataModule(source="imagenet")
    with pytest.raises(ValueError, match="needs a root"):
        BlindPnPDataModule(source="colmap").dataset("train")
    with pytest.raises(FileNotFoundError, match="index.json"):
        BlindPnPDataModule(cache_dir=str(tmp_path)).dataset("train")


def test_cache_round_trip_and_data_module_reads_it(tmp_path):
    src = SyntheticDataset(
        num_samples=7,
        control=PointControl(outlier_rate_2d=0.2),
        protocol=ObjectProtocol(num_points=50, visibility="hpr"),
    )
    summary = write_cache(src, tmp_path / "train", shard_size=3, progress=False)
    assert summary["written"] == 7 and sum(summary["rejected"].values()) == 0
    cached = CachedDataset(tmp_path / "train")
    assert len(cached) == 7 and len(list((tmp_path / "train").glob("shard_*.npz"))) == 3
    for i in (0, 3, 6, 2):
        a, b = src[i], cached[i]
        for f in ("points2d", "points3d", "K", "R", "t", "match"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        assert (a.scene, a.id, a.image_size, a.image_path) == (b.scene, b.id, b.image_size, b.image_path)
    dm = BlindPnPDataModule(cache_dir=str(tmp_path), batch_size=7, num_workers=0)
    batch = next(iter(dm.train_dataloader()))
    assert sorted(batch.id) == sorted(src[i].id for i in range(7))
    assert cached[0].R_ref is None
    ref = SyntheticDataset(num_samples=3, protocol=ObjectProtocol(num_points=50, reference_view_deg=10.0))
    write_cache(ref, tmp_path / "ref", progress=False)
    assert torch.equal(CachedDataset(tmp_path / "ref")[2].R_ref, ref[2].R_ref)
    assert torch.equal(CachedDataset(tmp_path / "ref")[2].t_ref, ref[2].t_ref)
    (tmp_path / "train" / "shard_00001.npz").write_bytes(b"broken")
    with pytest.raises(ValueError, match="shard_00001.npz"):
        CachedDataset(tmp_path / "train")[4]


def test_prepare_script_counts_rejections(tmp_path, capsys):
    helpers = load_module(Path(__file__).with_name("test_data_archive.py"))
    make_problem, write_archive = helpers.make_problem, helpers.write_archive
    rng = np.random.default_rng(0)
    samples = [make_problem(rng, 10, 12, 8, False, 12) for _ in range(5)]
    samples += [make_problem(rng, 10, 12, 2, False, 12) for _ in range(2)]
    write_archive(tmp_path / "arch", "modelnet40", "train", samples)
    script = load_module(ROOT / "scripts" / "prepare_data.py")
    out = tmp_path / "cache"
    argv = [
        "--source",
        "bpnpnet_archive",
        "--root",
        str(tmp_path / "arch"),
        "--out",
        str(out),
        "--splits",
        "train",
    ]
    assert script.main([*argv, "--option", "val_fraction=0", "--workers", "0", "--quiet"]) == 0
    index = json.loads((out / "train" / "index.json").read_text())
    assert index["count"] == 5 and index["meta"]["rejected"] == {"fewer than 4 inliers": 2}
    assert "fewer than 4 inliers: 2" in capsys.readouterr().out
    assert len(CachedDataset(out / "train")) == 5
    assert script.main(["--source", "colmap", "--root", str(tmp_path / "none"), "--out", str(out)]) == 1
    assert str(tmp_path / "none") in capsys.readouterr().out.replace("\n", "")


def test_trainer_consumes_the_batches():
    import pytorch_lightning as pl

    class Probe(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.seen: list[int] = []

        def training_step(self, batch, _):
            assert isinstance(batch, Batch) and batch.points3d.device == self.device
            self.seen.append(len(batch))
            return (self.w - batch.points3d[batch.mask3d].mean()) ** 2

        def validation_step(self, batch, _):
            assert isinstance(batch, Batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    probe = Probe()
    trainer = pl.Trainer(fast_dev_run=2, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(probe, datamodule=small_module(num_workers=0))
    assert probe.seen == [4, 4]


def test_empty_training_set_is_an_error(tmp_path):
    with pytest.raises(
        ValueError, match=r"empty training set: split 'train' of source 'synthetic' has no samples"
    ):
        small_module(train_samples=0, num_workers=0).train_dataloader()
    helpers = load_module(Path(__file__).with_name("test_data_archive.py"))
    rng = np.random.default_rng(0)
    few_pairs = [helpers.make_problem(rng, 10, 12, 2, False, 12) for _ in range(3)]  # all rejected
    helpers.write_archive(tmp_path / "arch", "modelnet40", "train", few_pairs)
    dm = BlindPnPDataModule(source="bpnpnet_archive", root=str(tmp_path / "arch"), num_workers=0)
    with pytest.raises(
        ValueError, match=rf"split 'train' of source 'bpnpnet_archive' at root {tmp_path}/arch has no"
    ):
        dm.train_dataloader()
    assert len(dm.dataset("train")) == 0 and dm.dataset("train").rejected == {"fewer than 4 inliers": 3}
    write_cache(SyntheticDataset(num_samples=0), tmp_path / "cache" / "train", progress=False)
    with pytest.raises(ValueError, match=rf"split 'train' of cache {tmp_path}/cache has no samples"):
        BlindPnPDataModule(cache_dir=str(tmp_path / "cache"), num_workers=0).train_dataloader()


def test_arguments_a_source_does_not_use_are_named():
    # these once trained silently on other data than the command line said
    with pytest.raises(ValueError, match="reads no root"):
        BlindPnPDataModule("synthetic", root="data/ModelNet40").dataset("train")
    with pytest.raises(ValueError, match=r"'num_pointz' .*did you mean 'num_points'"):
        BlindPnPDataModule("synthetic", options={"num_pointz": 64}).dataset("train")
    with pytest.raises(ValueError, match="train_samples=-5"):
        BlindPnPDataModule("synthetic", train_samples=-5)


def test_the_base_class_checks_splits_and_picks_streams_for_every_source(tmp_path):
    """One split check and one stream rule: procedural sources draw each split from its own stream,
    file sources (disjoint items per split) from stream 0."""
    from bpnp.data.bpnpnet_archive import BPnPNetArchiveDataset
    from bpnp.data.modelnet import ModelNet40Dataset

    with pytest.raises(
        ValueError, match=r"SyntheticDataset: split 'tset': expected one of \('train', 'val', 'test'\)"
    ):
        SyntheticDataset(num_samples=2, split="tset")
    assert [SyntheticDataset(num_samples=1, split=s).stream for s in ("train", "val", "test")] == [0, 1, 2]
    a, b = (
        SyntheticDataset(num_samples=1, split=s, protocol=ObjectProtocol(num_points=32))[0]
        for s in ("train", "test")
    )
    assert not torch.equal(a.points3d, b.points3d)
    bench = load_module(ROOT / "scripts" / "bench_data.py")
    meshes = bench.make_modelnet(tmp_path / "modelnet", meshes=4)
    assert [ModelNet40Dataset(meshes, split=s, val_fraction=0.5).stream for s in ("train", "val")] == [0, 1]
    with pytest.raises(ValueError, match=r"ModelNet40Dataset: split 'all': expected one of"):
        ModelNet40Dataset(meshes, split="all")
    archive = bench.make_archive(tmp_path / "archive", samples=8)
    assert [BPnPNetArchiveDataset(archive, split=s).stream for s in ("train", "val")] == [0, 0]


def test_config_point_control_keys_become_the_sources_control():
    from bpnp.data import build_dataset

    ds = build_dataset("synthetic", "train", num_samples=2, num_points=64, outlier_rate_2d=0.5, m_max=40)
    assert ds.control == PointControl(m_max=40, outlier_rate_2d=0.5)
    s = ds[0]
    assert len(s.points2d) == 40 and abs(float((s.match < 0).float().mean()) - 0.5) < 0.05
    with pytest.raises(ValueError, match=r"\['m_max'\] and 'control' both set the control"):
        build_dataset("synthetic", "train", num_samples=2, m_max=40, control=PointControl())


def test_config_protocol_keys_update_the_object_sources_default_protocol(tmp_path):
    from bpnp.data import ModelNet40Dataset, ObjectProtocol, build_dataset

    ds = build_dataset(
        "synthetic", "train", num_samples=2, num_points=64, noise_px=1.0, image_size=[320, 240]
    )
    assert ds.protocol == ObjectProtocol(num_points=64, noise_px=1.0, image_size=(320, 240))
    assert ModelNet40Dataset.default_protocol == ObjectProtocol(scale_range=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"\['num_points'\] and 'protocol' both set the protocol"):
        build_dataset("synthetic", "train", num_samples=2, num_points=64, protocol=ObjectProtocol())
    with pytest.raises(
        ValueError, match=r"'num_pionts' is not an option of source 'synthetic' \(did you mean 'num_points'"
    ):
        build_dataset("synthetic", "train", num_pionts=64)


def test_a_bad_source_option_is_named_when_the_module_is_built():
    with pytest.raises(ValueError, match=r"'num_pionts' is not an option of source 'synthetic'"):
        BlindPnPDataModule(options={"num_pionts": 64})
    with pytest.raises(ValueError, match=r"visibility 'xray'"):
        BlindPnPDataModule(options={"visibility": "xray"})

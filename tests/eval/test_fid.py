"""FID through torch-fidelity: the classifier extractor's properties, caching, Inception errors."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmvae_bench.data.spec import ModalitySpec, MultimodalDataset, Split
from mmvae_bench.errors import BenchError
from mmvae_bench.eval import fid as fidlib
from mmvae_bench.eval.protocol import FID, FID_EXTRACTORS, Protocol
from mmvae_bench.hmc import HMCSettings
from mmvae_bench.nets import build_classifier

SIDE = 16


def _shapes(n: int, seed: int) -> Tensor:
    """n 1x16x16 discs of random radius and centre in [0, 1]: a small real image set."""
    g = torch.Generator().manual_seed(seed)
    axis = torch.linspace(-1, 1, SIDE)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    c = 0.4 * (torch.rand(n, 2, 1, 1, generator=g) - 0.5)
    r = 0.3 + 0.5 * torch.rand(n, 1, 1, generator=g)
    return (((x - c[:, 0]) ** 2 + (y - c[:, 1]) ** 2) <= r**2).float().unsqueeze(1)


def _dataset(n_test: int = 160) -> MultimodalDataset:
    spec = {
        m: ModalitySpec(name=m, shape=(1, SIDE, SIDE), kind="image", classifier="mlp", fid=True)
        for m in ("a", "b")
    }
    vec = ModalitySpec(name="v", shape=(4,), kind="vector")
    test = Split(
        {"a": _shapes(n_test, 1), "b": _shapes(n_test, 2), "v": torch.zeros(n_test, 4)},
        torch.arange(n_test) % 2,
    )
    return MultimodalDataset(
        name="toy-discs", specs={**spec, "v": vec}, train=test, test=test, n_classes=2
    )


def _classifiers(ds: MultimodalDataset) -> dict[str, SimpleNamespace]:
    # Untrained but fixed nets: FID's properties do not need a trained feature map.
    torch.manual_seed(0)
    return {
        m: SimpleNamespace(net=build_classifier(ds.specs[m], ds.n_classes).eval())
        for m in ("a", "b")
    }


def _blur(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_corruption(tmp_path: Path) -> None:
    ds = _dataset()
    ext = fidlib.classifier_extractor(ds, _classifiers(ds), ["a"])
    spec = ds.specs["a"]
    x = ds.test.x["a"]
    real = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(x, spec))

    def fid(images: Tensor) -> float:
        return fidlib.frechet_distance(
            real,
            fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(images, spec)),
            extractor=ext.registered["a"],
            real_cache_name=f"toy-a-{real.fingerprint()}",
            cache_dir=tmp_path,
        )

    g = torch.Generator().manual_seed(3)
    noise = torch.randn(x.shape, generator=g)
    same = fid(x)
    noisy = [fid((x + s * noise).clamp(0, 1)) for s in (0.05, 0.2, 0.5)]
    blurred = fid(_blur(x))
    # float64 features: the self-distance is zero up to eigen-solver round-off.
    assert abs(same) < 1e-8, same
    assert 0 < noisy[0] < noisy[1] < noisy[2], noisy
    assert blurred > 100 * abs(same) and blurred > 0, blurred
    # Real-data statistics are cached under dataset + fingerprint + extractor, and reused.
    [cached] = tmp_path.iterdir()
    assert (
        cached.name == f"toy-a-{real.fingerprint()}-{ext.registered['a']}-stat-fid-penultimate.npz"
    )
    assert fid(x) == same


def _real_and_fake(n: int = 64) -> tuple[fidlib.ImageTensorDataset, fidlib.ImageTensorDataset, str]:
    ds = _dataset(n)
    ext = fidlib.classifier_extractor(ds, _classifiers(ds), ["a"])
    spec, x = ds.specs["a"], ds.test.x["a"]
    real = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(x, spec))
    fake = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(_blur(x), spec))
    return real, fake, ext.registered["a"]


def test_fid_is_torch_fidelitys_with_or_without_our_cache(tmp_path: Path) -> None:
    import torch_fidelity

    real, fake, name = _real_and_fake()
    theirs = torch_fidelity.calculate_metrics(
        input1=real,
        input2=fake,
        fid=True,
        feature_extractor=name,
        cache=False,
        cuda=False,
        batch_size=16,
        save_cpu_ram=True,
        verbose=False,
    )[torch_fidelity.KEY_METRIC_FID]

    def ours() -> float:
        return fidlib.frechet_distance(
            real,
            fake,
            extractor=name,
            real_cache_name="toy-real",
            cache_dir=tmp_path,
            batch_size=16,
        )

    uncached = fidlib.frechet_distance(real, fake, extractor=name, batch_size=16)
    written = ours()
    path = fidlib.real_stats_path(tmp_path, "toy-real", name, fidlib.CLASSIFIER_FEATURE_LAYER)
    with np.load(path, allow_pickle=False) as npz:
        assert set(npz.files) == {"mu", "sigma"} and npz["sigma"].shape == npz["mu"].shape * 2
    read = ours()
    assert theirs > 1e-2  # blurred discs are not the discs: a relative check means something
    # torch-fidelity's own steps on the same features: the tolerance asked for is 1e-6 relative;
    # measured, the numbers are the same float.
    for value in (uncached, written, read):
        assert value == pytest.approx(theirs, rel=1e-6)
    assert read == written == uncached  # the .npz holds mu and sigma bit for bit


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncated", "unreadable (BadZipFile"),
        ("garbage", "unreadable (ValueError"),
        ("pickle", "holds pickled data, not loaded"),
        ("other-arrays", "expected the arrays mu and sigma"),
        ("wrong-shape", "holds mu float64 (3,)"),
    ],
)
def test_a_damaged_statistics_cache_is_recomputed_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: str, reason: str
) -> None:
    real, fake, name = _real_and_fake(16)
    first = fidlib.frechet_distance(
        real, fake, extractor=name, real_cache_name="r", cache_dir=tmp_path
    )
    path = fidlib.real_stats_path(tmp_path, "r", name, fidlib.CLASSIFIER_FEATURE_LAYER)
    good = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(good[: len(good) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not numpy at all")
    elif damage == "pickle":
        path.write_bytes(pickle.dumps({"mu": [0.0]}))
    elif damage == "other-arrays":
        np.savez(path, mu=np.zeros(16), other=np.zeros(3))
    else:
        np.savez(path, mu=np.zeros(3), sigma=np.zeros((3, 3)))
    with caplog.at_level(logging.WARNING, logger=fidlib.__name__):
        again = fidlib.frechet_distance(
            real, fake, extractor=name, real_cache_name="r", cache_dir=tmp_path
        )
    assert again == first
    assert str(path) in caplog.text and reason in caplog.text and "recomputing" in caplog.text
    assert path.read_bytes() == good  # rewritten with the statistics of the real images
    assert "allow_pickle" not in caplog.text  # no advice to load a cache unsafely


def test_fid_does_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    ds = _dataset(64)
    ext = fidlib.classifier_extractor(ds, _classifiers(ds), ["a"])
    real = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(ds.test.x["a"], ds.specs["a"]))
    fake = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(_blur(ds.test.x["a"]), ds.specs["a"]))
    values = [
        fidlib.frechet_distance(real, fake, extractor=ext.registered["a"], batch_size=b)
        for b in (7, 64)
    ]
    # float32 convolutions differ in the last bits between batch shapes: 1e-6 relative.
    assert values[0] == pytest.approx(values[1], rel=1e-6)


def test_extractor_names_carry_dataset_modality_and_weights() -> None:
    ds = _dataset(8)
    clfs = _classifiers(ds)
    ext = fidlib.classifier_extractor(ds, clfs, ["a", "b"])
    assert ext.kind == "classifier" and ext.name.startswith("mmvae-clf-toy-discs-")
    assert ext.registered["a"].startswith("mmvae-clf-toy-discs-a-")
    assert ext.registered["a"] != ext.registered["b"]
    # Registering the same weights again is allowed (same name); new weights are a new name.
    assert fidlib.classifier_extractor(ds, clfs, ["a", "b"]) == ext
    with torch.no_grad():
        next(clfs["a"].net.parameters()).add_(1.0)
    changed = fidlib.classifier_extractor(ds, clfs, ["a", "b"])
    assert changed.registered["a"] != ext.registered["a"] and changed.name != ext.name
    assert changed.registered["b"] == ext.registered["b"]


def test_images_go_as_uint8_rgb() -> None:
    spec = ModalitySpec(name="g", shape=(1, 2, 2), kind="image", value_range=(-1.0, 1.0))
    x = torch.tensor([[[[-1.0, 0.0], [1.0, 3.0]]]])
    out = fidlib.to_uint8_rgb(x, spec)
    assert out.dtype == torch.uint8 and out.shape == (1, 3, 2, 2)
    assert torch.equal(out[0, 0], torch.tensor([[0, 128], [255, 255]], dtype=torch.uint8))
    assert torch.equal(out[0, 0], out[0, 2])
    with pytest.raises(BenchError, match="images"):
        fidlib.to_uint8_rgb(torch.zeros(2, 4), spec)
    with pytest.raises(BenchError, match="uint8"):
        fidlib.ImageTensorDataset(torch.zeros(2, 3, 4, 4))


def test_fid_settings_are_checked() -> None:
    with pytest.raises(BenchError, match="must be one of"):
        fidlib.FIDSettings(extractor="vgg")  # type: ignore[arg-type]
    with pytest.raises(BenchError, match="needs --fid-extractor inception"):
        fidlib.FIDSettings(extractor="classifier", inception_weights=Path("w.pth"))


def test_missing_inception_weights_say_where_to_put_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    expected = tmp_path / "hub" / "checkpoints" / "weights-inception-2015-12-05-6726825d.pth"
    with pytest.raises(BenchError) as e:
        fidlib.inception_weights_path(fidlib.FIDSettings(extractor="inception"))
    assert str(expected) in str(e.value) and "--inception-weights" in str(e.value)
    missing = tmp_path / "nowhere.pth"
    with pytest.raises(BenchError, match="nowhere.pth"):
        fidlib.inception_weights_path(
            fidlib.FIDSettings(extractor="inception", inception_weights=missing)
        )
    # Present in torch-fidelity's cache: that file is used, nothing is downloaded.
    expected.parent.mkdir(parents=True)
    torch.save({"fc.bias": torch.zeros(3)}, expected)  # read here; its fit is checked later
    assert fidlib.inception_weights_path(fidlib.FIDSettings(extractor="inception")) == expected


class _ToyModel(nn.Module):
    """Decodes z linearly into both image modalities; 'encodes' a subset as its mean pixel."""

    def __init__(self, ds: MultimodalDataset) -> None:
        super().__init__()
        self.specs = dict(ds.specs)
        self.latent_dim = 3
        self.out = nn.ModuleDict({m: nn.Linear(3, SIDE * SIDE) for m in ("a", "b")})

    @property
    def modalities(self) -> tuple[str, ...]:
        return tuple(self.specs)

    def prior_sample(self, n: int) -> Tensor:
        return torch.randn(n, self.latent_dim)

    def decode(self, z: Tensor) -> dict[str, Tensor]:
        out = {
            m: torch.sigmoid(f(z)).view(*z.shape[:-1], 1, SIDE, SIDE) for m, f in self.out.items()
        }
        return {**out, "v": torch.zeros(*z.shape[:-1], 4)}

    def generate(
        self, batch: dict[str, Tensor], subset: tuple[str, ...], n: int = 1, *, hmc=None
    ) -> dict[str, Tensor]:
        feats = torch.stack([batch[m].flatten(1).mean(1) for m in subset], -1).mean(-1)
        z = feats[:, None].expand(-1, self.latent_dim) + 0.1 * torch.randn(len(feats), 3)
        return self.decode(z.unsqueeze(0).expand(n, -1, -1))


def test_fid_metrics_cover_prior_and_every_subset_without_the_modality(tmp_path: Path) -> None:
    ds = _dataset(48)
    model = _ToyModel(ds)
    protocol = Protocol(
        name="t",
        version="t-1",
        test_samples=None,
        joint_samples=10,
        hmc=HMCSettings(steps=1, n_leapfrog=1, step_size=0.01),
        batch_size=16,
        fid_samples=32,
    )
    settings = fidlib.FIDSettings()
    args = (model, ds, ds.test, _classifiers(ds), protocol, settings)
    out = fidlib.fid_metrics(*args, cache_dir=tmp_path)
    [(name, values)] = out[FID].items()
    assert name.startswith("mmvae-clf-toy-discs-")
    # Only image modalities with spec.fid; conditional from every subset not containing them.
    assert set(values) == {"a", "b"}
    assert set(values["a"]) == {"unconditional", "b", "b+v", "v"}
    assert set(values["b"]) == {"unconditional", "a", "a+v", "v"}
    assert all(v >= 0 for per in values.values() for v in per.values())
    info = out[FID_EXTRACTORS][name]
    assert info["kind"] == "classifier" and "not Inception" in info["label"]
    assert info["unconditional_samples"] == 32 and info["conditional_samples"] == 32
    assert info["real_samples"] == 48
    # Fixed sampling seed: the same weights give the same numbers.
    assert fidlib.fid_metrics(*args, cache_dir=tmp_path) == out


def _random_inception(path: Path) -> dict[str, Tensor]:
    """A randomly initialised Inception v3 state dict (no real weights offline), saved at path."""
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    with pytest.MonkeyPatch.context() as mp:  # build the net without any weights file
        mp.setattr(inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        mp.setattr(inception.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = inception.FeatureExtractorInceptionV3(fidlib.INCEPTION_NAME, ["2048"])
    state = net.state_dict()
    # Default init shrinks activations ~6x per conv + ReLU: over ~90 layers the 2048 features
    # vanish (~1e-8, FID ~1e-13). BatchNorm scales of sqrt(6) keep them O(1).
    for k, v in state.items():
        if k.endswith("bn.weight"):
            v.fill_(6**0.5)
    torch.save(state, path)
    return state


def test_inception_weights_are_read_as_a_state_dict_and_reach_the_extractor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch_fidelity import feature_extractor_inceptionv3 as inception

    weights = tmp_path / "inception.pth"
    state = _random_inception(weights)
    settings = fidlib.FIDSettings(extractor="inception", inception_weights=weights)
    ds = _dataset(8)
    ext = fidlib.resolve_extractor(settings, ds, {}, ["a", "b"])
    assert ext.name == "inception-v3-compat" and ext.kind == "inception"
    assert ext.registered == {"a": "inception-v3-compat", "b": "inception-v3-compat"}
    assert ext.weights == weights

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch-fidelity fetched or read the weights file itself")

    monkeypatch.setattr(inception, "load_state_dict_from_url", no_unpickling)
    real_load = torch.load

    def only_our_bytes(f, *args, **kwargs):
        # The one full unpickling left is of the in-memory copy this module wrote.
        if not kwargs.get("weights_only", True):
            assert not isinstance(f, (str, Path)), f
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", only_our_bytes)
    net = fidlib._feature_extractor(ext.registered["a"], ext.layer, ext.weights, cuda=False)
    # torch-fidelity's own class and name (the statistics' cache identity), with these weights.
    assert isinstance(net, inception.FeatureExtractorInceptionV3)
    assert net.get_name() == "inception-v3-compat" and net.features_list == ["2048"]
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    got = net.state_dict()
    assert got.keys() == state.keys() and all(torch.equal(got[k], v) for k, v in state.items())


def test_inception_weights_that_are_not_a_state_dict_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "w.pth"
    torch.save([torch.zeros(2)], path)
    with pytest.raises(BenchError, match="not a plain tensor state dict .*it holds a list"):
        fidlib.load_inception_weights(path)
    torch.save({"w": torch.zeros(2), "step": 3}, path)
    with pytest.raises(BenchError, match=r"entries that are not named tensors: \['step'\]"):
        fidlib.load_inception_weights(path)
    path.write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BenchError, match="w.pth are corrupt or unreadable"):
        fidlib.load_inception_weights(path)
    torch.save({"conv.weight": torch.zeros(2)}, path)
    with pytest.raises(BenchError, match="w.pth do not fit Inception v3"):
        fidlib._feature_extractor(fidlib.INCEPTION_NAME, "2048", path, cuda=False)


@pytest.mark.slow
def test_inception_fid_equals_torch_fidelitys_on_the_same_weights(tmp_path: Path) -> None:
    # ~10-15 s on one CPU thread: Inception at 299x299 and two 2048x2048 eigen-decompositions.
    import torch_fidelity

    weights = tmp_path / "inception.pth"
    _random_inception(weights)
    ds = _dataset(4)
    real = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(ds.test.x["a"], ds.specs["a"]))
    fake = fidlib.ImageTensorDataset(fidlib.to_uint8_rgb(_blur(ds.test.x["a"]), ds.specs["a"]))
    ours = fidlib.frechet_distance(real, fake, extractor=fidlib.INCEPTION_NAME, weights=weights)
    # torch-fidelity unpickles the file itself: fine for this file, written just above.
    theirs = torch_fidelity.calculate_metrics(
        input1=real,
        input2=fake,
        fid=True,
        feature_extractor=fidlib.INCEPTION_NAME,
        feature_extractor_weights_path=str(weights),
        cache=False,
        cuda=False,
        save_cpu_ram=True,
        verbose=False,
    )[torch_fidelity.KEY_METRIC_FID]
    assert theirs > 1  # features that do not vanish: a relative check means something
    assert ours == pytest.approx(theirs, rel=1e-6)  # measured: 5e-11

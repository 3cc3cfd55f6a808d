"""FID / KID: closed forms, the unbiased MMD^2 by hand, statistics files, and the services on synthetic tiles.

The comparison with pytorch-fid itself (features, distance, folder pipeline) is test_fid_pytorch_fid.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from histostain.errors import ConfigError, InputError, WeightsError
from histostain.io.images import write_image
from histostain.metrics import fid as fid_module
from histostain.metrics.defaults import FID_WEIGHTS_SHA256_PREFIX
from histostain.metrics.evaluate_fid import evaluate_fid, evaluate_kid, write_stats
from histostain.metrics.fid import (
    compute_statistics,
    covariance_factor,
    fid_from_features,
    frechet_distance,
    kid_from_features,
)
from histostain.metrics.fid_features import ImageTensorDataset, collate, resolve_num_workers
from histostain.metrics.inception import FID_WEIGHTS_URL, is_published_fid_weights
from histostain.runtime.device import DeviceManager


@pytest.fixture(scope="module")
def tiles(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 synthetic 64 x 64 tiles as H&E (``he/``) and as IHC (``ihc/``)."""
    from histostain.synth import write_dataset

    root = tmp_path_factory.mktemp("fid_tiles")
    write_dataset("tiles", root / "tiles", 3, 64, seed=3)
    return root / "tiles"


def _spd(rng: np.random.Generator, d: int, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T / (rank or d)


# ------------------------------------------------------------------------------------------ Fréchet distance


def test_frechet_one_dimensional_closed_form() -> None:
    # W2^2 between N(1, 2^2) and N(4, 5^2) is (1 - 4)^2 + (2 - 5)^2 = 18
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([4.0]), np.array([[25.0]])) == pytest.approx(
        18.0, abs=1e-12
    )


def test_frechet_commuting_covariances_closed_form() -> None:
    """Same eigenvectors: the trace term is sum sqrt(a_i b_i), so FID = |dmu|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(0)
    d = 32
    a, b = rng.uniform(0.1, 5.0, d), rng.uniform(0.1, 5.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    rotated = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert rotated == pytest.approx(expected, rel=1e-9)


def test_frechet_identical_and_symmetric_even_when_rank_deficient() -> None:
    rng = np.random.default_rng(2)
    d = 64
    full1, full2 = _spd(rng, d), _spd(rng, d)
    thin1, thin2 = _spd(rng, d, rank=10), _spd(rng, d, rank=7)  # N < d: singular covariances
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    for s1, s2 in ((full1, full2), (thin1, thin2)):
        assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)
        forward, backward = frechet_distance(mu1, s1, mu2, s2), frechet_distance(mu2, s2, mu1, s1)
        assert np.isfinite(forward) and forward > 0
        assert forward == pytest.approx(backward, rel=1e-9)


@pytest.mark.parametrize(("n1", "n2"), [(10, 7), (10, 60), (60, 70)])
def test_frechet_small_sample_routes_agree_with_the_full_route(n1: int, n2: int) -> None:
    """Covariance factors (N <= d) take N-sized routes; the value must equal the d x d eigenvalue route."""
    rng = np.random.default_rng(n1 + n2)
    d = 40
    f1, f2 = rng.normal(size=(n1, d)), rng.normal(size=(n2, d)) * 1.5 + 0.2
    (mu1, s1), (mu2, s2) = compute_statistics(f1), compute_statistics(f2)
    a1, a2 = covariance_factor(f1, mu1), covariance_factor(f2, mu2)
    np.testing.assert_allclose(a1.T @ a1, s1, atol=1e-12)
    full = frechet_distance(mu1, s1, mu2, s2)  # the d x d route, tied to pytorch-fid in test_fid_pytorch_fid.py
    for kwargs in ({"factor1": a1}, {"factor2": a2}, {"factor1": a1, "factor2": a2}):
        assert frechet_distance(mu1, s1, mu2, s2, **kwargs) == pytest.approx(full, rel=1e-9, abs=1e-9)


@pytest.mark.parametrize(("n1", "n2"), [(5, 9), (50, 8), (60, 70)])
def test_fid_from_features_is_the_frechet_distance_of_the_statistics(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n1 * n2)
    f1, f2 = rng.normal(size=(n1, 40)), rng.normal(size=(n2, 40)) * 0.7 - 0.1
    (mu1, s1), (mu2, s2) = compute_statistics(f1), compute_statistics(f2)
    assert fid_from_features(f1, f2) == pytest.approx(frechet_distance(mu1, s1, mu2, s2), rel=1e-9, abs=1e-9)


def test_frechet_rejects_mismatched_dimensions() -> None:
    with pytest.raises(InputError, match="dimensions differ"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(InputError, match="NaN"):
        frechet_distance(np.zeros(2), np.array([[np.nan, 0], [0, 1]]), np.zeros(2), np.eye(2))


def test_statistics_by_hand() -> None:
    features = np.array([[1, 2], [3, 6], [5, 10]], dtype=np.float32)
    mu, sigma = compute_statistics(features)
    assert mu.dtype == np.float64 and sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [3.0, 6.0])
    # deviations (-2, -4), (0, 0), (2, 4); sums of products / (N - 1) = 2
    np.testing.assert_allclose(sigma, [[4.0, 8.0], [8.0, 16.0]])
    with pytest.raises(InputError, match="at least 2"):
        compute_statistics(features[:1])


# ------------------------------------------------------------------------------------------------------- KID


def test_kid_hand_computed_m3() -> None:
    """k(x, y) = (x.y / 2 + 1)^3 on d = 2; with N = m = 3 every subset is the whole set, in some order.

    XX off-diagonal: x1.x2 = 0 -> 1, x1.x3 = 1 -> 3.375, x2.x3 = 1 -> 3.375, both orders: 15.5
    YY off-diagonal: all dot products 0 -> 1, both orders: 6
    XY: rows x1 (1, 8, 1), x2 (1, 1, 8), x3 (1, 8, 8): 37
    MMD^2 = (15.5 + 6) / (3 * 2) - 2 * 37 / 9 = -167/36 (the unbiased estimate may be negative)
    """
    x = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]])
    mean, std = kid_from_features(x, y, subsets=5, subset_size=1000, seed=7)
    assert mean == pytest.approx(-167 / 36, abs=1e-12)
    assert std == pytest.approx(0.0, abs=1e-12)


def _mmd2_loops(x: np.ndarray, y: np.ndarray) -> float:
    m, d = len(x), x.shape[1]

    def k(a: np.ndarray, b: np.ndarray) -> float:
        return (float(a @ b) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return (xx + yy) / (m * (m - 1)) - 2 * xy / (m * m)


def test_kid_subset_protocol_and_both_code_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """m = min(subset_size, N1, N2); per subset: real indices, then fake indices, from default_rng(seed)."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 5)), rng.normal(size=(9, 5)) + 0.3
    rng = np.random.default_rng(11)
    values = []
    for _ in range(4):
        ix, iy = rng.choice(6, 6, replace=False), rng.choice(9, 6, replace=False)
        values.append(_mmd2_loops(x[ix], y[iy]))
    mean, std = kid_from_features(x, y, subsets=4, subset_size=1000, seed=11)
    assert mean == pytest.approx(np.mean(values), rel=1e-10)
    assert std == pytest.approx(np.std(values), rel=1e-8)
    monkeypatch.setattr(fid_module, "_GRAM_BYTES_LIMIT", 0)  # force the per-subset products
    assert kid_from_features(x, y, subsets=4, subset_size=1000, seed=11) == pytest.approx((mean, std), rel=1e-10)


def test_kid_is_unbiased_for_equal_distributions() -> None:
    """Mean over independent draws ~ 0 (a biased V-statistic would sit near +0.25 here), values of both signs."""
    rng = np.random.default_rng(4)
    draws = np.array(
        [kid_from_features(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)), subsets=1)[0] for _ in range(200)]
    )
    standard_error = draws.std() / np.sqrt(len(draws))
    assert abs(draws.mean()) < 4 * standard_error
    assert (draws < 0).any() and (draws > 0).any()
    shifted = kid_from_features(rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + 1.0, subsets=10)[0]
    assert shifted > 20 * standard_error


def test_kid_needs_two_samples() -> None:
    with pytest.raises(InputError, match="at least 2"):
        kid_from_features(np.ones((1, 3)), np.ones((5, 3)))
    with pytest.raises(InputError, match="equal d"):
        kid_from_features(np.ones((4, 3)), np.ones((4, 2)))


# ----------------------------------------------------------------------------------------------- data path


def test_dataset_resizes_each_image_and_reports_unreadable_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    small = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    write_image(tmp_path / "a.png", small)
    write_image(tmp_path / "b.png", rng.integers(0, 256, (48, 80, 3), dtype=np.uint8))
    (tmp_path / "c.png").write_bytes(b"not a png")
    dataset = ImageTensorDataset([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"])
    batch, error = collate([dataset[0], dataset[1]])
    assert error is None and batch is not None and batch.shape == (2, 3, 299, 299)
    reference = torch.nn.functional.interpolate(
        torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255, size=(299, 299), mode="bilinear"
    )
    torch.testing.assert_close(batch[:1], reference, rtol=0, atol=1e-6)
    _, error = collate([dataset[0], dataset[2]])
    assert error is not None and "c.png" in error


# --------------------------------------------------------------------------------------------------- services


@pytest.mark.slow
def test_fid_of_a_folder_with_itself_is_zero(tiles: Path, fid_weights: Path, cpu: DeviceManager) -> None:
    result = evaluate_fid(tiles / "he", tiles / "he", device=cpu, weights=fid_weights, num_workers=0)
    assert result.metric == "fid"
    assert abs(result.summary["fid"]) < 1e-6 * max(1.0, float(np.abs(result.summary["fid"])))
    assert result.summary["n_real"] == 3 and result.summary["n_fake"] == 3
    assert any("N real = 3 < 2048" in w for w in result.warnings)
    assert any("N fake = 3 < 2048" in w for w in result.warnings)
    assert result.meta["weights_sha256"] == hashlib.sha256(fid_weights.read_bytes()).hexdigest()
    assert result.meta["weights_published"] is False  # the tests' random network
    assert any("is not the published FID-Inception file" in w for w in result.warnings)
    assert result.meta["feature_dim"] == 2048
    assert "align_corners=False" in result.meta["resize"]
    json.dumps(result.to_json())  # strict JSON


@pytest.mark.slow
def test_fid_statistics_round_trip(tiles: Path, fid_weights: Path, cpu: DeviceManager, tmp_path: Path) -> None:
    stats = tmp_path / "real_stats.npz"
    direct = evaluate_fid(
        tiles / "he", tiles / "ihc", device=cpu, weights=fid_weights, num_workers=1, batch_size=2, save_stats=stats
    )
    assert direct.summary["fid"] > 0
    with np.load(stats) as data:  # pytorch-fid reads exactly these two arrays
        assert data["mu"].shape == (2048,) and data["sigma"].shape == (2048, 2048)
        assert int(data["n"]) == 3
    via_file = evaluate_fid(stats, tiles / "ihc", device=cpu, weights=fid_weights, num_workers=0)
    assert via_file.summary["fid"] == pytest.approx(direct.summary["fid"], rel=1e-6)
    assert via_file.summary["n_real"] == 3
    assert via_file.tables["inputs"][0]["kind"] == "statistics"
    assert "A2 S1 A2^T (3 x 3)" in via_file.meta["sqrt_trace"]  # the exact small route for the N = 3 side


def _stats(folder: Path, name: str, d: int = 4, **extra: object) -> Path:
    """A statistics file of d-dimensional features (any d: with statistics on both sides no network runs)."""
    rng = np.random.default_rng(6)
    return write_stats(folder / name, rng.normal(size=d), np.eye(d), **extra)  # type: ignore[arg-type]


PUBLISHED = FID_WEIGHTS_SHA256_PREFIX + "0" * 56  # a hash with the published file's prefix


def test_statistics_from_other_weights_are_flagged(tmp_path: Path, cpu: DeviceManager) -> None:
    a = _stats(tmp_path, "a.npz", n=5000, weights_sha256=PUBLISHED)
    b = _stats(tmp_path, "b.npz", n=5000, weights_sha256=FID_WEIGHTS_SHA256_PREFIX + "1" * 56)
    result = evaluate_fid(a, b, device=cpu)
    assert result.summary["fid"] == pytest.approx(0.0, abs=1e-9)
    assert len(result.warnings) == 1 and "different Inception weights" in result.warnings[0]
    assert "a.npz: 6726825d0000" in result.warnings[0] and "b.npz: 6726825d1111" in result.warnings[0]


def test_statistics_of_enough_images_from_the_same_weights_give_no_warning(tmp_path: Path, cpu: DeviceManager) -> None:
    a = _stats(tmp_path, "a.npz", n=5000, weights_sha256=PUBLISHED)  # N >= 2048
    result = evaluate_fid(a, a, device=cpu)
    assert result.warnings == [] and result.meta["weights_published"] is True


def test_statistics_from_weights_that_are_not_published_are_flagged(tmp_path: Path, cpu: DeviceManager) -> None:
    """Issue point 12: the published file's SHA-256 starts with 6726825d (its name says so); others are flagged."""
    a = _stats(tmp_path, "a.npz", n=5000, weights_sha256="0" * 64)
    result = evaluate_fid(a, a, device=cpu)
    assert result.meta["weights_published"] is False
    assert result.warnings == [
        f"{a} (statistics file): sha256 00000000... is not the published FID-Inception file "
        "(pt_inception-2015-12-05-6726825d.pth, sha256 6726825d...): this FID is not comparable with published values"
    ]
    assert result.notes["weights"] == "NOT the published FID-Inception file (not comparable with papers)"
    assert "weights_published" in result.to_json()["meta"] and "notes" not in result.to_json()


def test_statistics_without_a_weights_hash_leave_publication_unknown(tmp_path: Path, cpu: DeviceManager) -> None:
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "pytorch_fid.npz", mu=rng.normal(size=4), sigma=np.eye(4))  # pytorch-fid's: no hash
    result = evaluate_fid(tmp_path / "pytorch_fid.npz", tmp_path / "pytorch_fid.npz", device=cpu)
    assert result.meta["weights_published"] is None and not any("published" in w for w in result.warnings)
    assert result.notes["weights"].startswith("unknown")


def test_published_weights_are_recognised_by_the_hash_prefix() -> None:
    assert is_published_fid_weights("6726825d" + "f" * 56) and is_published_fid_weights("6726825D" + "0" * 56)
    assert not is_published_fid_weights("0" * 64)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_warnings_stay_in_the_result_and_are_not_logged_as_warnings(tmp_path: Path, cpu: DeviceManager) -> None:
    """Issue point 6: the CLI prints result.warnings; a WARNING record would print each one a second time."""
    a = _stats(tmp_path, "a.npz", n=5, weights_sha256="0" * 64)
    logger = logging.getLogger("histostain.metrics.evaluate_fid")
    handler, level = _Records(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        result = evaluate_fid(a, a, device=cpu)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert len(result.warnings) == 3  # weights not published, N real and N fake < 2048
    assert [r.getMessage() for r in handler.records if r.levelno >= logging.INFO] == []
    assert sum(r.getMessage().startswith("warning: ") for r in handler.records) == 3  # kept for --debug


def test_two_statistics_files_need_no_network_and_no_weights(tmp_path: Path, cpu: DeviceManager) -> None:
    a = _stats(tmp_path, "a.npz", n=5000)
    result = evaluate_fid(a, a, device=cpu, weights_dir=tmp_path / "no_weights_here")
    assert result.meta["weights"] is None and result.meta["weights_sha256"] is None
    assert [row["kind"] for row in result.tables["inputs"]] == ["statistics", "statistics"]


def test_pytorch_fid_statistics_without_n_warn_that_n_is_unknown(tmp_path: Path, cpu: DeviceManager) -> None:
    rng = np.random.default_rng(6)
    np.savez(tmp_path / "pytorch_fid.npz", mu=rng.normal(size=4), sigma=np.eye(4))  # pytorch-fid's files carry no N
    result = evaluate_fid(tmp_path / "pytorch_fid.npz", _stats(tmp_path, "a.npz", n=5000), device=cpu)
    assert result.summary["n_real"] is None and any("N real unknown" in w for w in result.warnings)


def test_statistics_file_without_mu_and_sigma_is_an_input_error(tmp_path: Path, cpu: DeviceManager) -> None:
    np.savez(tmp_path / "bad.npz", mean=np.zeros(4))
    with pytest.raises(InputError, match=r"bad.npz holds \['mean'\]"):
        evaluate_fid(tmp_path / "bad.npz", _stats(tmp_path, "a.npz"), device=cpu)


def test_statistics_of_other_dimensions_are_an_input_error(tmp_path: Path, cpu: DeviceManager) -> None:
    with pytest.raises(InputError, match="feature dimensions differ"):
        evaluate_fid(_stats(tmp_path, "small.npz", d=3), _stats(tmp_path, "a.npz", d=4), device=cpu)


@pytest.mark.parametrize(
    ("service", "options", "message"),
    [
        (evaluate_fid, {"batch_size": 0}, "batch size"),
        (evaluate_fid, {"num_workers": -1}, "num_workers"),
        (evaluate_fid, {"save_stats": Path("stats.txt")}, r"\.npz"),
        (evaluate_kid, {"subset_size": 1}, "subset size"),
        (evaluate_kid, {"subsets": 0}, "subsets"),
    ],
)
def test_option_errors_come_before_any_input_is_read(
    tmp_path: Path, cpu: DeviceManager, service, options: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        service(tmp_path / "missing", tmp_path / "missing", device=cpu, **options)


def test_worker_policy_none_means_no_workers_on_a_cpu_and_some_on_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_num_workers(None, "cpu") == 0  # the network already uses every core
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert resolve_num_workers(None, "cuda") == 4
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert resolve_num_workers(None, "cuda") == 2  # never more processes than CPUs
    assert resolve_num_workers(3, "cpu") == 3 and resolve_num_workers(0, "cuda") == 0  # an explicit count wins


def test_library_callers_get_a_provenance_record_of_their_arguments(tmp_path: Path, cpu: DeviceManager) -> None:
    a = _stats(tmp_path, "a.npz", n=5000)
    record = evaluate_fid(a, a, device=cpu, batch_size=8).provenance
    assert record is not None
    assert record.options["real"] == str(a) and record.options["batch_size"] == 8
    assert record.options["num_workers"] == 0  # resolved by the policy, not "None"
    assert evaluate_fid(a, a, device=cpu).to_json()["provenance"]["histostain_version"]


@pytest.mark.slow
def test_kid_service(tiles: Path, fid_weights: Path, cpu: DeviceManager) -> None:
    result = evaluate_kid(tiles / "he", tiles / "ihc", device=cpu, weights=fid_weights, num_workers=0, subsets=10)
    summary = result.summary
    assert np.isfinite(summary["kid"]) and summary["kid_std"] >= 0
    assert summary["kid_x1000"] == pytest.approx(1000 * summary["kid"])
    assert summary["subset_size"] == 3 and summary["subsets"] == 10
    assert any("subset size reduced from 1000 to 3" in w for w in result.warnings)
    assert result.meta["weights_published"] is False
    assert any("this KID is not comparable with published values" in w for w in result.warnings)


def _tiny_folder(folder: Path, count: int) -> Path:
    for index in range(count):
        write_image(folder / f"{index}.png", np.full((8, 8, 3), index, np.uint8))
    return folder


def test_missing_weights_stop_the_run_before_any_work(tmp_path: Path, cpu: DeviceManager) -> None:
    images = _tiny_folder(tmp_path / "images", 2)
    with pytest.raises(WeightsError) as info:
        evaluate_fid(images, images, device=cpu, weights_dir=tmp_path / "weights")
    assert FID_WEIGHTS_URL in info.value.one_line()


def test_kid_refuses_statistics_files(tmp_path: Path, cpu: DeviceManager) -> None:
    np.savez(tmp_path / "s.npz", mu=np.zeros(2), sigma=np.eye(2))
    with pytest.raises(InputError, match="KID needs the images"):
        evaluate_kid(tmp_path / "s.npz", _tiny_folder(tmp_path / "images", 2), device=cpu, weights_dir=tmp_path)


def test_missing_or_single_image_inputs_are_input_errors(tmp_path: Path, cpu: DeviceManager) -> None:
    images = _tiny_folder(tmp_path / "images", 2)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_fid(tmp_path / "missing", images, device=cpu, weights_dir=tmp_path)
    with pytest.raises(InputError, match="has 1 image"):
        evaluate_fid(_tiny_folder(tmp_path / "single", 1), images, device=cpu, weights_dir=tmp_path)

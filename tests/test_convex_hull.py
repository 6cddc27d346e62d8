"""The in-graph convex-hull area equals scipy.spatial.ConvexHull(...).volume (what normalize_kp uses)."""
import numpy as np
import pytest

scipy_spatial = pytest.importorskip("scipy.spatial")


def hull_area(points):
    import modules

    return float(modules.convex_hull_area(np.asarray(points, np.float32)[None])[0])


@pytest.mark.parametrize("seed", range(20))
def test_random_points_match_scipy(seed):
    rng = np.random.default_rng(seed)
    points = rng.uniform(-1, 1, size=(10, 2)).astype(np.float32)
    expected = scipy_spatial.ConvexHull(points.astype(np.float64)).volume
    assert hull_area(points) == pytest.approx(expected, rel=1e-5)


def test_points_on_hull_edges_counted_once():
    # A square with extra points in the middle of two edges and one inside.
    points = [[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0], [1, 0.5], [0.3, 0.4], [0, 0.25], [0.75, 1], [0.5, 0.5]]
    expected = scipy_spatial.ConvexHull(np.array(points, np.float64)).volume
    assert expected == pytest.approx(1.0)
    assert hull_area(points) == pytest.approx(expected, rel=1e-6)


def test_duplicate_points_match_scipy():
    rng = np.random.default_rng(7)
    base = rng.uniform(-1, 1, size=(5, 2))
    points = np.concatenate([base, base[[0, 2, 4, 4, 1]]])
    expected = scipy_spatial.ConvexHull(points).volume
    assert hull_area(points) == pytest.approx(expected, rel=1e-5)


def test_collinear_points_have_zero_area():
    # scipy raises QhullError on a flat set; its joggled hull ('QJ') gives ~0, and so do we.
    points = np.stack([np.linspace(-1, 1, 10), np.linspace(-0.5, 0.7, 10)], axis=1)
    joggled = scipy_spatial.ConvexHull(points, qhull_options="QJ").volume
    assert joggled == pytest.approx(0, abs=1e-6)
    assert hull_area(points) == pytest.approx(0, abs=1e-6)


def test_all_points_identical_have_zero_area():
    assert hull_area(np.full((10, 2), 0.3)) == 0


def test_batch_of_point_sets():
    import modules

    rng = np.random.default_rng(3)
    sets = rng.uniform(-1, 1, size=(4, 10, 2)).astype(np.float32)
    areas = modules.convex_hull_area(sets).numpy()
    expected = [scipy_spatial.ConvexHull(s.astype(np.float64)).volume for s in sets]
    np.testing.assert_allclose(areas, expected, rtol=1e-5)

import pytest

from pipeline.cluster import choose_cluster_count


@pytest.mark.parametrize("n, expected", [(1, 1), (5, 1), (50, 5), (200, 14), (5000, 71), (1_000_000, 1000)])
def test_auto_cluster_count_grows_with_sqrt_n_and_keeps_about_ten_per_cluster(n, expected):
    assert choose_cluster_count(n) == expected


def test_requested_count_never_exceeds_the_images():
    assert choose_cluster_count(3, 10) == 3
    assert choose_cluster_count(100, 10) == 10

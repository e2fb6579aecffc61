import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from comp.data import labels as L


@pytest.mark.parametrize("bins", [L.AgeBins(), L.AgeBins(30, 58)])
def test_round_trip_all_classes(bins):
    cls = np.arange(L.N_CLASSES)
    m, g, a = L.decode(cls)
    assert np.array_equal(L.encode(m, g, a), cls)
    for c in range(L.N_CLASSES):
        assert L.encode(*L.decode(c)) == c
    assert len(set(L.class_names(bins))) == L.N_CLASSES


def test_formula_matches_the_competition():
    assert L.encode(0, 0, 0) == 0
    assert L.encode(1, 1, 2) == 6 + 3 + 2
    assert L.encode(2, 1, 2) == 17
    assert L.decode(7) == (1, 0, 1)


@pytest.mark.parametrize("old_from, ages, groups", [
    (60, [18, 29, 30, 57, 58, 59, 60, 80], [0, 0, 1, 1, 1, 1, 2, 2]),
    (58, [18, 29, 30, 57, 58, 59, 60, 80], [0, 0, 1, 1, 2, 2, 2, 2]),
])
def test_age_groups_with_both_thresholds(old_from, ages, groups):
    bins = L.AgeBins(30, old_from)
    assert bins.group(np.array(ages)).tolist() == groups
    assert bins.group(59) == groups[5]
    assert bins.names()[2] == f">={old_from}"


def test_bad_values_are_refused():
    with pytest.raises(ValueError):
        L.encode(3, 0, 0)
    with pytest.raises(ValueError):
        L.decode(18)
    with pytest.raises(ValueError):
        L.AgeBins(60, 30)


@given(st.lists(st.lists(st.floats(0.01, 1.0), min_size=18, max_size=18), min_size=1, max_size=5))
def test_head_marginals_and_joint_agree(rows):
    p = np.array(rows)
    p /= p.sum(1, keepdims=True)
    heads = L.heads_from_probs(p)
    for h, v in heads.items():
        assert v.shape == (len(p), L.HEAD_SIZES[h])
        assert np.allclose(v.sum(1), 1)
    # A joint built from heads marginalises back to those heads, and puts mass where the formula says.
    joint = L.probs_from_heads(heads["mask"], heads["gender"], heads["age"])
    assert np.allclose(joint.sum(1), 1)
    back = L.heads_from_probs(joint)
    for h in L.HEADS:
        assert np.allclose(back[h], heads[h])


def test_joint_puts_mass_on_the_encoded_class():
    eye = np.eye
    joint = L.probs_from_heads(eye(3)[[1]], eye(2)[[1]], eye(3)[[2]])
    assert joint.argmax() == L.encode(1, 1, 2)

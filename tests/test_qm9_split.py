"""EDM's QM9 split: ``np.random.seed(0); perm = np.random.permutation(130831)`` over the 130,831
characterized molecules in QM9 index order; train = perm[:100000], valid = perm[100000:117748],
test = perm[117748:] (EDM's ``qm9/data/prepare/qm9.py``)."""

import importlib.util

import numpy as np
import pytest

from diffuse.domains.molecules.readers import QM9_SPLIT_SIZES, qm9_split, read_qm9pack

N = 130_831

#: members computed once with EDM's own calls (numpy's legacy seeded generator, whose stream
#: numpy keeps fixed across versions): position k of the permutation -> the molecule position it
#: names, and the split that position falls in
KNOWN = {0: (130195, "train"), 1: (68784, "train"), 99_999: (44442, "train"), 100_000: (68751, "valid"),
         117_747: (13893, "valid"), 117_748: (115839, "test"), 130_830: (68268, "test")}


@pytest.fixture(scope="module")
def parts():
    return {s: qm9_split(N, s) for s in ("train", "valid", "test")}


def test_sizes_are_edms(parts):
    assert tuple(len(parts[s]) for s in ("train", "valid", "test")) == QM9_SPLIT_SIZES == (100_000, 17_748, 13_083)
    assert sum(QM9_SPLIT_SIZES) == N


def test_parts_are_disjoint_and_cover_all(parts):
    union = np.concatenate(list(parts.values()))
    assert len(np.unique(union)) == N and union.min() == 0 and union.max() == N - 1
    assert np.array_equal(qm9_split(N, "all"), np.arange(N))


def test_known_members_from_the_rule(parts):
    for _, (position, split) in KNOWN.items():
        assert position in set(parts[split].tolist()), (position, split)
        for other in {"train", "valid", "test"} - {split}:
            assert position not in set(parts[other].tolist())


def test_same_stream_as_the_global_seeded_calls(parts):
    """The split is EDM's calls exactly: np.random.seed(0); np.random.permutation (global state restored)."""
    state = np.random.get_state()
    try:
        np.random.seed(0)
        perm = np.random.permutation(N)
    finally:
        np.random.set_state(state)
    for k, (position, _) in KNOWN.items():
        assert perm[k] == position
    assert np.array_equal(np.sort(perm[:100_000]), parts["train"])
    assert np.array_equal(np.sort(perm[100_000:117_748]), parts["valid"])
    assert np.array_equal(np.sort(perm[117_748:]), parts["test"])


def test_unknown_split_is_a_data_error():
    from diffuse.core.errors import DataError
    with pytest.raises(DataError, match="unknown split"):
        qm9_split(N, "training")


@pytest.mark.skipif(importlib.util.find_spec("qm9pack") is None, reason="qm9pack not installed (pip install 'diffuse[qm9]')")
def test_qm9pack_rows_are_the_characterized_molecules_in_index_order():
    mols, index = read_qm9pack()
    assert len(mols) == N and bool((np.diff(index) > 0).all()) and index[0] == 1 and index[-1] == 133_885
    # 3,054 uncharacterized molecules absent; e.g. position 130195 (perm[0], train) is QM9 molecule 133161
    assert 133_885 - N == 3_054
    assert index[130195] == 133_161 and mols.names[130195].endswith("CC1=C(F)N=NOC1=N")
    assert index[115839] == 117_980   # perm[117748], the first test molecule

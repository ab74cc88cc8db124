"""Serialization codes (z-order, Hilbert) of concerto_ros.models.serialization.

Expected codes below were computed with the reference PTv3 serialization
(Pointcept/PointTransformerV3 ``serialization/``); the golden encoder test checks the
whole pipeline on top of that.
"""

import itertools

import pytest
import torch

from concerto_ros.models.serialization import (
    ORDERS,
    Serialization,
    encode,
    hilbert_encode,
    serialization_depth,
    serialize,
    z_order_encode,
)

COORDS = torch.tensor(
    [
        [0, 0, 0],
        [1, 0, 0],
        [0, 1, 0],
        [0, 0, 1],
        [3, 5, 7],
        [200, 150, 125],
        [65534, 12345, 777],
        [1023, 0, 511],
    ]
)

# depth -> (hilbert codes, z-order codes) of COORDS masked to `depth` bits per axis
REFERENCE = {
    3: ([0, 1, 7, 3, 177, 153, 506, 438], [0, 4, 2, 1, 239, 209, 291, 365]),
    8: (
        [0, 3, 1, 7, 293, 10207627, 16518888, 14380470],
        [0, 4, 2, 1, 239, 13941457, 9662243, 11983725],
    ),
    16: (
        [0, 7, 3, 1, 391, 13231545, 277087502205946, 939524096],
        [0, 4, 2, 1, 239, 13941457, 162079945486115, 632740717],
    ),
}


@pytest.mark.parametrize("depth", sorted(REFERENCE))
def test_codes_match_reference_values(depth):
    g = COORDS & ((1 << depth) - 1)
    hilbert, z = REFERENCE[depth]
    assert hilbert_encode(g, depth).tolist() == hilbert
    assert z_order_encode(g, depth).tolist() == z


def test_z_order_bit_layout():
    # bit i of x, y, z -> bits 3i+2, 3i+1, 3i
    assert z_order_encode(torch.tensor([[1, 0, 0]]), 4).item() == 0b100
    assert z_order_encode(torch.tensor([[0, 1, 0]]), 4).item() == 0b010
    assert z_order_encode(torch.tensor([[0, 0, 1]]), 4).item() == 0b001
    assert z_order_encode(torch.tensor([[2, 0, 0]]), 4).item() == 0b100000
    assert z_order_encode(torch.tensor([[15, 15, 15]]), 4).item() == 2**12 - 1


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_hilbert_is_a_unit_step_bijection(depth):
    side = 1 << depth
    grid = torch.tensor(list(itertools.product(range(side), repeat=3)))
    code = hilbert_encode(grid, depth)
    assert sorted(code.tolist()) == list(range(side**3))
    walk = grid[torch.argsort(code)]
    steps = (walk[1:] - walk[:-1]).abs().sum(1)
    assert torch.all(steps == 1), "consecutive Hilbert cells must be face neighbours"
    assert walk[0].tolist() == [0, 0, 0]


def test_trans_orders_swap_x_and_y():
    g = torch.randint(0, 256, (100, 3))
    swapped = g[:, [1, 0, 2]]
    assert torch.equal(encode(g, None, 8, "z-trans"), z_order_encode(swapped, 8))
    assert torch.equal(encode(g, None, 8, "hilbert-trans"), hilbert_encode(swapped, 8))


def test_batch_goes_above_the_curve_bits():
    g = torch.tensor([[5, 6, 7], [5, 6, 7]])
    batch = torch.tensor([0, 3])
    code = encode(g, batch, depth=4, order="hilbert")
    assert code[1].item() - code[0].item() == 3 << 12
    with pytest.raises(ValueError, match="unknown serialization order"):
        encode(g, batch, 4, "peano")


def test_depth_is_bit_length_of_max_plus_one():
    assert serialization_depth(torch.tensor([[0, 0, 0]])) == 1
    assert serialization_depth(torch.tensor([[200, 150, 125]])) == 8  # 201 -> 8 bits
    assert serialization_depth(torch.tensor([[254, 0, 0]])) == 8
    assert serialization_depth(torch.tensor([[255, 0, 0]])) == 9
    with pytest.raises(ValueError, match="depth 17 > 16"):
        serialization_depth(torch.tensor([[65535, 0, 0]]))


def test_serialize_sorts_within_batch_and_inverts():
    torch.manual_seed(0)
    g = torch.randint(0, 50, (500, 3))
    batch = torch.repeat_interleave(torch.tensor([0, 1]), torch.tensor([300, 200]))
    code, order, inverse = serialize(g, batch, ORDERS)
    assert code.shape == order.shape == inverse.shape == (4, 500)
    for k in range(4):
        assert torch.all(code[k, order[k]][1:] >= code[k, order[k]][:-1])
        assert torch.equal(order[k][inverse[k]], torch.arange(500))
        assert torch.all(batch[order[k][:300]] == 0)  # samples stay contiguous
    lazy = Serialization(g, batch, ORDERS)
    assert lazy.depth == 6
    assert torch.equal(lazy.order(2), order[2])
    perm = lazy.permuted([3, 2, 1, 0])
    assert perm.orders == ("hilbert-trans", "hilbert", "z-trans", "z")
    assert torch.equal(perm.inverse(0), inverse[3])

"""Submanifold sparse convolution: neighbour map, torch backend, spconv parity, threads."""

import itertools

import pytest
import torch

from concerto_ros.models.sparse_conv import (
    CENTER,
    KERNEL_OFFSETS,
    SubMConv3d,
    VoxelGrid,
    build_neighbour_map,
    resolve_backend,
    spconv_available,
    submconv3d_torch,
)


def _random_voxels(n=4000, extent=24, batch_size=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    coords, batches = [], []
    for b in range(batch_size):
        g = torch.unique(torch.randint(0, extent, (n, 3), generator=gen), dim=0)
        coords.append(g)
        batches.append(torch.full((len(g),), b))
    grid = torch.cat(coords)
    batch = torch.cat(batches)
    perm = torch.randperm(len(grid), generator=gen)  # rows need not be sorted
    return grid[perm], batch[perm]


def _brute_force_dense(grid, batch):
    lookup = {(int(b), *map(int, g)): i for i, (b, g) in enumerate(zip(batch, grid))}
    n = len(grid)
    return torch.tensor(
        [
            [lookup.get((int(b), *(g + o).tolist()), n) for o in KERNEL_OFFSETS]
            for b, g in zip(batch, grid)
        ]
    )


def test_kernel_offsets_follow_spconv_index():
    assert KERNEL_OFFSETS.shape == (27, 3)
    for a, b, c in itertools.product(range(3), repeat=3):
        assert KERNEL_OFFSETS[9 * a + 3 * b + c].tolist() == [a - 1, b - 1, c - 1]
    assert KERNEL_OFFSETS[CENTER].tolist() == [0, 0, 0]


def test_neighbour_map_matches_brute_force():
    grid, batch = _random_voxels(n=1500, extent=14)
    nmap = build_neighbour_map(grid, batch)
    dense = _brute_force_dense(grid, batch)
    assert torch.equal(nmap.dense_index(), dense)
    assert nmap.num_pairs == int((dense < len(grid)).sum())
    # a grid too large for int32 keys (> 2^31 cells) takes the int64 path
    far = torch.cat([grid[:200], grid[:200] + torch.tensor([3000, 2000, 1000])])
    far_batch = torch.cat([batch[:200], batch[:200]])
    far_map = build_neighbour_map(far, far_batch)
    assert torch.equal(far_map.dense_index(), _brute_force_dense(far, far_batch))
    # samples never see each other: same coordinates in two samples
    g = torch.tensor([[1, 1, 1], [1, 1, 2], [1, 1, 1]])
    b = torch.tensor([0, 0, 1])
    d = build_neighbour_map(g, b).dense_index()
    assert d[0, CENTER + 1].item() == 1  # (0,0,+1) neighbour in sample 0
    assert d[2].tolist() == [3] * CENTER + [2] + [3] * CENTER


def test_torch_conv_matches_naive_sum():
    grid, batch = _random_voxels(n=600, extent=10, batch_size=1, seed=3)
    torch.manual_seed(1)
    feat = torch.randn(len(grid), 5)
    weight = torch.randn(7, 3, 3, 3, 5)
    bias = torch.randn(7)
    out = submconv3d_torch(feat, weight, bias, build_neighbour_map(grid, batch))
    dense = _brute_force_dense(grid, batch)
    expected = bias.expand(len(grid), 7).clone()
    for a, b, c in itertools.product(range(3), repeat=3):
        k = 9 * a + 3 * b + c
        present = dense[:, k] < len(grid)
        expected[present] += feat[dense[present, k]] @ weight[:, a, b, c, :].T
    assert out.shape == (len(grid), 7)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_module_parameters_use_spconv_names_and_layout():
    conv = SubMConv3d(16, 24, 3, bias=True, indice_key="stage0")
    shapes = {k: tuple(v.shape) for k, v in conv.state_dict().items()}
    assert shapes == {"weight": (24, 3, 3, 3, 16), "bias": (24,)}
    with pytest.raises(ValueError, match="kernel_size=3"):
        SubMConv3d(4, 4, 5)
    with pytest.raises(ValueError, match="sparse_conv_backend"):
        SubMConv3d(4, 4, 3, backend="cuda")


def test_backend_resolution():
    assert resolve_backend("auto", "cpu") == "torch"
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="unknown sparse_conv_backend"):
        resolve_backend("minkowski", "cpu")


def test_neighbour_map_is_built_once_per_voxel_set():
    grid, batch = _random_voxels(n=300, extent=8)
    voxels = VoxelGrid(grid, batch, batch_size=2)
    conv1 = SubMConv3d(4, 4, backend="torch")
    conv2 = SubMConv3d(4, 4, backend="torch")
    feat = torch.randn(len(grid), 4)
    conv2(conv1(feat, voxels), voxels)
    first = voxels._neighbours
    assert first is not None
    conv1(feat, voxels)
    assert voxels._neighbours is first


def test_torch_backend_is_thread_count_invariant():
    grid, batch = _random_voxels(n=6000, extent=30)
    torch.manual_seed(2)
    conv = SubMConv3d(32, 32, backend="torch").eval()
    with torch.no_grad():
        conv.bias.normal_()
    feat = torch.randn(len(grid), 32)
    threads = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            torch.set_num_threads(t)
            with torch.no_grad():
                outs.append(conv(feat, VoxelGrid(grid, batch, 2)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1])


@pytest.mark.skipif(not spconv_available(), reason="spconv not installed")
@pytest.mark.parametrize("training", [False, True])
def test_spconv_backend_agrees_with_torch_backend(training):
    grid, batch = _random_voxels(n=5000, extent=28)
    torch.manual_seed(4)
    conv = SubMConv3d(16, 24, backend="torch", indice_key="stage0").train(training)
    with torch.no_grad():
        conv.bias.normal_()
    feat = torch.randn(len(grid), 16)
    threads = torch.get_num_threads()
    with torch.no_grad():
        ref = conv(feat, VoxelGrid(grid, batch, 2))
        conv.backend = "spconv"
        voxels = VoxelGrid(grid, batch, 2)
        out = conv(feat, voxels)
        again = conv(feat * 2, voxels)  # reuses spconv's indice pairs of "stage0"
    assert torch.get_num_threads() == threads, "thread count must be restored"
    assert "stage0" in voxels._spconv_tensors
    assert (out - ref).abs().max().item() <= 1e-5
    ref2 = submconv3d_torch(feat * 2, conv.weight, conv.bias, build_neighbour_map(grid, batch))
    assert (again - ref2).abs().max().item() <= 1e-5


def test_table_and_sorted_key_searches_give_the_same_map(monkeypatch):
    import concerto_ros.models.sparse_conv as sc

    grid, batch = _random_voxels(n=2500, extent=20, batch_size=3, seed=5)
    by_table = build_neighbour_map(grid, batch)
    monkeypatch.setattr(sc, "TABLE_MAX_CELLS", 0)  # force the sorted-key path
    by_sorting = build_neighbour_map(grid, batch)
    assert torch.equal(by_table.index, by_sorting.index)
    assert by_table.index.dtype == torch.int32 and by_table.index.shape == (27, len(grid))
    assert by_table.offset_counts == by_sorting.offset_counts
    assert by_table.offset_counts[CENTER] == len(grid)
    # mirror symmetry: as many +d pairs as -d pairs
    assert by_table.offset_counts == by_table.offset_counts[::-1]
    empty = build_neighbour_map(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    assert empty.index.shape == (27, 0) and empty.num_pairs == 0


def test_torch_conv_under_autocast_computes_in_the_autocast_dtype():
    grid, batch = _random_voxels(n=800, extent=12, batch_size=1, seed=6)
    torch.manual_seed(3)
    feat = torch.randn(len(grid), 8)
    weight = torch.randn(8, 3, 3, 3, 8) * 0.1
    bias = torch.randn(8)
    nmap = build_neighbour_map(grid, batch)
    ref = submconv3d_torch(feat, weight, bias, nmap)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = submconv3d_torch(feat, weight, bias, nmap)
    assert low.dtype == torch.bfloat16 and ref.dtype == torch.float32
    assert (low.float() - ref).abs().max().item() < 0.05 * ref.abs().max().item()


def test_reused_lookup_table_is_reset_between_voxel_sets():
    from concerto_ros.models.sparse_conv import release_neighbour_tables

    release_neighbour_tables()
    grid_a, batch_a = _random_voxels(n=1500, extent=14, seed=7)
    grid_b, batch_b = _random_voxels(n=900, extent=12, seed=8)
    first_b = build_neighbour_map(grid_b, batch_b).dense_index()
    build_neighbour_map(grid_a, batch_a)  # leaves no stale rows behind
    assert torch.equal(build_neighbour_map(grid_b, batch_b).dense_index(), first_b)
    assert torch.equal(first_b, _brute_force_dense(grid_b, batch_b))
    release_neighbour_tables()


def test_kept_lookup_table_works_inside_and_outside_inference_mode():
    from concerto_ros.models.sparse_conv import release_neighbour_tables

    release_neighbour_tables()
    grid, batch = _random_voxels(n=700, extent=10, seed=9)
    with torch.inference_mode():
        inside = build_neighbour_map(grid, batch).dense_index()
    outside = build_neighbour_map(grid, batch).dense_index()
    with torch.inference_mode():
        again = build_neighbour_map(grid, batch).dense_index()
    assert torch.equal(inside, outside) and torch.equal(inside, again)
    release_neighbour_tables()

"""Paged KV inputs (impls.base.PagedKV): layout, seeding, gathering, and which impls take them."""

import pytest
import torch

from attnbench.analysis import metrics
from attnbench.impls import make_call, make_inputs, resolve
from attnbench.impls.base import PagedKV, page_table
from attnbench.impls.plugins import as_impl
from attnbench.impls.reference import reference_output
from attnbench.measure.correctness import check
from attnbench.spec import Workload

P = Workload(batch=3, q_heads=4, kv_heads=2, q_len=2, kv_len=37, head_dim=8, dtype="fp32", mask="causal-br",
             layout="paged:8")


def test_paged_inputs_have_the_documented_shapes_and_a_random_page_table():
    x = make_inputs(P, "cpu", 3)
    assert isinstance(x.k, PagedKV) and isinstance(x.v, PagedKV)
    pages = 5  # ceil(37 / 8)
    assert x.k.pages.shape == (3 * pages, 8, 2, 8) and x.k.pages.is_contiguous()
    assert x.k.block_table.shape == (3, pages) and x.k.block_table.dtype == torch.int32
    assert sorted(x.k.block_table.flatten().tolist()) == list(range(3 * pages))   # a permutation of the pool
    assert x.k.block_table.tolist() != [list(range(i * pages, (i + 1) * pages)) for i in range(3)]
    assert x.v.block_table is x.k.block_table and x.k.seq_lens.tolist() == [37] * 3
    assert torch.equal(x.k.block_table, make_inputs(P, "cpu", 3).k.block_table)       # seeded
    assert not torch.equal(x.k.block_table, make_inputs(P, "cpu", 4).k.block_table)
    assert torch.equal(page_table(3, pages, 3, "cpu"), x.k.block_table)


def test_dense_gathers_token_t_of_sequence_b_from_its_page():
    x = make_inputs(P, "cpu", 0)
    dense = x.k.dense()
    assert dense.shape == (3, 2, 37, 8)
    table = x.k.block_table
    for b, t in ((0, 0), (1, 9), (2, 36)):
        page = int(table[b, t // 8])
        assert torch.equal(dense[b, :, t], x.k.pages[page, t % 8])
    assert torch.equal(x.k[1:].dense(), dense[1:])          # a batch slice restricts the table, not the pool


def test_clone_and_nbytes_count_the_shared_table_once():
    x = make_inputs(P, "cpu", 0)
    c = x.clone()
    assert c.k.pages.data_ptr() != x.k.pages.data_ptr() and torch.equal(c.k.dense(), x.k.dense())
    assert c.v.block_table is c.k.block_table
    pool = 2 * x.k.pages.numel() * 4
    assert x.nbytes() == x.q.numel() * 4 + pool + x.k.block_table.numel() * 4 + 3 * 4


def test_the_reference_gathers_pages_and_is_checked_against_float64():
    x = make_inputs(P, "cpu", 0)
    dense = reference_output(x.q, x.k.dense(), x.v.dense(), P.mask)
    assert torch.equal(reference_output(x.q, x.k, x.v, P.mask), dense)
    impl = resolve("reference")
    assert impl.supports(P, "cpu") is None
    fn = impl.build(P, "cpu", {})
    result = check(fn, P, "cpu")
    assert result.ok and result.rel_err < 1e-6
    assert make_call(fn, P, x)().shape == x.q.shape


def test_impls_without_paged_support_say_so():
    for name in ("sdpa-math", "sdpa-auto", "flex"):
        assert resolve(name).supports(P, "cpu") == f"{name} does not take a paged KV cache"
    plugin = as_impl("mine", lambda q, k, v, **kw: q)
    assert plugin.supports(P, "cpu") == "mine does not take a paged KV cache"


def test_paged_bytes_add_the_block_table():
    dense = P.replace(layout="dense")
    assert metrics.min_bytes(P) - metrics.min_bytes(dense) == 4 * 3 * (5 + 1)
    assert metrics.flops(P) == metrics.flops(dense)


def test_a_paged_kv_is_indexed_by_batch_slices_only():
    with pytest.raises(TypeError):
        make_inputs(P, "cpu", 0).k[0]

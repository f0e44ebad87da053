"""ftcli/engine/window_attention.py: sliding-window layers run as a windowed call without a mask, where that is exact.

The real kernel (PyTorch's variable-length FlashAttention) needs CUDA: tests/engine/test_gpu.py runs it. Here a
stand-in with varlen_attn's signature, built on masked SDPA, checks everything around it: the layout, the
window's off-by-one, GQA, when the path is taken, and that a patched model's loss and gradients match
transformers' masked path.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers.patched import compare, loss_and_grads, tiny_model

from ftcli.engine import patch, window_attention


def band(length: int, left: int, right: int) -> torch.Tensor:
    """FlashAttention's window: key j is seen by query i when i - left <= j <= i + right (-1: no limit)."""
    i = torch.arange(length)
    left, right = (length if w < 0 else w for w in (left, right))
    return (i[None, :] - i[:, None] <= right) & (i[:, None] - i[None, :] <= left)


def varlen_stand_in(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1),
                    enable_gqa=False):
    """varlen_attn's contract on [total, H, D] tensors, one sequence at a time, with masked SDPA."""
    if k.shape[1] != q.shape[1]:
        assert enable_gqa, "GQA without enable_gqa"
    outs = []
    for a, b in zip(cu_seq_q.tolist(), cu_seq_q.tolist()[1:]):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
        mask = band(b - a, *window_size)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale,
                                                   enable_gqa=enable_gqa).transpose(0, 1))
    return torch.cat(outs)


def old_varlen_stand_in(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
    """A varlen_attn without enable_gqa: k/v must come with the query's heads."""
    assert k.shape[1] == q.shape[1]
    return varlen_stand_in(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, scale=scale, window_size=window_size)


@pytest.mark.parametrize("kernel", [varlen_stand_in, old_varlen_stand_in], ids=["gqa", "no-gqa-flag"])
def test_attend_equals_attention_under_transformers_sliding_mask(kernel):
    torch.manual_seed(0)
    batch, heads, kv_heads, length, dim, window = 3, 4, 2, 11, 8, 4
    # transformers' layout: [B, H, T, D] views of [B, T, H, D] projections
    q = torch.randn(batch, length, heads, dim).transpose(1, 2)
    k, v = (torch.randn(batch, length, kv_heads, dim).transpose(1, 2) for _ in range(2))
    i = torch.arange(length)
    sliding = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)  # transformers: q - kv < window
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=sliding, scale=0.3, enable_gqa=True).transpose(1, 2)
    ours = window_attention.attend(q, k, v, window=window, scale=0.3, kernel=kernel)
    assert ours.shape == (batch, length, heads, dim)
    torch.testing.assert_close(ours, expected)
    off_by_one = window_attention.attend(q, k, v, window=window + 1, scale=0.3, kernel=kernel)
    assert not torch.allclose(off_by_one, expected, atol=1e-3)  # the test sees a wrong window


def test_plain_rows_only_for_rows_that_start_at_zero_and_pad_on_the_right():
    right = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    assert window_attention.plain_rows(None, None, None)
    assert window_attention.plain_rows(right, None, None)
    assert window_attention.plain_rows(torch.ones(2, 4, dtype=torch.bool), torch.arange(4)[None], None)
    assert not window_attention.plain_rows(torch.tensor([[0, 1, 1, 1]]), None, None)   # left padding
    assert not window_attention.plain_rows(torch.tensor([[1, 0, 1, 1]]), None, None)   # a hole
    assert not window_attention.plain_rows(None, torch.tensor([[0, 1, 0, 1]]), None)   # packed rows
    assert not window_attention.plain_rows(torch.ones(1, 1, 4, 4, dtype=torch.bool), None, None)  # custom 4-D
    assert not window_attention.plain_rows({"sliding_attention": None}, None, None)
    assert not window_attention.plain_rows(None, None, cache=object())                 # generation


@pytest.fixture
def stand_in_kernel(monkeypatch):
    """The windowed path on the CPU: `available` says yes, the kernel is the stand-in."""
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(window_attention, "available", lambda q, module: True)
    monkeypatch.setattr(window_attention, "_varlen", lambda: varlen_stand_in)


def _run(name, ops, ids, labels, **kw):
    model = tiny_model(name)
    report = patch.apply(model, ops, impl="reference")
    before = window_attention.CALLS["window"]
    loss, grads = loss_and_grads(model, ids, labels, use_cache=False, **kw)  # a cache keeps the masked path
    return loss, grads, window_attention.CALLS["window"] - before, report


def _long_batch(model, length=40):
    """Longer than the builtins' windows (tiny-gemma3: 16, qwen2: 6), so the sliding mask matters."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=g)
    labels = ids.clone()
    labels[0, :4] = -100
    return ids, labels


MASKED = ["rms_norm", "rope", "swiglu", "geglu"]


@pytest.mark.parametrize("name,sliding_layers", [("tiny-gemma3", 3), ("qwen2", 1)])
def test_patched_model_takes_the_windowed_path_with_the_same_loss_and_gradients(name, sliding_layers,
                                                                                stand_in_kernel, monkeypatch):
    ids, labels = _long_batch(tiny_model(name))
    ref_loss, ref_grads, calls, _ = _run(name, MASKED, ids, labels)
    assert calls == 0
    loss, grads, calls, report = _run(name, MASKED + ["window_attention"], ids, labels)
    assert calls == sliding_layers and report.replaced["window_attention"] == ["model"]
    compare((loss, grads), (ref_loss, ref_grads), 1e-5)
    # negative control: a kernel that ignores the window gives another loss on this batch
    monkeypatch.setattr(window_attention, "_varlen", lambda: lambda *a, window_size, **kw: varlen_stand_in(
        *a, window_size=(-1, 0), **kw))
    assert abs(_run(name, MASKED + ["window_attention"], ids, labels)[0] - ref_loss) > 1e-4


def test_right_padding_keeps_the_loss_and_left_padding_keeps_the_mask(stand_in_kernel):
    ids, labels = _long_batch(tiny_model("tiny-gemma3"))
    mask = torch.ones_like(ids)
    mask[1, -5:] = 0  # right padding: the padded positions carry no label
    labels[1, -5:] = -100
    ref = _run("tiny-gemma3", MASKED, ids, labels, attention_mask=mask)
    ours = _run("tiny-gemma3", MASKED + ["window_attention"], ids, labels, attention_mask=mask)
    assert ref[2] == 0 and ours[2] == 3
    compare(ours[:2], ref[:2], 1e-5)
    left = mask.flip(1)
    ours = _run("tiny-gemma3", MASKED + ["window_attention"], ids, labels.flip(1), attention_mask=left)
    ref = _run("tiny-gemma3", MASKED, ids, labels.flip(1), attention_mask=left)
    assert ours[2] == 0  # transformers' masked path
    compare(ours[:2], ref[:2], 0)


def test_available_needs_cuda_half_precision_and_no_softcap():
    class Attention(torch.nn.Module):
        def __init__(self, softcap=None):
            super().__init__()
            self.config = type("C", (), {"attn_logit_softcapping": softcap})()
            self.attention_dropout = 0.0

    assert not window_attention.available(torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16), Attention())  # CPU
    if torch.cuda.is_available():
        q = torch.zeros(1, 2, 8, 64, dtype=torch.bfloat16, device="cuda")
        assert not window_attention.available(q, Attention(softcap=50.0))
        assert not window_attention.available(q.float(), Attention())


def test_packed_rows_are_found_by_transformers_rule():
    rows = window_attention.row_layout(None, torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]), None)
    assert isinstance(rows, window_attention.PackedRows)
    assert rows.starts.tolist() == [0, 3, 5, 9] and rows.longest == 4 and rows.starts.dtype == torch.int32
    assert window_attention.row_layout(None, torch.arange(6)[None], None) is True  # one sequence: plain
    assert window_attention.row_layout(None, torch.arange(6)[None], None, plain_needed=False) is False
    assert window_attention.row_layout(torch.ones(1, 9), torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]]), None) is False
    assert window_attention.row_layout(None, torch.tensor([[0, 1, 0, 1]]), cache=object()) is False


def _packed(name, lengths):
    """One packed row of sequences of `lengths` (labels on every token but each sequence's first) and the same
    sequences as a right-padded batch with matching labels."""
    model = tiny_model(name)
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(0, model.config.vocab_size, (n,), generator=g) for n in lengths]
    ids = torch.cat(seqs)[None]
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    labels = ids.clone()
    labels[0, positions[0] == 0] = -100  # never predict a sequence's first token from the previous one
    width = max(lengths)
    padded = torch.zeros(len(seqs), width, dtype=torch.long)
    padded_labels = torch.full((len(seqs), width), -100)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        padded[i, :len(s)], padded_labels[i, 1:len(s)], mask[i, :len(s)] = s, s[1:], 1
    return (ids, positions, labels), (padded, padded_labels, mask)


@pytest.mark.parametrize("name", ["tiny-llama3", "tiny-gemma3", "tiny-qwen3", "tiny-phi3", "tiny-mistral", "qwen2"])
def test_packed_rows_take_the_varlen_call_with_the_unpacked_loss_and_gradients(name, stand_in_kernel, monkeypatch):
    """A packed row (position ids only, as the SFT stage hands it over) through the varlen call gives the loss
    and gradients of the same sequences in a padded batch; a kernel that lets rows see each other does not."""
    (ids, positions, labels), (padded, padded_labels, mask) = _packed(name, (37, 21, 9))
    ops = MASKED + ["window_attention"]
    ref = _run(name, MASKED, padded, padded_labels, attention_mask=mask)
    before = window_attention.CALLS["packed"]
    ours = _run(name, ops, ids, labels, position_ids=positions)
    layers = tiny_model(name).config.num_hidden_layers
    assert window_attention.CALLS["packed"] - before == layers and ours[2] == 0  # every layer, none windowed
    compare(ours[:2], ref[:2], 1e-5)
    # negative control: the row as one sequence (attention leaks across the packed sequences)
    monkeypatch.setattr(window_attention, "_varlen", lambda: lambda q, k, v, cu_q, cu_k, mq, mk, **kw: varlen_stand_in(
        q, k, v, cu_q[[0, -1]], cu_k[[0, -1]], q.shape[0], q.shape[0], **kw))
    assert abs(_run(name, ops, ids, labels, position_ids=positions)[0] - ref[0]) > 1e-4

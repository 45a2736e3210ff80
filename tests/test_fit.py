"""The shared supervised fit loop (core.training.fit): batch orders, the step sequence against a
hand-written loop (bit for bit), clipping, logging and the modes it leaves the model in."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from diffuse.core.training.fit import epoch_batches, fit, sampled_batches

pytestmark = pytest.mark.usefixtures("one_thread")


def test_epoch_batches_cover_each_epoch_once_and_sampled_batches_draw_with_replacement():
    it = epoch_batches(10, 4, torch.Generator().manual_seed(0))
    first = [next(it) for _ in range(3)]
    assert [len(b) for b in first] == [4, 4, 2]
    assert sorted(torch.cat(first).tolist()) == list(range(10))
    assert sorted(torch.cat([next(it) for _ in range(3)]).tolist()) == list(range(10))
    g = torch.Generator().manual_seed(1)
    draws = torch.cat([next(sampled_batches(5, 8, g)) for _ in range(20)])
    assert draws.shape == (160,) and set(draws.tolist()) == set(range(5))


def _problem():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.1 * torch.randn(50, generator=g)
    return x, y


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.Dropout(0.1), torch.nn.Linear(8, 1))


def test_fit_equals_the_hand_written_loop_bit_for_bit():
    x, y = _problem()
    steps, clip = 23, 0.5

    # by hand: epochs of permuted batches of 16, noise drawn from the same generator per batch
    torch.manual_seed(5)
    ref = _model()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(1)
    step = 0
    ref.train()
    while step < steps:
        perm = torch.randperm(50, generator=g)
        for s in range(0, 50, 16):
            idx = perm[s:s + 16]
            xb = x[idx] + 0.01 * torch.randn(len(idx), 3, generator=g)
            loss = F.mse_loss(ref(xb).squeeze(1), y[idx])
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(ref.parameters(), clip)
            opt.step()
            sched.step()
            step += 1
            if step >= steps:
                break

    torch.manual_seed(5)
    net = _model()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(1)
    logged = []

    def loss_fn(model, idx):
        xb = x[idx] + 0.01 * torch.randn(len(idx), 3, generator=g)
        return F.mse_loss(model(xb).squeeze(1), y[idx])

    last = fit(net, loss_fn, epoch_batches(50, 16, g), steps, opt,
               torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps), grad_clip=clip,
               log=lambda s, v: logged.append(s), log_every=10)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), net.state_dict().values()))
    assert last == float(loss.detach())
    assert logged == [10, 20]
    assert not net.training


def test_fit_refuses_no_steps():
    net = _model()
    with pytest.raises(ValueError, match="steps >= 1"):
        fit(net, lambda m, b: m(b).sum(), iter([]), 0, torch.optim.SGD(net.parameters(), lr=0.1))

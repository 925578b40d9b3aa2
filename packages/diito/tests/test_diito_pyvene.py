"""Dev-only cross-check of our interchange swap against pyvene (spec section 9) on a tiny GPT-2 (a model
pyvene maps out of the box). pyvene is NOT a dependency of diito: the test is skipped when it is not
importable (to run it, install pyvene outside the project venv and put that folder on PYTHONPATH)."""

import pytest
import torch
from diito.sites import interchange_forward, interchange_forward_separate
from lmlab.testing import tiny_model

pv = pytest.importorskip("pyvene")

SITE = 1
BASE_POS = [[1, 4, 6], [0, 2, 9], [3, 5, 7]]  # p_1 < p_2 < p_3 per row, paired in order with SOURCE_POS
SOURCE_POS = [[2, 3, 8], [1, 5, 6], [0, 4, 9]]


def _masks(positions, T):
    mask = torch.zeros(len(positions), T, dtype=torch.bool)
    for i, row in enumerate(positions):
        mask[i, row] = True
    return mask


@pytest.mark.parametrize("dims", [None, list(range(8, 24))])
def test_interchange_matches_pyvene_vanilla_intervention(dims):
    model, _ = tiny_model("gpt2", "clm", layers=3, hidden=32, heads=2, seed=1)
    model.eval()
    B, T = len(BASE_POS), 10
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, model.config.vocab_size, (B, T), generator=g)
    src = torch.randint(5, model.config.vocab_size, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    P, Ps = _masks(BASE_POS, T), _masks(SOURCE_POS, T)
    site_dims = None
    if dims is not None:
        site_dims = torch.zeros(model.config.n_embd, dtype=torch.bool)
        site_dims[dims] = True
    with torch.no_grad():
        ours = [
            fn(model, ids, mask, src, mask, {SITE: site_dims}, P, Ps).int_logits
            for fn in (interchange_forward_separate, interchange_forward)
        ]
        config = pv.IntervenableConfig(
            representations=[pv.RepresentationConfig(SITE, "block_output", "pos", 1)],
            intervention_types=pv.VanillaIntervention,
        )
        intervenable = pv.IntervenableModel(config, model)
        kwargs = {} if dims is None else {"subspaces": [[dims] * B]}
        _, theirs = intervenable(
            {"input_ids": ids},
            [{"input_ids": src}],
            unit_locations={"sources->base": ([SOURCE_POS], [BASE_POS])},
            **kwargs,
        )
        plain = model(input_ids=ids).logits
    assert not torch.allclose(theirs.logits, plain, atol=1e-3)  # the intervention does change the output
    for logits in ours:
        torch.testing.assert_close(logits, theirs.logits, atol=1e-5, rtol=1e-4)
